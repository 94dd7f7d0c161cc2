"""The hand-written GRU gradient (``nn.gru.gru_last_states``' custom VJP).

Checked three ways: against central finite differences of a float64 NumPy GRU, against JAX's own
differentiation of the scan (``gru_last_states_autodiff``), and for every shape of use (several
fused GRUs of different input widths, empty and partial rows, partial unrolling, vmap, bfloat16).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solid_jax.nn import gru as layers


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_gru_last(p, xs, lengths):
  """Float64 GRU (PyTorch's equations), state after step n-1 of every row: [B, h]."""
  b, steps, _ = xs.shape
  hidden = p["w_hh"].shape[0]
  h = np.zeros((b, hidden))
  for t in range(steps):
    gi = xs[:, t] @ p["w_ih"] + p["b_ih"]
    gh = h @ p["w_hh"] + p["b_hh"]
    r = _sigmoid(gi[:, :hidden] + gh[:, :hidden])
    z = _sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
    n = np.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    live = (t < lengths)[:, None]
    h = np.where(live, (1 - z) * n + z * h, h)
  return h


def _problem(seed, b=4, steps=5, n_in=3, hidden=4):
  rng = np.random.default_rng(seed)
  p = {
    k: np.asarray(v, np.float64)
    for k, v in layers.gru_init(jax.random.key(seed), n_in, hidden).items()
  }
  xs = rng.normal(size=(b, steps, n_in))
  lengths = rng.integers(0, steps + 1, size=b)
  lengths[0], lengths[-1] = 0, steps  # an empty row and a full one
  cotangent = rng.normal(size=(b, hidden))
  return p, xs, lengths, cotangent


def _finite_differences(p, xs, lengths, cotangent, eps=1e-6):
  """d(sum(cotangent * h_last)) / d(every parameter and input), central differences, float64."""

  def loss(p_, xs_):
    return float(np.sum(cotangent * _numpy_gru_last(p_, xs_, lengths)))

  grads = {}
  for name, value in p.items():
    g = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
      hi, lo = {**p, name: value.copy()}, {**p, name: value.copy()}
      hi[name][idx] += eps
      lo[name][idx] -= eps
      g[idx] = (loss(hi, xs) - loss(lo, xs)) / (2 * eps)
    grads[name] = g
  gx = np.zeros_like(xs)
  for idx in np.ndindex(xs.shape):
    hi, lo = xs.copy(), xs.copy()
    hi[idx] += eps
    lo[idx] -= eps
    gx[idx] = (loss(p, hi) - loss(p, lo)) / (2 * eps)
  return grads, gx


def _jax_grads(fn, p, xs, lengths, cotangent, **kwargs):
  p32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p)
  xs32, ct = jnp.asarray(xs, jnp.float32), jnp.asarray(cotangent, jnp.float32)

  def loss(p_, xs_):
    return jnp.sum(ct * fn([p_], [xs_], jnp.asarray(lengths), **kwargs)[0])

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(p32, xs32)


@pytest.mark.parametrize("unroll", [1, 2, True])
def test_gradient_matches_float64_finite_differences(unroll):
  p, xs, lengths, cotangent = _problem(0)
  want_p, want_x = _finite_differences(p, xs, lengths, cotangent)
  got_p, got_x = _jax_grads(layers.gru_last_states, p, xs, lengths, cotangent, unroll=unroll)
  for name in want_p:
    np.testing.assert_allclose(got_p[name], want_p[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert np.abs(want_p[name]).max() > 1e-3, name  # every parameter gets a real gradient
  np.testing.assert_allclose(got_x, want_x, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got_x[0], 0.0)  # the empty row's inputs are never read
  np.testing.assert_array_equal(got_x[1, lengths[1] :], 0.0)  # nor padding steps


@pytest.mark.parametrize("unroll", [1, True])
def test_gradient_matches_autodiff_of_the_scan(unroll):
  rng = np.random.default_rng(1)
  b, steps, hidden = 64, 10, 32
  params = [
    layers.gru_init(jax.random.key(1), hidden, hidden),
    layers.gru_init(jax.random.key(2), 7, hidden),
  ]  # two fused GRUs, different inputs
  xs = [jnp.asarray(rng.normal(size=(b, steps, n)), jnp.float32) for n in (hidden, 7)]
  lengths = jnp.asarray(rng.integers(0, steps + 1, size=b))
  cts = [jnp.asarray(rng.normal(size=(b, hidden)), jnp.float32) for _ in range(2)]

  def loss(fn):
    def f(ps, xs_):
      return sum(jnp.sum(c * h) for c, h in zip(cts, fn(ps, xs_, lengths, unroll=unroll)))

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

  (v_new, g_new), (v_ref, g_ref) = (
    loss(layers.gru_last_states)(params, xs),
    loss(layers.gru_last_states_autodiff)(params, xs),
  )
  np.testing.assert_allclose(v_new, v_ref, rtol=1e-6)
  chex.assert_trees_all_equal_shapes_and_dtypes(g_new, g_ref)
  for got, want in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, atol=2e-6 * max(scale, 1.0), rtol=1e-4)


def test_forward_values_equal_the_scan_exactly():
  rng = np.random.default_rng(2)
  p = layers.gru_init(jax.random.key(3), 5, 8)
  xs = jnp.asarray(rng.normal(size=(6, 4, 5)), jnp.float32)
  lengths = jnp.asarray([0, 1, 2, 3, 4, 4])
  got = layers.gru_last_state(p, xs, lengths, unroll=True)
  want = layers.gru_last_states_autodiff([p], [xs], lengths, unroll=True)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(got[0], 0.0)


def test_gradient_under_vmap_matches_per_example():
  rng = np.random.default_rng(4)
  p = layers.gru_init(jax.random.key(4), 3, 4)
  xs = jnp.asarray(rng.normal(size=(3, 2, 5, 3)), jnp.float32)  # [vmap, B, L, n_in]
  lengths = jnp.asarray([[5, 2], [0, 5], [3, 4]])

  def grad_one(x, n):
    return jax.grad(lambda p_: jnp.sum(layers.gru_last_state(p_, x, n) ** 2))(p)

  batched = jax.vmap(grad_one)(xs, lengths)
  for i in range(3):
    single = grad_one(xs[i], lengths[i])
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_bfloat16_gradients_keep_the_dtypes():
  p = jax.tree.map(lambda v: v.astype(jnp.bfloat16), layers.gru_init(jax.random.key(5), 4, 4))
  xs = jnp.ones((2, 3, 4), jnp.bfloat16)
  g_p, g_x = jax.grad(
    lambda p_, x: jnp.sum(layers.gru_last_state(p_, x, jnp.asarray([3, 1])).astype(jnp.float32)),
    argnums=(0, 1),
  )(p, xs)
  assert {v.dtype for v in jax.tree.leaves(g_p)} == {jnp.dtype(jnp.bfloat16)}
  assert g_x.dtype == jnp.bfloat16
  assert all(bool(jnp.all(jnp.isfinite(v.astype(jnp.float32)))) for v in jax.tree.leaves(g_p))

"""Layers against independent NumPy float64 references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solid_jax.nn import layers

D = 8


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_gru(p, xs, lengths):
  """A Python-loop GRU (PyTorch equations, gates r, z, n): state after step n-1 of every row."""
  p = _np(p)
  b, steps, _ = xs.shape
  h_dim = p["w_hh"].shape[0]
  out = np.zeros((b, h_dim))
  for i in range(b):
    h = np.zeros(h_dim)
    for t in range(lengths[i]):
      gi = xs[i, t] @ p["w_ih"] + p["b_ih"]
      gh = h @ p["w_hh"] + p["b_hh"]
      r = _sigmoid(gi[:h_dim] + gh[:h_dim])
      z = _sigmoid(gi[h_dim:2 * h_dim] + gh[h_dim:2 * h_dim])
      n = np.tanh(gi[2 * h_dim:] + r * gh[2 * h_dim:])
      h = (1 - z) * n + z * h
    out[i] = h
  return out


def _numpy_layer_norm(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * scale + bias


def _numpy_mha(p, xq, xkv, mask, heads):
  p = _np(p)
  b, nq, d = xq.shape
  dh = d // heads
  q = xq @ p["query"]["kernel"] + p["query"]["bias"]
  k = xkv @ p["key"]["kernel"] + p["key"]["bias"]
  v = xkv @ p["value"]["kernel"] + p["value"]["bias"]
  out = np.zeros((b, nq, d))
  for i in range(b):
    for h in range(heads):
      sl = slice(h * dh, (h + 1) * dh)
      s = q[i, :, sl] @ k[i, :, sl].T / np.sqrt(dh)
      s = np.where(mask[i][None, :], s, -np.inf)
      s = np.exp(s - s.max(-1, keepdims=True))
      s = s / s.sum(-1, keepdims=True)
      out[i, :, sl] = s @ v[i, :, sl]
  return out @ p["out"]["kernel"] + p["out"]["bias"]


def _lengths_and_mask(rng, b, steps):
  lengths = rng.integers(1, steps + 1, size=b)
  lengths[0] = steps
  lengths[1] = 1
  mask = np.arange(steps)[None, :] < lengths[:, None]
  return lengths.astype(np.int32), mask


def test_dense_and_mlp_match_numpy():
  rng = np.random.default_rng(0)
  p = layers.mlp_init(jax.random.key(0), (D, 5, 3))
  p = jax.tree.map(lambda a: a + 0.1, p)  # non-zero biases
  x = rng.normal(size=(4, D)).astype(np.float32)
  got = layers.mlp(p, x, ("tanh", None))
  q = _np(p)
  want = np.tanh(x @ q["dense_0"]["kernel"] + q["dense_0"]["bias"]) @ q["dense_1"]["kernel"]
  want = want + q["dense_1"]["bias"]
  chex.assert_shape(got, (4, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  chex.assert_shape(p["dense_0"]["kernel"], (D, 5))


def test_embedding_init_zeroes_padding_row():
  table = layers.embedding_init(jax.random.key(1), 6, D)
  chex.assert_shape(table, (6, D))
  np.testing.assert_array_equal(table[0], 0.0)
  assert np.all(np.abs(np.asarray(table[1:])) > 0)


def test_layer_norm_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 5, D)).astype(np.float32) * 3
  p = {"scale": jnp.asarray(rng.normal(size=D), jnp.float32),
       "bias": jnp.asarray(rng.normal(size=D), jnp.float32)}
  want = _numpy_layer_norm(x.astype(np.float64), *_np((p["scale"], p["bias"])))
  np.testing.assert_allclose(layers.layer_norm(p, x), want, rtol=1e-5, atol=1e-5)


def test_gelu_is_the_exact_erf_form():
  x = np.linspace(-4, 4, 17)
  from math import erf
  want = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x])
  got = layers.activation("gelu")(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_masked_softmax_zero_weight_and_all_masked_row():
  s = jnp.asarray([[1.0, 2.0, 3.0], [1e30, -1e30, 0.0], [5.0, 1.0, 2.0]])
  mask = jnp.asarray([[True, False, True], [False, True, True], [False, False, False]])
  p = layers.masked_softmax(s, mask)
  np.testing.assert_array_equal(np.asarray(p)[~np.asarray(mask)], 0.0)
  e2 = np.exp(2.0)
  np.testing.assert_allclose(p[0], [1 / (1 + e2), 0, e2 / (1 + e2)], rtol=1e-6)
  np.testing.assert_allclose(p.sum(-1), [1, 1, 0], rtol=1e-6)
  g = jax.grad(lambda s: jnp.sum(layers.masked_softmax(s, mask) * jnp.arange(3.0)))(s)
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(np.asarray(g)[~np.asarray(mask)], 0.0)


def test_multi_head_attention_matches_numpy_and_ignores_padding():
  rng = np.random.default_rng(2)
  b, steps, heads = 4, 6, 2
  p = layers.attention_init(jax.random.key(2), D)
  p = jax.tree.map(lambda a: a + 0.05, p)
  x = rng.normal(size=(b, steps, D)).astype(np.float32)
  _, mask = _lengths_and_mask(rng, b, steps)
  got = layers.multi_head_attention(p, x, x, jnp.asarray(mask), heads)
  np.testing.assert_allclose(got, _numpy_mha(p, x, x, mask, heads), rtol=1e-4, atol=1e-5)
  noisy = np.where(mask[..., None], x, rng.normal(size=x.shape) * 100).astype(np.float32)
  got2 = layers.multi_head_attention(p, noisy, noisy, jnp.asarray(mask), heads)
  np.testing.assert_array_equal(np.asarray(got2)[mask], np.asarray(got)[mask])


def test_transformer_layer_matches_numpy_post_norm():
  rng = np.random.default_rng(3)
  b, steps, heads, ff = 3, 5, 2, 16
  p = layers.transformer_layer_init(jax.random.key(3), D, ff)
  x = rng.normal(size=(b, steps, D)).astype(np.float32)
  lengths, mask = _lengths_and_mask(rng, b, steps)
  q = _np(p)
  y = _numpy_layer_norm(x + _numpy_mha(p["attention"], x, x, mask, heads), **q["norm_1"])
  h = np.maximum(y @ q["ff_1"]["kernel"] + q["ff_1"]["bias"], 0)
  want = _numpy_layer_norm(y + h @ q["ff_2"]["kernel"] + q["ff_2"]["bias"], **q["norm_2"])
  got = layers.transformer_layer(p, x, jnp.asarray(mask), num_heads=heads)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  last = jnp.asarray(lengths - 1)
  row = layers.transformer_layer(p, x, jnp.asarray(mask), num_heads=heads, query_index=last)
  chex.assert_shape(row, (b, D))
  np.testing.assert_allclose(row, want[np.arange(b), lengths - 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unroll", [1, True])
def test_gru_scan_matches_python_loop(unroll):
  rng = np.random.default_rng(4)
  b, steps, n_in = 5, 7, 6
  p = layers.gru_init(jax.random.key(4), n_in, D)
  xs = rng.normal(size=(b, steps, n_in)).astype(np.float32)
  lengths, _ = _lengths_and_mask(rng, b, steps)
  lengths[2] = 0  # an empty row keeps h0 = 0
  got = layers.gru_last_state(p, xs, jnp.asarray(lengths), unroll=unroll)
  chex.assert_shape(got, (b, D))
  np.testing.assert_allclose(got, _numpy_gru(p, xs.astype(np.float64), lengths), atol=1e-5)
  np.testing.assert_array_equal(got[2], 0.0)


def test_fused_grus_equal_separate_grus():
  rng = np.random.default_rng(5)
  b, steps = 4, 6
  p1 = layers.gru_init(jax.random.key(5), D, D)
  p2 = layers.gru_init(jax.random.key(6), 3, D)
  x1 = rng.normal(size=(b, steps, D)).astype(np.float32)
  x2 = rng.normal(size=(b, steps, 3)).astype(np.float32)
  lengths = jnp.asarray(_lengths_and_mask(rng, b, steps)[0])
  h1, h2 = layers.gru_last_states([p1, p2], [x1, x2], lengths)
  np.testing.assert_allclose(h1, layers.gru_last_state(p1, x1, lengths), atol=1e-6)
  np.testing.assert_allclose(h2, layers.gru_last_state(p2, x2, lengths), atol=1e-6)


def test_gather_rows():
  x = jnp.arange(2 * 3 * 2.0).reshape(2, 3, 2)
  np.testing.assert_array_equal(layers.gather_rows(x, jnp.asarray([2, 0])), [[4, 5], [6, 7]])


def test_fmod_normal_is_bounded():
  v = layers.fmod_normal(jax.random.key(7), (10000,))
  assert float(jnp.max(jnp.abs(v))) < 2.0
  assert 0.8 < float(jnp.std(v)) < 1.0  # a folded normal has a slightly smaller spread

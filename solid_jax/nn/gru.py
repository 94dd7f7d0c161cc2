"""The GRU, hand-written: its scan has a hand-written gradient (``jax.custom_vjp``) that Flax's
``GRUCell`` / ``RNN`` cannot give, and several GRUs (SOLID's two generators) run fused in ONE scan.

Functions over a weight dict ``{"w_ih": [n_in, 3h], "w_hh": [h, 3h], "b_ih": [3h], "b_hh": [3h]}``
(gate blocks ordered r, z, n along the last axis, PyTorch's equations); ``GRUWeights`` is the Flax
module that owns such a dict, so that a module can hand the weights of several GRUs to one fused
scan.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict


class GRUWeights(nn.Module):
  """Owns one GRU's weights (PyTorch's init ``U(-1/sqrt(h), 1/sqrt(h))``) and returns them.

  ``GRUWeights(hidden)(n_in) -> {"w_ih": [n_in, 3h], "w_hh": [h, 3h], "b_ih": [3h], "b_hh":
  [3h]}``, for the scans below.
  """

  hidden: int

  @nn.compact
  def __call__(self, n_in: int) -> Params:
    h = self.hidden
    init = _uniform(h**-0.5)
    return {
      "w_ih": self.param("w_ih", init, (n_in, 3 * h)),
      "w_hh": self.param("w_hh", init, (h, 3 * h)),
      "b_ih": self.param("b_ih", init, (3 * h,)),
      "b_hh": self.param("b_hh", init, (3 * h,)),
    }


def _uniform(bound: float):
  """``U(-bound, bound)`` (Flax has no symmetric uniform initialiser)."""

  def apply(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return apply


def gru_init(key: Array, n_in: int, hidden: int) -> Params:
  """A GRU weight dict drawn as ``GRUWeights`` draws it (for functional use and tests)."""
  return GRUWeights(hidden).init(key, n_in)["params"]


def gru_cell(params: Params, gi: Array, h: Array) -> Array:
  """One GRU step from the precomputed input projection ``gi = x @ w_ih + b_ih``.

  Args:
    params: a GRU weight dict (``GRUWeights``).
    gi: float[..., 3h], the input projection of this step.
    h: float[..., h], the previous state.

  Returns:
    float[..., h], the new state ``(1 - z) * n + z * h`` (computed as ``n + z * (h - n)``).
  """
  rz, n, _ = _gru_gates(params, gi, h)
  z = rz[..., h.shape[-1] :]
  return n + z * (h - n)


def _gru_gates(params: Params, gi: Array, h: Array) -> tuple[Array, Array, Array]:
  """The gates of one GRU step: ``(rz = [r, z] float[..., 2h], n float[..., h], gh_n float[...,
  h])`` where ``gh_n = h @ w_hh[:, n] + b_hh[n]`` (kept for the hand-written backward)."""
  hidden = h.shape[-1]
  gh = h @ params["w_hh"] + params["b_hh"]
  rz = jax.nn.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
  gh_n = gh[..., 2 * hidden :]
  n = jnp.tanh(gi[..., 2 * hidden :] + rz[..., :hidden] * gh_n)
  return rz, n, gh_n


def gru_last_states(
  params_list: Sequence[Params], xs_list: Sequence[Array], lengths: Array, *, unroll: int = 1
) -> list[Array]:
  """Runs several GRUs over their sequences in ONE ``lax.scan`` and returns each state at ``n-1``.

  Steps ``t >= lengths`` leave the state unchanged, so the final carry is the state after the last
  real item (zeros when ``lengths == 0``). Input projections are computed for all steps with one
  matmul before the scan; the scan only does the recurrent matmuls.

  The gradient is hand-written (``jax.custom_vjp``, see ``_gru_backward``): the forward scan keeps
  each step's gates, a reverse scan computes the gate gradients step by step, and the weight
  gradients are then ONE matmul over all steps and rows (``[n, L*B] @ [L*B, 3h]``) instead of one
  small matmul per step. On CPU this makes the GRU's forward + backward about 1.6x faster than
  differentiating the scan; the values are the same (``tests/nn/gru_vjp_test.py``).

  Args:
    params_list: one GRU weight dict per GRU.
    xs_list: float[B, L, n_in] inputs, one per GRU (same B and L).
    lengths: int[B], the number of real items n of each row.
    unroll: ``lax.scan`` unroll factor (``True``: fully unrolled; best on CPU for short L).

  Returns:
    A list of float[B, h], the state at position ``n-1`` of each GRU.
  """
  return list(_gru_last_states(unroll, list(params_list), list(xs_list), lengths))


def _gru_live(xs: Array, lengths: Array) -> Array:
  """bool[L, B, 1]: step t of row b is a real item (``t < lengths[b]``)."""
  steps = jnp.arange(xs.shape[1])
  return (steps[:, None] < lengths[None, :])[..., None]


def _gru_forward(unroll, params_list, xs_list, lengths):
  """The forward scan; returns (final states, per-GRU residuals for the backward)."""
  live = _gru_live(xs_list[0], lengths)
  xs_tm = [jnp.swapaxes(xs, 0, 1) for xs in xs_list]  # [L, B, n_in], time-major
  gis = [x @ p["w_ih"] + p["b_ih"] for p, x in zip(params_list, xs_tm)]
  h0 = [
    jnp.zeros((xs.shape[0], p["w_hh"].shape[0]), gi.dtype)
    for p, xs, gi in zip(params_list, xs_list, gis)
  ]

  def step(hs, inputs):
    gi_t, live_t = inputs
    new_hs, saved = [], []
    for p, g, h in zip(params_list, gi_t, hs):
      rz, n, gh_n = _gru_gates(p, g, h)
      z = rz[:, h.shape[-1] :]
      new_hs.append(jnp.where(live_t, n + z * (h - n), h))
      saved.append((h, rz, n, gh_n))
    return new_hs, saved

  final, saved = jax.lax.scan(step, h0, (gis, live), unroll=unroll)
  return final, (params_list, xs_tm, live, saved)


def _gru_backward(unroll, residuals, d_final):
  """Gradients of the final states w.r.t. parameters and inputs, from the saved gates.

  For ``h' = n + z (h - n)``, ``n = tanh(gi_n + r gh_n)``, ``[r, z] = sigmoid(gi_rz + gh_rz)``,
  ``gh = h W_hh + b_hh``: ``dn = dh' (1 - z)``, ``dz = dh' (h - n)``, ``da_n = dn (1 - n^2)``,
  ``dr = da_n gh_n``, ``da_rz = [dr r (1 - r), dz z (1 - z)]``; ``dgi = [da_rz, da_n]``, ``dgh =
  [da_rz, da_n r]``; ``dh = dh' z + dgh W_hh^T`` (plus ``dh'`` itself at padding steps, which copy
  the state).
  """
  params_list, xs_tm, live, saved = residuals
  w_hh_t = [p["w_hh"].T for p in params_list]

  def step(dhs, inputs):
    saved_t, live_t = inputs
    new_dhs, grads_t = [], []
    for w_t, dh, (h, rz, n, gh_n) in zip(w_hh_t, dhs, saved_t):
      hidden = h.shape[-1]
      r, z = rz[:, :hidden], rz[:, hidden:]
      d_new = jnp.where(live_t, dh, 0)
      da_n = d_new * (1 - z) * (1 - n * n)
      da_rz = jnp.concatenate([da_n * gh_n, d_new * (h - n)], axis=-1) * rz * (1 - rz)
      dgh = jnp.concatenate([da_rz, da_n * r], axis=-1)
      dgi = jnp.concatenate([da_rz, da_n], axis=-1)
      new_dhs.append(jnp.where(live_t, d_new * z, dh) + dgh @ w_t)
      grads_t.append((dgi, dgh))
    return new_dhs, grads_t

  _, grads = jax.lax.scan(step, list(d_final), (saved, live), reverse=True, unroll=unroll)
  d_params, d_xs = [], []
  for p, x_tm, (h, _, _, _), (dgi, dgh) in zip(params_list, xs_tm, saved, grads):
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  [L*B, k]
    d_params.append(
      {
        "w_ih": (flat(x_tm).T @ flat(dgi)).astype(p["w_ih"].dtype),
        "w_hh": (flat(h).T @ flat(dgh)).astype(p["w_hh"].dtype),
        "b_ih": jnp.sum(dgi, axis=(0, 1)).astype(p["b_ih"].dtype),
        "b_hh": jnp.sum(dgh, axis=(0, 1)).astype(p["b_hh"].dtype),
      }
    )
    d_xs.append(jnp.swapaxes(dgi @ p["w_ih"].T, 0, 1).astype(x_tm.dtype))
  return d_params, d_xs, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru_last_states(unroll, params_list, xs_list, lengths):
  return _gru_forward(unroll, params_list, xs_list, lengths)[0]


_gru_last_states.defvjp(_gru_forward, _gru_backward)


def gru_last_states_autodiff(
  params_list: Sequence[Params], xs_list: Sequence[Array], lengths: Array, *, unroll: int = 1
) -> list[Array]:
  """``gru_last_states`` differentiated by JAX through the scan (the reference for its VJP)."""
  gis = [jnp.swapaxes(xs @ p["w_ih"] + p["b_ih"], 0, 1) for p, xs in zip(params_list, xs_list)]
  steps = jnp.arange(gis[0].shape[0])
  h0 = [
    jnp.zeros((xs.shape[0], p["w_hh"].shape[0]), xs.dtype) for p, xs in zip(params_list, xs_list)
  ]

  def step(hs, inputs):
    t, gi_t = inputs
    live = (t < lengths)[:, None]
    return [jnp.where(live, gru_cell(p, g, h), h) for p, g, h in zip(params_list, gi_t, hs)], None

  final, _ = jax.lax.scan(step, h0, (steps, gis), unroll=unroll)
  return final


def gru_all_states(
  params_list: Sequence[Params],
  xs_list: Sequence[Array],
  *,
  unroll: int = 1,
  resets: Array | None = None,
) -> list[Array]:
  """Several GRUs in one scan, returning the state after EVERY step: float[B, L, h] each.

  Row b's state at step t summarises items ``0..t``; steps past the row's length are computed
  too (their inputs are padding) and are the caller's to ignore. Differentiated by JAX through
  the scan (training on every position of a sequence). ``resets`` (bool[B, L], packed rows): the
  state is set back to zero before every step marked True, where a new sequence starts.
  """
  gis = [jnp.swapaxes(xs @ p["w_ih"] + p["b_ih"], 0, 1) for p, xs in zip(params_list, xs_list)]
  h0 = [
    jnp.zeros((xs.shape[0], p["w_hh"].shape[0]), xs.dtype) for p, xs in zip(params_list, xs_list)
  ]
  b, length = xs_list[0].shape[:2]
  keep = (
    jnp.ones((length, b, 1), xs_list[0].dtype)
    if resets is None
    else jnp.swapaxes(~resets, 0, 1)[..., None].astype(xs_list[0].dtype)
  )

  def step(hs, inputs):
    gi_t, keep_t = inputs
    new = [gru_cell(p, g, h * keep_t) for p, g, h in zip(params_list, gi_t, hs)]
    return new, new

  _, states = jax.lax.scan(step, h0, (gis, keep), unroll=unroll)
  return [jnp.swapaxes(s, 0, 1) for s in states]


def gru_last_state(params: Params, xs: Array, lengths: Array, *, unroll: int = 1) -> Array:
  """A single GRU's state at ``n-1``: float[B, L, n_in] -> float[B, h] (see ``gru_last_states``)."""
  return gru_last_states([params], [xs], lengths, unroll=unroll)[0]

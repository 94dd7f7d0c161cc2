"""Pure-function layers over plain dict parameters.

Every layer is a pair ``<name>_init(key, ...) -> params`` / ``<name>(params, x, ...) -> y``.
Parameters are nested dicts of float32 arrays; row vectors throughout, so a dense kernel is ``[in,
out]`` (a PyTorch ``nn.Linear`` stores its transpose). The exact equations are in
``docs/MODELS.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict

LAYER_NORM_EPS = 1e-5
LEAKY_SLOPE = 0.1

ACTIVATIONS: dict[str | None, Callable[[Array], Array]] = {
    None: lambda x: x,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, LEAKY_SLOPE),
}


def activation(name: str | None) -> Callable[[Array], Array]:
  """The activation function called ``name`` (``None``: identity)."""
  return ACTIVATIONS[name]


def xavier_uniform(key: Array, shape: Sequence[int]) -> Array:
  """Xavier/Glorot uniform for a 2-D ``[fan_in, fan_out]`` shape (symmetric in the two)."""
  fan_in, fan_out = shape
  limit = (6.0 / (fan_in + fan_out)) ** 0.5
  return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def fmod_normal(key: Array, shape: Sequence[int]) -> Array:
  """``fmod(normal(0, 1), 2)``: a standard normal folded into (-2, 2), the DUET projection init."""
  return jnp.fmod(jax.random.normal(key, shape, jnp.float32), 2.0)


# -------------------------------------------------------------------------------------------- dense


def dense_init(key: Array, n_in: int, n_out: int, *, bias: bool = True) -> Params:
  """Dense parameters: ``"kernel": [n_in, n_out]`` (Xavier uniform), ``"bias": [n_out]`` (0)."""
  params = {"kernel": xavier_uniform(key, (n_in, n_out))}
  if bias:
    params["bias"] = jnp.zeros((n_out,), jnp.float32)
  return params


def dense(params: Params, x: Array) -> Array:
  """``x @ kernel (+ bias)``: ``[..., n_in] -> [..., n_out]``."""
  y = x @ params["kernel"]
  if "bias" in params:
    y = y + params["bias"]
  return y


def mlp_init(key: Array, sizes: Sequence[int]) -> Params:
  """A stack of dense layers ``{"dense_0": sizes[0]->sizes[1], "dense_1": ..., ...}``."""
  keys = jax.random.split(key, len(sizes) - 1)
  return {
      f"dense_{i}": dense_init(k, n_in, n_out)
      for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }


def mlp(params: Params, x: Array, activations: Sequence[str | None]) -> Array:
  """``dense_j`` then ``activations[j]``, for each layer j: [..., sizes[0]] -> [..., sizes[-1]]."""
  for j, act in enumerate(activations):
    x = activation(act)(dense(params[f"dense_{j}"], x))
  return x


# ---------------------------------------------------------------------------------------- embedding


def embedding_init(key: Array, num: int, dim: int, *, zero_padding: bool = True) -> Array:
  """An embedding table ``float32[num, dim]``, Xavier uniform, row 0 (padding) zeroed if asked."""
  table = xavier_uniform(key, (num, dim))
  if zero_padding:
    table = table.at[0].set(0.0)
  return table


def embed(table: Array, ids: Array) -> Array:
  """Rows of ``table: [num, dim]`` at ``ids: int[...]`` -> ``[..., dim]``."""
  return jnp.take(table, ids, axis=0)


# --------------------------------------------------------------------------------------- layer norm


def layer_norm_init(dim: int) -> Params:
  """``{"scale": ones[dim], "bias": zeros[dim]}``."""
  return {"scale": jnp.ones((dim,), jnp.float32), "bias": jnp.zeros((dim,), jnp.float32)}


def layer_norm(params: Params, x: Array, eps: float = LAYER_NORM_EPS) -> Array:
  """Layer norm over the last axis, biased variance, epsilon ``eps`` (default 1e-5)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(var + eps) * params["scale"] + params["bias"]


# ------------------------------------------------------------------------------------------ dropout


def dropout(x: Array, rate: float, key: Array | None) -> Array:
  """Inverted dropout: zero each entry with probability ``rate``, scale the rest by 1/(1-rate).

  ``key=None`` or ``rate == 0`` is the identity (evaluation). Keys are explicit: the caller
  derives one per place (``jax.random.fold_in``), so a training step is a pure function of its key.
  """
  if key is None or rate <= 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def fold(key: Array | None, *path: int) -> Array | None:
  """``fold_in(key, p0, p1, ...)`` one integer at a time; None stays None."""
  for p in path:
    if key is None:
      return None
    key = jax.random.fold_in(key, p)
  return key


# ---------------------------------------------------------------------------------------- attention


def masked_softmax(scores: Array, mask: Array, axis: int = -1) -> Array:
  """Softmax of ``scores`` over ``axis`` where ``mask`` is True; masked entries weigh exactly 0.

  A slice with no True entry gets all-zero weights (never NaN), and gradients stay finite.

  Args:
    scores: float[...], any shape.
    mask: bool, broadcastable to ``scores``.
    axis: the softmax axis.

  Returns:
    float[...] of the shape of ``scores``.
  """
  masked = jnp.where(mask, scores, -jnp.inf)
  top = jax.lax.stop_gradient(jnp.max(masked, axis=axis, keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  e = jnp.exp(masked - top)
  total = jnp.sum(e, axis=axis, keepdims=True)
  return e / jnp.where(total > 0, total, 1.0)


def attention_init(key: Array, dim: int) -> Params:
  """Multi-head attention ``{"query", "key", "value", "out"}``: dense ``dim -> dim`` with bias."""
  kq, kk, kv, ko = jax.random.split(key, 4)
  return {
      "query": dense_init(kq, dim, dim),
      "key": dense_init(kk, dim, dim),
      "value": dense_init(kv, dim, dim),
      "out": dense_init(ko, dim, dim),
  }


def multi_head_attention(
    params: Params, x_q: Array, x_kv: Array, key_mask: Array, num_heads: int, *,
    causal_positions: Array | None = None, dropout_rate: float = 0.0,
    key: Array | None = None, segments: Array | None = None,
) -> Array:
  """Scaled dot-product multi-head attention with a key-padding mask.

  Args:
    params: from ``attention_init``.
    x_q: float[B, Q, d] queries.
    x_kv: float[B, L, d] keys and values.
    key_mask: bool[B, L], True for keys that may be attended to.
    num_heads: H; head h uses features ``h*d/H:(h+1)*d/H`` of the projections.
    causal_positions: optional int[B, Q], the sequence position of every query; query q then
      attends only to keys at positions ``<= causal_positions[b, q]`` (a causal mask).
    dropout_rate: dropout on the attention probabilities (with ``key``; training only).
    key: PRNG key of that dropout (None: no dropout).
    segments: optional int[B, L] segment ids of packed rows (``solid_jax.data.pack_rows``; the
      queries are all L positions): a query attends only to keys of its own segment.

  Returns:
    float[B, Q, d].
  """
  b, nq, d = x_q.shape
  nk = x_kv.shape[1]
  dh = d // num_heads
  q = dense(params["query"], x_q).reshape(b, nq, num_heads, dh)
  k = dense(params["key"], x_kv).reshape(b, nk, num_heads, dh)
  v = dense(params["value"], x_kv).reshape(b, nk, num_heads, dh)
  scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / jnp.sqrt(jnp.float32(dh))
  mask = key_mask[:, None, None, :]
  if causal_positions is not None:
    mask = mask & (jnp.arange(nk)[None, None, None, :] <= causal_positions[:, None, :, None])
  if segments is not None:
    mask = mask & (segments[:, None, None, :] == segments[:, None, :, None])
  probs = dropout(masked_softmax(scores, mask), dropout_rate, key)
  out = jnp.einsum("bhqk,bkhe->bqhe", probs, v).reshape(b, nq, d)
  return dense(params["out"], out)


def transformer_layer_init(key: Array, dim: int, ff_dim: int) -> Params:
  """Post-norm layer ``{"attention", "norm_1", "ff_1": d->ff, "ff_2": ff->d, "norm_2"}``."""
  ka, k1, k2 = jax.random.split(key, 3)
  return {
      "attention": attention_init(ka, dim),
      "norm_1": layer_norm_init(dim),
      "ff_1": dense_init(k1, dim, ff_dim),
      "ff_2": dense_init(k2, ff_dim, dim),
      "norm_2": layer_norm_init(dim),
  }


def transformer_layer(
    params: Params,
    x: Array,
    key_mask: Array,
    *,
    num_heads: int,
    ff_activation: str = "relu",
    query_index: Array | None = None,
    causal: bool = False,
    eps: float = LAYER_NORM_EPS,
    dropout_hidden: float = 0.0,
    dropout_attention: float = 0.0,
    key: Array | None = None,
    segments: Array | None = None,
) -> Array:
  """A post-norm transformer encoder layer (dropout 0) as PyTorch's ``TransformerEncoderLayer``.

  ``y = norm_1(x + drop(attention(x))); out = norm_2(y + drop(ff_2(act(ff_1(y)))))``; dropout
  (on the attention probabilities and on both residual branches) only when a ``key`` is given.

  Args:
    params: from ``transformer_layer_init``.
    x: float[B, L, d].
    key_mask: bool[B, L], True for real (non-padding) positions.
    num_heads: number of attention heads.
    ff_activation: "relu" or "gelu" (exact erf form).
    query_index: optional int[B]; when given only that row is computed, for every user.
    causal: position i attends only to positions <= i (SASRec trained on every position).
    eps: layer-norm epsilon.
    dropout_hidden: dropout rate of the attention output and the feed-forward output.
    dropout_attention: dropout rate of the attention probabilities.
    key: PRNG key of the dropout masks (None: no dropout).
    segments: optional int[B, L] segment ids of packed rows: attention stays within a segment
      (every position is a query; not with ``query_index``).

  Returns:
    float[B, L, d], or float[B, d] when ``query_index`` is given.
  """
  if segments is not None and query_index is not None:
    raise ValueError("segments (packed rows) need every position as a query, not query_index")
  b, length = x.shape[:2]
  if query_index is None:
    x_q = x
    positions = jnp.broadcast_to(jnp.arange(length)[None, :], (b, length))
  else:
    x_q = jnp.take_along_axis(x, query_index[:, None, None], axis=1)
    positions = query_index[:, None]
  att = multi_head_attention(params["attention"], x_q, x, key_mask, num_heads,
                             causal_positions=positions if causal else None,
                             dropout_rate=dropout_attention, key=fold(key, 0),
                             segments=segments)
  y = layer_norm(params["norm_1"], x_q + dropout(att, dropout_hidden, fold(key, 1)), eps)
  ff = dense(params["ff_2"], activation(ff_activation)(dense(params["ff_1"], y)))
  out = layer_norm(params["norm_2"], y + dropout(ff, dropout_hidden, fold(key, 2)), eps)
  return out if query_index is None else out[:, 0]


# ---------------------------------------------------------------------------------------------- GRU


def gru_init(key: Array, n_in: int, hidden: int) -> Params:
  """GRU parameters, gate blocks ordered (r, z, n) along the last axis, PyTorch's uniform init.

  Returns:
    ``{"w_ih": [n_in, 3h], "w_hh": [h, 3h], "b_ih": [3h], "b_hh": [3h]}``.
  """
  bound = hidden ** -0.5
  k1, k2, k3, k4 = jax.random.split(key, 4)
  u = lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound)  # noqa: E731
  return {
      "w_ih": u(k1, (n_in, 3 * hidden)),
      "w_hh": u(k2, (hidden, 3 * hidden)),
      "b_ih": u(k3, (3 * hidden,)),
      "b_hh": u(k4, (3 * hidden,)),
  }


def gru_cell(params: Params, gi: Array, h: Array) -> Array:
  """One GRU step from the precomputed input projection ``gi = x @ w_ih + b_ih``.

  Args:
    params: from ``gru_init``.
    gi: float[..., 3h], the input projection of this step.
    h: float[..., h], the previous state.

  Returns:
    float[..., h], the new state ``(1 - z) * n + z * h`` (computed as ``n + z * (h - n)``).
  """
  rz, n, _ = _gru_gates(params, gi, h)
  z = rz[..., h.shape[-1]:]
  return n + z * (h - n)


def _gru_gates(params: Params, gi: Array, h: Array) -> tuple[Array, Array, Array]:
  """The gates of one GRU step: ``(rz = [r, z] float[..., 2h], n float[..., h], gh_n float[...,
  h])`` where ``gh_n = h @ w_hh[:, n] + b_hh[n]`` (kept for the hand-written backward)."""
  hidden = h.shape[-1]
  gh = h @ params["w_hh"] + params["b_hh"]
  rz = jax.nn.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
  gh_n = gh[..., 2 * hidden:]
  n = jnp.tanh(gi[..., 2 * hidden:] + rz[..., :hidden] * gh_n)
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
    params_list: one ``gru_init`` dict per GRU.
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
  h0 = [jnp.zeros((xs.shape[0], p["w_hh"].shape[0]), gi.dtype)
        for p, xs, gi in zip(params_list, xs_list, gis)]

  def step(hs, inputs):
    gi_t, live_t = inputs
    new_hs, saved = [], []
    for p, g, h in zip(params_list, gi_t, hs):
      rz, n, gh_n = _gru_gates(p, g, h)
      z = rz[:, h.shape[-1]:]
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
    d_params.append({
        "w_ih": (flat(x_tm).T @ flat(dgi)).astype(p["w_ih"].dtype),
        "w_hh": (flat(h).T @ flat(dgh)).astype(p["w_hh"].dtype),
        "b_ih": jnp.sum(dgi, axis=(0, 1)).astype(p["b_ih"].dtype),
        "b_hh": jnp.sum(dgh, axis=(0, 1)).astype(p["b_hh"].dtype),
    })
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
      jnp.zeros((xs.shape[0], p["w_hh"].shape[0]), xs.dtype)
      for p, xs in zip(params_list, xs_list)
  ]

  def step(hs, inputs):
    t, gi_t = inputs
    live = (t < lengths)[:, None]
    return [jnp.where(live, gru_cell(p, g, h), h) for p, g, h in zip(params_list, gi_t, hs)], None

  final, _ = jax.lax.scan(step, h0, (steps, gis), unroll=unroll)
  return final


def gru_all_states(params_list: Sequence[Params], xs_list: Sequence[Array], *,
                   unroll: int = 1, resets: Array | None = None) -> list[Array]:
  """Several GRUs in one scan, returning the state after EVERY step: float[B, L, h] each.

  Row b's state at step t summarises items ``0..t``; steps past the row's length are computed
  too (their inputs are padding) and are the caller's to ignore. Differentiated by JAX through
  the scan (training on every position of a sequence). ``resets`` (bool[B, L], packed rows): the
  state is set back to zero before every step marked True, where a new sequence starts.
  """
  gis = [jnp.swapaxes(xs @ p["w_ih"] + p["b_ih"], 0, 1) for p, xs in zip(params_list, xs_list)]
  h0 = [jnp.zeros((xs.shape[0], p["w_hh"].shape[0]), xs.dtype)
        for p, xs in zip(params_list, xs_list)]
  b, length = xs_list[0].shape[:2]
  keep = jnp.ones((length, b, 1), xs_list[0].dtype) if resets is None else \
      jnp.swapaxes(~resets, 0, 1)[..., None].astype(xs_list[0].dtype)

  def step(hs, inputs):
    gi_t, keep_t = inputs
    new = [gru_cell(p, g, h * keep_t) for p, g, h in zip(params_list, gi_t, hs)]
    return new, new

  _, states = jax.lax.scan(step, h0, (gis, keep), unroll=unroll)
  return [jnp.swapaxes(s, 0, 1) for s in states]


def gru_last_state(params: Params, xs: Array, lengths: Array, *, unroll: int = 1) -> Array:
  """A single GRU's state at ``n-1``: float[B, L, n_in] -> float[B, h] (see ``gru_last_states``)."""
  return gru_last_states([params], [xs], lengths, unroll=unroll)[0]


def gather_rows(x: Array, index: Array) -> Array:
  """``x[b, index[b]]`` for every b: float[B, L, d], int[B] -> float[B, d]."""
  return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]

"""Vector-quantisation codebook as pure functions, and a small jit-compiled k-means.

The codebook is ``params = {"codes": float32[C, D]}`` (plus ``"ema"`` statistics in ``ema`` mode).
Row 0 is the padding code (the metacode's padding row): it is never a candidate of the nearest-code
search and never changes. Padding positions (``mask == 0``) are quantised to zeros, select index 0,
and are left out of every loss and statistic.

Modes (``MODES``):
- ``"frozen"`` (the authors' behaviour): the lookup is a constant table; no gradient reaches the
  codebook or, through the lookup, the query.
- ``"straight_through"``: ``q + stop_gradient(c - q)``; the codebook is trained by the codebook loss
  ``mean((sg(q) - c)^2)`` and the query pulled by the commitment loss ``mean((q - sg(c))^2)``.
- ``"ema"``: straight-through gradient and commitment loss for the query; the codes are exponential
  moving averages of their assigned queries (not trained by gradient), anchored to their initial
  table (the semantic metacode) by a pseudo-count (`ema_update` gives the equations). Statistics
  live in ``params["ema"]`` and are threaded functionally: ``quantize`` returns the new codebook
  subtree in ``info["state"]``; the caller writes it back (``Model.update_state``). A code selected
  by no query for ``dead_steps`` consecutive steps is re-seeded from a random current query; the
  randomness comes from the ``key`` argument, or when it is None from ``fold_in(key(ema["seed"]),
  ema["step"])``.

``Codebook`` is the Flax module over the same functions: it owns the subtree ``{"codes"(,
"ema")}`` in the ``"params"`` collection (the EMA statistics too, so that a model's parameters stay
one plain dict) and returns the new EMA subtree in ``info["state"]``. The codebook is hand-written:
Flax has no vector quantiser.

k-means: ``kmeans(key, x, k, iters)`` (k-means++ seeding, Lloyd iterations, jit-compiled, memory
bounded by chunking the assignment step) and ``kmeans_init(key, vectors, num_codes)`` (a codebook
table: row 0 zeros, rows 1.. the k-means centroids of ``num_codes - 1`` clusters).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict

MODES = ("straight_through", "frozen", "ema")
EMA_EPS = 1e-5


# ------------------------------------------------------------------------------------------- params


def init(
  key: Array,
  num_codes: int,
  dim: int,
  *,
  mode: str = "straight_through",
  table: Array | None = None,
) -> Params:
  """Codebook parameters.

  Args:
    key: PRNG key (random table when ``table`` is None; the EMA revival seed).
    num_codes: C, including the padding row 0.
    dim: D.
    mode: one of ``MODES``.
    table: optional float[C, D] initial codes (e.g. the semantic metacode).

  Returns:
    ``{"codes": float32[C, D]}`` and, in ``ema`` mode, ``"ema": {"count": [C], "sum": [C, D],
    "prior": [C, D], "unused": [C], "step": [], "seed": []}`` (`ema_init`; float32 everywhere so
    that ``jax.grad`` accepts the tree).
  """
  if mode not in MODES:
    raise ValueError(f"codebook mode {mode!r}; expected one of {MODES}")
  k_table, k_seed = jax.random.split(key)
  if table is None:
    codes = nn.initializers.xavier_uniform()(k_table, (num_codes, dim)).at[0].set(0.0)
  else:
    codes = jnp.asarray(table, jnp.float32)
    if codes.shape != (num_codes, dim):
      raise ValueError(f"codebook table has shape {codes.shape}; expected {(num_codes, dim)}")
  params = {"codes": codes}
  if mode == "ema":
    params["ema"] = ema_init(k_seed, codes)
  return params


def ema_statistics(codes: Array) -> Params:
  """The EMA statistics of a codebook that starts at ``codes: float[C, D]``.

  Every code 1..C-1 starts with the uniform share ``count = 1 / (C - 1)`` of the assignments and
  ``sum = count * code`` (its moving mean is the code itself); ``prior`` is the table the codes are
  anchored to (`ema_update`). Row 0 (padding) has count 0.

  Returns:
    ``{"count": float32[C], "sum": float32[C, D], "prior": float32[C, D], "unused": float32[C],
    "step": float32[]}``.
  """
  codes = jnp.asarray(codes, jnp.float32)
  num_codes = codes.shape[0]
  share = jnp.where(jnp.arange(num_codes) > 0, 1.0 / max(num_codes - 1, 1), 0.0)
  return {
    "count": share.astype(jnp.float32),
    "sum": codes * share[:, None],
    "prior": codes,
    "unused": jnp.zeros((num_codes,), jnp.float32),
    "step": jnp.zeros((), jnp.float32),
  }


def ema_init(key: Array, codes: Array) -> Params:
  """The EMA subtree of a fresh codebook ``codes: [C, D]``: `ema_statistics` and a revival seed."""
  return {
    **ema_statistics(codes),
    "seed": jax.random.randint(key, (), 0, 2**24).astype(jnp.float32),
  }


# --------------------------------------------------------------------------------------- the lookup


def distances(q: Array, codes: Array) -> Array:
  """Squared Euclidean distances ``||q||^2 - 2 q @ codes.T + ||codes||^2``.

  Args:
    q: float[N, D] queries.
    codes: float[C, D].

  Returns:
    float[N, C] (one matmul; no [N, C, D] tensor).
  """
  q_sq = jnp.sum(jnp.square(q), axis=-1, keepdims=True)
  c_sq = jnp.sum(jnp.square(codes), axis=-1)
  return q_sq - 2.0 * (q @ codes.T) + c_sq


def nearest(q: Array, codes: Array) -> Array:
  """Index of the nearest code of every query, code 0 (padding) excluded.

  Args:
    q: float[..., D].
    codes: float[C, D], C >= 2.

  Returns:
    int32[...] in ``1..C-1``.
  """
  flat = q.reshape(-1, q.shape[-1])
  d = distances(flat, codes)
  d = d.at[:, 0].set(jnp.inf)
  return jnp.argmin(d, axis=-1).astype(jnp.int32).reshape(q.shape[:-1])


def usage_stats(index: Array, mask: Array, num_codes: int) -> tuple[Array, Array, Array]:
  """Selection counts, perplexity and fraction of codes used.

  Args:
    index: int[...] selected codes.
    mask: float[...] weights of the positions (0 for padding).
    num_codes: C.

  Returns:
    ``(counts float32[C], perplexity float32[], usage float32[])``; usage = fraction of codes 1..C-1
    selected at least once, perplexity = ``exp(-sum p log p)`` of the selection frequencies.
  """
  counts = jax.ops.segment_sum(mask.reshape(-1), index.reshape(-1), num_segments=num_codes)
  counts = counts.at[0].set(0.0)
  perplexity, usage = summarize_counts(counts)
  return counts, perplexity, usage


def summarize_counts(counts: Array) -> tuple[Array, Array]:
  """``(perplexity, usage)`` of selection counts float[C] (row 0, padding, ignored): perplexity
  ``exp(-sum p log p)`` of the frequencies of codes 1..C-1, usage the fraction of them selected at
  least once. Counts summed over a whole split give that split's figures."""
  counts = jnp.asarray(counts, jnp.float32)[1:]
  total = jnp.sum(counts)
  p = counts / jnp.maximum(total, 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  usage = jnp.sum(counts > 0) / max(counts.shape[0], 1)
  return jnp.exp(entropy), usage.astype(jnp.float32)


def _masked_mean(sq: Array, mask: Array) -> Array:
  """``sum(mask * sq) / max(sum(mask) * D, 1)`` for sq float[..., D], mask float[...]."""
  denom = jnp.maximum(jnp.sum(mask) * sq.shape[-1], 1.0)
  return jnp.sum(sq * mask[..., None]) / denom


def quantize(
  params: Params,
  q: Array,
  mask: Array,
  *,
  mode: str,
  decay: float = 0.99,
  dead_steps: int = 100,
  prior: float = 1.0,
  key: Array | None = None,
) -> tuple[Array, dict]:
  """Quantises queries to their nearest codes.

  Args:
    params: from ``init``.
    q: float[B, L, D] queries.
    mask: float[B, L] position weights (0 at padding positions; 1, or the row weight, elsewhere).
    mode: one of ``MODES``.
    decay: EMA decay (``ema`` mode).
    dead_steps: EMA dead-code revival threshold in steps (``ema`` mode).
    prior: the pseudo-count of the initial table (``ema`` mode), see `ema_update`.
    key: optional PRNG key for the revival (``ema`` mode); see the module docstring.

  Returns:
    ``(out float32[B, L, D], info)``: ``out`` is the quantised sequence (zeros at padding positions;
    gradient per ``mode``). ``info``: ``"index"`` int32[B, L] (0 at padding), ``"selected"``
    float[B, L, D] = stop_gradient(codes[index]), ``"codebook_loss"``, ``"commitment_loss"``
    (unweighted scalars, 0.0 where the mode has none), ``"perplexity"``, ``"usage"``, ``"counts"``
    float32[C] and, in ``ema`` mode, ``"state"`` (the new codebook subtree).
  """
  if mode not in MODES:
    raise ValueError(f"codebook mode {mode!r}; expected one of {MODES}")
  codes = params["codes"]
  num_codes = codes.shape[0]
  valid = mask > 0
  index = jnp.where(valid, nearest(jax.lax.stop_gradient(q), jax.lax.stop_gradient(codes)), 0)
  chosen = jnp.take(codes, index, axis=0)
  selected = jax.lax.stop_gradient(chosen)
  zero = jnp.zeros((), jnp.float32)
  if mode == "frozen":
    out = selected
    codebook_loss, commitment_loss = zero, zero
  else:
    out = q + jax.lax.stop_gradient(chosen - q)
    commitment_loss = _masked_mean(jnp.square(q - selected), mask)
    if mode == "straight_through":
      codebook_loss = _masked_mean(jnp.square(jax.lax.stop_gradient(q) - chosen), mask)
    else:
      codebook_loss = zero
  out = jnp.where(valid[..., None], out, 0.0)
  counts, perplexity, usage = usage_stats(index, mask, num_codes)
  info = {
    "index": index,
    "selected": selected,
    "codebook_loss": codebook_loss,
    "commitment_loss": commitment_loss,
    "perplexity": perplexity,
    "usage": usage,
    "counts": counts,
  }
  if mode == "ema":
    info["state"] = ema_update(
      params,
      jax.lax.stop_gradient(q),
      index,
      mask,
      decay=decay,
      dead_steps=dead_steps,
      prior=prior,
      key=key,
    )
  return out, info


def ema_update(
  params: Params,
  q: Array,
  index: Array,
  mask: Array,
  *,
  decay: float,
  dead_steps: int,
  prior: float = 1.0,
  key: Array | None = None,
) -> Params:
  """One EMA step of the codebook with dead-code revival (row 0 untouched).

  The statistics are shares of the step's assignments, so they do not depend on how many rows
  carry a history: a batch of candidate groups (each history once) and the same histories as
  single rows (each history once per candidate) give the same update. With ``m_i`` the weight of
  valid position i, ``N = sum_i m_i``, ``mu = 1 / (C - 1)`` and ``P`` the initial table (``prior``
  in the statistics, the semantic metacode in SOLID)::

    count_k <- decay * count_k + (1 - decay) * sum_{i: k(i)=k} m_i / N
    sum_k   <- decay * sum_k   + (1 - decay) * sum_{i: k(i)=k} m_i q_i / N
    code_k   = (sum_k + prior * mu * P_k) / (count_k + prior * mu)

  ``prior`` is a pseudo-count in units of a code's uniform share ``mu`` of the assignments: the
  initial code weighs as much as ``prior`` times the recent queries of a code chosen at the uniform
  rate, and it never decays (``prior = 0``: the codes are the moving means of their queries; the
  denominator is then kept above ``EMA_EPS``). A step without valid positions changes nothing but
  the step counter. Codes unused for ``dead_steps`` consecutive steps are re-seeded from a random
  valid query ``f``: code, ``P_k`` and moving mean become ``f`` (count ``mu``).

  Args:
    params: the codebook subtree with ``"ema"`` (`ema_init`).
    q: float[B, L, D] queries (no gradient needed).
    index: int[B, L] their selected codes.
    mask: float[B, L] position weights.
    decay: EMA decay.
    dead_steps: revival threshold.
    prior: the pseudo-count of the initial table, >= 0.
    key: PRNG key for the revival; None derives it from ``ema["seed"]`` and ``ema["step"]``.

  Returns:
    The new codebook subtree (same structure as ``params``).
  """
  ema = params["ema"]
  num_codes, dim = params["codes"].shape
  mu = 1.0 / max(num_codes - 1, 1)
  flat_q = q.reshape(-1, dim)
  flat_m = mask.reshape(-1)
  flat_i = index.reshape(-1)
  total = jnp.sum(flat_m)
  any_valid = total > 0
  scale = 1.0 / jnp.maximum(total, 1e-12)
  share = jax.ops.segment_sum(flat_m, flat_i, num_segments=num_codes) * scale
  s_k = jax.ops.segment_sum(flat_q * flat_m[:, None], flat_i, num_segments=num_codes) * scale
  count = jnp.where(any_valid, decay * ema["count"] + (1.0 - decay) * share, ema["count"])
  summed = jnp.where(any_valid, decay * ema["sum"] + (1.0 - decay) * s_k, ema["sum"])
  anchor = prior * mu
  codes = (summed + anchor * ema["prior"]) / jnp.maximum(count + anchor, EMA_EPS)[:, None]
  unused = jnp.where(share > 0, 0.0, ema["unused"] + 1.0)

  if key is None:
    key = jax.random.fold_in(
      jax.random.key(ema["seed"].astype(jnp.uint32)), ema["step"].astype(jnp.uint32)
    )
  dead = (unused >= dead_steps) & any_valid & (jnp.arange(num_codes) > 0)
  logits = jnp.where(flat_m > 0, 0.0, -jnp.inf)
  pick = jax.random.categorical(key, jnp.where(any_valid, logits, 0.0), shape=(num_codes,))
  fresh = jnp.take(flat_q, pick, axis=0)
  codes = jnp.where(dead[:, None], fresh, codes)
  summed = jnp.where(dead[:, None], fresh * mu, summed)
  anchored = jnp.where(dead[:, None], fresh, ema["prior"])
  count = jnp.where(dead, mu, count)
  unused = jnp.where(dead, 0.0, unused)

  old = params["codes"]
  first = jnp.arange(num_codes)[:, None] == 0
  new_ema = {
    "count": jnp.where(first[:, 0], ema["count"], count),
    "sum": jnp.where(first, ema["sum"], summed),
    "prior": jnp.where(first, ema["prior"], anchored),
    "unused": jnp.where(first[:, 0], ema["unused"], unused),
    "step": ema["step"] + 1.0,
    "seed": ema["seed"],
  }
  return {"codes": jnp.where(first, old, codes), "ema": new_ema}


class Codebook(nn.Module):
  """The codebook as a Flax module: ``Codebook(C, D, mode)(q, mask) -> (out, info)``.

  Parameters (collection ``"params"``): ``{"codes": [C, D]}`` plus, in ``ema`` mode, ``"ema"``
  (see ``init``); drawn by ``init`` from the module's ``"params"`` key. ``__call__`` is
  ``quantize`` over them; in ``ema`` mode the caller writes ``info["state"]`` back.

  Attributes:
    num_codes: C, including the padding row 0. dim: D. mode: one of ``MODES``.
    decay: EMA decay. dead_steps: EMA revival threshold. prior: the pseudo-count of the initial
    table (`ema_update`).
  """

  num_codes: int
  dim: int
  mode: str = "straight_through"
  decay: float = 0.99
  dead_steps: int = 100
  prior: float = 1.0

  def setup(self):
    self.codes = self.param(
      "codes", lambda key: init(key, self.num_codes, self.dim, mode="frozen")["codes"]
    )
    self.ema = self.param("ema", ema_init, self.codes) if self.mode == "ema" else None

  def tables(self) -> Params:
    """The codebook subtree ``{"codes"(, "ema")}``, as ``quantize`` takes it."""
    return {"codes": self.codes} if self.ema is None else {"codes": self.codes, "ema": self.ema}

  def __call__(self, q: Array, mask: Array, *, key: Array | None = None) -> tuple[Array, dict]:
    """``quantize(tables, q float[B, L, D], mask float[B, L])``: see ``quantize``."""
    return quantize(
      self.tables(),
      q,
      mask,
      mode=self.mode,
      decay=self.decay,
      dead_steps=self.dead_steps,
      prior=self.prior,
      key=key,
    )


# ------------------------------------------------------------------------------------------ k-means


def _assign(x: Array, centroids: Array, chunk: int) -> Array:
  """Nearest centroid of every row of x: float[N, D], float[k, D] -> int32[N]; rows in chunks."""
  n = x.shape[0]
  if n <= chunk:
    return jnp.argmin(distances(x, centroids), axis=-1).astype(jnp.int32)
  pad = (-n) % chunk
  xp = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
  out = jax.lax.map(lambda c: jnp.argmin(distances(c, centroids), axis=-1).astype(jnp.int32), xp)
  return out.reshape(-1)[:n]


def kmeans_plusplus(key: Array, x: Array, k: int) -> Array:
  """k-means++ seeding: the first centre uniform, then each with probability proportional to D(x)^2.

  Args:
    key: PRNG key.
    x: float[N, D].
    k: number of centres.

  Returns:
    float32[k, D], rows of x.
  """
  n = x.shape[0]
  x = x.astype(jnp.float32)
  k0, key = jax.random.split(key)
  first = jax.random.randint(k0, (), 0, n)
  centres = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
  d2 = jnp.sum(jnp.square(x - x[first]), axis=-1)

  def body(i, carry):
    centres, d2 = carry
    total = jnp.sum(d2)
    logits = jnp.where(total > 0, jnp.log(jnp.maximum(d2, 0.0)), 0.0)
    pick = jax.random.categorical(jax.random.fold_in(key, i), logits)
    c = x[pick]
    return centres.at[i].set(c), jnp.minimum(d2, jnp.sum(jnp.square(x - c), axis=-1))

  centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2))
  return centres


@functools.partial(jax.jit, static_argnames=("k", "iters", "chunk"))
def kmeans(
  key: Array, x: Array, k: int, iters: int = 25, *, chunk: int = 4096
) -> tuple[Array, Array]:
  """k-means (Lloyd) with k-means++ seeding, jit-compiled.

  A cluster left empty by an iteration keeps its previous centre. The assignment step works on
  ``chunk`` rows at a time, so memory is O(chunk * k), not O(N * k).

  Args:
    key: PRNG key of the seeding.
    x: float[N, D] points, N >= k.
    k: number of clusters (static).
    iters: Lloyd iterations (static).
    chunk: rows per assignment chunk (static).

  Returns:
    ``(centroids float32[k, D], assignment int32[N])``, the assignment to the returned centroids.
  """
  x = x.astype(jnp.float32)
  centres = kmeans_plusplus(key, x, k)

  def step(_, centres):
    assign = _assign(x, centres, chunk)
    sums = jax.ops.segment_sum(x, assign, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(x.shape[0], jnp.float32), assign, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)

  centres = jax.lax.fori_loop(0, iters, step, centres)
  return centres, _assign(x, centres, chunk)


def kmeans_init(key: Array, vectors: Array, num_codes: int, *, iters: int = 25) -> Array:
  """A codebook table from k-means over a sample of queries.

  Args:
    key: PRNG key.
    vectors: float[N, D] sample of queries (padding positions removed), N >= num_codes - 1.
    num_codes: C, the table size including the padding row 0.
    iters: Lloyd iterations.

  Returns:
    float32[C, D]: row 0 zeros, rows 1..C-1 the centroids of ``C - 1`` clusters.
  """
  centres, _ = kmeans(key, jnp.asarray(vectors, jnp.float32), num_codes - 1, iters)
  return jnp.concatenate([jnp.zeros((1, centres.shape[1]), jnp.float32), centres], axis=0)

"""Full-catalogue ranking metrics (SPEC section 3b), computed on device in tiles.

Every validation/test user ranks every item of the catalogue: item 0 (padding) never ranks, the
user's other interacted items (``seen``) are excluded, the target is never excluded (even when it
also occurs in ``seen``). With ``a`` the number of ranked items scoring strictly above the target
and ``t`` the number of other ranked items tied with it, the target's position is uniform on
``a+1 .. a+t+1`` (ties by expected value under a random order, as in `solid_jax.metrics`)::

  hr@k    = P(position <= k)                    = clip((k - a) / (t + 1), 0, 1)
  ndcg@k  = E[[position <= k] / log2(position + 1)]   (one relevant item: the ideal DCG is 1)
  rr      = E[1 / position]                     (MRR is its mean over users)

Coverage@10 is the share of the catalogue's real items (ids 1..N-1) that appear in some user's top
10, in expectation over the random order of ties: for user u and item i the chance of being in the
top 10 is 1 above the 10th score, 0 below it, and ``(10 - above) / tied`` for the items tied with
the 10th score; users order their ties independently, so item i is covered with probability
``1 - prod_u (1 - p_ui)``.

The rank statistics only need, per user, the counts ``a`` and ``t``; they are accumulated over
tiles of items, so no users x items matrix is ever held: `rank_counts` takes a function that
returns the scores of one item tile for a batch of users and runs three passes over the tiles
(target score; counts above/tied with the target and with the 10th score, running top 10;
coverage). `evaluate_full` is the array-level entry point over a given score matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

FULL_KS = (5, 10, 20, 50)
COVERAGE_K = 10
PER_USER_KEYS = ("above", "ties")


def full_metric_names(ks: Sequence[int] = FULL_KS) -> tuple[str, ...]:
  """Keys of `evaluate_full`'s result: ``hr@k, ndcg@k`` for each k, ``mrr``, ``coverage@10``."""
  names = []
  for k in ks:
    names += [f"hr@{k}", f"ndcg@{k}"]
  return tuple(names) + ("mrr", f"coverage@{COVERAGE_K}")


def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def per_user_metrics(above, ties, ks: Sequence[int] = FULL_KS) -> dict[str, jax.Array]:
  """Per-user HR@k, NDCG@k and reciprocal rank from the rank counts (expected over ties).

  Args:
    above: int[U], ranked items scoring strictly above the target.
    ties: int[U], other ranked items with exactly the target's score.
    ks: cut-offs.

  Returns:
    ``{"hr@k", "ndcg@k" for k in ks, "rr"}``, each float[U].
  """
  fdtype = _float_dtype()
  above = jnp.asarray(above, jnp.int32)
  ties = jnp.asarray(ties, jnp.int32)
  block = (ties + 1).astype(fdtype)
  max_k = max(ks)
  disc = np.concatenate(
    [[0.0], np.cumsum(1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64)))]
  )
  disc = jnp.asarray(disc, fdtype)
  out = {}
  for k in ks:
    out[f"hr@{k}"] = jnp.clip((k - above).astype(fdtype) / block, 0, 1)
    # Expected DCG of a position uniform on above+1 .. above+ties+1, cut at k.
    out[f"ndcg@{k}"] = (
      disc[jnp.minimum(above + ties + 1, k)] - disc[jnp.minimum(above, k)]
    ) / block
  a = above.astype(fdtype)
  # mean_{p=a+1}^{a+t+1} 1/p = (H(a+t+1) - H(a)) / (t+1) = (digamma(a+t+2) - digamma(a+1)) / (t+1).
  spread = (jax.scipy.special.digamma(a + block + 1) - jax.scipy.special.digamma(a + 1)) / block
  out["rr"] = jnp.where(ties == 0, 1.0 / (a + 1), spread)
  return out


def _mask_tile(scores, start, target, seen, num_items):
  """Scores of one tile of items ``start .. start+T-1`` with the unranked ones set to -inf."""
  u, t = scores.shape
  ids = start + jnp.arange(t, dtype=jnp.int32)
  scores = jnp.where((ids >= 1) & (ids < num_items), scores, -jnp.inf)
  col = seen - start
  drop = (seen == 0) | (seen == target[:, None]) | (col < 0) | (col >= t)
  col = jnp.where(drop, t, col)  # index t is out of bounds: dropped
  rows = jnp.broadcast_to(jnp.arange(u)[:, None], col.shape)
  return scores.at[rows, col].set(-jnp.inf, mode="drop")


def rank_counts(
  tile_scores: Callable[[jax.Array], jax.Array],
  num_tiles: int,
  tile: int,
  target: jax.Array,
  seen: jax.Array,
  num_items: int,
  user_mask: jax.Array,
  *,
  coverage_k: int = COVERAGE_K,
) -> dict[str, jax.Array]:
  """Rank counts of a batch of users over the whole catalogue, tile by tile (traceable).

  Args:
    tile_scores: ``i -> float[U, tile]``, the scores of items ``i*tile .. (i+1)*tile - 1`` for
      every user of the batch (items past the catalogue may hold anything: they are masked). It
      must return the same values every time it is called with the same ``i``.
    num_tiles: static number of tiles (``num_tiles * tile >= num_items``).
    tile: static tile width.
    target: int32[U] target item of every user (1..num_items-1).
    seen: int32[U, S] items to exclude (0-padded; entries equal to the target are ignored).
    num_items: static catalogue size incl. padding id 0.
    user_mask: bool[U], False for padding users (they add nothing to the coverage).
    coverage_k: the k of coverage.

  Returns:
    ``above`` int32[U], ``ties`` int32[U] and ``not_covered_log`` float[num_tiles * tile]: the sum
    over the batch's users of ``log(1 - p_ui)`` (``-inf`` where some user surely has the item in
    its top ``coverage_k``).
  """
  fdtype = _float_dtype()
  u = target.shape[0]
  target = target.astype(jnp.int32)
  seen = seen.astype(jnp.int32)
  tiles = jnp.arange(num_tiles, dtype=jnp.int32)

  def masked(i):
    start = i * tile
    return _mask_tile(tile_scores(i).astype(fdtype), start, target, seen, num_items), start

  # Pass 1: the target's own score (read from its tile, so that it equals the value compared
  # below bit for bit) and the running top-k scores.
  def pass1(carry, i):
    target_score, top = carry
    s, start = masked(i)
    col = target - start
    inside = (col >= 0) & (col < tile)
    got = jnp.take_along_axis(s, jnp.clip(col, 0, tile - 1)[:, None], axis=1)[:, 0]
    target_score = jnp.where(inside, got, target_score)
    kk = min(coverage_k, tile)
    top = jax.lax.top_k(jnp.concatenate([top, jax.lax.top_k(s, kk)[0]], axis=1), coverage_k)[0]
    return (target_score, top), None

  init = (jnp.full((u,), -jnp.inf, fdtype), jnp.full((u, coverage_k), -jnp.inf, fdtype))
  (target_score, top), _ = jax.lax.scan(pass1, init, tiles)
  kth = top[:, -1]

  # Pass 2: counts above / tied with the target and with the k-th score.
  def pass2(carry, i):
    above, equal, kth_above, kth_equal = carry
    s, _ = masked(i)
    ranked = s > -jnp.inf
    above += jnp.sum(s > target_score[:, None], axis=1, dtype=jnp.int32)
    equal += jnp.sum(s == target_score[:, None], axis=1, dtype=jnp.int32)
    kth_above += jnp.sum(ranked & (s > kth[:, None]), axis=1, dtype=jnp.int32)
    kth_equal += jnp.sum(ranked & (s == kth[:, None]), axis=1, dtype=jnp.int32)
    return (above, equal, kth_above, kth_equal), None

  zeros = jnp.zeros((u,), jnp.int32)
  (above, equal, kth_above, kth_equal), _ = jax.lax.scan(pass2, (zeros,) * 4, tiles)
  # The k-th score is -inf when fewer than k items rank: then every ranked item is in the top k.
  few = kth == -jnp.inf
  share = jnp.where(
    few, 0.0, (coverage_k - kth_above).astype(fdtype) / jnp.maximum(kth_equal, 1).astype(fdtype)
  )

  # Pass 3: log(1 - P(item in the user's top k)), summed over users.
  def pass3(_, i):
    s, _ = masked(i)
    ranked = s > -jnp.inf
    sure = ranked & (few[:, None] | (s > kth[:, None]))
    tied = ranked & ~few[:, None] & (s == kth[:, None])
    p = jnp.where(sure, 1.0, jnp.where(tied, share[:, None], 0.0))
    p = jnp.where(user_mask[:, None], p, 0.0)
    return None, jnp.sum(jnp.log1p(-p), axis=0)

  _, lognot = jax.lax.scan(pass3, None, tiles)
  return {"above": above, "ties": jnp.maximum(equal - 1, 0), "not_covered_log": lognot.reshape(-1)}


def summarize(
  above: np.ndarray,
  ties: np.ndarray,
  not_covered_log: np.ndarray,
  num_items: int,
  ks: Sequence[int] = FULL_KS,
) -> dict[str, float]:
  """The metrics of `full_metric_names(ks)` from per-user counts and the coverage accumulator.

  Args:
    above, ties: int[U] of the evaluated users (padding users removed).
    not_covered_log: float[>= num_items], summed over all users (`rank_counts`).
    num_items: catalogue size incl. padding.
    ks: cut-offs.

  Returns:
    Dict of Python floats (nan when there is no user).
  """
  per_user = jax.device_get(per_user_metrics(above, ties, ks))
  out = {}
  n = int(np.asarray(above).shape[0])
  for k in ks:
    for name in (f"hr@{k}", f"ndcg@{k}"):
      out[name] = float(np.mean(per_user[name])) if n else float("nan")
  out["mrr"] = float(np.mean(per_user["rr"])) if n else float("nan")
  lognot = np.asarray(not_covered_log, np.float64)[1:num_items]
  out[f"coverage@{COVERAGE_K}"] = float(np.mean(-np.expm1(lognot))) if n else float("nan")
  return out


def sampled_per_user(
  scores: np.ndarray, labels: np.ndarray, group: int, ks: Sequence[int] = (5, 10, 20)
) -> dict[str, np.ndarray]:
  """Per-user metrics of a grouped sampled split (one positive among ``group`` candidates).

  Args:
    scores: float[U * group], candidates of one user consecutive, in the split's order.
    labels: float[U * group], exactly one 1 per group.
    group: candidates per user.
    ks: cut-offs.

  Returns:
    ``auc`` (the user's AUC, ties count one half), ``hr@k``, ``ndcg@k``, ``rr``, ``above``,
    ``ties`` (negatives above / tied with the positive), each [U]; the means of ``auc``,
    ``ndcg@k`` and ``hr@k`` are `solid_jax.metrics.evaluate`'s UAUC, NDCG@k and HR@k.
  """
  s = np.asarray(scores, np.float32).reshape(-1, group)
  y = np.asarray(labels).reshape(-1, group) > 0.5
  if not np.all(y.sum(axis=1) == 1):
    raise ValueError("every group needs exactly one positive")
  pos = s[y]
  neg = s[~y].reshape(s.shape[0], group - 1)
  above = np.sum(neg > pos[:, None], axis=1)
  ties = np.sum(neg == pos[:, None], axis=1)
  out = {k: np.asarray(v) for k, v in jax.device_get(per_user_metrics(above, ties, ks)).items()}
  out["auc"] = (group - 1 - above - ties + 0.5 * ties) / max(group - 1, 1)
  out.update(above=above.astype(np.int32), ties=ties.astype(np.int32))
  return out


@functools.partial(jax.jit, static_argnames=("tile", "num_items"))
def _evaluate_matrix(scores, target, seen, *, tile, num_items):
  u, n = scores.shape
  num_tiles = -(-n // tile)
  padded = jnp.pad(scores, ((0, 0), (0, num_tiles * tile - n)), constant_values=-jnp.inf)

  def tile_scores(i):
    return jax.lax.dynamic_slice_in_dim(padded, i * tile, tile, axis=1)

  return rank_counts(tile_scores, num_tiles, tile, target, seen, num_items, jnp.ones((u,), bool))


def evaluate_full(
  scores,
  target,
  seen,
  *,
  ks: Sequence[int] = FULL_KS,
  tile: int = 4096,
  return_per_user: bool = False,
):
  """Full-catalogue HR@k, NDCG@k, MRR and Coverage@10 of a score matrix (see the module docstring).

  Args:
    scores: float[U, N] scores of every item for every user; column 0 is padding (never ranked).
      NaN scores give undefined results.
    target: int[U] target item of every user, in 1..N-1.
    seen: int[U, S] items to exclude from each user's ranking, 0-padded; an entry equal to the
      user's target is ignored (the target always ranks).
    ks: cut-offs of HR and NDCG.
    tile: items per tile of the on-device computation.
    return_per_user: also return the per-user metrics (``hr@k``, ``ndcg@k``, ``rr``) and counts.

  Returns:
    ``{"hr@k", "ndcg@k" for k in ks, "mrr", "coverage@10"}`` as Python floats; with
    ``return_per_user``, ``(metrics, per_user)`` where ``per_user`` holds numpy arrays [U].
  """
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating) or jnp.finfo(scores.dtype).bits < 32:
    scores = scores.astype(jnp.float32)
  target = np.asarray(target)
  seen = np.asarray(seen)
  if scores.ndim != 2 or target.ndim != 1 or seen.ndim != 2:
    raise ValueError(
      f"expected scores [U, N], target [U], seen [U, S]; got {scores.shape}, "
      f"{target.shape}, {seen.shape}"
    )
  u, n = scores.shape
  if target.shape[0] != u or seen.shape[0] != u:
    raise ValueError(
      f"user count mismatch: scores {u}, target {target.shape[0]}, seen {seen.shape[0]}"
    )
  if u and (target.min() < 1 or target.max() >= n):
    raise ValueError(f"targets must be item ids in 1..{n - 1}, got {target.min()}..{target.max()}")
  if seen.shape[1] == 0:
    seen = np.zeros((u, 1), np.int32)
  tile = int(max(1, min(tile, n)))
  counts = jax.device_get(
    _evaluate_matrix(scores, target.astype(np.int32), seen.astype(np.int32), tile=tile, num_items=n)
  )
  ks = tuple(int(k) for k in ks)
  metrics = summarize(counts["above"], counts["ties"], counts["not_covered_log"], n, ks)
  if not return_per_user:
    return metrics
  per_user = {
    k: np.asarray(v)
    for k, v in jax.device_get(per_user_metrics(counts["above"], counts["ties"], ks)).items()
  }
  per_user.update(above=np.asarray(counts["above"]), ties=np.asarray(counts["ties"]))
  return metrics, per_user


__all__ = [
  "COVERAGE_K",
  "FULL_KS",
  "evaluate_full",
  "full_metric_names",
  "per_user_metrics",
  "rank_counts",
  "sampled_per_user",
  "summarize",
]

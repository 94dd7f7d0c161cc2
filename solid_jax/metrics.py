"""Ranking and classification metrics of candidate lists, computed on device.

The evaluation protocol (SPEC section 3) scores, for every user, a list of candidates (one positive
and 99 sampled negatives) and reports::

  auc       AUC over all rows (Mann-Whitney; a tied positive-negative pair counts one half)
  uauc      unweighted mean of the per-user AUC over users having both labels (same tie rule)
  logloss   mean binary cross-entropy over all rows
  ndcg@k    NDCG@k per user, averaged over users with at least one positive
  hr@k      HR@k (a positive in the top k) per user, averaged over users with at least one positive

Ties in NDCG/HR are broken neither in the positive's favour nor against it: both metrics are the
exact expected value under a uniformly random order of the rows tied on score. For a positive with
``g`` rows strictly above it in its user's list and ``t`` other rows tied with it, its position is
uniform on ``g+1 .. g+t+1``, so its expected DCG contribution is
``1/(t+1) * sum_{p=g+1}^{g+t+1} [p <= k] / log2(p+1)``; the ideal DCG is
``sum_{i=1}^{min(k, #positives)} 1/log2(i+1)``. HR@k is the exact probability that at least one
positive lands in the top k: it is 1 when a positive's whole tie block lies in the top k; otherwise
only the block that straddles position k matters, and with ``s`` rows, ``P`` positives and ``m``
top-k slots in that block it is ``1 - C(s-P, m) / C(s, m)`` (``m / s`` for a single positive).

Everything is one jit-compiled function (`evaluate_jit`) built from two multi-operand sorts,
cumulative sums and segment reductions: no Python loop over users, no host round trip, rows in any
order. User ids are not remapped: after sorting by (user, score), the users are numbered by a
cumulative sum, so the number of segments is the (static) number of rows. Masked rows get a NaN sort
key, which places them below every valid row of their user, and they are counted nowhere. `evaluate`
pads the inputs to the next power of two (at least 1024) with masked rows, so evaluations of similar
sizes reuse one compiled program.

Precision: with the default float32, counts are int32 and the global AUC numerator (a sum of up to
``N**2`` pair counts) is accumulated exactly with int32 limbs, so its relative error is about 1e-7
at any size below 2**30 rows. Per-user pair counts are summed exactly for lists below a few thousand
rows. When ``jax_enable_x64`` is on, float64 is used for the floating-point parts.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (5, 10, 20)
_MIN_PADDED_SIZE = 1024
_INT32_MAX = 2**31 - 1
# Row status carried through the sorts.
_NEGATIVE, _POSITIVE, _MASKED = 0, 1, 2


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> tuple[str, ...]:
  """The keys of the dict returned by `evaluate`, in order."""
  names = ["auc", "uauc", "logloss"]
  for k in ks:
    names += [f"ndcg@{k}", f"hr@{k}"]
  return tuple(names)


def padded_size(n: int) -> int:
  """The bucket `evaluate` pads ``n`` rows to: the next power of two, at least 1024."""
  return max(_MIN_PADDED_SIZE, 1 << max(0, int(n) - 1).bit_length())


def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _segment_sum(x, ids, n):
  return jax.ops.segment_sum(x, ids, num_segments=n, indices_are_sorted=True)


def _starts(key):
  """bool[N]: True on row 0 and where ``key`` differs from the previous row (NaN always differs)."""
  return jnp.concatenate([jnp.ones(1, bool), key[1:] != key[:-1]])


def _first_index(starts):
  """int32[N]: index of the first row of each row's run (runs begin where ``starts`` is True)."""
  idx = jnp.arange(starts.shape[0], dtype=jnp.int32)
  return jax.lax.cummax(jnp.where(starts, idx, 0))


def _exact_int_sum(values, max_value, dtype):
  """Sum of non-negative int32 ``values`` (each <= ``max_value``), exact up to the final rounding.

  Each value is split into ``w``-bit limbs, with ``w`` chosen (statically) so that the int32 sum of
  one limb over all rows cannot overflow; the per-limb sums are exact and only their final
  combination is rounded.

  Args:
    values: int32[N], in ``[0, max_value]``.
    max_value: static Python int bound, at most ``2**31 - 1``.
    dtype: floating dtype of the result.

  Returns:
    Scalar of ``dtype``.
  """
  n = max(1, values.shape[0])
  width = 1
  while width < 31 and n * (2 ** (width + 1) - 1) <= _INT32_MAX:
    width += 1
  num_limbs = -(-max(1, int(max_value).bit_length()) // width)
  total = jnp.zeros((), dtype)
  for j in reversed(range(num_limbs)):
    limb = jnp.right_shift(values, width * j) & (2**width - 1)
    total = total + jnp.sum(limb, dtype=jnp.int32).astype(dtype) * (2.0 ** (width * j))
  return total


def _binary_cross_entropy(scores, positive, from_logits):
  """float[N] per-row BCE of logits (stable form) or probabilities (nothing clipped)."""
  y = positive.astype(scores.dtype)
  if from_logits:
    return jnp.maximum(scores, 0) - scores * y + jnp.log1p(jnp.exp(-jnp.abs(scores)))
  return -jnp.where(positive, jnp.log(scores), jnp.log1p(-scores))


def _global_auc(neg_scores, status, fdtype):
  """AUC over all valid rows. Returns a scalar (nan when one label is absent)."""
  n = neg_scores.shape[0]
  neg_scores, status = jax.lax.sort((neg_scores, status), num_keys=1, is_stable=False)
  pos = status == _POSITIVE
  neg = status == _NEGATIVE
  tie_starts = _starts(neg_scores)
  tie = jnp.cumsum(tie_starts, dtype=jnp.int32) - 1
  neg_i = neg.astype(jnp.int32)
  negs_before = jnp.cumsum(neg_i, dtype=jnp.int32) - neg_i
  tie_negs = _segment_sum(neg_i, tie, n)[tie]
  total_negs = jnp.sum(neg_i)
  # Rows sorted by descending score: the negatives strictly below the row's tie block.
  negs_below = total_negs - negs_before[_first_index(tie_starts)] - tie_negs
  # Twice the pairs won by each positive: 2 per negative strictly below, 1 per tied negative.
  twice_wins = jnp.where(pos, 2 * negs_below + tie_negs, 0)
  numerator = _exact_int_sum(twice_wins, 2 * n, fdtype)
  total_pos = jnp.sum(pos, dtype=jnp.int32)
  return numerator / (2 * total_pos.astype(fdtype) * total_negs.astype(fdtype))


def _discount_prefix(max_k, dtype):
  """float[max_k + 1]: D[m] = sum_{p=1}^{m} 1 / log2(p + 1)."""
  d = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64)))])
  return jnp.asarray(d, dtype)


def _per_user_metrics(neg_scores, status, users, ks, fdtype):
  """UAUC, NDCG@k and HR@k. Returns a dict of scalars."""
  n = neg_scores.shape[0]
  users, neg_scores, status = jax.lax.sort((users, neg_scores, status), num_keys=2, is_stable=False)
  pos = status == _POSITIVE
  neg = status == _NEGATIVE
  user_starts = _starts(users)
  tie_starts = user_starts | _starts(neg_scores)
  seg = jnp.cumsum(user_starts, dtype=jnp.int32) - 1
  tie = jnp.cumsum(tie_starts, dtype=jnp.int32) - 1
  user_first = _first_index(user_starts)
  tie_first = _first_index(tie_starts)

  pos_i = pos.astype(jnp.int32)
  neg_i = neg.astype(jnp.int32)
  above = tie_first - user_first  # the user's rows strictly above the tie block
  block = _segment_sum(jnp.ones(n, jnp.int32), tie, n)[tie]  # rows in the tie block (t + 1)
  block_pos = _segment_sum(pos_i, tie, n)[tie]
  block_negs = _segment_sum(neg_i, tie, n)[tie]
  user_pos = _segment_sum(pos_i, seg, n)
  user_negs = _segment_sum(neg_i, seg, n)
  has_pos = user_pos > 0

  # Per-user AUC: twice the pairs won by each positive (2 per negative below, 1 per tied negative).
  negs_before = jnp.cumsum(neg_i, dtype=jnp.int32) - neg_i
  negs_above = negs_before[tie_first] - negs_before[user_first]
  negs_below = user_negs[seg] - negs_above - block_negs
  twice_wins = jnp.where(pos, 2 * negs_below + block_negs, 0).astype(fdtype)
  user_wins = _segment_sum(twice_wins, seg, n)
  both = has_pos & (user_negs > 0)
  pairs = 2 * user_pos.astype(fdtype) * user_negs.astype(fdtype)
  user_auc = jnp.where(both, user_wins / jnp.where(both, pairs, 1), 0)
  out = {"uauc": jnp.sum(user_auc) / jnp.sum(both, dtype=fdtype)}

  max_k = max(ks)
  prefix = _discount_prefix(max_k, fdtype)
  num_users = jnp.sum(has_pos, dtype=fdtype)
  block_f = block.astype(fdtype)
  for k in ks:
    # NDCG@k: expected DCG of a positive uniform on positions above+1 .. above+block.
    gain = (prefix[jnp.minimum(above + block, k)] - prefix[jnp.minimum(above, k)]) / block_f
    dcg = _segment_sum(jnp.where(pos, gain, 0), seg, n)
    idcg = prefix[jnp.minimum(user_pos, k)]
    ndcg = jnp.where(has_pos, dcg / jnp.where(has_pos, idcg, 1), 0)
    # HR@k: 1 if some positive's tie block lies inside the top k; otherwise the chance that one of
    # the P positives of the block straddling position k takes one of its m top-k slots.
    slots = k - above
    inside = above + block <= k
    straddles = (above < k) & ~inside
    miss = jnp.ones(n, fdtype)
    for i in range(k):
      ratio = (block - block_pos - i).astype(fdtype) / jnp.maximum(block - i, 1).astype(fdtype)
      miss = miss * jnp.where(i < slots, jnp.maximum(ratio, 0), 1)
    hit = jnp.where(inside, 1, jnp.where(straddles, 1 - miss, 0))
    user_hit = jax.ops.segment_max(
      jnp.where(pos, hit, 0), seg, num_segments=n, indices_are_sorted=True
    )
    hr = jnp.where(has_pos, user_hit, 0)
    out[f"ndcg@{k}"] = jnp.sum(ndcg) / num_users
    out[f"hr@{k}"] = jnp.sum(hr) / num_users
  return out


@functools.partial(jax.jit, static_argnames=("ks", "from_logits"))
def evaluate_jit(
  scores: jax.Array,
  labels: jax.Array,
  user_ids: jax.Array,
  mask: jax.Array | None = None,
  *,
  ks: tuple[int, ...] = DEFAULT_KS,
  from_logits: bool = True,
) -> dict[str, jax.Array]:
  """All metrics of `metric_names(ks)` as device scalars, in one compiled program.

  For a training loop that already holds device arrays: no host round trip and no padding. The
  program is compiled once per input shape and dtype (and ``ks``, ``from_logits``); pad to a fixed
  size with ``mask`` to reuse it.

  Args:
    scores: float[N] logits (``from_logits=True``) or probabilities. Ties are taken in this dtype.
    labels: int/float/bool[N] in {0, 1}; rows with a label > 0.5 are positives.
    user_ids: int[N] user of each row, any integer values, rows in any order.
    mask: optional bool[N]; False rows are ignored entirely.
    ks: static tuple of cut-offs for NDCG and HR.
    from_logits: whether ``scores`` are logits (logloss from the stable logit form) or
      probabilities.

  Returns:
    Dict of scalar arrays keyed by `metric_names(ks)`. AUC is nan when all valid rows share one
    label, UAUC when no user has both labels, NDCG/HR when no user has a positive, everything when
    no row is valid.
  """
  fdtype = _float_dtype()
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating) or jnp.finfo(scores.dtype).bits < 32:
    scores = scores.astype(jnp.float32)
  labels = jnp.asarray(labels)
  positive = labels if labels.dtype == jnp.bool_ else (labels.astype(fdtype) > 0.5)
  n = scores.shape[0]
  valid = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
  status = jnp.where(valid, positive.astype(jnp.int32), _MASKED)
  # Ascending sort of -score = descending score. Masked rows get NaN, which sorts after every
  # number: they sit below all valid rows of whatever user they carry, and are counted nowhere.
  neg_scores = jnp.where(valid, -scores, jnp.nan)

  num_valid = jnp.sum(valid, dtype=fdtype)
  bce = _binary_cross_entropy(scores, positive, from_logits).astype(fdtype)
  out = {
    "auc": _global_auc(neg_scores, status, fdtype),
    "logloss": jnp.sum(jnp.where(valid, bce, 0)) / num_valid,
  }
  out.update(_per_user_metrics(neg_scores, status, jnp.asarray(user_ids), ks, fdtype))
  return {name: out[name].astype(fdtype) for name in metric_names(ks)}


def _host_user_ids(user_ids: np.ndarray) -> np.ndarray:
  """Integer user ids that fit the device integer type (remapped to 0..U-1 on the host if not)."""
  if not np.issubdtype(user_ids.dtype, np.integer):
    raise TypeError(f"user_ids must be integers, got dtype {user_ids.dtype}")
  if jax.config.jax_enable_x64 or user_ids.size == 0:
    return user_ids
  info = np.iinfo(np.int32)
  if user_ids.min() < info.min or user_ids.max() > info.max:
    user_ids = np.unique(user_ids, return_inverse=True)[1].reshape(-1)
  return user_ids.astype(np.int32)


def _pad(x, size, fill):
  pad = size - x.shape[0]
  if isinstance(x, jax.Array):
    return jnp.pad(x, (0, pad), constant_values=fill)
  return np.pad(x, (0, pad), constant_values=fill)


def evaluate(
  scores,
  labels,
  user_ids,
  *,
  ks: Sequence[int] = DEFAULT_KS,
  from_logits: bool = True,
) -> dict[str, float]:
  """Evaluates candidate lists: AUC, UAUC, logloss, NDCG@k and HR@k (see the module docstring).

  Inputs are padded to `padded_size(N)` with masked rows and handed to `evaluate_jit`, so repeated
  evaluations of similar sizes compile once. Jax inputs stay on device.

  Args:
    scores: float[N] model logits (numpy or jax). With ``from_logits=False``, probabilities in
      [0, 1] (logloss is then ``-log p`` / ``-log(1-p)`` with nothing clipped, so it may be inf).
      Scores are converted to float32 unless jax x64 is enabled, and ties are taken in that
      precision. NaN scores give undefined results.
    labels: int/float/bool[N] in {0, 1}.
    user_ids: int[N] user of each row; rows may be in any order (not grouped, not sorted).
    ks: cut-offs for NDCG and HR.
    from_logits: whether ``scores`` are logits (the default) or probabilities.

  Returns:
    Dict with exactly the keys ``auc, uauc, logloss`` and ``ndcg@k, hr@k`` for each k, as Python
    floats. AUC is nan when all labels are equal; UAUC is nan when no user has both labels; NDCG/HR
    are nan when no user has a positive.
  """
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be positive integers, got {ks}")
  arrays = []
  for x in (scores, labels, user_ids):
    arrays.append(x if isinstance(x, jax.Array) else np.asarray(x))
  scores, labels, user_ids = arrays
  if not (scores.ndim == labels.ndim == user_ids.ndim == 1):
    raise ValueError("scores, labels and user_ids must be 1-D")
  n = scores.shape[0]
  if labels.shape[0] != n or user_ids.shape[0] != n:
    raise ValueError(
      f"length mismatch: scores {n}, labels {labels.shape[0]}, user_ids {user_ids.shape[0]}"
    )
  # Host inputs get one dtype each, so that they share compiled programs.
  if not isinstance(scores, jax.Array):
    keep64 = jax.config.jax_enable_x64 and scores.dtype == np.float64
    scores = scores.astype(np.float64 if keep64 else np.float32)
  if not isinstance(labels, jax.Array):
    labels = labels.astype(np.float32)
  if not isinstance(user_ids, jax.Array):
    user_ids = _host_user_ids(user_ids)
  size = padded_size(n)
  mask = np.arange(size) < n
  result = evaluate_jit(
    _pad(scores, size, 0),
    _pad(labels, size, 0),
    _pad(user_ids, size, 0),
    mask,
    ks=ks,
    from_logits=from_logits,
  )
  result = jax.device_get(result)
  return {name: float(result[name]) for name in metric_names(ks)}


# Full-catalogue ranking (SPEC section 3b) lives in its own module; the array API is exported here.
from solid_jax.ranking import FULL_KS, evaluate_full, full_metric_names  # noqa: E402

__all__ = [
  "DEFAULT_KS",
  "FULL_KS",
  "evaluate",
  "evaluate_full",
  "evaluate_jit",
  "full_metric_names",
  "metric_names",
  "padded_size",
]

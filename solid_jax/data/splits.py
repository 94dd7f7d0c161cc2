"""Leave-last-out splits with sampled negatives (SPEC section 3).

For a user with chronologically sorted events e_0..e_{n-1} (users with n < 3 are dropped and
counted in the log):

- test: target e_{n-1}, history = the <= seq_len items before it (so it includes e_{n-2});
- valid: target e_{n-2}, history = the <= seq_len items before it;
- train: targets e_1..e_{n-3} (n-3 positives), each with the <= seq_len previous items.

Histories run oldest to newest and are right-padded with zeros (`items[b, :n]` real,
`items[b, n:] == 0`). Every positive row is followed by its negatives, which share its user and
history: `train_negatives` per training positive (resampled every epoch) and `eval_negatives` per
validation/test positive (fixed by the seed). Negatives are drawn uniformly from the items the user
never interacted with (in any split), without replacement within one positive's list.

Randomness: `np.random.default_rng([seed, stream, ...])` with a separate stream per use, so the
rows of every split are a pure function of (data, seed) and training rows of (data, seed, epoch).
"""

from __future__ import annotations

from typing import Any

from absl import logging
import numpy as np

from solid_jax.data.dataset import Dataset
from solid_jax.data.errors import DataError

ROW_KEYS = ("user", "items", "semantics", "target", "target_semantic", "label")
_STREAM_TRAIN, _STREAM_VALID, _STREAM_TEST, _STREAM_POSITIONS, _STREAM_CLOZE = 1, 2, 3, 4, 5
_STREAM_FULL_SAMPLE = 6
_MAX_REJECTION_ROUNDS = 64


def seen_items(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """CSR of every user's distinct interacted items.

  Args:
    ds: the Dataset.

  Returns:
    (offsets int64[num_users + 1], items int32[total]): user u's distinct items, sorted, are
    `items[offsets[u]:offsets[u + 1]]`.
  """
  users = np.repeat(np.arange(ds.num_users, dtype=np.int64), ds.seq_lengths)
  keys = np.unique(users * ds.num_items + ds.seq_items)
  counts = np.bincount(keys // ds.num_items, minlength=ds.num_users)
  return (
    np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    (keys % ds.num_items).astype(np.int32),
  )


def sample_negatives(
  rng: np.random.Generator,
  users: np.ndarray,
  k: int,
  seen_offsets: np.ndarray,
  seen: np.ndarray,
  num_items: int,
) -> np.ndarray:
  """Uniform negatives, without replacement per row, among the items each user never saw.

  Rejection sampling, vectorised: draw all, redraw the entries that hit a seen item or repeat an
  earlier entry of their row, until none is left (rows of users who saw most items finish with an
  exact draw from their unseen items).

  Args:
    rng: the generator (consumed deterministically).
    users: int[P], internal user id of every row.
    k: negatives per row.
    seen_offsets: int64[num_users + 1], seen: int32[...]: from `seen_items`.
    num_items: vocabulary size incl. padding (candidates are 1..num_items-1).

  Returns:
    int32[P, k].

  Raises:
    DataError: a user has fewer than k unseen items.
  """
  users = np.asarray(users, np.int64)
  out = np.zeros((users.size, k), np.int64)
  if k == 0 or users.size == 0:
    return out.astype(np.int32)
  counts = np.diff(seen_offsets)
  available = (num_items - 1) - counts[users]
  if (available < k).any():
    bad = int(users[np.flatnonzero(available < k)[0]])
    raise DataError(
      f"user {bad} has only {int((num_items - 1) - counts[bad])} items never "
      f"interacted with, fewer than the {k} negatives asked for"
    )
  seen_keys = np.repeat(np.arange(counts.size, dtype=np.int64), counts) * num_items + seen
  rows = np.arange(users.size)
  out[:] = rng.integers(1, num_items, size=(users.size, k))
  for _ in range(_MAX_REJECTION_ROUNDS):
    bad = _invalid(out[rows], users[rows], seen_keys, num_items)
    if not bad.any():
      rows = rows[:0]
      break
    keep_rows = bad.any(axis=1)
    rows, bad = rows[keep_rows], bad[keep_rows]
    block = out[rows]
    block[bad] = rng.integers(1, num_items, size=int(bad.sum()))
    out[rows] = block
  for r in rows.tolist():  # Users who saw almost everything: exact draw.
    u = users[r]
    unseen = np.setdiff1d(np.arange(1, num_items), seen[seen_offsets[u] : seen_offsets[u + 1]])
    out[r] = rng.choice(unseen, size=k, replace=False)
  return out.astype(np.int32)


def _invalid(
  cand: np.ndarray, users: np.ndarray, seen_keys: np.ndarray, num_items: int
) -> np.ndarray:
  """bool[R, k]: seen by the row's user, or equal to an earlier entry of the same row."""
  keys = users[:, None] * num_items + cand
  pos = np.minimum(np.searchsorted(seen_keys, keys), seen_keys.size - 1)
  hit = seen_keys[pos] == keys if seen_keys.size else np.zeros(keys.shape, bool)
  order = np.argsort(cand, axis=1, kind="stable")
  sorted_cand = np.take_along_axis(cand, order, axis=1)
  dup_sorted = np.zeros(cand.shape, bool)
  dup_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
  dup = np.zeros(cand.shape, bool)
  np.put_along_axis(dup, order, dup_sorted, axis=1)
  return hit | dup


def histories(ds: Dataset, positions: np.ndarray, users: np.ndarray, seq_len: int) -> np.ndarray:
  """History windows of events.

  Args:
    ds: the Dataset.
    positions: int64[P], global indices into ds.seq_items of the target events.
    users: int[P], the owner of every position.
    seq_len: L.

  Returns:
    int32[P, L]: the <= L items before each target, oldest first, right-padded with 0.
  """
  start = ds.seq_offsets[np.asarray(users, np.int64)]
  n = np.minimum(seq_len, positions - start)
  cols = np.arange(seq_len)[None, :]
  idx = positions[:, None] - n[:, None] + cols
  valid = cols < n[:, None]
  return np.where(valid, ds.seq_items[np.where(valid, idx, 0)], 0).astype(np.int32)


def _rows(
  ds: Dataset, users: np.ndarray, hist: np.ndarray, target: np.ndarray, negatives: np.ndarray
) -> dict[str, np.ndarray]:
  """Positive rows followed by their negatives: P * (1 + k) rows."""
  k = negatives.shape[1]
  per = 1 + k
  candidates = np.concatenate([target[:, None], negatives], axis=1).reshape(-1).astype(np.int32)
  items = np.repeat(hist, per, axis=0)
  label = np.tile(np.concatenate([[1.0], np.zeros(k)]).astype(np.float32), target.size)
  return {
    "user": np.repeat(users, per).astype(np.int32),
    "items": items,
    "semantics": ds.item_semantic[items],
    "target": candidates,
    "target_semantic": ds.item_semantic[candidates],
    "label": label,
  }


def make_splits(
  ds: Dataset, seq_len: int = 10, train_negatives: int = 4, eval_negatives: int = 99, seed: int = 0
) -> dict[str, Any]:
  """Builds train (epoch 0), valid and test rows, SPEC section 3.

  Args:
    ds: the Dataset.
    seq_len: L, history length.
    train_negatives: negatives per training positive (resampled per epoch by `resample_train`).
    eval_negatives: negatives per validation/test positive (fixed by the seed).
    seed: the seed of every random draw.

  Returns:
    dict with "train", "valid", "test": dicts of numpy arrays with N rows: user int32[N],
    items int32[N, L], semantics int32[N, L], target int32[N], target_semantic int32[N],
    label float32[N] (each positive row followed by its negatives); and "meta": counts, the
    options, the dataset fingerprint, `train_positions` int64[P] (global event index of every
    training target) and the seen-item CSR `seen_offsets` int64[num_users + 1] / `seen_items`.
  """
  if seq_len < 1 or train_negatives < 0 or eval_negatives < 0:
    raise DataError(
      f"need seq_len >= 1 and non-negative negatives, got seq_len={seq_len}, "
      f"train_negatives={train_negatives}, eval_negatives={eval_negatives}"
    )
  lengths = ds.seq_lengths
  real_users = np.arange(1, ds.num_users)
  kept = real_users[lengths[1:] >= 3]
  dropped = int(real_users.size - kept.size)
  if dropped:
    logging.info(
      "make_splits(%s): dropped %d of %d users with fewer than 3 events",
      ds.name,
      dropped,
      real_users.size,
    )
  if kept.size == 0:
    raise DataError(f"data set {ds.name!r} has no user with at least 3 events")
  start, n = ds.seq_offsets[kept], lengths[kept]
  train_counts = n - 3
  total = int(train_counts.sum())
  first = np.repeat(start + 1, train_counts)
  train_positions = first + (
    np.arange(total) - np.repeat(np.cumsum(train_counts) - train_counts, train_counts)
  )
  seen_offsets, seen = seen_items(ds)
  meta = {
    "dataset": ds.name,
    "fingerprint": ds.fingerprint,
    "seed": int(seed),
    "seq_len": int(seq_len),
    "train_negatives": int(train_negatives),
    "eval_negatives": int(eval_negatives),
    "num_users": int(kept.size),
    "dropped_users": dropped,
    "num_items": ds.num_items,
    "num_semantics": ds.num_semantics,
    "train_positives": total,
    "valid_positives": int(kept.size),
    "test_positives": int(kept.size),
    "train_rows": total * (1 + train_negatives),
    "valid_rows": int(kept.size) * (1 + eval_negatives),
    "test_rows": int(kept.size) * (1 + eval_negatives),
    "train_positions": train_positions.astype(np.int64),
    "seen_offsets": seen_offsets,
    "seen_items": seen,
  }
  out: dict[str, Any] = {"meta": meta}
  for name, offset, stream in (("valid", 2, _STREAM_VALID), ("test", 1, _STREAM_TEST)):
    positions = start + n - offset
    rng = np.random.default_rng([seed, stream])
    negatives = sample_negatives(rng, kept, eval_negatives, seen_offsets, seen, ds.num_items)
    out[name] = _rows(
      ds, kept, histories(ds, positions, kept, seq_len), ds.seq_items[positions], negatives
    )
  out["train"] = resample_train(ds, out, 0)
  return out


def _stream_entropy(seed: int, purpose: int, stream: int | None, epoch: int) -> list[int]:
  """The entropy of a numpy generator: (seed, purpose[, stream], epoch)."""
  parts = [int(seed), purpose] + ([] if stream is None else [int(stream)])
  return parts + [int(epoch)]


def resample_train(
  ds: Dataset, splits: dict[str, Any], epoch: int, *, stream: int | None = None
) -> dict[str, np.ndarray]:
  """Training rows of `epoch`: the fixed positives with fresh negatives.

  A pure function of (data, splits["meta"]["seed"], stream, epoch); without a ``stream``, epoch 0
  equals splits["train"].

  Args:
    ds: the Dataset the splits were made from.
    splits: output of `make_splits` (only "meta" is read).
    epoch: epoch number (>= 0).
    stream: a non-negative integer naming a random stream of its own (e.g. one per training
      stage, `solid_jax.train.streams`): its negatives share nothing with those of another
      stream, epoch 0 included. None: the splits' own stream.

  Returns:
    dict of numpy arrays as splits["train"] (P * (1 + train_negatives) rows).
  """
  meta = splits["meta"]
  if meta["fingerprint"] != ds.fingerprint or meta["num_items"] != ds.num_items:
    raise DataError(
      f"these splits were made from another data set ({meta['dataset']}, "
      f"fingerprint {meta['fingerprint'][:12]}), not {ds.name}"
    )
  positions = meta["train_positions"]
  users = np.searchsorted(ds.seq_offsets, positions, side="right") - 1
  rng = np.random.default_rng(_stream_entropy(meta["seed"], _STREAM_TRAIN, stream, epoch))
  negatives = sample_negatives(
    rng, users, meta["train_negatives"], meta["seen_offsets"], meta["seen_items"], ds.num_items
  )
  return _rows(
    ds, users, histories(ds, positions, users, meta["seq_len"]), ds.seq_items[positions], negatives
  )


def position_rows(
  ds: Dataset,
  splits: dict[str, Any],
  epoch: int,
  *,
  negatives: int | None = None,
  stream: int | None = None,
) -> dict[str, np.ndarray]:
  """Training rows of `epoch` for training on every position (SASRec's next-item objective).

  One row per user with at least one training target: the input is the user's last
  ``seq_len`` training events that have a successor in the training part (``e_0 .. e_{n-4}``,
  the oldest dropped first), right-padded with 0; position t predicts the event after it (the
  targets ``e_1 .. e_{n-3}`` of `make_splits`, so the validation and test items are never
  trained on). Every position carries its positive followed by ``negatives`` uniform negatives
  from the items the user never interacted with (as `resample_train`, a pure function of
  (seed, epoch), from its own random stream).

  Args:
    ds: the Dataset the splits were made from.
    splits: output of `make_splits` (only "meta" is read).
    epoch: epoch number.
    negatives: negatives per position (default: the splits' ``train_negatives``).
    stream: a random stream of its own, as `resample_train`'s.

  Returns:
    ``user`` int32[N], ``items`` / ``semantics`` int32[N, L], ``target`` / ``target_semantic``
    int32[N, L, 1 + k] (0 at padding positions), ``label`` float32[N, L, 1 + k] (1 for the
    positive of a real position, else 0).
  """
  meta = splits["meta"]
  if meta["fingerprint"] != ds.fingerprint or meta["num_items"] != ds.num_items:
    raise DataError(
      f"these splits were made from another data set ({meta['dataset']}, "
      f"fingerprint {meta['fingerprint'][:12]}), not {ds.name}"
    )
  k = meta["train_negatives"] if negatives is None else int(negatives)
  length = meta["seq_len"]
  positions = meta["train_positions"]
  users = np.searchsorted(ds.seq_offsets, positions, side="right") - 1
  row_users, first, counts = np.unique(users, return_index=True, return_counts=True)
  index_in_user = np.arange(positions.size) - np.repeat(first, counts)
  count = np.repeat(counts, counts)
  keep = index_in_user >= count - length  # the last L targets of every user
  row = np.repeat(np.arange(row_users.size), counts)[keep]
  col = (index_in_user - np.maximum(count - length, 0))[keep]
  pos, pos_users = positions[keep], users[keep]
  rng = np.random.default_rng(_stream_entropy(meta["seed"], _STREAM_POSITIONS, stream, epoch))
  negs = sample_negatives(rng, pos_users, k, meta["seen_offsets"], meta["seen_items"], ds.num_items)
  n = row_users.size
  items = np.zeros((n, length), np.int32)
  items[row, col] = ds.seq_items[pos - 1]
  target = np.zeros((n, length, 1 + k), np.int32)
  target[row, col] = np.concatenate([ds.seq_items[pos][:, None], negs], axis=1)
  label = np.zeros((n, length, 1 + k), np.float32)
  label[row, col, 0] = 1.0
  return {
    "user": row_users.astype(np.int32),
    "items": items,
    "semantics": ds.item_semantic[items],
    "target": target,
    "target_semantic": ds.item_semantic[target],
    "label": label,
  }


def cloze_rows(
  ds: Dataset,
  splits: dict[str, Any],
  epoch: int,
  *,
  mask_rate: float,
  negatives: int | None = None,
  stream: int | None = None,
) -> dict[str, np.ndarray]:
  """Training rows of `epoch` for the cloze (masked item) objective of BERT4Rec.

  One row per user with a training target: the user's last ``seq_len`` training events
  (``e_0 .. e_{n-3}``; the validation and test items are never seen), right-padded with 0. Every
  real position is masked with probability ``mask_rate`` (at least one per row): its item is
  replaced by the ``[MASK]`` id ``ds.num_items`` and it gets candidates, the masked item followed
  by ``negatives`` uniform negatives the user never interacted with; the other positions have
  none (0). A pure function of (seed, epoch), from its own random stream.

  Args:
    ds: the Dataset the splits were made from.
    splits: output of `make_splits` (only "meta" is read).
    epoch: epoch number.
    mask_rate: probability that a position is masked, in (0, 1].
    negatives: negatives per masked position (default: the splits' ``train_negatives``).
    stream: a random stream of its own, as `resample_train`'s.

  Returns:
    ``user`` int32[N], ``items`` int32[N, L] (masked), ``semantics`` int32[N, L] (0 at masked
    positions: the [MASK] has no semantic id), ``target`` / ``target_semantic`` int32[N, L, 1 + k]
    (0 where a position is not masked), ``label`` float32[N, L, 1 + k] (1 for the masked item).
  """
  meta = splits["meta"]
  if meta["fingerprint"] != ds.fingerprint or meta["num_items"] != ds.num_items:
    raise DataError(
      f"these splits were made from another data set ({meta['dataset']}, "
      f"fingerprint {meta['fingerprint'][:12]}), not {ds.name}"
    )
  if not 0.0 < mask_rate <= 1.0:
    raise ValueError(f"cloze_rows: mask_rate={mask_rate} must be in (0, 1]")
  k = meta["train_negatives"] if negatives is None else int(negatives)
  length = meta["seq_len"]
  positions = meta["train_positions"]
  users = np.searchsorted(ds.seq_offsets, positions, side="right") - 1
  row_users, first, counts = np.unique(users, return_index=True, return_counts=True)
  last = positions[first + counts - 1]  # e_{n-3}, the newest training event
  start = np.maximum(ds.seq_offsets[row_users], last - length + 1)
  lengths = last - start + 1
  n = row_users.size
  row = np.repeat(np.arange(n), lengths)
  col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  original = ds.seq_items[np.repeat(start, lengths) + col]
  rng = np.random.default_rng(_stream_entropy(meta["seed"], _STREAM_CLOZE, stream, epoch))
  masked = rng.random(original.size) < mask_rate
  # Rows where nothing was drawn get one masked position, chosen uniformly.
  none = np.flatnonzero(np.bincount(row, weights=masked, minlength=n) == 0)
  pick = (np.cumsum(lengths) - lengths)[none] + rng.integers(0, lengths[none])
  masked[pick] = True
  token_users = row_users[row]
  negs = sample_negatives(
    rng, token_users[masked], k, meta["seen_offsets"], meta["seen_items"], ds.num_items
  )
  items = np.zeros((n, length), np.int32)
  items[row, col] = np.where(masked, ds.num_items, original)
  semantics = np.zeros((n, length), np.int32)
  semantics[row, col] = np.where(masked, 0, ds.item_semantic[original])
  target = np.zeros((n, length, 1 + k), np.int32)
  target[row[masked], col[masked]] = np.concatenate([original[masked][:, None], negs], axis=1)
  label = np.zeros((n, length, 1 + k), np.float32)
  label[row[masked], col[masked], 0] = 1.0
  return {
    "user": row_users.astype(np.int32),
    "items": items,
    "semantics": semantics,
    "target": target,
    "target_semantic": ds.item_semantic[target],
    "label": label,
  }


def full_ranking_users(
  ds: Dataset, splits: dict[str, Any], split: str, *, sample: int = 0
) -> dict[str, np.ndarray]:
  """The users of a split for full-catalogue ranking (SPEC section 3b), one row per user.

  Args:
    ds: the Dataset.
    splits: output of `make_splits`.
    split: "valid" or "test".
    sample: > 0: a fixed random sample of this many users (all when the split has fewer), in
      the split's user order, drawn from ``splits["meta"]["seed"]`` on a stream of its own, so
      valid and test sample the same users; 0: every user. Memory and time are then those of the
      sample (``seen`` is as wide as the longest history among the sampled users).

  Returns:
    ``user`` int32[U], ``items`` / ``semantics`` int32[U, L] (the history, as in the sampled
    split), ``target`` / ``target_semantic`` int32[U] and ``seen`` int32[U, S]: every item the
    user interacted with before the target (training events; for test also the validation item),
    0-padded, to be excluded from the ranking (the target itself stays ranked even when it
    occurs there).
  """
  if split not in ("valid", "test"):
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
  rows = splits[split]
  group = 1 + splits["meta"]["eval_negatives"]
  index = np.arange(0, len(rows["user"]), group)
  if 0 < sample < index.size:
    rng = np.random.default_rng([splits["meta"]["seed"], _STREAM_FULL_SAMPLE])
    index = index[np.sort(rng.choice(index.size, sample, replace=False))]
  elif sample < 0:
    raise ValueError(f"sample must be >= 0, got {sample}")
  users = np.asarray(rows["user"])[index]
  start, n = ds.seq_offsets[users], ds.seq_lengths[users]
  before = n - (2 if split == "valid" else 1)  # events before the target
  width = max(1, int(before.max())) if users.size else 1
  cols = np.arange(width)[None, :]
  valid = cols < before[:, None]
  seen = np.where(valid, ds.seq_items[np.where(valid, start[:, None] + cols, 0)], 0)
  return {
    "user": users.astype(np.int32),
    "items": np.asarray(rows["items"])[index],
    "semantics": np.asarray(rows["semantics"])[index],
    "target": np.asarray(rows["target"])[index],
    "target_semantic": np.asarray(rows["target_semantic"])[index],
    "seen": seen.astype(np.int32),
  }

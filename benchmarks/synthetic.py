"""Synthetic but realistic batches for throughput measurements.

A synthetic batch has the layout of a training split (SPEC section 4) and the statistics that matter
for speed:

- item popularity follows a Zipf law over the catalogue, p(rank r) ∝ r^-s (s = 1 by default, the
  classic value for e-commerce catalogues; a fit of ml-100k's rank-frequency curve gives s ≈ 0.8
  over its top 1,000 items, and the exponent is a parameter). Which item holds which rank is a fixed
  random permutation;
- history lengths follow the empirical distribution of ml-100k's training rows under the SPEC
  section 3 protocol, min(n, 10): every user contributes one row of each length 1..9 and all its
  later rows have a full window, so 91% of the rows are full (`ML100K_HISTORY_LENGTH_COUNTS`,
  checked against the data by `tests/bench/synthetic_test.py`);
- rows come in groups of ``1 + negatives`` sharing one history, the first a positive (drawn from the
  Zipf law), the others negatives drawn uniformly from the catalogue (as the protocol samples them);
- semantic ids come from a fixed random item -> semantic table (padding 0 -> 0).

Everything is a pure function of the seed; batches are NumPy arrays (the benchmark places them on
the device explicitly before timing).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Number of ml-100k training rows (SPEC section 3 protocol, with a validation split) whose history
# has length n = 1..10 (index n - 1): 943 users, each with >= 20 events.
ML100K_HISTORY_LENGTH_COUNTS = (943, 943, 943, 943, 943, 943, 943, 943, 943, 88684)


def history_length_probs(seq_len: int, counts=ML100K_HISTORY_LENGTH_COUNTS) -> np.ndarray:
  """Probability of each history length 1..seq_len.

  Args:
    seq_len: L, the history window.
    counts: row counts per history length 1..len(counts); lengths above ``seq_len`` are folded into
      ``seq_len`` (min(n, L)); lengths missing for a longer window get no mass.

  Returns:
    float64[seq_len], sums to 1.
  """
  probs = np.zeros(seq_len, np.float64)
  for n, c in enumerate(counts, start=1):
    probs[min(n, seq_len) - 1] += c
  return probs / probs.sum()


@dataclasses.dataclass(frozen=True)
class SyntheticCatalog:
  """A fixed synthetic catalogue: item popularity and the item -> semantic table.

  Attributes:
    num_items: vocabulary size including padding 0.
    num_semantics: semantic vocabulary size including padding 0.
    seq_len: L.
    item_cdf: float64[num_items - 1], cumulative Zipf popularity of items 1..num_items-1.
    item_semantic: int32[num_items], semantic id of each item (0 for padding).
    length_probs: float64[seq_len], history-length distribution.
  """

  num_items: int
  num_semantics: int
  seq_len: int
  item_cdf: np.ndarray
  item_semantic: np.ndarray
  length_probs: np.ndarray


def make_catalog(
  num_items: int,
  num_semantics: int,
  seq_len: int = 10,
  *,
  zipf_exponent: float = 1.0,
  seed: int = 0,
  length_counts=ML100K_HISTORY_LENGTH_COUNTS,
) -> SyntheticCatalog:
  """Builds a catalogue with Zipf popularity and a random item -> semantic table.

  Args:
    num_items: vocabulary size including padding 0 (>= 2).
    num_semantics: semantic vocabulary size including padding 0 (>= 2).
    seq_len: L.
    zipf_exponent: s of p(rank r) ∝ r^-s.
    seed: seed of the rank permutation and of the semantic table.
    length_counts: history-length counts (see `history_length_probs`).

  Returns:
    A `SyntheticCatalog`.
  """
  if num_items < 2 or num_semantics < 2:
    raise ValueError(
      f"need num_items >= 2 and num_semantics >= 2, got {num_items}, {num_semantics}"
    )
  rng = np.random.default_rng(seed)
  n = num_items - 1
  by_rank = np.arange(1, n + 1, dtype=np.float64) ** -zipf_exponent
  weights = np.empty(n, np.float64)
  # Item i + 1 gets the popularity of a random rank.
  weights[rng.permutation(n)] = by_rank
  cdf = np.cumsum(weights)
  cdf /= cdf[-1]
  item_semantic = np.zeros(num_items, np.int32)
  item_semantic[1:] = rng.integers(1, num_semantics, size=n, dtype=np.int32)
  return SyntheticCatalog(
    num_items,
    num_semantics,
    seq_len,
    cdf,
    item_semantic,
    history_length_probs(seq_len, length_counts),
  )


def _zipf_items(catalog: SyntheticCatalog, rng: np.random.Generator, shape) -> np.ndarray:
  idx = np.searchsorted(catalog.item_cdf, rng.random(shape), side="right")
  return (np.minimum(idx, catalog.num_items - 2) + 1).astype(np.int32)


def make_batch(
  catalog: SyntheticCatalog, batch_size: int, seed: int, *, negatives: int = 4
) -> dict:
  """One synthetic training batch, laid out like the training split.

  Rows come in groups of ``negatives + 1`` consecutive rows that share a user and a history, the
  first row of a group being the positive (as ``sj.data`` lays out training rows; the training
  loop's grouped step encodes each history once). A trailing partial group keeps the layout.

  Args:
    catalog: from `make_catalog`.
    batch_size: B rows.
    seed: the batch is a pure function of (catalog, batch_size, seed, negatives).
    negatives: negatives per positive.

  Returns:
    A dict of NumPy arrays: "user" int32[B], "items" int32[B, L], "semantics" int32[B, L] (item rows
    oldest to newest, zero-padded after the history length), "target" int32[B], "target_semantic"
    int32[B], "label" float32[B], "weight" float32[B] (all ones).
  """
  rng = np.random.default_rng(seed)
  group = negatives + 1
  length = catalog.seq_len
  num_groups = -(-batch_size // group)
  lengths = rng.choice(np.arange(1, length + 1), size=num_groups, p=catalog.length_probs)
  items = _zipf_items(catalog, rng, (num_groups, length))
  items = np.where(np.arange(length)[None, :] < lengths[:, None], items, 0).astype(np.int32)
  items = np.repeat(items, group, axis=0)[:batch_size]
  label = (np.arange(batch_size) % group == 0).astype(np.float32)
  positives = _zipf_items(catalog, rng, (batch_size,))
  uniform = rng.integers(1, catalog.num_items, size=batch_size, dtype=np.int32)
  target = np.where(label > 0, positives, uniform).astype(np.int32)
  return {
    "user": (np.arange(batch_size, dtype=np.int32) // group) + 1,
    "items": items,
    "semantics": catalog.item_semantic[items],
    "target": target,
    "target_semantic": catalog.item_semantic[target],
    "label": label,
    "weight": np.ones(batch_size, np.float32),
  }


def make_batches(
  catalog: SyntheticCatalog, batch_size: int, count: int, *, seed: int = 0, negatives: int = 4
) -> list[dict]:
  """``count`` distinct batches (seeds ``seed .. seed + count - 1``), see `make_batch`."""
  return [make_batch(catalog, batch_size, seed + i, negatives=negatives) for i in range(count)]

"""Sequence packing: the position rows of a batch laid end to end in fewer rows of length L.

Training on every position (``position_rows``) pads each user's history to L = ``seq_len``; on
the Amazon data most histories hold a handful of items (Beauty: 5.7 of 50 slots on average), so
nine tenths of the work of an unpacked batch is padding. ``pack_rows`` places the users of one
batch side by side in rows of L slots (first-fit decreasing), each user a contiguous *segment*
that keeps its own position ids; a model given ``segment`` attends only within a segment, so every
real position sees exactly what it sees unpacked, and the batch's loss (a mean over its real
positions) is the same. The batch is still the same random set of users: only its layout
changes. Dropout masks are drawn over the packed layout, so a packed run is a different (equally
distributed) random stream from an unpacked one.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from solid_jax.data.pipeline import batches as _batches

# Row counts of packed batches are rounded up to a multiple of this, so that an epoch compiles the
# training step for a handful of shapes only.
ROW_MULTIPLE = 8


def pack_rows(
  batch: Mapping[str, np.ndarray], *, row_multiple: int = ROW_MULTIPLE
) -> dict[str, np.ndarray]:
  """Packs one batch of right-padded position rows into as few rows as first-fit decreasing finds.

  Args:
    batch: ``items`` int[B, L] (right-padded with 0), every other per-position array with leading
      shape [B, L] (``semantics`` [B, L], ``target`` / ``target_semantic`` / ``label`` [B, L, C]),
      and optionally ``weight`` float[B] (rows of weight 0 are dropped). Per-row arrays of shape
      [B] other than ``weight`` (``user``) are dropped.
    row_multiple: the packed row count R is rounded up to a multiple of this (>= 1).

  Returns:
    Every per-position array at [R, L, ...] (0 in unused slots), plus ``weight`` float32[R, L] (the
    weight of each slot's user; 0 in unused slots), ``segment`` int32[R, L] (1, 2, ... for the
    users of a row in order, 0 in unused slots), ``slot`` int32[R, L] (the slot's column in the
    user's unpacked row) and ``span`` int32[R, L] (that user's number of real items). The
    positions a model derives from ``slot`` and ``span`` equal those of the unpacked row.

  Raises:
    ValueError: ``items`` is missing, not 2-D, or not right-padded.
  """
  if "items" not in batch or np.ndim(batch["items"]) != 2:
    raise ValueError("pack_rows needs right-padded position rows: items int[B, L]")
  items = np.asarray(batch["items"])
  b, length = items.shape
  real = items != 0
  lengths = real.sum(axis=1)
  if np.any(real[:, 1:] & ~real[:, :-1]):
    raise ValueError("pack_rows: items must be right-padded (the real items first, then 0)")
  weight = np.asarray(batch.get("weight", np.ones(b, np.float32)), np.float32)
  users = np.flatnonzero((lengths > 0) & (weight != 0))

  # First-fit decreasing: the longest history first, each into the first row with room for it.
  order = users[np.argsort(-lengths[users], kind="stable")]
  room = np.zeros(0, np.int64)
  row_of = np.zeros(b, np.int64)
  offset_of = np.zeros(b, np.int64)
  for u in order:
    n = lengths[u]
    fits = np.flatnonzero(room >= n)
    if fits.size:
      r = int(fits[0])
    else:
      r = room.size
      room = np.append(room, length)
    row_of[u], offset_of[u] = r, length - room[r]
    room[r] -= n
  rows = max(1, -(-room.size // row_multiple) * row_multiple)

  # Segment numbers follow the offsets within a row.
  segment_of = np.zeros(b, np.int64)
  by_place = users[np.lexsort((offset_of[users], row_of[users]))]
  index = np.arange(by_place.size)
  first = np.r_[True, row_of[by_place][1:] != row_of[by_place][:-1]] if by_place.size else index
  segment_of[by_place] = index - np.maximum.accumulate(np.where(first, index, 0)) + 1

  src_user, src_col = np.nonzero(real[users])
  src_user = users[src_user]
  dst_row = row_of[src_user]
  dst_col = offset_of[src_user] + src_col

  out: dict[str, np.ndarray] = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if name == "weight" or value.shape[:2] != (b, length):
      continue
    packed = np.zeros((rows, length) + value.shape[2:], value.dtype)
    packed[dst_row, dst_col] = value[src_user, src_col]
    out[name] = packed
  for name, per_user, dtype in (
    ("weight", weight, np.float32),
    ("segment", segment_of, np.int32),
    ("span", lengths, np.int32),
  ):
    packed = np.zeros((rows, length), dtype)
    packed[dst_row, dst_col] = per_user[src_user]
    out[name] = packed
  slot = np.zeros((rows, length), np.int32)
  slot[dst_row, dst_col] = src_col
  out["slot"] = slot
  return out


def packed_batches(
  split: Mapping[str, Any],
  batch_size: int,
  *,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  start_step: int = 0,
  row_multiple: int = ROW_MULTIPLE,
) -> Iterator[dict[str, np.ndarray]]:
  """`solid_jax.data.batches` of position rows, each batch packed by `pack_rows`.

  The same users per batch, in the same order of batches, as ``batches`` with the same
  arguments (a pure function of (seed, epoch); ``start_step`` resumes mid-epoch).
  """
  for batch in _batches(
    split, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start_step=start_step
  ):
    yield pack_rows(batch, row_multiple=row_multiple)


def length_buckets(items: np.ndarray, min_width: int = 8) -> list[tuple[np.ndarray, int]]:
  """Groups right-padded rows by history length, for evaluating each group cut to its width.

  A user's state depends on its real items only, so a row cut to any width that keeps them scores
  as the full row does (the models read positions relative to ``seq_len``). The widths are
  ``min_width``, twice that, ... up to L, so a split compiles its scorer for a few shapes only.

  Args:
    items: int[U, L] histories, right-padded with 0.
    min_width: the narrowest width (>= 1).

  Returns:
    ``[(rows, width)]``: int64 row indices (ascending) of the users whose history fits in
    ``width`` slots and not in the previous width; every row appears once; empty groups omitted.
  """
  items = np.asarray(items)
  length = items.shape[1]
  lengths = np.count_nonzero(items, axis=1)
  widths, w = [], max(1, int(min_width))
  while w < length:
    widths.append(w)
    w *= 2
  widths.append(length)
  out, low = [], -1
  for width in widths:
    rows = np.flatnonzero((lengths > low) & (lengths <= width))
    if rows.size:
      out.append((rows, width))
    low = width
  return out

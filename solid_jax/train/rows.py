"""What a batch of training or evaluation rows holds, and how rows are laid out: the columns a
model reads, the stage-1 semantic view, candidate groups (one history, G candidates) and padding to
whole batches."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Batch = dict[str, Any]
BatchTransform = Callable[[Batch], Batch]

# Batch columns a model reads; the rest ("user", "label", "weight") stay with the loop.
MODEL_KEYS = ("items", "semantics", "target", "target_semantic")
# The layout columns of packed position rows (``solid_jax.data.pack_rows``), passed on when there.
PACKING_KEYS = ("segment", "slot", "span")


def semantic_view(batch: Batch) -> Batch:
  """Stage-1 input: the semantic sequence and target take the place of the item ones.

  Args:
    batch: a batch with int32 ``items``/``semantics`` [B, L] and ``target``/``target_semantic`` [B].

  Returns:
    The same batch with ``items <- semantics`` and ``target <- target_semantic``.
  """
  return {**batch, "items": batch["semantics"], "target": batch["target_semantic"]}


def model_batch(
  batch: Batch, transform: BatchTransform | None, *, with_weight: bool = False
) -> Batch:
  keys = MODEL_KEYS + PACKING_KEYS + (("weight",) if with_weight else ())
  out = {k: batch[k] for k in keys if k in batch}
  return transform(out) if transform is not None else out


def to_groups(rows: dict[str, np.ndarray], group: int) -> dict[str, np.ndarray]:
  """The group view of grouped rows: one entry per history, its G candidates side by side.

  Args:
    rows: N = P * G rows where each run of G consecutive rows shares user and history
      (``candidate_groups(rows) == G``).
    group: G.

  Returns:
    ``user`` int32[P], ``items``/``semantics`` int32[P, L] (the shared history) and
    ``target``/``target_semantic`` int32[P, G], ``label`` float32[P, G].
  """
  out = {}
  for key, value in rows.items():
    value = np.asarray(value)
    if key in ("target", "target_semantic", "label"):
      out[key] = value.reshape((-1, group))
    else:
      out[key] = value[::group]
  return out


def pad_rows(split: dict[str, np.ndarray], batch_size: int) -> tuple[dict[str, np.ndarray], int]:
  """Pads every column of a split to a multiple of ``batch_size`` rows (repeating row 0).

  Args:
    split: dict of numpy arrays with N rows each.
    batch_size: rows per batch.

  Returns:
    (padded split with ``ceil(N / batch_size) * batch_size`` rows, N).
  """
  n = len(next(iter(split.values())))
  total = max(1, -(-n // batch_size)) * batch_size
  pad = total - n
  out = {}
  for key, col in split.items():
    col = np.asarray(col)
    if pad:
      col = np.concatenate([col, np.repeat(col[:1], pad, axis=0)], axis=0)
    out[key] = col
  return out, n


def candidate_groups(split: dict[str, np.ndarray]) -> int | None:
  """The number of candidates per history when a split is laid out in groups, else None.

  Evaluation splits list, per user, one positive and its negatives with the same history in
  consecutive rows. When every run of consecutive rows with the same user and history has the
  same length G > 1, the split is "grouped" with G candidates per history.

  Args:
    split: dict with ``user`` int[N] and ``items`` int[N, L] (and ``semantics``).

  Returns:
    G, or None when the rows are not in equal groups.
  """
  users, items = np.asarray(split["user"]), np.asarray(split["items"])
  n = users.shape[0]
  if n < 2:
    return None
  change = (users[1:] != users[:-1]) | np.any(items[1:] != items[:-1], axis=1)
  if "semantics" in split:
    sem = np.asarray(split["semantics"])
    change |= np.any(sem[1:] != sem[:-1], axis=1)
  starts = np.flatnonzero(np.concatenate([[True], change]))
  sizes = np.diff(np.concatenate([starts, [n]]))
  g = int(sizes[0])
  return g if g > 1 and np.all(sizes == g) else None

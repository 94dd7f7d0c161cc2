"""Fixed-shape numpy batches whose order is a pure function of (seed, epoch), and prefetching.

Step k of an epoch is computable directly (`batch_at`), so a run resumed at `start_step` sees
exactly the batches of an uninterrupted run. The last partial batch is padded to the full batch
size by repeating its first row; every batch carries `"weight": float32[B]`, 1 for real rows and
0 for padding, so losses and metrics can ignore the padding. Device transfer happens elsewhere.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from solid_jax.data.errors import DataError

_STREAM_SHUFFLE = 4


def _row_arrays(split: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
  """The per-row arrays of a split (those sharing the leading dimension of "label")."""
  if "label" not in split:
    raise DataError("a split needs a 'label' array (and user, items, ... with the same rows)")
  n = int(np.shape(split["label"])[0])
  arrays = {
    k: np.asarray(v)
    for k, v in split.items()
    if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n
  }
  return arrays, n


def num_batches(split: Mapping[str, Any], batch_size: int) -> int:
  """Number of batches of one epoch: ceil(N / batch_size)."""
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  _, n = _row_arrays(split)
  return -(-n // batch_size)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """int64[n]: the row order of an epoch (a permutation fixed by seed and epoch, or 0..n-1)."""
  if not shuffle:
    return np.arange(n, dtype=np.int64)
  return np.random.default_rng([seed, _STREAM_SHUFFLE, int(epoch)]).permutation(n)


def _take(
  arrays: Mapping[str, np.ndarray], order: np.ndarray, n: int, batch_size: int, step: int
) -> dict[str, np.ndarray]:
  idx = order[step * batch_size : (step + 1) * batch_size]
  real = idx.size
  if real < batch_size:
    idx = np.concatenate([idx, np.full(batch_size - real, idx[0], idx.dtype)])
  batch = {k: v[idx] for k, v in arrays.items()}
  weight = np.zeros(batch_size, np.float32)
  weight[:real] = 1.0
  batch["weight"] = weight
  return batch


def batch_at(
  split: Mapping[str, Any],
  batch_size: int,
  step: int,
  *,
  seed: int,
  epoch: int,
  shuffle: bool = True,
) -> dict[str, np.ndarray]:
  """Batch number `step` of an epoch, computed directly.

  Args:
    split: dict of per-row arrays (N rows).
    batch_size: B.
    step: 0 <= step < num_batches(split, B).
    seed, epoch: fix the order.
    shuffle: False keeps the split's row order.

  Returns:
    dict of the split's arrays with leading dimension B, plus "weight" float32[B].
  """
  arrays, n = _row_arrays(split)
  total = num_batches(split, batch_size)
  if not 0 <= step < total:
    raise DataError(f"step {step} outside 0..{total - 1}")
  return _take(arrays, epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle), n, batch_size, step)


def batches(
  split: Mapping[str, Any],
  batch_size: int,
  *,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields the batches of one epoch, from `start_step` on.

  Args:
    split: dict of per-row numpy arrays with N rows (e.g. user int32[N], items int32[N, L],
      semantics int32[N, L], target int32[N], target_semantic int32[N], label float32[N]).
    batch_size: B.
    seed: seed of the order.
    epoch: epoch number; the order is a pure function of (seed, epoch).
    shuffle: False keeps the split's row order (evaluation).
    start_step: first step to yield (resuming mid-epoch yields the same batches as an
      uninterrupted run from that step on).

  Yields:
    dicts with every per-row array at leading dimension B, plus "weight" float32[B] (1 = real row,
    0 = padding of the last batch).
  """
  arrays, n = _row_arrays(split)
  total = num_batches(split, batch_size)
  if not 0 <= start_step <= total:
    raise DataError(f"start_step {start_step} outside 0..{total}")
  order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
  for step in range(start_step, total):
    yield _take(arrays, order, n, batch_size, step)


def prefetch(iterator: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Runs `iterator` in a background thread, keeping up to `size` items ready.

  Exceptions of the producer are raised in the consumer; closing the returned generator (or
  dropping it) stops the producer.

  Args:
    iterator: any iterable (e.g. `batches(...)`).
    size: queue length (>= 1).

  Yields:
    The items of `iterator`, in order.
  """
  if size < 1:
    raise DataError(f"prefetch size must be >= 1, got {size}")
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put((True, item)):
          return
      put((True, done))
    except BaseException as e:  # pylint: disable=broad-except
      put((False, e))

  thread = threading.Thread(target=produce, name="solid_jax-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      ok, item = items.get()
      if not ok:
        raise item
      if item is done:
        return
      yield item
  finally:
    stop.set()
    thread.join(timeout=1.0)

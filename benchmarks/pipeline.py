"""Input-pipeline and evaluation throughput on a real data set.

- `pipeline_throughput`: batches/s of ``sj.data.batches`` over whole epochs (in candidate groups, as
  the training loop batches them), each epoch's ``sj.data.resample_train`` (new negatives) included
  in the time (so amortised per batch), with the batches transferred to the device by
  `solid_jax.parallel.device_prefetch` and waited for. Compared with the training step's batches/s,
  it shows whether the step can starve.
- `evaluation_timing`: the scoring pass over a whole split on the device (the training loop's
  ``Evaluator``: one compiled ``lax.map`` over fixed-size batches) and ``sj.metrics.evaluate`` on
  the scores, each timed apart after a compiling first call.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import solid_jax as sj
from solid_jax import parallel
from benchmarks import timing
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train import rows as rows_lib


def load(dataset: str = "ml-100k", *, seq_len: int = 10, seed: int = 0):
  """(Dataset, splits) with the SPEC section 3 protocol; the time to build them is returned too."""
  start = time.perf_counter()
  ds = sj.data.load_dataset(dataset)
  loaded = time.perf_counter()
  splits = sj.data.make_splits(ds, seq_len=seq_len, train_negatives=4, eval_negatives=99, seed=seed)
  done = time.perf_counter()
  return ds, splits, {"load_s": loaded - start, "make_splits_s": done - loaded}


def pipeline_throughput(
  ds,
  splits,
  batch_size: int,
  *,
  epochs: int = 2,
  seed: int = 0,
  prefetch: int = 2,
  device=None,
  grouped: bool = True,
) -> dict:
  """Batches/s of the input pipeline as the training loop drives it, with resampling and transfer.

  Args:
    ds: the Dataset.
    splits: from ``sj.data.make_splits``.
    batch_size: training rows per batch.
    epochs: epochs timed (each epoch's ``resample_train`` included).
    seed: batch-order seed.
    prefetch: batches in flight (`parallel.device_prefetch`).
    device: target device (default: the first device).
    grouped: like the training loop's default, batch whole candidate groups (``rows_lib.to_groups``,
      ``round(batch_size / G)`` groups per batch) when the rows come in groups.

  Returns:
    {"batches_per_s" (with resampling and transfer), "host_batches_per_s" (batches only, no
    resampling, no transfer), "resample_s_per_epoch", "batches_per_epoch", "rows_per_epoch",
    "group"}.
  """
  device = device or jax.devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)

  def units_of(rows):
    group = rows_lib.candidate_groups(rows) if grouped else None
    if group:
      return rows_lib.to_groups(rows, group), max(1, round(batch_size / group)), group
    return rows, batch_size, 1

  count, resample_s = 0, []
  start = time.perf_counter()
  last, group = None, 1
  for epoch in range(epochs):
    t0 = time.perf_counter()
    rows = sj.data.resample_train(ds, splits, epoch)
    units, unit_batch, group = units_of(rows)
    resample_s.append(time.perf_counter() - t0)
    stream = sj.data.batches(units, unit_batch, seed=seed, epoch=epoch, shuffle=True)
    for batch in parallel.device_prefetch(stream, size=prefetch, sharding=sharding):
      last = batch
      count += 1
  jax.block_until_ready(last)
  total = time.perf_counter() - start
  units, unit_batch, _ = units_of(rows)
  start = time.perf_counter()
  host = sum(1 for _ in sj.data.batches(units, unit_batch, seed=seed, epoch=0, shuffle=True))
  host_s = time.perf_counter() - start
  return {
    "batches_per_s": count / total,
    "host_batches_per_s": host / host_s,
    "resample_s_per_epoch": float(np.mean(resample_s)),
    "batches_per_epoch": count // epochs,
    "rows_per_epoch": int(len(rows["label"])),
    "batch_size": batch_size,
    "group": group,
    "prefetch": prefetch,
  }


def evaluation_timing(
  model, params, split: dict, *, batch_size: int = 8192, repeats: int = 3
) -> dict:
  """Times the on-device scoring of a split and ``sj.metrics.evaluate`` on its scores.

  Args:
    model: a ``sj.Model``.
    params: its parameters.
    split: a split dict (``user``, model columns, ``label``).
    batch_size: rows per device batch of the scoring pass.
    repeats: timed repeats after the first (compiling) call of each part.

  Returns:
    {"rows", "score_first_s" (includes compilation), "score_s" (median), "metrics_first_s",
    "metrics_s" (median), "score_rows_per_s", "metrics": the metric values}.
  """
  evaluator = evaluator_lib.Evaluator(model, split, batch_size)
  params = jax.device_put(params)

  def score():
    return jax.block_until_ready(evaluator.scores(params))

  def metrics(scores):
    out = sj.metrics.evaluate(scores, evaluator.labels, evaluator.users)
    return {k: float(v) for k, v in out.items()}

  t0 = time.perf_counter()
  scores = score()
  score_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  values = metrics(scores)
  metrics_first = time.perf_counter() - t0
  score_times, metric_times = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    scores = score()
    score_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    metrics(scores)
    metric_times.append(time.perf_counter() - t0)
  rows = int(len(split["label"]))
  score_s = timing.summarize(np.asarray(score_times) * 1e3)["median_ms"] / 1e3
  return {
    "rows": rows,
    "batch_size": batch_size,
    "score_first_s": score_first,
    "score_s": score_s,
    "metrics_first_s": metrics_first,
    "metrics_s": float(np.median(metric_times)),
    "score_rows_per_s": rows / score_s,
    "metrics": values,
  }

"""Scaling of the training step and inference with the batch size and the catalogue size.

Each point compiles the step for its shapes (compilation timed apart), asks XLA how much memory the
executable needs (`memory_analysis`) and skips the point, with a note, when that exceeds the memory
budget; otherwise it times a few repeats (fewer at large sizes, to bound the total time).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax

import solid_jax as sj
from benchmarks import flops as flops_lib
from benchmarks import synthetic
from benchmarks import throughput
from benchmarks import timing


def available_memory_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (None where unreadable)."""
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def executable_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries of a compiled executable (None when not reported)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if m is None:
    return None
  return int(
    m.argument_size_in_bytes
    + m.output_size_in_bytes
    + m.temp_size_in_bytes
    - getattr(m, "alias_size_in_bytes", 0)
  )


def estimated_bytes(cfg, batch_size: int, params_bytes: int) -> int:
  """A pre-compilation guard: parameters, gradients and Adam state, plus activations.

  Activations: twice the analytic per-sample activation bytes (`flops.sasrec_bytes_per_sample`,
  about 47 KB for SOLID); the compiled training step measures about 68 KB per sample
  (`memory_analysis`), which is the check that decides after compilation.
  """
  per_sample = (
    sum(flops_lib.sasrec_bytes_per_sample(cfg).values()) if cfg.backbone == "sasrec" else 64 * 1024
  )
  return 4 * params_bytes + 2 * int(per_sample) * batch_size


GROUP = 5  # a positive and its 4 negatives share a history

PHASES = ("train", "train_grouped", "infer")


@dataclasses.dataclass(frozen=True)
class Point:
  """One measurement: a phase at a batch size and catalogue size.

  Phases: "train" (the per-row training step: every row encodes its history), "train_grouped" (the
  training loop's step: ``round(batch / 5)`` groups of 5 rows sharing a history), "infer"
  (generate + score per row).
  """

  phase: str
  batch: int
  num_items: int


def repeats_for(batch: int, num_items: int) -> tuple[int, int]:
  """(repeats, steps_per_repeat): fewer at large sizes to bound the total time."""
  work = batch * (1 + num_items / 100_000)
  if work <= 4096:
    return 7, 5
  if work <= 20_000:
    return 5, 3
  if work <= 70_000:
    return 3, 2
  return 3, 1


def measure_point(
  point: Point,
  *,
  backbone: str = "sasrec",
  method: str = "solid",
  num_semantics: int = 20,
  seed: int = 0,
  memory_fraction: float = 0.6,
  num_batches: int = 2,
  log=print,
) -> dict:
  """Times one point; returns a record or a skip note.

  Args:
    point: the phase, batch size and catalogue size.
    backbone, method: the model.
    num_semantics: semantic vocabulary incl. padding.
    seed: data and initialisation seed.
    memory_fraction: skip when the executable needs more than this fraction of the available memory.
    num_batches: distinct batches (cycled).
    log: progress printer.

  Returns:
    A `timing.record` with "exe_bytes", or {"phase", "batch", "num_items", "skipped": reason}.
  """
  base = {
    "phase": point.phase,
    "batch": point.batch,
    "batch_flag": point.batch,
    "num_items": point.num_items,
  }
  cfg = throughput.model_config(
    backbone, method, num_items=point.num_items, num_semantics=num_semantics
  )
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(seed))
  params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
  budget = (available_memory_bytes() or 8 << 30) * memory_fraction
  guess = estimated_bytes(cfg, point.batch, params_bytes)
  if guess > budget:
    note = f"estimated {guess / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"
    log(f"skip {base}: {note}")
    return {**base, "skipped": note}
  catalog = synthetic.make_catalog(point.num_items, num_semantics, cfg.seq_len, seed=seed)
  batches = synthetic.make_batches(catalog, point.batch, num_batches, seed=seed)
  start = time.perf_counter()
  if point.phase == "train_grouped":
    rows = max(1, round(point.batch / GROUP)) * GROUP
    batches = synthetic.make_batches(catalog, rows, num_batches, seed=seed)
    bench = throughput.TrainBench(model, params, batches, grouped=True)
  elif point.phase == "train":
    bench = throughput.TrainBench(model, params, batches)
  else:
    bench = throughput.InferBench(model, params, batches)
  exe = executable_bytes(bench.compiled)
  if exe is not None and exe > budget:
    note = f"executable needs {exe / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"
    log(f"skip {base}: {note}")
    return {**base, "skipped": note}
  repeats, steps = repeats_for(point.batch, point.num_items)
  step_ms = bench.time(repeats=repeats, steps_per_repeat=steps, warmup=1)
  info = bench.summary()
  rec = timing.record(
    "solid_jax",
    point.phase,
    bench.batch_size,
    step_ms,
    batch_flag=point.batch,
    compile_s=info.pop("compile_s"),
    backbone=backbone,
    method=method,
    num_items=point.num_items,
    num_semantics=num_semantics,
    exe_bytes=exe,
    params=int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
    point_wall_s=time.perf_counter() - start,
    **info,
  )
  if cfg.backbone == "sasrec":
    forward = sum(flops_lib.sasrec_components(cfg).values())
    if point.phase == "train_grouped":
      forward = flops_lib.sasrec_grouped_flops_per_row(cfg, GROUP)
    per_sample = forward * (1.0 if point.phase == "infer" else flops_lib.TRAIN_FACTOR)
    rec["analytic_flops_per_sample"] = per_sample
    rec["achieved_gflops_per_s"] = per_sample * rec["samples_per_s"] / 1e9
  log(
    f"{point.phase:<5} B={point.batch:<6} items={point.num_items:<8} "
    f"{rec['samples_per_s']:>12,.0f} samples/s  median {rec['median_ms']:9.2f} ms  "
    f"compile {rec['compile_s']:.1f} s  ({repeats}x{steps})"
  )
  del bench
  return rec


def run_scaling(
  batch_sizes,
  catalog_sizes,
  *,
  base_items: int = 1683,
  base_batch: int = 1024,
  phases=PHASES,
  log=print,
  **kwargs,
) -> list[dict]:
  """Batch sweep at ``base_items``, then catalogue sweep at ``base_batch``, for every phase."""
  points = [("batch", Point(p, b, base_items)) for p in phases for b in batch_sizes]
  points += [("catalog", Point(p, base_batch, n)) for p in phases for n in catalog_sizes]
  out = []
  for sweep, point in points:
    out.append({**measure_point(point, log=log, **kwargs), "sweep": sweep})
  return out


def flop_table(cfg, records: list[dict], peak_gflops: float, *, xla_batch: int = 256) -> dict:
  """Analytic FLOPs per component against XLA's count, and the distance to the measured peak.

  Args:
    cfg: the ModelConfig (SASRec).
    records: scaling records (the best train and infer points at ``cfg.num_items`` are used).
    peak_gflops: the measured matmul peak.
    xla_batch: batch of the executables whose XLA cost is read (`flops.xla_cost`).
  """
  components = flops_lib.sasrec_components(cfg)
  forward = sum(components.values())
  out = {
    "components_forward": components,
    "analytic_forward": forward,
    "analytic_train": flops_lib.TRAIN_FACTOR * forward,
    "analytic_bytes_forward": flops_lib.sasrec_bytes_per_sample(cfg),
    "xla_forward": flops_lib.xla_cost(cfg, xla_batch, "forward"),
    "xla_train": flops_lib.xla_cost(cfg, xla_batch, "train"),
    "peak_gflops_per_s": peak_gflops,
  }
  for phase in ("train", "infer"):
    recs = [
      r
      for r in records
      if r.get("phase") == phase
      and "achieved_gflops_per_s" in r
      and r.get("num_items") == cfg.num_items
    ]
    if recs:
      best = max(recs, key=lambda r: r["samples_per_s"])
      out[f"best_{phase}_samples_per_s"] = best["samples_per_s"]
      out[f"best_{phase}_gflops_per_s"] = best["achieved_gflops_per_s"]
      out[f"best_{phase}_fraction_of_peak"] = best["achieved_gflops_per_s"] / peak_gflops
      out[f"best_{phase}_batch"] = best["batch"]
  return out


def cpu_env() -> dict:
  return {
    "cpu_count": os.cpu_count(),
    "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }

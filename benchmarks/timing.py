"""Honest wall-clock timing: warm-up excluded, device synchronised, medians and percentiles.

One *repeat* runs ``steps_per_repeat`` steps back to back (so asynchronous dispatch overlaps as in a
real loop) and then waits for the device; its wall time divided by ``steps_per_repeat`` is one
sample of the per-step time. The summary is the median and the 10th/90th percentiles over repeats.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np


def summarize(step_ms) -> dict:
  """Median, p10, p90 (ms) of per-step times.

  Args:
    step_ms: sequence of per-step times in milliseconds (one per repeat).

  Returns:
    {"median_ms", "p10_ms", "p90_ms", "repeats"}.
  """
  arr = np.asarray(step_ms, np.float64)
  return {
    "median_ms": float(np.median(arr)),
    "p10_ms": float(np.percentile(arr, 10)),
    "p90_ms": float(np.percentile(arr, 90)),
    "repeats": int(arr.size),
  }


def time_repeats(
  run: Callable[[int], None],
  sync: Callable[[], None],
  *,
  repeats: int,
  steps_per_repeat: int,
  warmup: int = 1,
) -> list[float]:
  """Times ``run(steps_per_repeat)`` repeatedly.

  Args:
    run: ``run(n)`` issues n steps (it may return before the device has finished them).
    sync: waits until the device has finished all issued work.
    repeats: number of timed repeats.
    steps_per_repeat: steps per repeat.
    warmup: untimed repeats before the timed ones.

  Returns:
    Per-step milliseconds, one value per timed repeat.
  """
  for _ in range(warmup):
    run(steps_per_repeat)
    sync()
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(steps_per_repeat)
    sync()
    out.append((time.perf_counter() - start) * 1e3 / steps_per_repeat)
  return out


def record(impl: str, phase: str, batch: int, step_ms, *, compile_s: float | None, **extra) -> dict:
  """One benchmark record (the JSON schema of ``experiments/benchmark.py``).

  Args:
    impl: "solid_jax", "torch_reference" or "torch_compile".
    phase: "train" or "infer".
    batch: rows per step.
    step_ms: per-step milliseconds, one per repeat.
    compile_s: compilation time, measured apart from the timed steps (None when nothing compiles).
    **extra: further fields (backbone, method, dtype, ...).

  Returns:
    A flat dict with samples_per_s (from the median), median_ms, p10_ms, p90_ms, repeats, compile_s.
  """
  stats = summarize(step_ms)
  out = {"impl": impl, "phase": phase, "batch": int(batch)}
  out.update(extra)
  out.update(stats)
  out["samples_per_s"] = batch / (stats["median_ms"] / 1e3)
  out["samples_per_s_p10"] = batch / (stats["p90_ms"] / 1e3)
  out["samples_per_s_p90"] = batch / (stats["p10_ms"] / 1e3)
  out["compile_s"] = None if compile_s is None else float(compile_s)
  return out


def write_output(document: dict, path: str = "") -> None:
  """Prints a benchmark document as JSON and writes it to ``path`` (folders created; "" prints
  only)."""
  text = json.dumps(document, indent=2)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      f.write(text + "\n")
  print(text)

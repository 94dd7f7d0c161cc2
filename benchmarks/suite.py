"""The benchmark suite behind ``experiments/benchmark.py``: solid_jax against the PyTorch reference.

`run_suite` times, for every (backbone, method), the training step and the inference pass of
solid_jax and (when a torch API is given) of the PyTorch reference eager and under
``torch.compile``, all on the same synthetic batches (`synthetic`), in one process, one after the
other, so their ratios are taken under the same conditions. The result is the JSON document
described in ``docs/PERFORMANCE.md``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import solid_jax as sj
from benchmarks import flops as flops_lib
from benchmarks import synthetic
from benchmarks import throughput
from benchmarks import timing
from solid_jax.train import rows as rows_lib

# solid_jax's implementations ("solid_jax", "solid_jax_per_row") and the reference's: per row
# (eager, compiled) and grouped (the reference's grouped forward, eager, compiled).
IMPLS = (
  "solid_jax",
  "torch_reference",
  "torch_compile",
  "torch_reference_grouped",
  "torch_compile_grouped",
)
PHASES = ("train", "infer")


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
  """What `run_suite` measures.

  Attributes:
    backbones: backbones to sweep.
    methods: methods to sweep (`throughput.METHODS`).
    batch_size: rows per step.
    num_items: catalogue size incl. padding (default: ml-100k's).
    num_semantics: semantic vocabulary incl. padding (default: ml-100k's 19 genres + padding).
    seq_len: L.
    dim: d.
    repeats: timed repeats per measurement.
    steps_per_repeat: steps per repeat.
    warmup: untimed repeats.
    num_batches: distinct synthetic batches, cycled.
    seed: seed of the catalogue, the batches and the initialisation.
    zipf_exponent: item-popularity exponent of the synthetic catalogue.
    dtype: "float32" or "bfloat16" (mixed precision in both frameworks).
    device: "auto", "cpu" or "gpu".
    phases: phases to time.
    torch_eager: time the reference eagerly (when a torch API is given).
    torch_compile: time the reference under ``torch.compile`` (when a torch API is given).
    torch_threads: intra-op thread counts to time the reference with (0: torch's default); the
      ratios use the fastest.
    rounds: the repeats are split into this many interleaved rounds (see `bench_model`).
    negatives: negatives per positive of the synthetic rows (groups of ``negatives + 1`` rows share
      a history).
    grouped_train: time the training loop's grouped step as "solid_jax" (each history encoded once
      per group) and the per-row step as "solid_jax_per_row"; False: only the per-row step, as
      "solid_jax".
  """

  backbones: tuple[str, ...] = ("sasrec",)
  methods: tuple[str, ...] = ("solid",)
  batch_size: int = 1024
  num_items: int = 1683
  num_semantics: int = 20
  seq_len: int = 10
  dim: int = 32
  repeats: int = 20
  steps_per_repeat: int = 5
  warmup: int = 1
  num_batches: int = 8
  seed: int = 0
  zipf_exponent: float = 1.0
  dtype: str = "float32"
  device: str = "auto"
  phases: tuple[str, ...] = PHASES
  torch_eager: bool = True
  torch_compile: bool = True
  torch_threads: tuple[int, ...] = (0,)
  rounds: int = 4
  negatives: int = 4
  grouped_train: bool = True


def jax_device(name: str = "auto"):
  """The JAX device of ``name`` ("auto": the default backend's first device)."""
  if name == "auto":
    return jax.devices()[0]
  return jax.devices(name)[0]


def compute_dtype(name: str):
  if name == "float32":
    return None
  if name == "bfloat16":
    return jnp.bfloat16
  raise ValueError(f"dtype={name!r}; expected 'float32' or 'bfloat16'")


def host_info() -> dict:
  """Machine description and the load it was under (the 1-minute load average before a run)."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  info = {
    "hostname": socket.gethostname(),
    "platform": platform.platform(),
    "cpu": cpu,
    "cpu_count": os.cpu_count(),
  }
  if hasattr(os, "getloadavg"):
    info["loadavg_1_5_15"] = list(os.getloadavg())
  return info


def versions() -> dict:
  out = {
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "numpy": np.__version__,
    "solid_jax": sj.__version__,
  }
  for name in ("jaxlib", "optax", "flax", "torch"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = None
  return out


def device_info(device, torch_device: str | None) -> dict:
  return {
    "jax": {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "local_device_count": jax.local_device_count(),
    },
    "torch": torch_device,
  }


def _analytic(cfg, group: int | None = None) -> dict:
  if cfg.backbone != "sasrec":
    return {}
  forward = sum(flops_lib.sasrec_components(cfg).values())
  out = {
    "analytic_forward_flops_per_sample": forward,
    "analytic_train_flops_per_sample": flops_lib.TRAIN_FACTOR * forward,
  }
  if group:
    out["analytic_train_flops_per_sample"] = (
      flops_lib.TRAIN_FACTOR * flops_lib.sasrec_grouped_flops_per_row(cfg, group)
    )
  return out


def achieved_gflops(rec: dict) -> dict:
  """GFLOP/s of a record: analytic FLOPs per sample (SASRec) times samples/s.

  XLA's own count (``xla_flops_per_sample``) is not used for this: it counts the body of the GRU
  scan's while loop once instead of L times.
  """
  key = (
    "analytic_train_flops_per_sample"
    if rec["phase"] == "train"
    else "analytic_forward_flops_per_sample"
  )
  if key not in rec:
    return {}
  return {"achieved_gflops_per_s": rec[key] * rec["samples_per_s"] / 1e9}


def bench_model(
  backbone: str, method: str, opts: SuiteOptions, torch_api=None, log=print
) -> list[dict]:
  """Records of one (backbone, method) for every implementation and phase.

  For each phase every implementation is built (and compiled) first; then the timed repeats run in
  ``opts.rounds`` interleaved rounds (each implementation in turn, with ``opts.warmup`` untimed
  repeats at the start of each round), so that a change of machine load during the measurement hits
  every implementation alike.

  Args:
    backbone: the backbone.
    method: the method.
    opts: SuiteOptions.
    torch_api: None, or an object with ``build_torch_model`` and ``train_step`` (the reference).
    log: progress printer.

  Returns:
    A list of records (`timing.record`); an implementation that fails leaves a record with "error".
  """
  cfg, model, params, batches = _model_and_batches(backbone, method, opts)
  group = opts.negatives + 1
  if opts.grouped_train:
    # The training loop batches round(batch_size / G) whole groups.
    _, _, _, grouped_batches = _model_and_batches(
      backbone, method, opts, batch_size=max(1, round(opts.batch_size / group)) * group
    )
    grouped_host = [rows_lib.to_groups(b, group) for b in grouped_batches]
  device = jax_device(opts.device)
  dtype = compute_dtype(opts.dtype)
  common = {
    "backbone": backbone,
    "method": method,
    "dtype": opts.dtype,
    "num_items": opts.num_items,
    "num_semantics": opts.num_semantics,
    "steps_per_repeat": opts.steps_per_repeat,
    **_analytic(cfg),
  }
  n_params = flops_lib.param_count(params)
  tdev = None
  if torch_api is not None:
    from benchmarks import torch_bench  # pylint: disable=import-outside-toplevel

    tdev = torch_bench.torch_device("cuda" if opts.device == "gpu" else opts.device)
  records = []
  for phase in opts.phases:
    benches = []  # (impl, extra fields, bench)
    ours = {"params": n_params, "device": str(device)}
    if phase == "train":
      if opts.grouped_train:
        benches.append(
          (
            "solid_jax",
            {**ours, "variant": "grouped (the training loop's step)", **_analytic(cfg, group)},
            throughput.TrainBench(
              model, params, grouped_batches, compute_dtype=dtype, device=device, grouped=True
            ),
          )
        )
      benches.append(
        (
          "solid_jax_per_row" if opts.grouped_train else "solid_jax",
          {**ours, "variant": "per row (every row encodes its history)"},
          throughput.TrainBench(model, params, batches, compute_dtype=dtype, device=device),
        )
      )
    else:
      benches.append(
        (
          "solid_jax",
          {**ours, "variant": "generate + score per row"},
          throughput.InferBench(model, params, batches, compute_dtype=dtype, device=device),
        )
      )
    variants = []
    if torch_api is not None:
      variants = [(False, "torch_reference", batches)] * opts.torch_eager + [
        (True, "torch_compile", batches)
      ] * opts.torch_compile
      if phase == "train" and opts.grouped_train:
        # The reference's grouped forward on the grouped step's batches: grouped against grouped.
        variants += [(False, "torch_reference_grouped", grouped_host)] * opts.torch_eager + [
          (True, "torch_compile_grouped", grouped_host)
        ] * opts.torch_compile
    for compiled, impl, host in variants:
      for threads in opts.torch_threads if tdev == "cpu" else (0,):
        try:
          bench = torch_bench.TorchBench(
            cfg,
            torch_api.build_torch_model,
            torch_api.train_step,
            host,
            phase=phase,
            compile_model=compiled,
            device=tdev,
            dtype=opts.dtype,
            threads=threads,
            seed=opts.seed,
          )
        except Exception as e:  # pylint: disable=broad-except  # recorded, the suite goes on
          rec = {
            "impl": impl,
            "phase": phase,
            "batch": opts.batch_size,
            "batch_flag": opts.batch_size,
            **common,
            "device": tdev,
            "threads": threads,
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc(limit=4)[-3000:],
          }
          log(f"{impl} {backbone}/{method} {phase}: FAILED {rec['error'][:300]}")
          records.append(rec)
          continue
        benches.append((impl, {"device": tdev}, bench))
    times = {id(b): [] for _, _, b in benches}
    per_round = max(1, -(-opts.repeats // opts.rounds))
    for _ in range(opts.rounds):
      for _, _, bench in benches:
        times[id(bench)] += bench.time(
          repeats=per_round, steps_per_repeat=opts.steps_per_repeat, warmup=opts.warmup
        )
    for impl, extra, bench in benches:
      info = bench.summary()
      rec = timing.record(
        impl,
        phase,
        bench.batch_size,
        times[id(bench)],
        batch_flag=opts.batch_size,
        compile_s=info.pop("compile_s"),
        **{**common, **extra},
        **info,
      )
      rec.update(achieved_gflops(rec))
      records.append(rec)
      log(_line(rec))
    del benches
  return records


def _line(rec: dict) -> str:
  compile_s = rec.get("compile_s")
  return (
    f"{rec['impl']:>15} {rec['backbone']}/{rec['method']:<9} {rec['phase']:<5} "
    f"B={rec['batch']:<6} {rec['samples_per_s']:>12,.0f} samples/s  median "
    f"{rec['median_ms']:8.2f} ms (p10 {rec['p10_ms']:.2f}, p90 {rec['p90_ms']:.2f})"
    + ("" if compile_s is None else f"  compile {compile_s:.1f} s")
  )


def ratios(records: list[dict]) -> dict:
  """solid_jax's samples/s over each torch variant's (its fastest thread setting), per model."""
  by_key = {}
  for r in records:
    if "samples_per_s" in r:
      key = (r["backbone"], r["method"], r["phase"], r.get("batch_flag", r["batch"]), r["impl"])
      by_key[key] = max(by_key.get(key, 0.0), r["samples_per_s"])  # the fastest thread setting
  out = {}
  for (backbone, method, phase, batch, impl), value in by_key.items():
    if not impl.startswith("solid_jax"):
      continue
    entry = {}
    for other in IMPLS[1:]:
      if impl == "solid_jax_per_row" and other.endswith("_grouped"):
        continue  # per row against grouped is no comparison
      if (backbone, method, phase, batch, other) in by_key:
        entry[f"{impl}_over_{other}"] = value / by_key[(backbone, method, phase, batch, other)]
    if entry:
      out.setdefault(f"{backbone}/{method}/{phase}/B{batch}", {}).update(entry)
  return out


def run_suite(opts: SuiteOptions, torch_api=None, log=print) -> dict:
  """Runs every (backbone, method) of ``opts``; returns the JSON document (without pipeline)."""
  device = jax_device(opts.device)
  tdev = None
  if torch_api is not None:
    from benchmarks import torch_bench  # pylint: disable=import-outside-toplevel

    tdev = torch_bench.torch_device("cuda" if opts.device == "gpu" else opts.device)
  host = host_info()
  start = time.time()
  records = []
  for backbone in opts.backbones:
    for method in opts.methods:
      records.extend(bench_model(backbone, method, opts, torch_api, log))
  host["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
  return {
    "records": records,
    "ratios": ratios(records),
    "device": device_info(device, tdev),
    "host": host,
    "versions": versions(),
    "options": dataclasses.asdict(opts),
    "started_unix": start,
    "wall_s": time.time() - start,
  }


def jsonable(tree: Any) -> Any:
  """Converts NumPy scalars and tuples so that ``json.dump`` accepts the document."""
  if isinstance(tree, dict):
    return {str(k): jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [jsonable(v) for v in tree]
  if isinstance(tree, (np.floating, np.integer)):
    return tree.item()
  if isinstance(tree, float) and not np.isfinite(tree):
    return None
  return tree


def _model_and_batches(
  backbone: str,
  method: str,
  opts: SuiteOptions,
  *,
  num_items=None,
  num_semantics=None,
  batch_size=None,
):
  batch_size = batch_size or opts.batch_size
  num_items = num_items or opts.num_items
  num_semantics = num_semantics or opts.num_semantics
  cfg = throughput.model_config(
    backbone,
    method,
    num_items=num_items,
    num_semantics=num_semantics,
    seq_len=opts.seq_len,
    dim=opts.dim,
  )
  catalog = synthetic.make_catalog(
    num_items, num_semantics, opts.seq_len, zipf_exponent=opts.zipf_exponent, seed=opts.seed
  )
  batches = synthetic.make_batches(
    catalog, batch_size, opts.num_batches, seed=opts.seed, negatives=opts.negatives
  )
  model = sj.make_model(cfg)
  return cfg, model, model.init(jax.random.key(opts.seed)), batches


def pipeline_and_evaluation(
  records: list[dict],
  opts: SuiteOptions,
  dataset: str,
  *,
  epochs: int = 2,
  eval_batch_size: int = 8192,
  log=print,
) -> dict:
  """The input pipeline against the training step, and the evaluation of the test split.

  The step's batches/s is the fastest solid_jax training record of ``records`` at this batch size
  (the most demanding consumer); without one, the first (backbone, method) is timed here.

  Returns:
    {"pipeline": {"batches_per_s", "step_batches_per_s", "ratio", "ok" (ratio >= 5), ...},
    "evaluation": {...}, "dataset": {...}}.
  """
  from benchmarks import pipeline  # pylint: disable=import-outside-toplevel

  device = jax_device(opts.device)
  ds, splits, load_info = pipeline.load(dataset, seq_len=opts.seq_len, seed=opts.seed)
  steps = [
    r
    for r in records
    if r.get("impl", "").startswith("solid_jax")
    and r.get("phase") == "train"
    and r.get("batch_flag") == opts.batch_size
    and "median_ms" in r
  ]
  if steps:
    step_rec = min(steps, key=lambda r: r["median_ms"])
    step_model = f"{step_rec['backbone']}/{step_rec['method']}"
    step_ms = step_rec["median_ms"]
  else:
    backbone, method = opts.backbones[0], opts.methods[0]
    _, model, params, batches = _model_and_batches(backbone, method, opts)
    bench = throughput.TrainBench(model, params, batches, device=device)
    step_ms = timing.summarize(
      bench.time(repeats=max(3, opts.repeats // 2), steps_per_repeat=opts.steps_per_repeat)
    )["median_ms"]
    step_model = f"{backbone}/{method}"
  pipe = pipeline.pipeline_throughput(
    ds,
    splits,
    opts.batch_size,
    epochs=epochs,
    seed=opts.seed,
    device=device,
    grouped=opts.grouped_train,
  )
  pipe["step_batches_per_s"] = 1e3 / step_ms
  pipe["step_model"] = step_model
  pipe["ratio"] = pipe["batches_per_s"] / pipe["step_batches_per_s"]
  pipe["ok"] = bool(pipe["ratio"] >= 5.0)
  log(
    f"pipeline {pipe['batches_per_s']:.1f} batches/s, step {pipe['step_batches_per_s']:.1f} "
    f"batches/s ({step_model}): ratio {pipe['ratio']:.1f}"
  )
  backbone, method = opts.backbones[0], opts.methods[0]
  cfg = throughput.model_config(
    backbone,
    method,
    num_items=ds.num_items,
    num_semantics=ds.num_semantics,
    seq_len=opts.seq_len,
    dim=opts.dim,
  )
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(opts.seed))
  evaluation = pipeline.evaluation_timing(model, params, splits["test"], batch_size=eval_batch_size)
  evaluation["model"] = f"{backbone}/{method} (untrained parameters)"
  log(
    f"evaluation of {evaluation['rows']} rows: scoring {evaluation['score_s']:.3f} s, "
    f"metrics {evaluation['metrics_s']:.3f} s"
  )
  return {
    "pipeline": pipe,
    "evaluation": evaluation,
    "dataset": {
      "name": dataset,
      "num_items": ds.num_items,
      "num_semantics": ds.num_semantics,
      **load_info,
    },
  }


def profile_train(
  backbone: str, method: str, opts: SuiteOptions, trace_dir: str, *, steps: int = 10
) -> dict:
  """Where the training step's time goes (`profile.op_time_by_source`), with FLOP counts.

  Returns:
    {"by_source": ms per step per source function, "by_op": the largest XLA operations,
    "wall_ms_per_step", "op_ms_per_step", "xla_flops_per_sample", "analytic": per-component forward
    FLOPs (SASRec), "peak": measured matmul FLOP/s}.
  """
  from benchmarks import profile  # pylint: disable=import-outside-toplevel

  cfg, model, params, batches = _model_and_batches(backbone, method, opts)
  bench = throughput.TrainBench(
    model, params, batches, compute_dtype=compute_dtype(opts.dtype), device=jax_device(opts.device)
  )
  out = profile.op_time_by_source(bench.run, bench.sync, bench.info["hlo"], trace_dir, steps=steps)
  out.update(throughput.cost_per_sample(bench.info["cost"], bench.batch_size))
  out["model"] = f"{backbone}/{method}"
  if cfg.backbone == "sasrec":
    out["analytic_forward_flops_per_sample"] = flops_lib.sasrec_components(cfg)
  out["peak"] = flops_lib.measure_peak_flops()
  return out

"""Throughput measurement of solid_jax models (and of the PyTorch reference).

Not part of the installed library (``pip install`` ships ``solid_jax`` only): run from the
repository root, beside ``reference/``; the launchers are ``experiments/benchmark.py`` and
``experiments/scaling.py``.

Modules:
  synthetic    realistic synthetic batches (Zipf popularity, ml-100k history lengths,
               semantic table).
  timing       warm-up excluded, device-synchronised timing; medians, percentiles; records.
  throughput   the training loop's jitted step and the inference pass, compiled ahead of time and
               timed on device-resident batches under ``jax.transfer_guard("disallow")``.
  torch_bench  the same measurements for the PyTorch reference, eager and ``torch.compile``.
  pipeline     input-pipeline batches/s and on-device evaluation timing on a real data set.
  profile      profiler trace -> time per source function of solid_jax.
  flops        analytic FLOPs / bytes per sample (SASRec models), XLA's count, measured peak.
  scaling      batch-size and catalogue-size sweeps.
  suite        the suite behind ``experiments/benchmark.py``.
  ablation     forward + backward cost of each part of the SOLID step.
"""

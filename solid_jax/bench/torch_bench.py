"""Throughput of the PyTorch reference (eager and ``torch.compile``), timed like `throughput`.

The caller passes the reference's ``build_torch_model(cfg)`` and ``train_step(model, opt, batch, labels)``
(``reference/torch_models.py``), so this module imports neither the reference nor, at import time, torch.

- Training: ``train_step`` with ``torch.optim.Adam(lr)`` over the model's parameters, on tensors placed on
  the device before timing. ``torch.compile`` variant: the model's forward compiled (``dynamic=False``;
  AOTAutograd compiles the backward too); the first steps, which compile, are timed apart as
  ``compile_s``.
- Inference: ``model(batch)`` under ``torch.inference_mode()`` (the reference computes the per-user
  weights and applies them in one forward, the same work as solid_jax's generate + score).
- ``dtype="bfloat16"``: ``torch.autocast`` mixed precision (float32 master weights), the counterpart of
  solid_jax's bfloat16 compute.
- On CUDA every repeat ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from solid_jax.bench import timing

MODEL_KEYS = ("items", "semantics", "target", "target_semantic")


def torch_device(name: str = "auto") -> str:
  """"cuda" when asked or when ``name="auto"`` and CUDA is available, else "cpu"."""
  import torch  # pylint: disable=import-outside-toplevel
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return name


def _to_torch(batch: dict, device: str) -> tuple[dict, object]:
  import torch  # pylint: disable=import-outside-toplevel
  tensors = {k: torch.as_tensor(np.asarray(batch[k]).astype(np.int64), device=device)
             for k in MODEL_KEYS}
  labels = torch.as_tensor(np.asarray(batch["label"], np.float32), device=device)
  return tensors, labels


def _sync(device: str) -> Callable[[], None]:
  import torch  # pylint: disable=import-outside-toplevel
  if device.startswith("cuda"):
    return torch.cuda.synchronize
  return lambda: None


def _autocast(device: str, dtype: str):
  import torch  # pylint: disable=import-outside-toplevel
  if dtype == "bfloat16":
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
  return contextlib.nullcontext()


def bench_torch(cfg, build_model: Callable, train_step: Callable, host_batches: list[dict], *,
                phase: str, compile_model: bool, repeats: int, steps_per_repeat: int,
                warmup: int = 1, device: str = "cpu", dtype: str = "float32",
                learning_rate: float = 1e-3, seed: int = 0) -> tuple[list[float], dict]:
  """Times the reference's training step or forward.

  Args:
    cfg: the ModelConfig.
    build_model: ``build_torch_model``.
    train_step: ``train_step(model, opt, batch, labels) -> loss``.
    host_batches: NumPy batches (cycled), converted to tensors on ``device`` before timing.
    phase: "train" or "infer".
    compile_model: wrap the model in ``torch.compile``.
    repeats, steps_per_repeat, warmup: see `timing.time_repeats`.
    device: "cpu" or "cuda".
    dtype: "float32" or "bfloat16" (autocast).
    learning_rate: Adam's.
    seed: ``torch.manual_seed`` before building the model.

  Returns:
    (per-step ms per repeat, info: compile_s (first steps of the compiled model; None in eager), threads,
    final_loss).
  """
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  model = build_model(cfg).to(device)
  batches = [_to_torch(b, device) for b in host_batches]
  runner = torch.compile(model, dynamic=False) if compile_model else model
  sync = _sync(device)
  state = {"i": 0, "loss": None}
  if phase == "train":
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def one(i):
      batch, labels = batches[i % len(batches)]
      with _autocast(device, dtype):
        return train_step(runner, opt, batch, labels)
  elif phase == "infer":
    model.eval()

    def one(i):
      batch, _ = batches[i % len(batches)]
      with torch.inference_mode(), _autocast(device, dtype):
        return runner(batch)[0]
  else:
    raise ValueError(f"phase={phase!r}; expected 'train' or 'infer'")

  def run(n):
    out = None
    for _ in range(n):
      out = one(state["i"])
      state["i"] += 1
    state["loss"] = out

  compile_s = None
  if compile_model:
    # The first calls trace and compile (forward, and backward on the first backward pass); two
    # calls cover a recompilation triggered by the optimizer's state appearing after step one.
    start = time.perf_counter()
    run(2)
    sync()
    compile_s = time.perf_counter() - start
  step_ms = timing.time_repeats(run, sync, repeats=repeats, steps_per_repeat=steps_per_repeat,
                                warmup=warmup)
  loss = state["loss"]
  return step_ms, {
      "compile_s": compile_s,
      "threads": torch.get_num_threads(),
      "final_loss": float(loss.float().mean()) if phase == "train" and loss is not None else None,
  }

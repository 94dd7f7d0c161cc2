"""Throughput of the PyTorch reference (eager and ``torch.compile``), timed like `throughput`.

The caller passes the reference's ``build_torch_model(cfg)`` and ``train_step(model, opt, batch,
labels)`` (``reference/torch_models.py``), so this module imports neither the reference nor, at
import time, torch.

- Training: ``train_step`` with ``torch.optim.Adam(lr)`` over the model's parameters, on tensors
  placed on the device before timing. ``torch.compile`` variant: the model's forward compiled
  (``dynamic=False``; AOTAutograd compiles the backward too); the first two steps, which compile,
  are timed apart as ``compile_s`` (their execution included).
- Grouped training batches (``target`` and ``label`` [B, G], ``step.to_groups``) run the
  reference's grouped forward (each history encoded once, like solid_jax's grouped step);
  ``batch_size`` counts rows (B * G).
- Inference: ``model(batch)`` under ``torch.inference_mode()`` (the reference computes the per-user
  weights and applies them in one forward: the work of solid_jax's generate + score).
- ``dtype="bfloat16"``: ``torch.autocast`` mixed precision (float32 master weights), the counterpart
  of solid_jax's bfloat16 compute.
- ``threads``: intra-op threads while this benchmark runs (0: torch's default, the number of cores).
- On CUDA every repeat ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from benchmarks import timing

MODEL_KEYS = ("items", "semantics", "target", "target_semantic")


def torch_device(name: str = "auto") -> str:
  """ "cuda" when asked or when ``name="auto"`` and CUDA is available, else "cpu"."""
  import torch  # pylint: disable=import-outside-toplevel

  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return name


def _to_torch(batch: dict, device: str) -> tuple[dict, object]:
  import torch  # pylint: disable=import-outside-toplevel

  tensors = {
    k: torch.as_tensor(np.asarray(batch[k]).astype(np.int64), device=device) for k in MODEL_KEYS
  }
  labels = torch.as_tensor(np.asarray(batch["label"], np.float32), device=device)
  return tensors, labels


@contextlib.contextmanager
def _threads(n: int):
  import torch  # pylint: disable=import-outside-toplevel

  before = torch.get_num_threads()
  if n:
    torch.set_num_threads(n)
  try:
    yield
  finally:
    torch.set_num_threads(before)


class TorchBench:
  """The reference's training step or forward on device-resident tensors, ready to time.

  Args:
    cfg: the ModelConfig.
    build_model: ``build_torch_model``.
    train_step: ``train_step(model, opt, batch, labels) -> loss``.
    host_batches: NumPy batches (cycled), converted to tensors on ``device`` here.
    phase: "train" or "infer".
    compile_model: wrap the model in ``torch.compile``.
    device: "cpu" or "cuda".
    dtype: "float32" or "bfloat16" (autocast).
    threads: intra-op threads (0: torch's default).
    learning_rate: Adam's.
    seed: ``torch.manual_seed`` before building the model.
  """

  def __init__(
    self,
    cfg,
    build_model: Callable,
    train_step: Callable,
    host_batches: list[dict],
    *,
    phase: str,
    compile_model: bool,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int = 0,
    learning_rate: float = 1e-3,
    seed: int = 0,
  ):
    import torch  # pylint: disable=import-outside-toplevel

    if phase not in ("train", "infer"):
      raise ValueError(f"phase={phase!r}; expected 'train' or 'infer'")
    self.phase, self.device, self.dtype, self.threads = phase, device, dtype, threads
    torch.manual_seed(seed)
    self.model = build_model(cfg).to(device)
    self.batches = [_to_torch(b, device) for b in host_batches]
    self.batch_size = int(np.asarray(host_batches[0]["label"]).size)  # rows (grouped: B * G)
    self.runner = torch.compile(self.model, dynamic=False) if compile_model else self.model
    self.train_step = train_step
    if phase == "train":
      self.model.train()
      self.opt = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
    else:
      self.model.eval()
    self.i = 0
    self.out = None
    self.compile_s = None
    if compile_model:
      with _threads(threads):
        start = time.perf_counter()
        self.run(2)
        self.sync()
        self.compile_s = time.perf_counter() - start

  def _autocast(self):
    import torch  # pylint: disable=import-outside-toplevel

    if self.dtype == "bfloat16":
      return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def run(self, n: int) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    for _ in range(n):
      batch, labels = self.batches[self.i % len(self.batches)]
      with self._autocast():
        if self.phase == "train":
          self.out = self.train_step(self.runner, self.opt, batch, labels)
        else:
          with torch.inference_mode():
            self.out = self.runner(batch)[0]
      self.i += 1

  def sync(self) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    if self.device.startswith("cuda"):
      torch.cuda.synchronize()

  def time(self, *, repeats: int, steps_per_repeat: int, warmup: int = 1) -> list[float]:
    with _threads(self.threads):
      return timing.time_repeats(
        self.run, self.sync, repeats=repeats, steps_per_repeat=steps_per_repeat, warmup=warmup
      )

  def summary(self) -> dict:
    import torch  # pylint: disable=import-outside-toplevel

    with _threads(self.threads):
      threads = torch.get_num_threads()
    loss = None
    if self.phase == "train" and self.out is not None:
      loss = float(self.out.float().mean())
    return {"compile_s": self.compile_s, "threads": threads, "final_loss": loss}

"""Throughput of solid_jax models: the training step and the inference pass, timed honestly.

- Training: the training loop's own step (``solid_jax.train.step.make_train_step``), so what is
  timed is what trains: one jitted function ``(params, opt_state, batch, step) -> (params,
  opt_state, scalars)`` with ``params`` and ``opt_state`` donated; Adam (optax) on ``sum(weight *
  BCE) / sum(weight) + aux["aux_loss"]``, updates masked by ``model.trainable``, then
  ``model.update_state``.
- Inference: ``score(params, generate(params, batch), batch)`` jitted as one function.
- Compilation (trace + lower + compile, ahead of time) is timed apart; the timed loop calls the
  compiled executable with batches placed on the device beforehand, under
  ``jax.transfer_guard("disallow")``, after an untimed warm-up, and waits with ``block_until_ready``
  before reading the clock.
- ``compute_dtype=bfloat16`` is mixed precision: float32 master parameters and optimizer state, the
  floating parameters cast to bfloat16 inside the step (the gradient flows back through the cast),
  the logits cast back to float32 for the loss.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from solid_jax.model_config import ModelConfig
from solid_jax.models import registry as models_registry
from solid_jax.train import step as step_lib
from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib

MODEL_KEYS = rows_lib.MODEL_KEYS
TRAIN_KEYS = MODEL_KEYS + ("label", "weight")

METHODS = models_registry.METHODS


def model_config(
  backbone: str,
  method: str,
  *,
  num_items: int,
  num_semantics: int,
  seq_len: int = 10,
  dim: int = 32,
  codebook: str = "straight_through",
) -> ModelConfig:
  """The ModelConfig of ``method`` as training builds it (stage 2 for the SOLID methods).

  Args:
    backbone: "sasrec" | "gru4rec" | "din" | "bert4rec".
    method: one of `METHODS`; "solid" uses DUET generators, "solid_apg" APG generators.
    num_items: vocabulary size incl. padding.
    num_semantics: semantic vocabulary size incl. padding.
    seq_len: L.
    dim: d.
    codebook: SOLID codebook mode.

  Returns:
    The frozen ModelConfig.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; expected one of {METHODS.names()}")
  fields = METHODS[method]
  extra = {"codebook": codebook} if fields["head"] == "solid" else {}
  return ModelConfig(
    backbone=backbone,
    **fields,
    num_items=num_items,
    num_semantics=num_semantics,
    seq_len=seq_len,
    dim=dim,
    **extra,
  )


def cast_floating(tree, dtype):
  """Casts the floating-point leaves of ``tree`` to ``dtype`` (integer leaves unchanged)."""

  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

  return jax.tree_util.tree_map(cast, tree)


def mixed_precision(model, compute_dtype):
  """``model`` with ``apply`` / ``generate`` / ``score`` on parameters cast to ``compute_dtype``.

  The parameters stay float32 outside (master weights, optimizer state); the gradient flows back to
  them through the cast. Logits are returned in float32.
  """
  if compute_dtype is None:
    return model

  # Flax's LayerNorm computes the statistics of low-precision inputs in float32 and mixes them
  # with the inputs implicitly, so the low-precision calls run under standard dtype promotion
  # whatever the caller's setting (the test suite's is strict).
  standard = functools.partial(jax.numpy_dtype_promotion, "standard")

  @functools.wraps(model.apply)
  def apply(params, batch, **kwargs):
    with standard():
      logits, aux = model.apply(cast_floating(params, compute_dtype), batch, **kwargs)
    return logits.astype(jnp.float32), aux

  @functools.wraps(model.generate)
  def generate(params, batch, **kwargs):
    with standard():
      return model.generate(cast_floating(params, compute_dtype), batch, **kwargs)

  @functools.wraps(model.score)
  def score(params, weights, batch, **kwargs):
    with standard():
      logits = model.score(cast_floating(params, compute_dtype), weights, batch, **kwargs)
    return logits.astype(jnp.float32)

  return model._replace(apply=apply, generate=generate, score=score)


def grouped_batches(host_batches: list[dict], group: int) -> list[dict]:
  """Row batches -> candidate-group batches (`rows.to_groups`): one history per G rows."""
  return [rows_lib.to_groups(select(b, TRAIN_KEYS + ("user",)), group) for b in host_batches]


def make_infer_fn(model) -> Callable:
  """The pure inference pass ``(params, batch) -> logits float32[B]`` (generate, then score)."""

  def infer(params, batch):
    weights = model.generate(params, batch)
    return model.score(params, weights, batch).astype(jnp.float32)

  return infer


def select(batch: dict, keys) -> dict:
  return {k: batch[k] for k in keys}


def _cost(compiled):
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return cost


def compile_timed(jitted, *args) -> tuple[Any, dict]:
  """Lowers and compiles a jitted function for ``args`` ahead of time, timing both.

  Returns:
    (compiled executable, {"trace_s", "compile_s", "cost": XLA cost analysis dict or None,
    "hlo": the optimized HLO text}).
  """
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  traced = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  return compiled, {
    "trace_s": traced - start,
    "compile_s": done - traced,
    "cost": _cost(compiled),
    "hlo": compiled.as_text(),
  }


def cost_per_sample(cost, batch: int) -> dict:
  """XLA's flops and bytes accessed of one step, divided by the batch size."""
  if not cost:
    return {}
  out = {}
  if "flops" in cost:
    out["xla_flops_per_sample"] = float(cost["flops"]) / batch
  if "bytes accessed" in cost:
    out["xla_bytes_per_sample"] = float(cost["bytes accessed"]) / batch
  return out


class TrainBench:
  """The training loop's jitted step, compiled for device-resident batches, ready to time.

  ``grouped=True`` is the step the training loop runs on grouped training rows (a positive and its
  negatives share one history, encoded once: ``make_train_step(grouped=True)`` on
  ``rows_lib.to_groups`` batches); ``grouped=False`` treats every row on its own, like the PyTorch
  reference. Both process the same rows; ``batch_size`` counts rows.

  Args:
    model: a ``sj.Model``.
    params: initial parameters (copied to ``device``; the caller's arrays are not donated).
    host_batches: NumPy batches (cycled); placed on ``device`` here, explicitly.
    learning_rate: Adam's.
    compute_dtype: None or jnp.bfloat16 (see `mixed_precision`).
    device: target device (default: the first device).
    grouped: the grouped step (see above).
    embedding_optimizer: the item table's update (`solid_jax.train.optim.make_optimizer`).
  """

  def __init__(
    self,
    model,
    params,
    host_batches: list[dict],
    *,
    learning_rate: float = 1e-3,
    compute_dtype=None,
    device=None,
    grouped: bool = False,
    embedding_optimizer: str = "adam",
  ):
    self.device = device or jax.devices()[0]
    run_model = mixed_precision(model, compute_dtype)
    tx = optim_lib.make_optimizer(
      model, params, learning_rate, embedding_optimizer=embedding_optimizer
    )
    self.jitted = step_lib.make_train_step(run_model, tx, grouped=grouped)
    self.params = jax.device_put(jax.tree_util.tree_map(jnp.array, params), self.device)
    self.opt_state = jax.device_put(tx.init(self.params), self.device)
    self.batch_size = int(np.asarray(host_batches[0]["label"]).shape[0])
    self.group = None
    if grouped:
      self.group = rows_lib.candidate_groups(host_batches[0])
      if self.group is None or self.batch_size % self.group:
        raise ValueError(
          "grouped=True needs batches made of whole groups of rows sharing a history"
        )
      host_batches = grouped_batches(host_batches, self.group)
    self.batches = [jax.device_put(select(b, TRAIN_KEYS), self.device) for b in host_batches]
    self.step = jax.device_put(np.int32(0), self.device)
    self.compiled, self.info = compile_timed(
      self.jitted, self.params, self.opt_state, self.batches[0], self.step
    )
    self.i = 0
    self.out = None

  def run(self, n: int) -> None:
    """Issues ``n`` steps (asynchronously)."""
    p, o = self.params, self.opt_state
    for _ in range(n):
      p, o, self.out = self.compiled(p, o, self.batches[self.i % len(self.batches)], self.step)
      self.i += 1
    self.params, self.opt_state = p, o

  def sync(self) -> None:
    jax.block_until_ready((self.params, self.opt_state, self.out))

  def time(self, *, repeats: int, steps_per_repeat: int, warmup: int = 1) -> list[float]:
    """Per-step ms of each repeat, under ``jax.transfer_guard("disallow")``."""
    with jax.transfer_guard("disallow"):
      return timing.time_repeats(
        self.run, self.sync, repeats=repeats, steps_per_repeat=steps_per_repeat, warmup=warmup
      )

  def summary(self) -> dict:
    loss = None if self.out is None else float(np.asarray(self.out["loss"]))
    return {
      "trace_s": self.info["trace_s"],
      "compile_s": self.info["compile_s"],
      **cost_per_sample(self.info["cost"], self.batch_size),
      "final_loss": loss,
    }


class InferBench:
  """The jitted inference pass (generate + score), compiled for device-resident batches.

  Arguments as `TrainBench`.
  """

  def __init__(self, model, params, host_batches: list[dict], *, compute_dtype=None, device=None):
    self.device = device or jax.devices()[0]
    self.jitted = jax.jit(make_infer_fn(mixed_precision(model, compute_dtype)))
    self.params = jax.device_put(params, self.device)
    self.batches = [jax.device_put(select(b, MODEL_KEYS), self.device) for b in host_batches]
    self.batch_size = int(self.batches[0]["target"].shape[0])
    self.compiled, self.info = compile_timed(self.jitted, self.params, self.batches[0])
    self.i = 0
    self.out = None

  def run(self, n: int) -> None:
    for _ in range(n):
      self.out = self.compiled(self.params, self.batches[self.i % len(self.batches)])
      self.i += 1

  def sync(self) -> None:
    jax.block_until_ready(self.out)

  def time(self, *, repeats: int, steps_per_repeat: int, warmup: int = 1) -> list[float]:
    with jax.transfer_guard("disallow"):
      return timing.time_repeats(
        self.run, self.sync, repeats=repeats, steps_per_repeat=steps_per_repeat, warmup=warmup
      )

  def summary(self) -> dict:
    return {
      "trace_s": self.info["trace_s"],
      "compile_s": self.info["compile_s"],
      **cost_per_sample(self.info["cost"], self.batch_size),
    }

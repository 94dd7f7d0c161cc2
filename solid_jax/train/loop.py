"""train_stage: the one training loop (every stage of every method goes through it).

Sections: restore or initialise -> per epoch: train steps (prefetched batches, NaN/inf checks,
mid-epoch checkpoints) -> evaluate -> checkpoint + record -> at the end: restore the selected epoch,
evaluate test once, write ``result.json``.

Data parallelism: with several devices (and ``data_parallel``), the parameters and optimizer state
are replicated over a 1-D mesh of all devices of all processes, every training batch is padded with
zero-weight rows to a multiple of the device count and split over the mesh, and evaluation batches
are split the same way (``solid_jax.parallel``). The batches, the number of steps and the losses are
those of a one-device run; only the order of floating-point sums differs. With several processes
every process iterates over the same global batches and feeds the rows of its own devices.

Determinism and resume: every random draw of a stage comes from a stream of its own
(`solid_jax.train.streams`: one per seed, stage name and purpose): the initialisation from
``streams.key(seed, stage, "init")``, the batch order of an epoch from ``(seed, stage, "batches",
epoch)``, the per-step keys ``fold_in(streams.key(seed, stage, "dropout"), step)``; the training rows
of an epoch (negatives) are the `StageData`'s pure function of the epoch.
A checkpoint stores the parameters, the optimizer state, the position (epoch, step within the
epoch) and the running sums of the epoch, so a run restarted from any checkpoint computes exactly
what the uninterrupted run computes after it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, Iterable

from absl import logging
import jax
import numpy as np

from solid_jax import parallel
from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import train_config as config_lib
from solid_jax.train import reliability
from solid_jax.train import step as step_lib
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib
from solid_jax.train import streams
from solid_jax.train import writers

try:
  import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency; progress bars are optional
  tqdm = None


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class StageData:
  """The data of one stage.

  Attributes:
    train_rows: ``epoch -> dict of numpy arrays``, the training rows of an epoch (negatives
      resampled as a pure function of (seed, epoch)).
    valid: the validation split (dict of numpy arrays).
    test: the test split.
    valid_full, test_full: the users of the full-catalogue protocol
      (`solid_jax.data.full_ranking_users`), or None where the stage does not rank items.
    batches: ``(rows, batch_size, *, seed, epoch, shuffle, start_step) -> iterator of batches``
      (``solid_jax.data.batches``); every batch carries ``weight``.
  """

  train_rows: Callable[[int], dict[str, np.ndarray]]
  valid: dict[str, np.ndarray]
  test: dict[str, np.ndarray]
  batches: Callable[..., Iterable[dict[str, np.ndarray]]]
  valid_full: dict[str, np.ndarray] | None = None
  test_full: dict[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """What a stage trains.

  Attributes:
    name: stage name ("stage0", "stage1", "stage2", "main").
    directory: where its checkpoints, ``metrics.jsonl`` and ``result.json`` go.
    model: the Model (NamedTuple of pure functions).
    init: ``key -> params`` (e.g. ``model.init`` with ``codebook_init`` bound).
    epochs: number of epochs.
    transform: batch rewrite applied inside the compiled functions (``semantic_view`` in stage 1).
  """

  name: str
  directory: str
  model: Any
  init: Callable[[jax.Array], Any]
  epochs: int
  transform: Callable[[dict], dict] | None = None


RESULT_FILE = "result.json"
PER_USER_FILE = "per_user_{split}.npz"


def stopped_early(
  history: list[dict[str, Any]], patience: int, key: str, metric: str, rule: str = "select"
) -> bool:
  """Whether training stops after ``history`` (a pure function of the epoch records).

  Args:
    history: the epoch records so far.
    patience: epochs without improvement that stop the stage (0: never stop early).
    key: the record entry of the selection ("valid_full", "valid", ...).
    metric: the selection metric.
    rule: "select": the last ``patience`` epochs did not beat the best selection metric before
      them. "any": an epoch counts as an improvement when ANY metric of
      the ``key`` entry beats the metrics of the last improving epoch, which then becomes the
      reference as a whole; stop after ``patience`` epochs in a row without one.

  Returns:
    True when the stage stops.
  """
  if patience <= 0 or len(history) <= patience:
    return False
  if rule == "select":
    values = [_finite(r[key][metric]) for r in history]
    return max(values[-patience:]) <= max(values[:-patience])
  if rule != "any":
    raise ValueError(f"stop rule {rule!r}; expected one of {config_lib.STOP_RULES}")
  names = sorted(history[0][key])
  best = [_finite(history[0][key][n]) for n in names]
  waited = 0
  for record in history[1:]:
    values = [_finite(record[key][n]) for n in names]
    if any(v > b for v, b in zip(values, best)):
      best, waited = values, 0
    else:
      waited += 1
  return waited >= patience


def signal_name(watch: reliability.PreemptionWatch) -> str:
  import signal  # pylint: disable=import-outside-toplevel

  return signal.Signals(watch.received).name if watch.received else "a signal of another process"


def stage_result(directory: str) -> dict[str, Any] | None:
  """The result of a finished stage (``None`` when the stage has not finished)."""
  path = os.path.join(directory, RESULT_FILE)
  if not os.path.exists(path):
    return None
  import json  # pylint: disable=import-outside-toplevel

  with open(path) as f:
    return json.load(f)


def _host_copy(tree):
  """Independent host copies of every leaf (a replicated array is read from one local device).

  The donated device buffers are reused by the next step while an asynchronous save may still be
  writing, so the save gets its own buffers. Every leaf is fully replicated (one device, or the
  data-parallel mesh), so one addressable shard holds all of it, in every process.
  """

  def copy(x):
    if isinstance(x, jax.Array) and x.is_fully_replicated:
      x = x.addressable_data(0)
    return np.array(x, copy=True)

  return jax.tree.map(copy, tree)


def _mesh(data_parallel: bool) -> jax.sharding.Mesh | None:
  """The data-parallel mesh over every device of every process, or None for one device."""
  if jax.process_count() > 1 and not data_parallel:
    raise ValueError(
      f"data_parallel=False in a run of {jax.process_count()} processes: every process would "
      "train the same model alone; launch a single process or turn data parallelism on"
    )
  if not data_parallel or jax.device_count() == 1:
    return None
  return parallel.make_mesh()


def _progress_bar(total_rows, initial_rows, desc, enabled):
  if not enabled or tqdm is None or not sys.stderr.isatty():
    return None
  return tqdm.tqdm(
    total=total_rows,
    initial=initial_rows,
    desc=desc,
    unit="sample",
    unit_scale=True,
    dynamic_ncols=True,
    leave=False,
  )


class _Running:
  """Sums of the step scalars over an epoch (host float64, in step order)."""

  def __init__(self, state: dict[str, Any] | None = None):
    state = state or {}
    self.sums = dict(state.get("sums", {}))
    self.count = int(state.get("count", 0))
    self.weight = float(state.get("weight", 0.0))

  def add(self, scalars: dict[str, np.ndarray]) -> None:
    # One step at a time, so the sums do not depend on how steps were fetched in chunks (the
    # check and checkpoint intervals). The loss is averaged over rows, the statistics over steps.
    weights = [float(w) for w in scalars["weight"]]
    for key, values in scalars.items():
      if key == "weight":
        continue
      total = self.sums.get(key, 0.0)
      for value, weight in zip(values.tolist(), weights):
        total += value * weight if key in ("loss", "bce") else value
      self.sums[key] = total
    self.count += len(weights)
    for weight in weights:
      self.weight += weight

  def means(self) -> dict[str, float]:
    out = {}
    for key, total in self.sums.items():
      denom = self.weight if key in ("loss", "bce") else self.count
      out[key] = total / denom if denom else float("nan")
    return out

  def state(self) -> dict[str, Any]:
    return {"sums": dict(self.sums), "count": self.count, "weight": self.weight}


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How `train_stage` trains and evaluates a stage (every field a `TrainConfig` field of the
  same name, `stages.loop_settings`).

  Attributes:
    seed: seed of the init, the batch order and the per-step keys.
    batch_size: training rows per step (with ``group_candidates``: ``round(batch_size / G)``
      histories of G candidates each).
    lr: Adam learning rate.
    eval_batch_size: rows per evaluation batch.
    select_on: "valid" (select the epoch on validation, evaluate test once at the end) or
      "test" (the authors' protocol: test is evaluated every epoch and selects the epoch).
    checkpoint_every_steps: also checkpoint every N global steps within an epoch (0: never).
    check_every_steps: fetch and check the step losses every N steps.
    prefetch: batches transferred ahead of the step (``parallel.device_prefetch``).
    progress: show a progress bar when stderr is a terminal.
    tensorboard: also write TensorBoard event files.
    group_candidates: when the training rows come in groups (a positive and its negatives share
      one history, ``rows_lib.candidate_groups``), batch whole groups and encode each history once
      (``step.make_train_step(grouped=True)``); otherwise batch single rows.
    data_parallel: when there are several devices (``jax.device_count()``, all processes), split
      every batch over all of them (see the module docstring); one device is used otherwise. With
      several processes only process 0 writes ``metrics.jsonl``, TensorBoard files and
      ``result.json``; the checkpoints are written by all (Orbax), in a directory they share.
    select_metric: ``"full:<metric>"`` or ``"sampled:<metric>"`` (`config.parse_select_metric`),
      higher is better. A stage without full-catalogue users (stage 1 ranks semantic ids) is
      selected on ``sampled:uauc``.
    eval_protocol: "sampled", "full" or "both": what every epoch evaluates.
    patience: stop after this many epochs without improvement (0: off), see `stopped_early`.
    weight_decay: AdamW's decoupled weight decay (0: Adam).
    grad_clip_norm: global-norm gradient clipping (0: off).
    embedding_optimizer, embedding_lr: the update of the item table (`optim.make_optimizer`).
    save_scores: also save the raw sampled candidate scores of the selected epoch.
    stop_rule: what counts as an improvement: "select" (the selection metric) or "any" (any
      metric of the selection protocol).
  """

  seed: int
  batch_size: int
  lr: float
  eval_batch_size: int = 8192
  select_on: str = "valid"
  checkpoint_every_steps: int = 0
  check_every_steps: int = 50
  prefetch: int = 2
  progress: bool = True
  tensorboard: bool = True
  group_candidates: bool = True
  data_parallel: bool = True
  select_metric: str = "full:ndcg@10"
  eval_protocol: str = "both"
  patience: int = 0
  weight_decay: float = 0.0
  grad_clip_norm: float = 0.0
  embedding_optimizer: str = "adam"
  embedding_lr: float = 0.0
  save_scores: bool = False
  stop_rule: str = "select"


@dataclasses.dataclass
class EpochState:
  """Where a stage stands: what a checkpoint stores besides the parameters and optimizer state
  (``meta``), and the time and sample counts of the epoch under way.

  Attributes:
    epoch: the epoch under way (0-based).
    step_in_epoch: optimizer steps taken in it.
    global_step: optimizer steps taken in the stage.
    running: the epoch's running sums of the step scalars.
    history: the records of the finished epochs.
    train_seconds, train_samples, eval_seconds: totals over the finished epochs.
    epoch_start: ``time.perf_counter()`` when the epoch (or its resumed part) started.
    epoch_samples: rows trained in the epoch since ``epoch_start``.
  """

  epoch: int = 0
  step_in_epoch: int = 0
  global_step: int = 0
  running: _Running = dataclasses.field(default_factory=_Running)
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  train_seconds: float = 0.0
  train_samples: int = 0
  eval_seconds: float = 0.0
  epoch_start: float = 0.0
  epoch_samples: int = 0

  @classmethod
  def from_meta(cls, meta: dict[str, Any] | None) -> EpochState:
    """The state a checkpoint's ``meta`` describes (None: a fresh stage), positioned at the next
    step to take (an epoch that was complete moves on to the next one)."""
    if meta is None:
      return cls()
    epoch, step = int(meta["epoch"]), int(meta["step_in_epoch"])
    if meta["epoch_done"]:
      epoch, step = epoch + 1, 0
    return cls(
      epoch=epoch,
      step_in_epoch=step,
      global_step=int(meta["global_step"]),
      running=_Running(meta["running"] if step else None),
      history=list(meta["history"]),
      train_seconds=float(meta["train_seconds"]),
      train_samples=int(meta["train_samples"]),
      eval_seconds=float(meta["eval_seconds"]),
    )

  def next_epoch(self) -> None:
    """Moves on to the next epoch (after its record is in ``history``)."""
    self.epoch, self.step_in_epoch, self.running = self.epoch + 1, 0, _Running()

  def start_epoch(self) -> None:
    self.epoch_start, self.epoch_samples = time.perf_counter(), 0

  def meta(self, epoch_done: bool) -> dict[str, Any]:
    """The checkpoint ``meta`` of this state (``epoch_done``: the epoch's record is in
    ``history``, and its time and samples in the totals)."""
    partial = 0.0 if epoch_done else time.perf_counter() - self.epoch_start
    return {
      "epoch": self.epoch,
      "step_in_epoch": self.step_in_epoch,
      "global_step": self.global_step,
      "epoch_done": epoch_done,
      "running": self.running.state(),
      "history": list(self.history),
      "train_seconds": self.train_seconds + partial,
      "train_samples": self.train_samples + (0 if epoch_done else self.epoch_samples),
      "eval_seconds": self.eval_seconds,
    }


@dataclasses.dataclass(frozen=True)
class _EpochPlan:
  """How one epoch's rows are batched: ``units`` (rows, or candidate groups of ``group`` rows),
  ``unit_batch`` units per step."""

  num_rows: int
  units: dict[str, np.ndarray]
  unit_batch: int
  group: int

  @classmethod
  def of(cls, rows: dict[str, np.ndarray], settings: LoopSettings) -> _EpochPlan:
    group = rows_lib.candidate_groups(rows) if settings.group_candidates else None
    if group:
      units, unit_batch = (
        rows_lib.to_groups(rows, group),
        max(1, round(settings.batch_size / group)),
      )
    else:
      units, unit_batch, group = rows, settings.batch_size, 1
    return cls(len(rows["label"]), units, unit_batch, group)

  @property
  def num_units(self) -> int:
    return len(self.units["label"])

  @property
  def steps(self) -> int:
    return max(1, -(-self.num_units // self.unit_batch))

  def rows_of_step(self, step_in_epoch: int) -> int:
    """Rows trained by the step that brings the epoch to ``step_in_epoch`` steps."""
    return self.group * min(self.unit_batch, self.num_units - (step_in_epoch - 1) * self.unit_batch)


class _PendingScalars:
  """Step scalars not yet fetched from the device; `flush` fetches them in one transfer, checks
  the losses and adds them to the epoch's running sums."""

  def __init__(self, spec: StageSpec, ckpts: checkpoint_lib.StageCheckpoints):
    self.spec, self.ckpts = spec, ckpts
    self.scalars: list[dict[str, jax.Array]] = []

  def append(self, scalars: dict[str, jax.Array]) -> None:
    self.scalars.append(scalars)

  def __len__(self) -> int:
    return len(self.scalars)

  def flush(self, state: EpochState, steps_per_epoch: int) -> None:
    """Raises NonFiniteLossError naming the first bad step (global and within the epoch)."""
    if not self.scalars:
      return
    fetched = jax.device_get(self.scalars)
    scalars = {k: np.asarray([s[k] for s in fetched]) for k in fetched[0]}
    bad = np.flatnonzero(~np.isfinite(scalars["loss"]))
    if bad.size:
      first = int(bad[0])
      back = len(self.scalars) - first - 1  # steps taken after the bad one
      self.ckpts.wait()
      raise NonFiniteLossError(
        f"{self.spec.name}: non-finite training loss {scalars['loss'][first]} at optimizer step "
        f"{state.global_step - back} (epoch {state.epoch + 1}, step "
        f"{state.step_in_epoch - back} of {steps_per_epoch} in the epoch); training stopped; "
        f"the last good checkpoint (step {self.ckpts.latest_step()}) is kept in "
        f"{self.spec.directory}"
      )
    state.running.add(scalars)
    self.scalars = []


@dataclasses.dataclass(frozen=True)
class _Evaluation:
  """The evaluators of a stage and the epoch selection they feed."""

  valid: Any  # evaluator_lib.Evaluator (sampled) or None
  test: Any
  valid_full: Any  # full_eval.FullEvaluator or None
  test_full: Any
  select_key: str  # the record entry that selects ("valid", "valid_full", ...)
  protocol: str
  metric: str
  # evaluator_lib.CodebookUsage of "valid" and "test" for models with a codebook, else None.
  codebook: dict[str, Any] | None = None

  @classmethod
  def build(
    cls,
    spec: StageSpec,
    data: StageData,
    settings: LoopSettings,
    mesh,
    *,
    scorers: dict | None = None,
  ) -> _Evaluation:
    """``scorers``: compiled scorers shared with other stages of the same model (a population's
    members), so that they compile once."""
    from solid_jax.train import full_eval  # pylint: disable=import-outside-toplevel

    protocol, metric = config_lib.parse_select_metric(settings.select_metric)
    with_full = (
      settings.eval_protocol in ("full", "both")
      and data.valid_full is not None
      and spec.transform is None
    )
    with_sampled = settings.eval_protocol in ("sampled", "both")
    if protocol == "full" and not with_full:
      logging.info(
        "%s: no full-catalogue ranking in this stage; the epoch is selected on sampled UAUC",
        spec.name,
      )
      protocol, metric, with_sampled = "sampled", "uauc", True
    scorers = {} if scorers is None else scorers

    def sampled(split):
      if not with_sampled:
        return None
      return evaluator_lib.Evaluator(
        spec.model,
        split,
        settings.eval_batch_size,
        transform=spec.transform,
        scorers=scorers,
        mesh=mesh,
      )

    def full(users):
      if not with_full:
        return None
      return full_eval.FullEvaluator(spec.model, users, mesh=mesh, compiled=scorers)

    codebook = None
    if _reports_codebook(spec.model):
      codebook = {
        split: evaluator_lib.CodebookUsage(
          spec.model, rows, settings.eval_batch_size, transform=spec.transform, mesh=mesh
        )
        for split, rows in (("valid", data.valid), ("test", data.test))
      }

    return cls(
      valid=sampled(data.valid),
      test=sampled(data.test),
      valid_full=full(data.valid_full),
      test_full=full(data.test_full),
      select_key=settings.select_on + ("_full" if protocol == "full" else ""),
      protocol=protocol,
      metric=metric,
      codebook=codebook,
    )

  def of(self, split: str) -> tuple[Any, Any]:
    """(sampled, full) evaluators of "valid" or "test"."""
    return (self.valid, self.valid_full) if split == "valid" else (self.test, self.test_full)

  def __call__(self, split: str, params) -> dict[str, dict[str, float]]:
    out = {}
    sampled, full = self.of(split)
    if sampled is not None:
      out[split] = sampled(params)
    if full is not None:
      out[split + "_full"] = full(params)
    out.update(self.codebook_usage(split, params))
    return out

  def codebook_usage(self, split: str, params) -> dict[str, dict[str, float]]:
    """``{split + "_codebook": CodebookUsage}`` of a model with a codebook, else ``{}``."""
    if self.codebook is None:
      return {}
    return {split + "_codebook": self.codebook[split](params)}

  def selection(self, record: dict[str, Any]) -> float:
    """The selection metric of an epoch record, as its checkpoint ranks it (-inf for NaN)."""
    value = record[self.select_key][self.metric]
    return value if math.isfinite(value) else -math.inf

  def stopped(self, history, settings: LoopSettings) -> bool:
    return stopped_early(
      history, settings.patience, self.select_key, self.metric, settings.stop_rule
    )


class _StepFunctions:
  """The compiled train steps of a stage, one per batch kind (rows / candidate groups), built on
  first use; sharded over the mesh when there is one."""

  def __init__(self, spec: StageSpec, tx, key, mesh):
    self.spec, self.tx, self.key, self.mesh = spec, tx, key, mesh
    self.fns = {}

  def __call__(self, grouped: bool):
    if grouped not in self.fns:
      fn = step_lib.make_train_step(
        self.spec.model, self.tx, key=self.key, transform=self.spec.transform, grouped=grouped
      )
      # The sharded step jits the loop's pure step with the batch split and the rest replicated.
      self.fns[grouped] = (
        fn if self.mesh is None else parallel.make_sharded_train_step(fn.__wrapped__, self.mesh)
      )
    return self.fns[grouped]


def _feed(batches, mesh, prefetch: int):
  """Host batches -> device batches, ``prefetch`` ahead; split over the mesh when there is one."""
  if mesh is None:
    return parallel.device_prefetch(batches, prefetch)
  # Zero-weight rows up to a multiple of the device count leave the loss unchanged (weighted
  # BCE; the auxiliary losses mask rows by weight); each process keeps its devices' rows.
  host = (parallel.process_rows(parallel.pad_batch(b, mesh.size), mesh) for b in batches)
  return parallel.device_prefetch(host, prefetch, sharding=parallel.batch_sharding(mesh))


def _read_back(spec: StageSpec, patience: int) -> tuple[dict[str, Any], Any] | None:
  """(result, selected params) of a stage that finished with these epochs and patience, or None
  (not finished, or finished with other ones: then it trains on from its latest checkpoint)."""
  done = stage_result(spec.directory)
  if done is None:
    return None
  if (done.get("epochs", spec.epochs), done.get("patience", patience)) != (spec.epochs, patience):
    logging.info(
      "%s: finished with epochs=%s patience=%s; continuing to epochs=%d patience=%d",
      spec.name,
      done.get("epochs"),
      done.get("patience"),
      spec.epochs,
      patience,
    )
    return None
  with checkpoint_lib.StageCheckpoints(spec.directory, read_only=True) as ckpts:
    params = ckpts.restore_params(done["selected_step"])
  logging.info(
    "%s: finished before (selected epoch %d); read back from %s",
    spec.name,
    done["selected_epoch"],
    spec.directory,
  )
  return done, params


def train_stage(
  spec: StageSpec, data: StageData, settings: LoopSettings
) -> tuple[dict[str, Any], Any]:
  """Trains one stage, resuming from its latest checkpoint, and returns its result.

  Args:
    spec: what to train and where.
    data: the stage's data (unused when the stage finished before).
    settings: how to train and evaluate it.

  Returns:
    (result, params): the stage result dict (as written to ``result.json``: selected epoch and
    step, the metrics there (``valid`` / ``test``: sampled, ``valid_full`` / ``test_full``: full
    catalogue), ``stopped_epoch`` and ``stop_reason``, history, timing, ``devices``: the number of
    devices the launch that finished the stage trained on) and the parameters of the selected epoch
    (replicated over the mesh when data-parallel). A stage whose ``result.json`` exists is read
    back, not retrained.

  Raises:
    NonFiniteLossError: the loss became NaN/inf; the message names the global step and the epoch;
      the checkpoints written before stay as they are.
    reliability.Preempted: SIGTERM/SIGINT (or another process's): checkpointed at the next step
      boundary and stopped; the same call resumes there.
    ValueError: ``data_parallel`` is False in a run of several processes.
  """
  done = _read_back(spec, settings.patience)
  if done is not None:
    return done
  mesh = _mesh(settings.data_parallel)
  primary = jax.process_index() == 0  # the process that writes the records and the result
  os.makedirs(spec.directory, exist_ok=True)
  # One compiled init instead of many small eager dispatches.
  params = jax.jit(spec.init)(streams.key(settings.seed, spec.name, "init"))
  tx = optim_lib.make_optimizer(
    spec.model,
    params,
    settings.lr,
    weight_decay=settings.weight_decay,
    clip_norm=settings.grad_clip_norm,
    embedding_optimizer=settings.embedding_optimizer,
    embedding_lr=settings.embedding_lr,
  )
  opt_state = tx.init(params)
  if mesh is not None:
    logging.info(
      "%s: data parallel over %d devices (%d process(es)), mesh %s",
      spec.name,
      mesh.size,
      jax.process_count(),
      dict(mesh.shape),
    )
    # Replicated before a restore, so that Orbax restores straight into the replicated layout.
    params, opt_state = parallel.replicate((params, opt_state), mesh)
  step_fns = _StepFunctions(spec, tx, streams.key(settings.seed, spec.name, "dropout"), mesh)
  evaluation = _Evaluation.build(spec, data, settings, mesh)

  def step_arg(step):
    return np.int32(step) if mesh is None else parallel.replicate(np.int32(step), mesh)

  ckpts = checkpoint_lib.StageCheckpoints(spec.directory)
  good = ckpts.restore_latest_good(params, opt_state)
  meta = None
  if good is not None:
    latest, params, opt_state, meta = good
    logging.info(
      "%s: resuming from the checkpoint at step %d (epoch %d, step %d of the epoch)",
      spec.name,
      latest,
      meta["epoch"],
      meta["step_in_epoch"],
    )
  state = EpochState.from_meta(meta)
  writer = writers.StageWriter(
    spec.directory, spec.name, state.history, tensorboard=settings.tensorboard, files=primary
  )
  watch = reliability.PreemptionWatch(sync_every=settings.check_every_steps)
  pending = _PendingScalars(spec, ckpts)

  def save(epoch_done: bool, **kwargs):
    ckpts.save(
      state.global_step, _host_copy(params), _host_copy(opt_state), state.meta(epoch_done), **kwargs
    )

  def preempted():
    ckpts.wait()
    return reliability.Preempted(
      f"{spec.name}: stopped on {signal_name(watch)} after global step {state.global_step} "
      f"(epoch {state.epoch + 1}, step {state.step_in_epoch} of the epoch), checkpoint saved in "
      f"{spec.directory}; relaunch the same command to resume"
    )

  try:
    watch.__enter__()
    while state.epoch < spec.epochs and not evaluation.stopped(state.history, settings):
      plan = _EpochPlan.of(data.train_rows(state.epoch), settings)
      step_fn = step_fns(plan.group > 1)
      batches = data.batches(
        plan.units,
        plan.unit_batch,
        seed=streams.numpy_seed(settings.seed, spec.name, "batches"),
        epoch=state.epoch,
        shuffle=True,
        start_step=state.step_in_epoch,
      )
      bar = _progress_bar(
        plan.num_rows,
        min(state.step_in_epoch * plan.unit_batch * plan.group, plan.num_rows),
        f"{spec.name} epoch {state.epoch + 1}/{spec.epochs}",
        settings.progress,
      )
      state.start_epoch()
      for batch in _feed(batches, mesh, settings.prefetch):
        params, opt_state, scalars = step_fn(params, opt_state, batch, step_arg(state.global_step))
        pending.append(scalars)
        state.global_step += 1
        state.step_in_epoch += 1
        rows_done = plan.rows_of_step(state.step_in_epoch)
        state.epoch_samples += rows_done
        if bar is not None:
          bar.update(rows_done)
        if len(pending) >= settings.check_every_steps:
          pending.flush(state, plan.steps)
        mid_epoch = state.step_in_epoch < plan.steps
        saved = False
        every = settings.checkpoint_every_steps
        if every and state.global_step % every == 0 and mid_epoch:
          pending.flush(state, plan.steps)
          save(False)
          saved = True
        # Preemption: checkpoint this step boundary (the last step of an epoch checkpoints at
        # the epoch end instead, below) and stop.
        if mid_epoch and watch.should_stop(state.global_step):
          pending.flush(state, plan.steps)
          if not saved:
            save(False)
          raise preempted()
      pending.flush(state, plan.steps)
      if state.step_in_epoch != plan.steps:
        raise RuntimeError(
          f"{spec.name}: the batch iterator of epoch {state.epoch} stopped at step "
          f"{state.step_in_epoch}, expected {plan.steps}"
        )
      jax.block_until_ready(params)
      seconds = time.perf_counter() - state.epoch_start
      if bar is not None:
        bar.close()
      record = _end_epoch(state, seconds, params, evaluation, settings)
      save(True, selection=evaluation.selection(record))
      writer.write_epoch(record)
      if watch.should_stop(state.global_step) and state.epoch + 1 < spec.epochs:
        raise preempted()
      state.next_epoch()
    ckpts.wait()
  except BaseException:
    # Let saves already under way complete (they hold good states), then re-raise.
    try:
      ckpts.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("%s: a pending checkpoint could not be completed: %s", spec.name, e)
    raise
  finally:
    watch.__exit__(None, None, None)
    writer.close()
  return _finish(spec, state, params, ckpts, evaluation, settings, mesh, primary)


def _end_epoch(
  state: EpochState, seconds: float, params, evaluation: _Evaluation, settings: LoopSettings
) -> dict[str, Any]:
  """Adds the epoch's time and samples to the totals, evaluates, and appends the epoch's record
  to ``state.history`` (returned)."""
  rate = state.epoch_samples / seconds if seconds > 0 else float("nan")
  state.train_seconds += seconds
  state.train_samples += state.epoch_samples
  state.start_epoch()
  eval_start = time.perf_counter()
  record = {"epoch": state.epoch + 1, "step": state.global_step}
  record.update(evaluation("valid", params))
  if settings.select_on == "test":
    record.update(evaluation("test", params))
  state.eval_seconds += time.perf_counter() - eval_start
  means = state.running.means()
  record["train_loss"] = means.pop("loss")
  record["train"] = means
  record["samples_per_s"] = rate
  record["seconds"] = seconds + time.perf_counter() - eval_start
  state.history.append(record)
  return record


def _finish(spec, state, params, ckpts, evaluation, settings, mesh, primary):
  """Restores the selected epoch, evaluates it (test for the first time under "valid"
  selection), writes the per-user files and ``result.json``; returns (result, params)."""
  history = state.history
  if not history:
    raise ValueError(f"{spec.name}: no epoch was trained (epochs={spec.epochs})")
  key, metric = evaluation.select_key, evaluation.metric
  best = max(history, key=lambda r: (_finite(r[key][metric]), -r["step"]))
  stop_reason = "patience" if evaluation.stopped(history, settings) else "max_epochs"
  params = ckpts.restore_params(best["step"], params)
  ckpts.close()
  final = {k: best[k] for k in ("valid", "valid_full", "valid_codebook") if k in best}
  if settings.select_on == "test":
    final.update({k: best[k] for k in ("test", "test_full", "test_codebook") if k in best})
  else:
    final.update(evaluation.codebook_usage("test", params))
  for split in ("valid", "test"):
    # Every process evaluates (the scorers are collective over the mesh); process 0 writes.
    sampled, full = evaluation.of(split)
    metrics, rows = evaluate_selected(
      params, split, sampled, full, save_scores=settings.save_scores
    )
    if split == "test" and settings.select_on != "test":
      final.update(metrics)  # test is evaluated once, here, at the selected epoch
    if primary:
      write_per_user(os.path.join(spec.directory, PER_USER_FILE.format(split=split)), rows)
  result = {
    "stage": spec.name,
    "selected_epoch": best["epoch"],
    "selected_step": best["step"],
    **final,
    "epochs": spec.epochs,
    "stopped_epoch": len(history),
    "stop_reason": stop_reason,
    "patience": settings.patience,
    "stop_rule": settings.stop_rule,
    "selection": {"split": settings.select_on, "protocol": evaluation.protocol, "metric": metric},
    "train_seconds": state.train_seconds,
    "eval_seconds": state.eval_seconds,
    "train_samples": state.train_samples,
    "train_samples_per_s": (
      state.train_samples / state.train_seconds if state.train_seconds > 0 else None
    ),
    "devices": 1 if mesh is None else mesh.size,
    "history": history,
  }
  if primary:
    writers.write_json_atomic(os.path.join(spec.directory, RESULT_FILE), result)
  return result, params


def evaluate_selected(
  params, split: str, sampled, full, *, save_scores: bool = False
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
  """One split under both protocols, with its per-user metrics, from one scoring pass each.

  Args:
    params: the parameters.
    split: "valid" or "test" (the keys of the metrics: ``split`` and ``split + "_full"``).
    sampled: the split's `evaluator_lib.Evaluator` (or None).
    full: its `full_eval.FullEvaluator` (or None).
    save_scores: also keep the raw sampled candidate scores in the rows.

  Returns:
    ``({split: sampled metrics, split_full: full metrics}, rows)`` where ``rows`` holds the
    per-user arrays described in `write_per_user`. In a multi-process run every process must call
    this (the scorers run over the whole mesh).
  """
  from solid_jax import ranking  # pylint: disable=import-outside-toplevel

  metrics, out = {}, {}
  if sampled is not None:
    scores = sampled.host_scores(params)
    metrics[split] = sampled.metrics_of(scores)
    if sampled.group is not None:
      rows = ranking.sampled_per_user(scores, sampled.labels, sampled.group)
      out["sampled/user"] = sampled.users[:: sampled.group]
      out.update({f"sampled/{k}": v for k, v in rows.items()})
      if save_scores:
        out["sampled/scores"] = scores.reshape(-1, sampled.group)
        out["sampled/candidates"] = sampled.targets.reshape(-1, sampled.group)
  if full is not None:
    metrics[split + "_full"], rows = full.evaluate(params, per_user=True)
    out.update({f"full/{k}": v for k, v in rows.items()})
  return metrics, out


def write_per_user(path: str, rows: dict[str, np.ndarray]) -> None:
  """Writes per-user metrics (`evaluate_selected`) to an ``.npz`` file, atomically.

  Keys: ``sampled/user`` and ``sampled/<m>`` for m in auc, hr@k, ndcg@k, rr, above, ties (the
  negatives above / tied with the positive); ``full/user`` and ``full/<m>`` for hr@k, ndcg@k, rr,
  above, ties (ranked items above / tied with the target); with ``save_scores`` also
  ``sampled/scores`` and ``sampled/candidates`` float32 / int32[U, G] (the positive first). Users
  are in the same order in every run of a data set and seed, which paired tests between runs need
  (`experiments/significance.py`, `rescore.paired_permutation_test`).
  """
  if not rows:
    return
  tmp = path + ".tmp.npz"
  np.savez(tmp, **rows)
  os.replace(tmp, path)


def _reports_codebook(model) -> bool:
  """Whether ``model.apply`` returns ``"codebook/counts"`` (traced abstractly, nothing runs)."""
  from solid_jax.models.recommender import example_batch  # pylint: disable=import-outside-toplevel

  try:
    params = jax.eval_shape(model.init, jax.random.key(0))
    batch = example_batch(model.config)
    _, aux = jax.eval_shape(model.apply, params, batch)
  except Exception:  # pylint: disable=broad-except
    return False  # a plugin model this probe cannot trace: no codebook report
  return "codebook/counts" in aux


def _finite(x: float) -> float:
  return x if math.isfinite(x) else -math.inf

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

Determinism and resume: the training rows of an epoch are a pure function of (seed, epoch), the
batch order a pure function of (seed, epoch, step) and per-step keys ``fold_in(key(seed), step)``.
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
from solid_jax.train import config as config_lib
from solid_jax.train import reliability
from solid_jax.train import step as step_lib
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib
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


def train_stage(
  spec: StageSpec,
  data: StageData,
  *,
  seed: int,
  batch_size: int,
  lr: float,
  eval_batch_size: int = 8192,
  select_on: str = "valid",
  checkpoint_every_steps: int = 0,
  check_every_steps: int = 50,
  prefetch: int = 2,
  progress: bool = True,
  tensorboard: bool = True,
  group_candidates: bool = True,
  data_parallel: bool = True,
  select_metric: str = "full:ndcg@10",
  eval_protocol: str = "both",
  patience: int = 0,
  weight_decay: float = 0.0,
  grad_clip_norm: float = 0.0,
  save_scores: bool = False,
  stop_rule: str = "select",
) -> tuple[dict[str, Any], Any]:
  """Trains one stage, resuming from its latest checkpoint, and returns its result.

  Args:
    spec: what to train and where.
    data: the stage's data.
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
    stop_rule: what counts as an improvement: "select" (the selection metric) or "any" (any
      metric of the selection protocol).
    weight_decay: AdamW's decoupled weight decay (0: Adam).
    grad_clip_norm: global-norm gradient clipping (0: off).
    save_scores: also save the raw sampled candidate scores of the selected epoch.

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
    ValueError: ``data_parallel`` is False in a run of several processes.
  """
  done = stage_result(spec.directory)
  if done is not None and (done.get("epochs", spec.epochs), done.get("patience", patience)) != (
    spec.epochs,
    patience,
  ):
    # Continued with a larger --epochs / --patience: train on from the latest checkpoint.
    logging.info(
      "%s: finished with epochs=%s patience=%s; continuing to epochs=%d patience=%d",
      spec.name,
      done.get("epochs"),
      done.get("patience"),
      spec.epochs,
      patience,
    )
    done = None
  if done is not None:  # finished before: read back, do not retrain
    with checkpoint_lib.StageCheckpoints(spec.directory, read_only=True) as ckpts:
      params = ckpts.restore_params(done["selected_step"])
    logging.info(
      "%s: finished before (selected epoch %d); read back from %s",
      spec.name,
      done["selected_epoch"],
      spec.directory,
    )
    return done, params
  mesh = _mesh(data_parallel)
  primary = jax.process_index() == 0  # the process that writes the records and the result
  os.makedirs(spec.directory, exist_ok=True)
  model = spec.model
  root = jax.random.key(seed)
  # One compiled init instead of many small eager dispatches.
  params = jax.jit(spec.init)(jax.random.fold_in(root, 0))
  tx = optim_lib.make_optimizer(
    model, params, lr, weight_decay=weight_decay, clip_norm=grad_clip_norm
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
  sharding = None if mesh is None else parallel.batch_sharding(mesh)
  step_fns = {}

  def get_step_fn(grouped):
    if grouped not in step_fns:
      fn = step_lib.make_train_step(model, tx, seed=seed, transform=spec.transform, grouped=grouped)
      # The sharded step jits the loop's pure step with the batch split and the rest replicated.
      step_fns[grouped] = (
        fn if mesh is None else parallel.make_sharded_train_step(fn.__wrapped__, mesh)
      )
    return step_fns[grouped]

  def feed(batches):
    """Host batches -> device batches, ``prefetch`` ahead; split over the mesh when there is one."""
    if mesh is None:
      return parallel.device_prefetch(batches, prefetch)
    # Zero-weight rows up to a multiple of the device count leave the loss unchanged (weighted
    # BCE; the auxiliary losses mask rows by weight); each process keeps its devices' rows.
    host = (parallel.process_rows(parallel.pad_batch(b, mesh.size), mesh) for b in batches)
    return parallel.device_prefetch(host, prefetch, sharding=sharding)

  def step_arg(step):
    return np.int32(step) if mesh is None else parallel.replicate(np.int32(step), mesh)

  from solid_jax.train import full_eval  # pylint: disable=import-outside-toplevel

  protocol, metric = config_lib.parse_select_metric(select_metric)
  with_full = (
    eval_protocol in ("full", "both") and data.valid_full is not None and spec.transform is None
  )
  with_sampled = eval_protocol in ("sampled", "both")
  if protocol == "full" and not with_full:
    logging.info(
      "%s: no full-catalogue ranking in this stage; the epoch is selected on sampled UAUC",
      spec.name,
    )
    protocol, metric, with_sampled = "sampled", "uauc", True
  select_key = select_on + ("_full" if protocol == "full" else "")
  scorers = {}
  valid_eval = (
    evaluator_lib.Evaluator(
      model, data.valid, eval_batch_size, transform=spec.transform, scorers=scorers, mesh=mesh
    )
    if with_sampled
    else None
  )
  test_eval = (
    evaluator_lib.Evaluator(
      model, data.test, eval_batch_size, transform=spec.transform, scorers=scorers, mesh=mesh
    )
    if with_sampled
    else None
  )
  valid_full = full_eval.FullEvaluator(model, data.valid_full, mesh=mesh) if with_full else None
  test_full = full_eval.FullEvaluator(model, data.test_full, mesh=mesh) if with_full else None

  def evaluate_split(split, p):
    out = {}
    sampled, full = (valid_eval, valid_full) if split == "valid" else (test_eval, test_full)
    if sampled is not None:
      out[split] = sampled(p)
    if full is not None:
      out[split + "_full"] = full(p)
    return out

  ckpts = checkpoint_lib.StageCheckpoints(spec.directory)
  good = ckpts.restore_latest_good(params, opt_state)
  if good is not None:
    latest, params, opt_state, meta = good
    logging.info(
      "%s: resuming from the checkpoint at step %d (epoch %d, step %d of the epoch)",
      spec.name,
      latest,
      meta["epoch"],
      meta["step_in_epoch"],
    )
  else:
    meta = {
      "epoch": 0,
      "step_in_epoch": 0,
      "global_step": 0,
      "epoch_done": False,
      "running": None,
      "history": [],
      "train_seconds": 0.0,
      "train_samples": 0,
      "eval_seconds": 0.0,
    }
  history = list(meta["history"])
  writer = writers.StageWriter(
    spec.directory, spec.name, history, tensorboard=tensorboard, files=primary
  )

  epoch, start_step = int(meta["epoch"]), int(meta["step_in_epoch"])
  if meta["epoch_done"]:
    epoch, start_step = epoch + 1, 0
  global_step = int(meta["global_step"])
  train_seconds, train_samples = float(meta["train_seconds"]), int(meta["train_samples"])
  eval_seconds = float(meta["eval_seconds"])
  running = _Running(meta["running"] if start_step else None)

  def snapshot(epoch_done):
    partial = 0.0 if epoch_done else time.perf_counter() - epoch_start
    return {
      "epoch": epoch,
      "step_in_epoch": step_in_epoch,
      "global_step": global_step,
      "epoch_done": epoch_done,
      "running": running.state(),
      "history": list(history),
      "train_seconds": train_seconds + partial,
      "train_samples": train_samples + (0 if epoch_done else epoch_samples),
      "eval_seconds": eval_seconds,
    }

  watch = reliability.PreemptionWatch(sync_every=check_every_steps)

  def preempted(reason: str):
    ckpts.wait()
    return reliability.Preempted(
      f"{spec.name}: stopped on {reason} after global step {global_step} (epoch {epoch + 1}, "
      f"step {step_in_epoch} of the epoch), checkpoint saved in {spec.directory}; relaunch "
      "the same command to resume"
    )

  try:
    watch.__enter__()
    for epoch in range(epoch, spec.epochs):
      if stopped_early(history, patience, select_key, metric, stop_rule):
        break
      rows = data.train_rows(epoch)
      num_rows = len(rows["label"])
      group = rows_lib.candidate_groups(rows) if group_candidates else None
      if group:
        units, unit_batch = rows_lib.to_groups(rows, group), max(1, round(batch_size / group))
      else:
        units, unit_batch, group = rows, batch_size, 1
      step_fn = get_step_fn(group > 1)
      num_units = len(units["label"])
      steps_per_epoch = max(1, -(-num_units // unit_batch))
      batches = data.batches(
        units, unit_batch, seed=seed, epoch=epoch, shuffle=True, start_step=start_step
      )
      bar = _progress_bar(
        num_rows,
        min(start_step * unit_batch * group, num_rows),
        f"{spec.name} epoch {epoch + 1}/{spec.epochs}",
        progress,
      )
      pending, pending_base = [], global_step
      epoch_start, epoch_samples = time.perf_counter(), 0
      step_in_epoch = start_step

      def flush():
        nonlocal pending, pending_base
        if not pending:
          return
        fetched = jax.device_get(pending)
        scalars = {k: np.asarray([s[k] for s in fetched]) for k in fetched[0]}
        bad = np.flatnonzero(~np.isfinite(scalars["loss"]))
        if bad.size:
          first = int(bad[0])
          bad_global = pending_base + first + 1
          bad_in_epoch = step_in_epoch - len(pending) + first + 1
          ckpts.wait()
          raise NonFiniteLossError(
            f"{spec.name}: non-finite training loss {scalars['loss'][first]} at optimizer step "
            f"{bad_global} (epoch {epoch + 1}, step {bad_in_epoch} of {steps_per_epoch} in the "
            f"epoch); training stopped; the last good checkpoint (step {ckpts.latest_step()}) "
            f"is kept in {spec.directory}"
          )
        running.add(scalars)
        pending, pending_base = [], global_step

      for batch in feed(batches):
        params, opt_state, scalars = step_fn(params, opt_state, batch, step_arg(global_step))
        pending.append(scalars)
        global_step += 1
        step_in_epoch += 1
        rows_done = group * min(unit_batch, num_units - (step_in_epoch - 1) * unit_batch)
        epoch_samples += rows_done
        if bar is not None:
          bar.update(rows_done)
        if len(pending) >= check_every_steps:
          flush()
        saved = False
        if (
          checkpoint_every_steps
          and global_step % checkpoint_every_steps == 0
          and step_in_epoch < steps_per_epoch
        ):
          flush()
          ckpts.save(global_step, _host_copy(params), _host_copy(opt_state), snapshot(False))
          saved = True
        # Preemption: checkpoint this step boundary (the last step of an epoch checkpoints at
        # the epoch end instead, below) and stop.
        if step_in_epoch < steps_per_epoch and watch.should_stop(global_step):
          flush()
          if not saved:
            ckpts.save(global_step, _host_copy(params), _host_copy(opt_state), snapshot(False))
          raise preempted(signal_name(watch))
      flush()
      if step_in_epoch != steps_per_epoch:
        raise RuntimeError(
          f"{spec.name}: the batch iterator of epoch {epoch} stopped at step "
          f"{step_in_epoch}, expected {steps_per_epoch}"
        )
      jax.block_until_ready(params)
      seconds = time.perf_counter() - epoch_start
      rate = epoch_samples / seconds if seconds > 0 else float("nan")
      train_seconds += seconds
      train_samples += epoch_samples
      epoch_start, epoch_samples = time.perf_counter(), 0
      if bar is not None:
        bar.close()

      eval_start = time.perf_counter()
      record = {"epoch": epoch + 1, "step": global_step}
      record.update(evaluate_split("valid", params))
      if select_on == "test":
        record.update(evaluate_split("test", params))
      eval_seconds += time.perf_counter() - eval_start
      means = running.means()
      record["train_loss"] = means.pop("loss")
      record["train"] = means
      record["samples_per_s"] = rate
      record["seconds"] = seconds + time.perf_counter() - eval_start
      history.append(record)
      selection = record[select_key][metric]
      ckpts.save(
        global_step,
        _host_copy(params),
        _host_copy(opt_state),
        snapshot(True),
        selection=selection if math.isfinite(selection) else -math.inf,
      )
      writer.write_epoch(record)
      running = _Running()
      start_step = 0
      if watch.should_stop(global_step) and epoch + 1 < spec.epochs:
        raise preempted(signal_name(watch))
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

  if not history:
    raise ValueError(f"{spec.name}: no epoch was trained (epochs={spec.epochs})")
  best = max(history, key=lambda r: (_finite(r[select_key][metric]), -r["step"]))
  stop_reason = (
    "patience" if stopped_early(history, patience, select_key, metric, stop_rule) else "max_epochs"
  )
  params = ckpts.restore_params(best["step"], params)
  ckpts.close()
  final = {k: best[k] for k in ("valid", "valid_full") if k in best}
  if select_on == "test":
    final.update({k: best[k] for k in ("test", "test_full") if k in best})
  for split, sampled, full in (("valid", valid_eval, valid_full), ("test", test_eval, test_full)):
    # Every process evaluates (the scorers are collective over the mesh); process 0 writes.
    metrics, rows = evaluate_selected(params, split, sampled, full, save_scores=save_scores)
    if split == "test" and select_on != "test":
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
    "patience": patience,
    "stop_rule": stop_rule,
    "selection": {"split": select_on, "protocol": protocol, "metric": metric},
    "train_seconds": train_seconds,
    "eval_seconds": eval_seconds,
    "train_samples": train_samples,
    "train_samples_per_s": train_samples / train_seconds if train_seconds > 0 else None,
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


def _finite(x: float) -> float:
  return x if math.isfinite(x) else -math.inf

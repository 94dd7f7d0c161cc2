"""train_population: N models that differ only by seed (and optionally learning rate, lambda and
t), trained as one ``jax.vmap``-ped step over stacked parameters.

Every member is a stage of its own, as `loop.train_stage` would train it: its own directory,
checkpoints, ``metrics.jsonl``, ``result.json``, data order, negatives, dropout keys and epoch
selection. Only the optimizer step is shared: the members' parameters and optimizer states are
stacked on a leading axis ``[N, ...]`` and one compiled step updates all of them from a stacked
batch ``[N, B, ...]`` (each member's own batch). Members may differ in the learning rate (their
updates are scaled by their own) and in the model's run-time fields
(`solid_jax.model_config.RUNTIME_FIELDS`: ``clip_t``, ``consistency_weight``), which the step
passes to ``model.apply`` as traced per-member values; each member is evaluated with its own
model. A member's result equals its solo `loop.train_stage` run to float tolerance (a vmapped
matmul may sum in another order).

Members move in lockstep while they are at the same position (epoch, step within the epoch). A
member that stopped early (patience) or finished is frozen (``jnp.where`` keeps its parameters);
after a resume, members whose checkpoints are behind the others (a kill between two members'
saves) are stepped alone, the others frozen, until every member is at the same position again.
So a killed population relaunched with the same call ends where an uninterrupted one ends.

Not supported: data parallelism over several devices (a population runs on the default device),
packed rows (their shapes differ between members) and members whose model settings differ in
anything but the run-time fields.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from solid_jax.model_config import RUNTIME_FIELDS
from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import loop
from solid_jax.train import optim as optim_lib
from solid_jax.train import reliability
from solid_jax.train import step as step_lib
from solid_jax.train import streams
from solid_jax.train import writers

# LoopSettings fields that may differ between the members of a population.
MEMBER_FIELDS = ("seed", "lr")
# ModelConfig fields that may differ between them (traced through ``apply(..., hyper=...)``).
MEMBER_MODEL_FIELDS = RUNTIME_FIELDS


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of a population: a stage as `loop.train_stage` takes it."""

  spec: loop.StageSpec
  data: loop.StageData
  settings: loop.LoopSettings


def make_population_step(model, tx, *, transform=None, grouped: bool = False, scale_lr: bool):
  """The jit-compiled step of a population of N members.

  Args:
    model: the members' Model (one for all).
    tx: the optimizer (`optim.make_optimizer`); with ``scale_lr`` built with ``lr=1``.
    transform: batch rewrite applied inside the step (``semantic_view`` in stage 1).
    grouped: batches are candidate groups (see `step.make_train_step`).
    scale_lr: multiply every member's updates by its own learning rate.

  Returns:
    ``step(params, opt_state, batch, step, key, lr, active, hyper=None) -> (params, opt_state,
    scalars)``, every argument stacked on a leading member axis [N]: ``step`` int32[N] global
    steps, ``key`` the members' root keys (their ``"dropout"`` streams), ``lr`` float32[N],
    ``active`` bool[N] (inactive members keep their parameters and optimizer state), ``hyper``
    None or ``{field: float32[N]}`` (the members' run-time model fields). ``scalars`` are those
    of `step.make_train_step`, float32[N] each. ``params`` and ``opt_state`` are donated.
  """
  pure = step_lib.train_step_fn(model, tx, transform=transform, grouped=grouped)

  def member(params, opt_state, batch, step, key, lr, active, hyper=None):
    new_params, new_opt_state, scalars = pure(
      params, opt_state, batch, step, key, lr if scale_lr else None, hyper
    )
    keep = functools.partial(jnp.where, active)
    return (
      jax.tree.map(keep, new_params, params),
      jax.tree.map(keep, new_opt_state, opt_state),
      scalars,
    )

  return jax.jit(jax.vmap(member), donate_argnums=(0, 1))


def stack(trees: Sequence[Any]) -> Any:
  """Stacks equally shaped pytrees on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def member_of(tree: Any, index: int) -> Any:
  """Member ``index`` of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


def _fixed_part(config):
  """A model config with its run-time fields blanked (what members must share)."""
  return dataclasses.replace(config, **{f: 1.0 for f in MEMBER_MODEL_FIELDS})


def hyper_of(members: Sequence[Member]) -> dict[str, jax.Array] | None:
  """``{field: float32[N]}`` of the run-time model fields in which the members differ (None
  when they share them all: the step then runs with the configs' own values)."""
  out = {}
  for name in MEMBER_MODEL_FIELDS:
    values = [getattr(m.spec.model.config, name) for m in members]
    if len(set(values)) > 1:
      out[name] = jnp.asarray(values, jnp.float32)
  return out or None


def _check_members(members: Sequence[Member]) -> None:
  if not members:
    raise ValueError("a population needs at least one member")
  first = members[0]
  for m in members[1:]:
    if m.spec.name != first.spec.name:
      raise ValueError(
        f"population members train different stages: {m.spec.name} vs {first.spec.name}"
      )
    if _fixed_part(m.spec.model.config) != _fixed_part(first.spec.model.config):
      raise ValueError(
        f"{m.spec.name}: population members differ in their model settings "
        f"({m.spec.model.config} vs {first.spec.model.config}); only "
        f"{', '.join(MEMBER_FIELDS + MEMBER_MODEL_FIELDS)} may differ"
      )
    if m.spec.transform is not first.spec.transform:
      raise ValueError(f"{m.spec.name}: population members rewrite their batches differently")
    a, b = dataclasses.asdict(m.settings), dataclasses.asdict(first.settings)
    diff = sorted(k for k in a if a[k] != b[k] and k not in MEMBER_FIELDS)
    if diff:
      raise ValueError(
        f"{m.spec.name}: population members differ in {diff}; only {', '.join(MEMBER_FIELDS)} may"
      )
  dirs = [os.path.abspath(m.spec.directory) for m in members]
  if len(set(dirs)) != len(dirs):
    raise ValueError("population members share a directory; every member needs its own")


class _Runner:
  """The per-member bookkeeping of `loop.train_stage`: state, checkpoints, records, evaluation."""

  def __init__(self, index: int, member: Member, evaluation, template):
    self.index, self.member = index, member
    self.spec, self.data, self.settings = member.spec, member.data, member.settings
    self.evaluation = evaluation
    # (result, params) of a stage that finished before: read back, not trained.
    self.read_back = loop._read_back(self.spec, self.settings.patience)  # pylint: disable=protected-access
    os.makedirs(self.spec.directory, exist_ok=True)
    params, opt_state = template
    meta = None
    if self.read_back is not None:
      self.ckpts = None
    else:
      self.ckpts = checkpoint_lib.StageCheckpoints(self.spec.directory)
      good = self.ckpts.restore_latest_good(params, opt_state)
      if good is not None:
        latest, params, opt_state, meta = good
        logging.info(
          "%s: resuming from the checkpoint at step %d (epoch %d, step %d of the epoch)",
          self.spec.directory,
          latest,
          meta["epoch"],
          meta["step_in_epoch"],
        )
    self.params, self.opt_state = params, opt_state
    self.state = loop.EpochState.from_meta(meta)
    self.saved_step = self.state.global_step if meta is not None else None
    self.writer = None
    self.pending = None
    self.batches = None
    self.plan = None

  # -- position --------------------------------------------------------------------------------

  @property
  def done(self) -> bool:
    return self.read_back is not None or (
      self.state.epoch >= self.spec.epochs
      or self.evaluation.stopped(self.state.history, self.settings)
    )

  @property
  def position(self) -> tuple[int, int]:
    return (self.state.epoch, self.state.step_in_epoch)

  def open(self, primary: bool) -> None:
    if self.ckpts is None:
      return
    self.writer = writers.StageWriter(
      self.spec.directory,
      self.spec.name,
      self.state.history,
      tensorboard=self.settings.tensorboard,
      files=primary,
    )
    self.pending = loop._PendingScalars(self.spec, self.ckpts)  # pylint: disable=protected-access

  def next_batch(self) -> dict[str, np.ndarray]:
    """The member's next training batch (starting its epoch's iterator when needed)."""
    if self.batches is None:
      self.plan = loop._EpochPlan.of(self.data.train_rows(self.state.epoch), self.settings)  # pylint: disable=protected-access
      self.batches = iter(
        self.data.batches(
          self.plan.units,
          self.plan.unit_batch,
          seed=streams.numpy_seed(self.settings.seed, self.spec.name, "batches"),
          epoch=self.state.epoch,
          shuffle=True,
          start_step=self.state.step_in_epoch,
        )
      )
      self.state.start_epoch()
    return next(self.batches)

  def after_step(self) -> None:
    self.state.global_step += 1
    self.state.step_in_epoch += 1
    self.state.epoch_samples += self.plan.rows_of_step(self.state.step_in_epoch)

  @property
  def epoch_finished(self) -> bool:
    return self.plan is not None and self.state.step_in_epoch == self.plan.steps

  def save(self, host_params, host_opt_state, epoch_done: bool, **kwargs) -> None:
    self.ckpts.save(
      self.state.global_step, host_params, host_opt_state, self.state.meta(epoch_done), **kwargs
    )
    self.saved_step = self.state.global_step

  def end_epoch(self, params, host_params, host_opt_state, seconds: float) -> None:
    """Evaluates the finished epoch, checkpoints it and moves on to the next one."""
    record = loop._end_epoch(self.state, seconds, params, self.evaluation, self.settings)  # pylint: disable=protected-access
    self.save(host_params, host_opt_state, True, selection=self.evaluation.selection(record))
    self.writer.write_epoch(record)
    self.state.next_epoch()
    self.batches = self.plan = None

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def stack_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The members' batches of one step stacked on a new leading axis: ``[M, ...]``.

  Packed batches (``sj.data.pack_rows``: they carry ``segment``) hold as many rows as packing the
  member's users needed, which differs between members that draw different users; the shorter
  ones get all-empty rows appended (segment 0, weight 0: the rows ``pack_rows`` itself appends
  when it rounds the row count up), which changes neither the loss nor the other rows' dropout
  masks. Any other difference in shape is an error.

  Raises:
    ValueError: the batches have different keys, or differ in shape other than in the rows of
      packed batches.
  """
  keys = set(batches[0])
  if any(set(b) != keys for b in batches):
    raise ValueError(f"population members' batches differ in keys: {[sorted(b) for b in batches]}")
  if "segment" in keys:
    rows = max(np.shape(b["segment"])[0] for b in batches)
    batches = [
      {k: _pad_rows(np.asarray(v), rows) for k, v in b.items()} if len(b["segment"]) < rows else b
      for b in batches
    ]
  out = {}
  for k in batches[0]:
    shapes = {np.shape(b[k]) for b in batches}
    if len(shapes) > 1:
      raise ValueError(f"population members' batches differ in the shape of {k!r}: {shapes}")
    out[k] = np.stack([b[k] for b in batches])
  return out


def _pad_rows(value: np.ndarray, rows: int) -> np.ndarray:
  pad = [(0, rows - value.shape[0])] + [(0, 0)] * (value.ndim - 1)
  return np.pad(value, pad)


def train_population(members: Sequence[Member]) -> list[tuple[dict[str, Any], Any]]:
  """Trains the members of a population as one vmapped step; resumes each from its checkpoints.

  Args:
    members: the members (same stage, model and settings but for ``seed``, ``lr`` and the
      model's run-time fields; each with its own directory and data).

  Returns:
    ``[(result, params)]`` per member, as `loop.train_stage` returns them for that member alone.

  Raises:
    ValueError: the members differ in more than seed, learning rate and the run-time model
      fields, share a directory, or
      their batches differ in shape (packed rows).
    loop.NonFiniteLossError: a member's loss became NaN/inf (the message names its directory).
    reliability.Preempted: SIGTERM/SIGINT: every member checkpointed at the next step boundary.
  """
  _check_members(members)
  first = members[0]
  model, settings0 = first.spec.model, first.settings
  if settings0.data_parallel and jax.device_count() > 1:
    logging.info("population: trained on the default device (no data parallelism)")
  primary = jax.process_index() == 0
  lrs = [m.settings.lr for m in members]
  scale_lr = len(set(lrs)) > 1
  inits = [jax.jit(m.spec.init)(streams.key(m.settings.seed, m.spec.name, "init")) for m in members]
  if scale_lr and settings0.embedding_lr:
    raise ValueError(
      "a population of several learning rates takes no --embedding_lr (the members' "
      "learning rates scale every update, the item table's included)"
    )
  tx = optim_lib.make_optimizer(
    model,
    inits[0],
    1.0 if scale_lr else lrs[0],
    weight_decay=settings0.weight_decay,
    clip_norm=settings0.grad_clip_norm,
    embedding_optimizer=settings0.embedding_optimizer,
    embedding_lr=settings0.embedding_lr,
  )
  # Compiled scorers are shared between members of one model config only (a member with its
  # own clip_t is evaluated by its own model).
  scorers: dict[Any, dict] = {}
  runners = []
  for i, m in enumerate(members):
    evaluation = loop._Evaluation.build(  # pylint: disable=protected-access
      m.spec, m.data, m.settings, None, scorers=scorers.setdefault(m.spec.model.config, {})
    )
    runners.append(_Runner(i, m, evaluation, (inits[i], tx.init(inits[i]))))
  params = stack([r.params for r in runners])
  opt_state = stack([r.opt_state for r in runners])
  for r in runners:
    r.params = r.opt_state = None  # the stacked copies are the live ones
  keys = jnp.stack([streams.key(m.settings.seed, m.spec.name, "dropout") for m in members])
  lr_arg = jnp.asarray(lrs, jnp.float32)
  hyper = hyper_of(members)
  step_fns: dict[bool, Any] = {}
  watch = reliability.PreemptionWatch(sync_every=settings0.check_every_steps)
  fetch: list[tuple[dict[str, jax.Array], list[int]]] = []

  def flush() -> None:
    """Fetches the pending step scalars in one transfer and hands them to their members."""
    if not fetch:
      return
    host = jax.device_get([scalars for scalars, _ in fetch])
    for scalars, (_, active) in zip(host, fetch):
      for i in active:
        runners[i].pending.append({k: v[i] for k, v in scalars.items()})
    fetch.clear()
    for r in runners:
      if r.pending is not None and len(r.pending):
        r.pending.flush(r.state, r.plan.steps if r.plan is not None else 0)

  def host_copies():
    return loop._host_copy(params), loop._host_copy(opt_state)  # pylint: disable=protected-access

  for r in runners:
    r.open(primary)
  live_runners = [r for r in runners if not r.done]
  logging.info(
    "%s: a population of %d members (%d to train) in one vmapped step",
    first.spec.name,
    len(members),
    len(live_runners),
  )
  iteration = 0
  try:
    watch.__enter__()
    while True:
      live = [r for r in runners if not r.done]
      if not live:
        break
      lead = min(r.position for r in live)
      active = [r for r in live if r.position == lead]
      batches = {r.index: r.next_batch() for r in active}
      plans = {(r.plan.unit_batch, r.plan.group) for r in active}
      if len(plans) > 1:
        raise ValueError(f"{first.spec.name}: population members batch differently: {plans}")
      grouped = active[0].plan.group > 1
      filler = batches[active[0].index]
      stacked = stack_batches([batches.get(i, filler) for i in range(len(runners))])
      if grouped not in step_fns:
        step_fns[grouped] = make_population_step(
          model, tx, transform=first.spec.transform, grouped=grouped, scale_lr=scale_lr
        )
      mask = np.zeros(len(runners), bool)
      mask[[r.index for r in active]] = True
      steps = np.asarray([r.state.global_step for r in runners], np.int32)
      params, opt_state, scalars = step_fns[grouped](
        params, opt_state, stacked, steps, keys, lr_arg, mask, hyper
      )
      fetch.append((scalars, [r.index for r in active]))
      iteration += 1
      for r in active:
        r.after_step()
      if len(fetch) >= settings0.check_every_steps:
        flush()
      every = settings0.checkpoint_every_steps
      mid = [r for r in active if not r.epoch_finished]
      due = [r for r in mid if every and r.state.global_step % every == 0]
      finished = [r for r in active if r.epoch_finished]
      if due or finished:
        flush()
        host_params, host_opt = host_copies()
        for r in due:
          r.save(member_of(host_params, r.index), member_of(host_opt, r.index), False)
        if finished:
          jax.block_until_ready(params)
          now = time.perf_counter()
          for r in finished:
            r.end_epoch(
              member_of(params, r.index),
              member_of(host_params, r.index),
              member_of(host_opt, r.index),
              now - r.state.epoch_start,
            )
      if watch.should_stop(iteration) and any(not r.done for r in runners):
        flush()
        unsaved = [r for r in runners if not r.done and r.saved_step != r.state.global_step]
        if unsaved:
          host_params, host_opt = host_copies()
          for r in unsaved:
            r.save(member_of(host_params, r.index), member_of(host_opt, r.index), False)
        for r in runners:
          if r.ckpts is not None:
            r.ckpts.wait()
        raise reliability.Preempted(
          f"{first.spec.name}: population stopped on {loop.signal_name(watch)} after "
          f"{iteration} steps; every member checkpointed; relaunch the same command to resume"
        )
    flush()
    for r in runners:
      if r.ckpts is not None:
        r.ckpts.wait()
  except BaseException:
    for r in runners:
      if r.ckpts is not None:
        try:
          r.ckpts.close()
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("%s: a pending checkpoint could not be completed: %s", r.spec.name, e)
    raise
  finally:
    watch.__exit__(None, None, None)
    for r in runners:
      r.close()
  out = []
  for r in runners:
    if r.read_back is not None:
      out.append(r.read_back)
      continue
    out.append(
      loop._finish(  # pylint: disable=protected-access
        r.spec,
        r.state,
        member_of(params, r.index),
        r.ckpts,
        r.evaluation,
        r.settings,
        None,
        primary,
      )
    )
  return out

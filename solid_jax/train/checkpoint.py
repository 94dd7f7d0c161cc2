"""Stage checkpoints: the project's only use of orbax.

A stage directory (``DIR/stage1`` ...) is an orbax ``CheckpointManager`` directory with one numbered
sub-directory per saved optimizer step, each holding three items:

- ``params``: the model parameters (plain nested dict of arrays),
- ``opt_state``: the optax state,
- ``meta``: JSON (epoch, step within the epoch, running sums, the per-epoch history, ...).

Two checkpoints are kept: the latest (to resume) and the best by the selection metric (passed to
``save`` at the end of each epoch; mid-epoch checkpoints carry none and are dropped once a newer
one exists). Ties on the metric keep the earliest step. Orbax writes a step into a temporary
directory and renames it when complete, so a step that was being written when the process died is
invisible to ``latest_step`` and ``restore``; such leftovers are removed when the manager opens.

Every save records a checksum (BLAKE2b over the leaves' paths, dtypes, shapes and bytes) of the
parameters and the optimizer state in its ``meta``; a restore recomputes it. A committed step whose
files were truncated, changed or removed fails the restore (orbax's error or the checksum) with
`CorruptCheckpointError`; `StageCheckpoints.restore_latest_good` then moves that step aside
(``DIR/corrupted.<step>``), warns naming it and tries the next older kept step, and raises when none
is left, so training never continues from silently wrong weights.
"""

from __future__ import annotations

import copy
import hashlib
import logging as logging_std
import math
import os
import shutil
from typing import Any

from absl import logging as absl_logging
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKSUM_KEY = "_checksum"


class CorruptCheckpointError(RuntimeError):
  """A committed checkpoint cannot be read back as it was saved."""


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (the earlier ones are intact)."""


def tree_checksum(tree) -> str:
  """BLAKE2b hex digest of a pytree of arrays: every leaf's path, dtype, shape and bytes."""
  digest = hashlib.blake2b(digest_size=16)
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in leaves:
    if isinstance(leaf, jax.Array) and leaf.is_fully_replicated:
      leaf = leaf.addressable_data(0)
    value = np.ascontiguousarray(np.asarray(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{value.dtype.str}{value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _rank(metrics: dict[str, Any]) -> tuple[float, int]:
  # Higher selection value is better; among equal values the earlier step wins. Mid-epoch
  # checkpoints carry ``selection=None`` and rank below every epoch end.
  selection = metrics["selection"]
  return (-math.inf if selection is None else float(selection), -int(metrics["step"]))


class _OrbaxInfoFilter(logging_std.Filter):
  """Drops orbax's INFO/DEBUG records (several per save); its warnings and errors pass."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or _ORBAX_DIR not in record.pathname


_ORBAX_DIR = os.sep + "orbax" + os.sep


def quiet_orbax_logging() -> None:
  """Keeps orbax's per-save INFO lines out of the absl log (idempotent; for launchers)."""
  logger = absl_logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in logger.filters):
    logger.addFilter(_OrbaxInfoFilter())


def _remove_uncommitted(directory: str) -> None:
  """Deletes the temporary directories of saves that never completed (the process died)."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if ocp.path.step.TMP_DIR_SUFFIX in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class StageCheckpoints:
  """Latest + best checkpoints of one training stage.

  Args:
    directory: the stage directory (created if missing).
    read_only: open an existing directory without writing to it.
  """

  def __init__(self, directory: str | os.PathLike, *, read_only: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    if not read_only:
      _remove_uncommitted(self.directory)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(
          get_metric_fn=_rank, n=1, keep_checkpoints_without_metrics=False
        ),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      best_fn=_rank,
      best_mode="max",
      preservation_policy=policy,
      create=not read_only,
      read_only=read_only,
      save_interval_steps=0 if read_only else 1,
      enable_async_checkpointing=True,
      save_root_metadata=False,
    )
    handlers = {
      "params": ocp.StandardCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
    }
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  # -- queries ------------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best selection metric (None when no epoch has ended)."""
    ranked = [
      (_rank(m), s)
      for s in self.all_steps()
      if (m := self._manager.metrics(s)) is not None and m["selection"] is not None
    ]
    return max(ranked)[1] if ranked else None

  def param_shapes(self, step: int) -> dict[str, Any]:
    """Shapes of the saved parameters, a nested dict of tuples, read without loading arrays."""
    meta = self._manager.item_metadata(step)["params"]
    tree = meta.tree if hasattr(meta, "tree") else meta
    return jax.tree.map(lambda m: tuple(m.shape), dict(tree), is_leaf=lambda m: hasattr(m, "shape"))

  # -- save / restore -----------------------------------------------------------------------------

  def save(
    self, step: int, params, opt_state, meta: dict[str, Any], selection: float | None = None
  ) -> None:
    """Saves a checkpoint asynchronously (``wait`` blocks until it is on disk).

    Args:
      step: the global optimizer step (the directory name).
      params: the parameter pytree.
      opt_state: the optimizer state pytree.
      meta: JSON-serialisable bookkeeping (copied: the caller may change it afterwards).
      selection: the selection metric at the end of an epoch (higher is better); None for a
        mid-epoch checkpoint, which never counts as "best".
    """
    metrics = {"selection": None if selection is None else float(selection), "step": int(step)}
    # The save completes in the background: it must not see later changes of the caller's objects.
    meta = copy.deepcopy(meta)
    meta[CHECKSUM_KEY] = {"params": tree_checksum(params), "opt_state": tree_checksum(opt_state)}
    self._manager.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
      ),
      metrics=metrics,
    )

  def _verify(self, step: int, meta: dict[str, Any], **trees) -> None:
    sums = meta.get(CHECKSUM_KEY)
    if sums is None:  # saved before checksums were recorded
      return
    for name, tree in trees.items():
      if tree_checksum(tree) != sums.get(name):
        raise CorruptCheckpointError(
          f"checkpoint step {step} in {self.directory}: the restored {name} do not match the "
          "checksum recorded at save time (files changed on disk)"
        )

  def _restore(self, step: int, args) -> dict[str, Any]:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**args))
    except CorruptCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
        f"checkpoint step {step} in {self.directory} cannot be read: "
        f"{type(e).__name__}: {str(e)[:300]}"
      ) from e

  def restore(self, step: int, params_like, opt_state_like) -> tuple[Any, Any, dict[str, Any]]:
    """Restores (params, opt_state, meta) of ``step`` into the structure of the given templates.

    Raises:
      CorruptCheckpointError: the step's files cannot be read or do not match their checksum.
    """
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    out = self._restore(
      step,
      dict(
        params=ocp.args.StandardRestore(abstract(params_like)),
        opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
        meta=ocp.args.JsonRestore(),
      ),
    )
    meta = dict(out["meta"])
    self._verify(step, meta, params=out["params"], opt_state=out["opt_state"])
    meta.pop(CHECKSUM_KEY, None)
    return out["params"], out["opt_state"], meta

  def restore_latest_good(
    self, params_like, opt_state_like
  ) -> tuple[int, Any, Any, dict[str, Any]] | None:
    """The newest kept step that restores intact, as ``(step, params, opt_state, meta)``.

    Corrupted steps are moved aside to ``DIR/corrupted.<step>`` with a warning naming them (the
    older kept step, the best epoch, is tried next); None when there is no checkpoint.

    Raises:
      CorruptCheckpointError: there are checkpoints, but none of them is intact.
    """
    steps = sorted(self.all_steps(), reverse=True)
    bad = []
    for step in steps:
      try:
        return (step, *self.restore(step, params_like, opt_state_like))
      except CorruptCheckpointError as e:
        bad.append(step)
        absl_logging.warning("%s; falling back to an older checkpoint", e)
        aside = os.path.join(self.directory, f"corrupted.{step}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()
    if bad:
      raise CorruptCheckpointError(
        f"{self.directory}: no intact checkpoint is left (corrupted steps {bad}, moved to "
        "corrupted.<step>); delete the stage directory to train it again"
      )
    return None

  def restore_params(self, step: int, params_like=None):
    """Restores only the parameters of ``step`` (as saved when no template is given).

    Raises:
      CorruptCheckpointError: the step's files cannot be read or do not match their checksum.
    """
    args = ocp.args.StandardRestore(
      None if params_like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, params_like)
    )
    out = self._restore(step, dict(params=args, meta=ocp.args.JsonRestore()))
    self._verify(step, dict(out["meta"]), params=out["params"])
    return out["params"]

  def restore_meta(self, step: int) -> dict[str, Any]:
    meta = dict(self._restore(step, dict(meta=ocp.args.JsonRestore()))["meta"])
    meta.pop(CHECKSUM_KEY, None)
    return meta

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete (and raises their errors).

    Raises:
      CheckpointSaveError: a save failed (disk full, quota, I/O error); the steps committed
        before it are intact (a save becomes visible only when complete).
    """
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(
        f"saving a checkpoint in {self.directory} failed (disk full or not writable?): "
        f"{type(e).__name__}: {str(e)[:400]}; the checkpoints committed before it "
        f"(steps {self.all_steps()}) are intact"
      ) from e

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

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
"""

from __future__ import annotations

import copy
import logging as logging_std
import math
import os
import shutil
from typing import Any

from absl import logging as absl_logging
import jax
import orbax.checkpoint as ocp


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
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(get_metric_fn=_rank, n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_rank, best_mode="max", preservation_policy=policy,
        create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1, enable_async_checkpointing=True,
        save_root_metadata=False)
    handlers = {"params": ocp.StandardCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  # -- queries ------------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best selection metric (None when no epoch has ended)."""
    ranked = [(_rank(m), s) for s in self.all_steps()
              if (m := self._manager.metrics(s)) is not None and m["selection"] is not None]
    return max(ranked)[1] if ranked else None

  def param_shapes(self, step: int) -> dict[str, Any]:
    """Shapes of the saved parameters, a nested dict of tuples, read without loading arrays."""
    meta = self._manager.item_metadata(step)["params"]
    tree = meta.tree if hasattr(meta, "tree") else meta
    return jax.tree.map(lambda m: tuple(m.shape), dict(tree),
                        is_leaf=lambda m: hasattr(m, "shape"))

  # -- save / restore -----------------------------------------------------------------------------

  def save(self, step: int, params, opt_state, meta: dict[str, Any],
           selection: float | None = None) -> None:
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
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)), metrics=metrics)

  def restore(self, step: int, params_like, opt_state_like) -> tuple[Any, Any, dict[str, Any]]:
    """Restores (params, opt_state, meta) of ``step`` into the structure of the given templates."""
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    out = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(params_like)),
        opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
        meta=ocp.args.JsonRestore()))
    return out["params"], out["opt_state"], dict(out["meta"])

  def restore_params(self, step: int, params_like=None):
    """Restores only the parameters of ``step`` (as saved when no template is given)."""
    args = ocp.args.StandardRestore(
        None if params_like is None
        else jax.tree.map(ocp.utils.to_shape_dtype_struct, params_like))
    return self._manager.restore(step, args=ocp.args.Composite(params=args))["params"]

  def restore_meta(self, step: int) -> dict[str, Any]:
    return dict(self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete (and raises their errors)."""
    self._manager.wait_until_finished()
    self._manager.check_for_errors()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

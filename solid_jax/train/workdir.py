"""The workdir of a run: its files, the checks that a relaunch is the same run on the same data
(or a continuation of it), and loading the run's data set.

Files (``DIR``): ``config.json`` (the run's full TrainConfig; a relaunch with a different one is
refused, except larger ``epochs`` / ``patience``: ``continues``), ``dataset.json`` (name, source,
fingerprint and counts; a relaunch on changed data is refused), ``results.json`` (its presence marks
the run finished).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any


from solid_jax.train import train_config as config_lib
from solid_jax.train import writers
from solid_jax.train.train_config import TrainConfig, config_differences


RESULTS_FILE = "results.json"


CONFIG_FILE = "config.json"


DATASET_FILE = "dataset.json"


class WorkdirError(ValueError):
  """The workdir cannot be used for this run (unwritable, other config, other data)."""


class DatasetError(ValueError):
  """The dataset of a run cannot be found or read."""


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` and checks that files can be written there.

  Raises:
    WorkdirError: it cannot be created or written (the message names the path and the reason).
  """
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
  return workdir


# Fields that may be raised on a workdir to continue its run (see `continues`).
CONTINUE_FIELDS = ("epochs", "patience")


def _raised(old: int, new: int, zero_is_infinite: bool) -> bool:
  if zero_is_infinite:
    return new == 0 or (old != 0 and new >= old)
  return new >= old


def continues(saved: dict[str, Any], config: TrainConfig) -> bool:
  """Whether ``config`` continues the run saved as ``saved``: it differs at most by a larger
  ``epochs`` and / or ``patience`` (0 = no early stopping counts as the largest), and the stages
  before the last are unchanged by it (their epochs; patience with a single stage only), so only
  the last stage trains on, from its latest checkpoint, and ends where a run launched with the
  new values from the start ends."""
  current = config.to_dict()
  if config_differences(saved, current, ignore=config_lib.RUNTIME_FIELDS + CONTINUE_FIELDS):
    return False
  defaults = TrainConfig()
  old = dataclasses.replace(
    config,
    epochs=int(saved.get("epochs", defaults.epochs)),
    patience=int(saved.get("patience", defaults.patience)),
  )
  if not (
    _raised(old.epochs, config.epochs, False) and _raised(old.patience, config.patience, True)
  ):
    return False
  earlier = config.stages()[:-1]
  if any(old.epochs_of(s) != config.epochs_of(s) for s in earlier):
    return False
  return not earlier or old.patience == config.patience


def check_config(workdir: str, config: TrainConfig, *, write: bool = True) -> bool:
  """Checks that a saved ``config.json`` equals ``config`` (or is continued by it, `continues`),
  then (re)writes it if ``write``.

  Returns:
    True when ``config`` continues the saved run with a larger ``epochs`` / ``patience``.

  Raises:
    WorkdirError: the workdir holds a run with a different configuration (the fields that differ
      are listed).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = config.to_dict()
  continued = False
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = config_differences(saved, current)
    if diffs and continues(saved, config):
      continued = True
    elif diffs:
      raise WorkdirError(
        f"workdir {workdir} holds a run with a different configuration ({CONFIG_FILE}); use "
        f"another workdir or the same flags (only a larger --epochs / --patience continues a "
        f"run). Differences (saved -> now): " + "; ".join(diffs)
      )
  if write:
    writers.write_json_atomic(path, current)
  return continued


def check_dataset(workdir: str, ds, *, write: bool) -> dict[str, Any]:
  record = {
    "name": ds.name,
    "source": ds.source,
    "fingerprint": ds.fingerprint,
    "num_users": ds.num_users,
    "num_items": ds.num_items,
    "num_semantics": ds.num_semantics,
    "interactions": ds.num_interactions,
  }
  path = os.path.join(workdir, DATASET_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("fingerprint") != ds.fingerprint:
      raise WorkdirError(
        f"workdir {workdir} was trained on data with fingerprint {saved.get('fingerprint')} "
        f"({saved.get('source')}), but {ds.source} now has fingerprint {ds.fingerprint}; the "
        "data changed: use another workdir"
      )
  if write:
    writers.write_json_atomic(path, record)
  return record


def load_data(config: TrainConfig):
  """Loads the dataset of a run, with a clear error when it cannot be found."""
  from solid_jax import data as sj_data  # pylint: disable=import-outside-toplevel

  kwargs = {"category_depth": config.category_depth} if config.category_depth else {}
  try:
    return sj_data.load_dataset(config.dataset, **kwargs)
  except (sj_data.DataError, OSError) as e:
    raise DatasetError(f"--dataset={config.dataset!r} cannot be used: {e}") from e

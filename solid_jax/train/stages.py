"""run_experiment: every stage a method needs, in one workdir, resumable.

Workdir layout (``DIR``):

- ``config.json``: the run's full TrainConfig; a relaunch with a different configuration is refused.
- ``dataset.json``: name, source, fingerprint and counts of the data; a relaunch on changed data is
  refused.
- ``semantics.npz`` + ``semantics.json`` (SOLID methods): the item -> semantic id table and its
  provenance.
- One directory per stage, each with orbax checkpoints, ``metrics.jsonl``, ``result.json`` and
  TensorBoard files:

  ========================  =====================================================================
  method                    stages
  ========================  =====================================================================
  static, duet, apg         ``main``: the single model
  solid, solid_apg          [``stage0``: item-level DUET whose id embeddings are clustered, only
                            for ``--semantics=id*``], ``stage1``: the generator ("duet" / "apg")
                            trained on semantic sequences (its item table is the metacode),
                            ``stage2``: the dual SOLID model, codebook initialised from the metacode
  ========================  =====================================================================

- ``results.json``: valid and test metrics of the final stage at the selected epoch, per-stage
  timing, the config. Its presence marks the run finished.

In a multi-host run (``jax.distributed``; ``data_parallel``) every process runs this function on the
same workdir, which must be on a file system they share; only process 0 writes ``config.json``,
``dataset.json``, the semantic table, the stage records and results (the checkpoints are written by
all processes together, through Orbax).

A killed run relaunched with the same command continues from the latest checkpoint of the first
unfinished stage (finished stages are read back from their ``result.json`` and selected
checkpoint) and ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import json
import math
import os
import tempfile
import time
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from solid_jax import models as models_lib
from solid_jax import semantics as semantics_lib
from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import loop
from solid_jax.train import reliability
from solid_jax.train import step as step_lib
from solid_jax.train import writers
from solid_jax.train import config as config_lib
from solid_jax.train.config import LOOP_FIELDS, TrainConfig, config_differences

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
SEMANTICS_PREFIX = "semantics"


def selection_label(config: TrainConfig) -> str:
  """How the epoch was selected, e.g. "valid full:ndcg@10" or "test sampled:uauc (authors'...)"."""
  label = f"{config.select_on} {config.select_metric}"
  return label + (" (authors' protocol; optimistic)" if config.select_on == "test" else "")


class WorkdirError(ValueError):
  """The workdir cannot be used for this run (unwritable, other config, other data)."""


class DatasetError(ValueError):
  """The dataset of a run cannot be found or read."""


class Stage1MismatchError(ValueError):
  """A stage-1 checkpoint does not fit the stage-2 data (vocabulary or width)."""


# ------------------------------------------------------------------------------------------ workdir


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
  old = dataclasses.replace(config, epochs=int(saved.get("epochs", defaults.epochs)),
                            patience=int(saved.get("patience", defaults.patience)))
  if not (_raised(old.epochs, config.epochs, False)
          and _raised(old.patience, config.patience, True)):
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
          f"run). Differences (saved -> now): " + "; ".join(diffs))
  if write:
    writers.write_json_atomic(path, current)
  return continued


def _check_dataset(workdir: str, ds, *, write: bool) -> dict[str, Any]:
  record = {"name": ds.name, "source": ds.source, "fingerprint": ds.fingerprint,
            "num_users": ds.num_users, "num_items": ds.num_items,
            "num_semantics": ds.num_semantics, "interactions": ds.num_interactions}
  path = os.path.join(workdir, DATASET_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("fingerprint") != ds.fingerprint:
      raise WorkdirError(
          f"workdir {workdir} was trained on data with fingerprint {saved.get('fingerprint')} "
          f"({saved.get('source')}), but {ds.source} now has fingerprint {ds.fingerprint}; the "
          "data changed: use another workdir")
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


# ---------------------------------------------------------------------------------------- semantics


def with_semantics(rows: Mapping[str, np.ndarray], table: np.ndarray) -> dict[str, np.ndarray]:
  """Rows with ``semantics`` / ``target_semantic`` recomputed from a semantic table.

  Args:
    rows: a split (``items`` int32[N, L], ``target`` int32[N], ...).
    table: int32[num_items], 0 at padding.

  Returns:
    A new dict with ``semantics = table[items]`` and ``target_semantic = table[target]``.
  """
  out = dict(rows)
  # Ids past the table (a cloze model's [MASK]) have no semantic id: 0.
  known = lambda ids: np.where(ids < len(table), ids, 0)  # noqa: E731
  out["semantics"] = table[known(rows["items"])]
  out["target_semantic"] = table[known(rows["target"])]
  return out


def _num_clusters(config: TrainConfig, ds) -> int:
  return config.num_clusters or (ds.num_semantics - 1)


def _semantic_provenance(config: TrainConfig, ds) -> dict[str, Any]:
  out = {"source": config.semantics, "seed": config.seed, "dataset": ds.name,
         "dataset_fingerprint": ds.fingerprint}
  if config.semantics == "labels":
    out["labels"] = ds.semantic_source
  else:
    out.update(k=_num_clusters(config, ds), kmeans_iters=config.kmeans_iters,
               algorithm="k-means (k-means++ seeding, Lloyd) over L2-normalised parts")
  if config.needs_stage0:
    out.update(stage0_backbone=config.backbone, stage0_epochs=config.epochs_of("stage0"),
               dim=config.dim)
  return out


def _kmeans_table(config: TrainConfig, ds, id_embedding: np.ndarray | None) -> np.ndarray:
  parts = semantics_lib.dataset_vectors(ds)
  if id_embedding is not None:
    parts["id"] = np.asarray(id_embedding, np.float32)
  vectors = semantics_lib.item_vectors(parts, config.semantics)
  return semantics_lib.cluster_items(vectors, _num_clusters(config, ds), seed=config.seed,
                                     iters=config.kmeans_iters)


def _check_semantic_source(config: TrainConfig, ds) -> None:
  """Errors that would otherwise surface only after training (missing features, bad k)."""
  if not config.is_solid:
    return
  if config.semantics == "labels":
    if config.num_clusters:
      raise ValueError("--num_clusters applies to k-means semantics only, not --semantics=labels")
    return
  need = [p for p in semantics_lib.KMEANS_SOURCES[config.semantics] if p != "id"]
  have = semantics_lib.dataset_vectors(ds)
  missing = [semantics_lib.FEATURE_KEYS[p] for p in need if p not in have]
  if missing:
    raise ValueError(f"--semantics={config.semantics} needs item features {missing}, which "
                     f"dataset {ds.name!r} does not have (side information: {sorted(ds.side)})")
  k = _num_clusters(config, ds)
  if not 1 <= k <= ds.num_items - 1:
    raise ValueError(f"--num_clusters={k}: expected 1..{ds.num_items - 1} (the number of items)")


# ------------------------------------------------------------------------------------------- stages


def _stage_data(splits, ds, table: np.ndarray, batches, config: TrainConfig) -> loop.StageData:
  from solid_jax import data as sj_data  # pylint: disable=import-outside-toplevel

  def train_rows(epoch):
    if config.objective == "positions":
      rows = sj_data.position_rows(ds, splits, epoch)
    elif config.objective == "cloze":
      rows = sj_data.cloze_rows(ds, splits, epoch, mask_rate=config.mask_rate)
    else:
      rows = splits["train"] if epoch == 0 else sj_data.resample_train(ds, splits, epoch)
    return with_semantics(rows, table)

  full = {}
  if config.eval_protocol in ("full", "both"):
    full = {f"{split}_full": with_semantics(sj_data.full_ranking_users(ds, splits, split), table)
            for split in ("valid", "test")}
  return loop.StageData(train_rows=train_rows, valid=with_semantics(splits["valid"], table),
                        test=with_semantics(splits["test"], table), batches=batches, **full)


def _train_kwargs(config: TrainConfig) -> dict[str, Any]:
  return {name: getattr(config, name) for name in LOOP_FIELDS}


def _stage1_metacode_shape(stage1_dir: str) -> tuple[tuple[int, ...], dict[str, Any]]:
  result = loop.stage_result(stage1_dir)
  if result is None:
    raise Stage1MismatchError(f"--stage1_dir={stage1_dir} holds no finished stage 1 "
                              f"({loop.RESULT_FILE} missing)")
  ckpts = checkpoint_lib.StageCheckpoints(stage1_dir, read_only=True)
  try:
    shapes = ckpts.param_shapes(result["selected_step"])
  finally:
    ckpts.close()
  try:
    shape = models_lib.item_table(shapes)
  except (KeyError, TypeError):
    raise Stage1MismatchError(f"the stage-1 checkpoint in {stage1_dir} has no item embedding "
                              f"table (parameters: {sorted(shapes)})") from None
  return tuple(shape), result


def check_stage1(stage1_dir: str, *, num_semantics: int, dim: int,
                 table: np.ndarray | None = None) -> None:
  """Checks that a finished stage 1 fits the stage-2 data before anything is trained.

  Args:
    stage1_dir: the stage-1 directory.
    num_semantics: the semantic vocabulary of this run (incl. padding).
    dim: this run's embedding width.
    table: this run's semantic table, compared with the one saved next to ``stage1_dir`` if any.

  Raises:
    Stage1MismatchError: no finished stage 1, a metacode of another vocabulary size or width, or
      a different semantic table.
  """
  shape, _ = _stage1_metacode_shape(stage1_dir)
  if shape != (num_semantics, dim):
    raise Stage1MismatchError(
        f"the stage-1 checkpoint in {stage1_dir} has a metacode of {shape[0]} semantic ids x "
        f"{shape[1]} (incl. padding), but this run's data has {num_semantics} semantic ids and "
        f"dim {dim}: it was trained on another vocabulary")
  prefix = os.path.join(os.path.dirname(os.path.abspath(stage1_dir)), SEMANTICS_PREFIX)
  if table is not None and os.path.exists(prefix + ".json"):
    theirs, _ = semantics_lib.load_table(prefix)
    if theirs.shape != table.shape or not np.array_equal(theirs, table):
      raise Stage1MismatchError(
          f"the semantic table next to {stage1_dir} ({prefix}.npz) differs from this run's: the "
          "metacode rows would mean other semantic ids")


def run_experiment(config: TrainConfig, workdir: str) -> dict[str, Any]:
  """Runs (or resumes, or reads back) every stage of ``config.method`` in ``workdir``.

  Args:
    config: the run's configuration.
    workdir: its directory (created if missing).

  Returns:
    The results dict, as written to ``DIR/results.json``: "valid" and "test" metric dicts of the
    final stage at the selected epoch (keys of ``solid_jax.metrics.evaluate``), "selected_epoch",
    "selection", per-stage results and timing under "stages", "semantics" (SOLID), "dataset" and
    "config".

  Raises:
    WorkdirError: unwritable workdir, or it holds a run with another configuration or data.
    DatasetError: the dataset does not exist or cannot be read.
    Stage1MismatchError: ``--stage1_dir`` does not fit this run's data.
    loop.NonFiniteLossError: the loss became NaN/inf (checkpoints before it are kept).
  """
  existed = os.path.isdir(workdir)
  workdir = prepare_workdir(workdir)
  # One writer per workdir (process 0 of a multi-host run writes; the others only read).
  lock = (reliability.WorkdirLock(workdir) if jax.process_index() == 0 else None)
  try:
    if lock is not None:
      lock.acquire()
    try:
      return _run_experiment(config, workdir)
    finally:
      if lock is not None:
        lock.release()
  except BaseException:
    # A launch that failed before writing anything leaves no empty workdir behind.
    if not existed and os.path.isdir(workdir) and set(os.listdir(workdir)) <= {
        reliability.LOCK_FILE}:
      shutil.rmtree(workdir, ignore_errors=True)
    raise


def _run_experiment(config: TrainConfig, workdir: str) -> dict[str, Any]:
  start = time.perf_counter()
  continued = check_config(workdir, config, write=False)
  results_path = os.path.join(workdir, RESULTS_FILE)

  from solid_jax import data as sj_data  # pylint: disable=import-outside-toplevel
  import solid_jax as sj  # pylint: disable=import-outside-toplevel

  # The data is checked against the workdir's fingerprint even when the run has finished.
  ds = load_data(config)
  dataset_record = _check_dataset(workdir, ds, write=False)
  if os.path.exists(results_path) and not continued:
    logging.info("already finished; results in %s", results_path)
    with open(results_path) as f:
      return json.load(f)
  if continued:
    logging.info("continuing the run in %s with epochs=%d patience=%d", workdir, config.epochs,
                 config.patience)
  _check_semantic_source(config, ds)

  # Semantic table: known now unless it comes from stage-0 id embeddings.
  sem_prefix = os.path.join(workdir, SEMANTICS_PREFIX)
  provenance = _semantic_provenance(config, ds)
  table, new_table, sem_seconds = None, False, 0.0
  if config.is_solid:
    if os.path.exists(sem_prefix + ".json"):
      table, _ = semantics_lib.load_table(sem_prefix, provenance)
    elif config.stage1_dir and config.needs_stage0:
      other = os.path.join(os.path.dirname(os.path.abspath(config.stage1_dir)), SEMANTICS_PREFIX)
      table, _ = semantics_lib.load_table(other, provenance)
      new_table = True
    elif config.semantics == "labels":
      table, new_table = ds.item_semantic, True
    elif not config.needs_stage0:
      t0 = time.perf_counter()
      table, new_table = _kmeans_table(config, ds, None), True
      sem_seconds = time.perf_counter() - t0
  if config.stage1_dir:
    if not config.is_solid:
      raise ValueError(f"--stage1_dir applies to SOLID methods only, not --method={config.method}")
    check_stage1(config.stage1_dir, num_semantics=int(table.max()) + 1, dim=config.dim,
                 table=table)
  elif table is not None and loop.stage_result(os.path.join(workdir, "stage1")) is not None:
    check_stage1(os.path.join(workdir, "stage1"), num_semantics=int(table.max()) + 1,
                 dim=config.dim)

  # Every check passed: the workdir now belongs to this config and data.
  primary = jax.process_index() == 0  # the one writer of a multi-host run
  check_config(workdir, config, write=primary)
  _check_dataset(workdir, ds, write=primary)
  if continued and primary and os.path.exists(results_path):
    os.remove(results_path)   # the run is no longer finished (config.json has the new limits)
  if new_table and primary:
    semantics_lib.save_table(sem_prefix, table, provenance)
  splits = sj_data.make_splits(ds, seq_len=config.seq_len, train_negatives=config.train_negatives,
                               eval_negatives=config.eval_negatives, seed=config.seed)
  batches = sj_data.batches
  kwargs = _train_kwargs(config)
  stage_results: dict[str, Any] = {}

  def run_stage(name, model_cfg, data, *, transform=None, codebook_init=None):
    model = sj.make_model(model_cfg)
    if config.pack_sequences:
      if model_cfg.packable and transform is None:
        data = dataclasses.replace(data, batches=sj_data.packed_batches)
      else:
        logging.info("%s: trained on unpacked rows (%s with the %s head cannot take packed rows)",
                     name, model_cfg.backbone, model_cfg.head)
    init = model.init if codebook_init is None else functools.partial(
        model.init, codebook_init=codebook_init)
    spec = loop.StageSpec(name=name, directory=os.path.join(workdir, name), model=model,
                          init=init, epochs=config.epochs_of(name), transform=transform)
    logging.info("%s: %s", name, model_cfg)
    result, params = loop.train_stage(spec, data, **kwargs)
    stage_results[name] = {k: v for k, v in result.items() if k != "history"}
    return params

  if not config.is_solid:
    label_table = ds.item_semantic
    run_stage("main", config.model_config("main", num_items=ds.num_items,
                                          num_semantics=ds.num_semantics),
              _stage_data(splits, ds, label_table, batches, config))
    final = "main"
  else:
    if table is None:  # id semantics: stage 0, then k-means over its item embeddings
      params0 = run_stage("stage0", config.model_config(
          "stage0", num_items=ds.num_items, num_semantics=ds.num_semantics),
                          _stage_data(splits, ds, ds.item_semantic, batches, config))
      t0 = time.perf_counter()
      table = _kmeans_table(config, ds, np.asarray(models_lib.item_table(params0)))
      sem_seconds = time.perf_counter() - t0
      if primary:
        semantics_lib.save_table(sem_prefix, table, provenance)
    elif config.needs_stage0 and loop.stage_result(os.path.join(workdir, "stage0")) is not None:
      done = loop.stage_result(os.path.join(workdir, "stage0"))  # clustered in an earlier launch
      stage_results["stage0"] = {k: v for k, v in done.items() if k != "history"}
    num_semantics = int(table.max()) + 1
    data = _stage_data(splits, ds, table, batches, config)
    if config.stage1_dir:
      metacode = _load_metacode(config.stage1_dir)
      stage_results["stage1"] = {k: v for k, v in loop.stage_result(config.stage1_dir).items()
                                 if k != "history"}
      stage_results["stage1"]["reused_from"] = os.path.abspath(config.stage1_dir)
    else:
      params1 = run_stage("stage1", config.model_config(
          "stage1", num_items=ds.num_items, num_semantics=num_semantics), data,
                          transform=step_lib.semantic_view)
      metacode = np.asarray(models_lib.item_table(params1))
    run_stage("stage2", config.model_config("stage2", num_items=ds.num_items,
                                            num_semantics=num_semantics),
              data, codebook_init=metacode)
    final = "stage2"

  main = stage_results[final]
  results = {
      "method": config.method, "final_stage": final,
      "selection": selection_label(config),
      "selected_epoch": main["selected_epoch"],
      **{k: main[k] for k in ("valid", "test", "valid_full", "test_full") if k in main},
      "stopped_epoch": main["stopped_epoch"], "stop_reason": main["stop_reason"],
      "stages": stage_results, "dataset": dataset_record, "config": config.to_dict(),
      "seconds_this_launch": time.perf_counter() - start,
      "train_seconds": sum(r["train_seconds"] for r in stage_results.values()),
      "train_samples_per_s": main["train_samples_per_s"],
  }
  if config.is_solid:
    _, info = semantics_lib.load_table(sem_prefix)
    results["semantics"] = {**info, "seconds": sem_seconds}
  if primary:
    writers.write_json_atomic(results_path, results)
  logging.info("finished; results in %s", results_path)
  return results


def _load_metacode(stage1_dir: str) -> np.ndarray:
  result = loop.stage_result(stage1_dir)
  ckpts = checkpoint_lib.StageCheckpoints(stage1_dir, read_only=True)
  try:
    params = ckpts.restore_params(result["selected_step"])
  finally:
    ckpts.close()
  return np.asarray(models_lib.item_table(params))


# -------------------------------------------------------------------------------------------- table

_TABLE_COLUMNS = (("valid", "uauc"), ("valid", "ndcg@10"), ("valid_full", "ndcg@10"),
                  ("test", "auc"), ("test", "uauc"), ("test", "ndcg@10"), ("test", "hr@10"),
                  ("test_full", "hr@10"), ("test_full", "ndcg@10"), ("test_full", "mrr"),
                  ("test_full", "coverage@10"))


def _column_name(split: str, metric: str) -> str:
  protocol = "full" if split.endswith("_full") else "sampled"
  return f"{split.split('_')[0]} {protocol} {metric.upper()}"


def summary_table(results_by_method: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text table of both protocols' metrics per method (static / DUET / SOLID rows ...).

  Args:
    results_by_method: method label -> results dict of ``run_experiment``.

  Returns:
    The table, one line per method: the selected epoch (and the last trained one), validation
    sampled UAUC / NDCG@10 and full NDCG@10, test sampled AUC / UAUC / NDCG@10 / HR@10 and full
    HR@10 / NDCG@10 / MRR / Coverage@10, and the training minutes of all stages; "n/a" where a
    protocol was not evaluated.
  """
  head = ["method", "epoch"] + [_column_name(s, m) for s, m in _TABLE_COLUMNS] + ["train min"]
  rows = []
  selections = set()
  for label, res in results_by_method.items():
    selections.add(res.get("selection", "valid"))
    epoch = str(res.get("selected_epoch", ""))
    if "stopped_epoch" in res:
      epoch += f"/{res['stopped_epoch']}"
    cells = [str(label), epoch]
    cells += [_fmt((res.get(split) or {}).get(m)) for split, m in _TABLE_COLUMNS]
    cells.append(_fmt(res.get("train_seconds", float("nan")) / 60, 2))
    rows.append(cells)
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
  out.append(f"epoch (selected/last trained) selected on: {', '.join(sorted(selections))}; "
             "sampled = 1 positive + sampled negatives, full = every item ranked, history excluded")
  return "\n".join(out)


def _fmt(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  return f"{value:.{digits}f}"

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

import contextlib
import dataclasses
import functools
import shutil
import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from solid_jax import models as models_lib
from solid_jax import semantics as semantics_lib
from solid_jax.train import loop
from solid_jax.train import population
from solid_jax.train import reliability
from solid_jax.train import rows as rows_lib
from solid_jax.train import writers
from solid_jax.train.train_config import TrainConfig
from solid_jax.train import semantic_tables
from solid_jax.train import streams
from solid_jax.train import workdir as workdir_lib

# Re-exported: the names launchers and users reach for with ``run_experiment``.
from solid_jax.train.report import population_table, selection_label, summary_table  # noqa: E402,F401
from solid_jax.train.semantic_tables import Stage1MismatchError, with_semantics  # noqa: E402,F401
from solid_jax.train.workdir import CONFIG_FILE, DATASET_FILE, RESULTS_FILE  # noqa: E402,F401
from solid_jax.train.workdir import DatasetError, WorkdirError, continues, load_data  # noqa: E402,F401


def full_sample(config: TrainConfig, split: str) -> int:
  """The users of ``split`` ("valid" / "test") that the full-catalogue protocol ranks: a fixed
  sample of this many (`solid_jax.data.full_ranking_users`), 0 = every user. Validation takes
  ``valid_full_users`` when set, so that selection can run on a sample while test ranks all."""
  if split == "valid" and config.valid_full_users:
    return config.valid_full_users
  return config.full_eval_users


def _stage_data(splits, ds, table: np.ndarray, batches, config: TrainConfig) -> loop.StageData:
  """The evaluation rows of a run and ``train_rows(epoch, *, stage)`` (each stage draws its
  negatives from a stream of its own, `streams`; ``run_stage`` binds the stage)."""
  from solid_jax import data as sj_data  # pylint: disable=import-outside-toplevel

  def train_rows(epoch, *, stage):
    stream = streams.numpy_seed(config.seed, stage, "negatives")
    if config.objective == "positions":
      rows = sj_data.position_rows(ds, splits, epoch, stream=stream)
    elif config.objective == "cloze":
      rows = sj_data.cloze_rows(ds, splits, epoch, mask_rate=config.mask_rate, stream=stream)
    else:
      rows = sj_data.resample_train(ds, splits, epoch, stream=stream)
    return with_semantics(rows, table)

  full = {}
  if config.eval_protocol in ("full", "both"):
    full = {
      f"{split}_full": with_semantics(
        sj_data.full_ranking_users(ds, splits, split, sample=full_sample(config, split)), table
      )
      for split in ("valid", "test")
    }
  return loop.StageData(
    train_rows=train_rows,  # bound to its stage by `run_stage`
    valid=with_semantics(splits["valid"], table),
    test=with_semantics(splits["test"], table),
    batches=batches,
    **full,
  )


def loop_settings(config: TrainConfig) -> loop.LoopSettings:
  """The loop settings of a run: the `TrainConfig` fields of the same names."""
  names = [f.name for f in dataclasses.fields(loop.LoopSettings)]
  return loop.LoopSettings(**{name: getattr(config, name) for name in names})


@dataclasses.dataclass(frozen=True)
class StageRequest:
  """A stage an experiment asks to have trained (``_experiment`` yields these)."""

  spec: loop.StageSpec
  data: loop.StageData
  settings: loop.LoopSettings


# The metric entries of a stage result that a run's results carry: sampled, full-catalogue and
# (models with a codebook) the codebook's usage over the split.
RESULT_SPLITS = ("valid", "test", "valid_full", "test_full", "valid_codebook", "test_codebook")

# The order in which a population trains the stages its members ask for.
_STAGE_ORDER = ("stage0", "stage1", "stage2", "main")


def run_experiment(
  config: TrainConfig, workdir: str, *, train_stage=loop.train_stage
) -> dict[str, Any]:
  """Runs (or resumes, or reads back) every stage of ``config.method`` in ``workdir``.

  Args:
    config: the run's configuration.
    workdir: its directory (created if missing).
    train_stage: ``(spec, data, settings) -> (result, params)``, called once per stage in order
      (default ``loop.train_stage``; a wrapper can time or watch each stage).

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
  with _claimed(workdir) as workdir:
    experiment = _experiment(config, workdir)
    try:
      request = next(experiment)
      while True:
        request = experiment.send(train_stage(request.spec, request.data, request.settings))
    except StopIteration as finished:
      return finished.value


def run_population(configs: list[TrainConfig], workdirs: list[str]) -> list[dict[str, Any]]:
  """Runs several experiments that differ only by seed (and learning rate, lambda, t) as one
  population.

  Every member is an ordinary run in its own workdir (the same files, resumable, and readable
  by `run_experiment` alone); each stage trains all members that need it in one vmapped step
  (`solid_jax.train.population`). Members whose earlier launches got further wait until the
  others catch up, so a killed population relaunched with the same call ends as an
  uninterrupted one.

  Args:
    configs: one TrainConfig per member (equal but for ``seed`` and `POPULATION_FIELDS`).
    workdirs: one directory per member.

  Returns:
    The results dict of every member (`run_experiment`), in order.

  Raises:
    ValueError: the configurations differ in more than seed and `POPULATION_FIELDS`, or two
      members share a workdir. Otherwise as `run_experiment`.
  """
  if len(configs) != len(workdirs):
    raise ValueError(f"{len(configs)} configs for {len(workdirs)} workdirs")
  if len({os.path.abspath(w) for w in workdirs}) != len(workdirs):
    raise ValueError(f"population members share a workdir: {workdirs}")
  base = configs[0].to_dict()
  for c in configs[1:]:
    diff = sorted(
      k for k, v in c.to_dict().items() if v != base[k] and k not in ("seed",) + POPULATION_FIELDS
    )
    if diff:
      raise ValueError(
        f"population members may differ in seed and {', '.join(POPULATION_FIELDS)} only, "
        f"not in {diff}"
      )
  with contextlib.ExitStack() as claims:
    dirs = [claims.enter_context(_claimed(w)) for w in workdirs]
    experiments = [_experiment(c, w) for c, w in zip(configs, dirs)]
    results: list[Any] = [None] * len(configs)
    requests: dict[int, StageRequest] = {}

    def advance(i, answer=None):
      try:
        requests[i] = experiments[i].send(answer)
      except StopIteration as finished:
        results[i] = finished.value
        requests.pop(i, None)

    for i in range(len(experiments)):
      advance(i)
    while requests:
      order = lambda name: _STAGE_ORDER.index(name) if name in _STAGE_ORDER else len(_STAGE_ORDER)
      name = min((r.spec.name for r in requests.values()), key=order)
      group = [i for i, r in requests.items() if r.spec.name == name]
      members = [
        population.Member(requests[i].spec, requests[i].data, requests[i].settings) for i in group
      ]
      for i, answer in zip(group, population.train_population(members)):
        advance(i, answer)
    return results


POPULATION_FILE = "population.json"
# TrainConfig fields a population spec (``--population``) may vary besides the seed: the
# learning rate and the model's run-time fields (lambda ``consistency_weight``, t ``clip_t``).
POPULATION_FIELDS = tuple(f for f in population.MEMBER_FIELDS if f != "seed") + (
  population.MEMBER_MODEL_FIELDS
)


def parse_population(spec: str | None) -> dict[str, list[float]]:
  """``"lr=1e-3,3e-3"`` -> ``{"lr": [0.001, 0.003]}`` (``;`` separates several fields)."""
  out: dict[str, list[float]] = {}
  for part in (spec or "").split(";"):
    if not part.strip():
      continue
    name, sep, values = part.partition("=")
    name = name.strip()
    if not sep or name not in POPULATION_FIELDS:
      raise ValueError(
        f"--population={spec!r}: expected NAME=V1,V2,... with NAME in {POPULATION_FIELDS}"
      )
    try:
      out[name] = [float(v) for v in values.split(",") if v.strip()]
    except ValueError as e:
      raise ValueError(f"--population={spec!r}: {name} values must be numbers") from e
    if not out[name]:
      raise ValueError(f"--population={spec!r}: no values for {name}")
  return out


def population_members(
  config: TrainConfig, workdir: str, seeds: list[str] | None, spec: str | None
) -> list[tuple[TrainConfig, str]]:
  """(config, workdir) of every member: each seed (default ``config.seed``) times every
  combination of the ``--population`` values, in ``workdir/seed_<s>[-<name>_<v>]...``."""
  seed_list = [int(s) for s in seeds] if seeds else [config.seed]
  if len(set(seed_list)) != len(seed_list):
    raise ValueError(f"--seeds lists a seed twice: {seeds}")
  varied = parse_population(spec)
  members = [(config, "")]
  for name, values in varied.items():
    members = [
      (dataclasses.replace(c, **{name: v}), f"{tag}-{name}_{v:g}")
      for c, tag in members
      for v in values
    ]
  return [
    (dataclasses.replace(c, seed=s), os.path.join(workdir, f"seed_{s}{tag}"))
    for s in seed_list
    for c, tag in members
  ]


def write_population(
  workdir: str, members: list[tuple[TrainConfig, str]], results: list[dict[str, Any]]
) -> str:
  """Writes ``workdir/population.json``: one entry per member (seed, the `POPULATION_FIELDS`,
  its workdir, metrics)."""
  entries = []
  for (config, member_dir), result in zip(members, results):
    entries.append(
      {
        "seed": config.seed,
        **{name: getattr(config, name) for name in POPULATION_FIELDS},
        "workdir": os.path.relpath(member_dir, workdir),
        **{k: result[k] for k in ("valid", "test", "valid_full", "test_full") if k in result},
        "selected_epoch": result["selected_epoch"],
        "train_samples_per_s": result.get("train_samples_per_s"),
      }
    )
  path = os.path.join(workdir, POPULATION_FILE)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    writers.write_json_atomic(path, {"method": members[0][0].method, "members": entries})
  return path


@contextlib.contextmanager
def _claimed(workdir: str):
  """The prepared workdir, locked for this launch (one writer per workdir). A launch that fails
  before writing anything leaves no empty workdir behind."""
  existed = os.path.isdir(workdir)
  workdir = workdir_lib.prepare_workdir(workdir)
  # One writer per workdir (process 0 of a multi-host run writes; the others only read).
  lock = reliability.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    if lock is not None:
      lock.acquire()
    try:
      yield workdir
    finally:
      if lock is not None:
        lock.release()
  except BaseException:
    if (
      not existed and os.path.isdir(workdir) and set(os.listdir(workdir)) <= {reliability.LOCK_FILE}
    ):
      shutil.rmtree(workdir, ignore_errors=True)
    raise


def _experiment(config: TrainConfig, workdir: str):
  """The stages of one run, as a generator: yields a `StageRequest` per stage to train, is sent
  back its ``(result, params)``, and returns the results dict."""
  start = time.perf_counter()
  continued = workdir_lib.check_config(workdir, config, write=False)
  results_path = os.path.join(workdir, RESULTS_FILE)

  from solid_jax import data as sj_data  # pylint: disable=import-outside-toplevel
  import solid_jax as sj  # pylint: disable=import-outside-toplevel

  # The data is checked against the workdir's fingerprint even when the run has finished.
  ds = load_data(config)
  dataset_record = workdir_lib.check_dataset(workdir, ds, write=False)
  if os.path.exists(results_path) and not continued:
    logging.info("already finished; results in %s", results_path)
    with open(results_path) as f:
      return json.load(f)
  if continued:
    logging.info(
      "continuing the run in %s with epochs=%d patience=%d", workdir, config.epochs, config.patience
    )
  semantic_tables.check_semantic_source(config, ds)

  # Semantic table: known now unless it comes from stage-0 id embeddings.
  sem_prefix = os.path.join(workdir, semantic_tables.SEMANTICS_PREFIX)
  provenance = semantic_tables.semantic_provenance(config, ds)
  table, new_table, sem_seconds = None, False, 0.0
  if config.is_solid:
    if os.path.exists(sem_prefix + ".json"):
      table, _ = semantics_lib.load_table(sem_prefix, provenance)
    elif config.stage1_dir and config.needs_stage0:
      other = os.path.join(
        os.path.dirname(os.path.abspath(config.stage1_dir)), semantic_tables.SEMANTICS_PREFIX
      )
      table, _ = semantics_lib.load_table(other, provenance)
      new_table = True
    elif config.semantics == "labels":
      table, new_table = ds.item_semantic, True
    elif config.semantics == "random":
      table, new_table = semantics_lib.shuffled_labels(ds.item_semantic, seed=config.seed), True
    elif not config.needs_stage0:
      t0 = time.perf_counter()
      table, new_table = semantic_tables.kmeans_table(config, ds, None), True
      sem_seconds = time.perf_counter() - t0
  if config.stage1_dir:
    if not config.is_solid:
      raise ValueError(f"--stage1_dir applies to SOLID methods only, not --method={config.method}")
    semantic_tables.check_stage1(
      config.stage1_dir, num_semantics=int(table.max()) + 1, dim=config.dim, table=table
    )
  elif table is not None and loop.stage_result(os.path.join(workdir, "stage1")) is not None:
    semantic_tables.check_stage1(
      os.path.join(workdir, "stage1"), num_semantics=int(table.max()) + 1, dim=config.dim
    )

  # Every check passed: the workdir now belongs to this config and data.
  primary = jax.process_index() == 0  # the one writer of a multi-host run
  workdir_lib.check_config(workdir, config, write=primary)
  workdir_lib.check_dataset(workdir, ds, write=primary)
  if continued and primary and os.path.exists(results_path):
    os.remove(results_path)  # the run is no longer finished (config.json has the new limits)
  if new_table and primary:
    semantics_lib.save_table(sem_prefix, table, provenance)
  splits = sj_data.make_splits(
    ds,
    seq_len=config.seq_len,
    train_negatives=config.train_negatives,
    eval_negatives=config.eval_negatives,
    seed=config.seed,
  )
  batches = sj_data.batches
  settings = loop_settings(config)
  stage_results: dict[str, Any] = {}

  def run_stage(name, model_cfg, data, *, transform=None, codebook_init=None):
    model = sj.make_model(model_cfg)
    data = dataclasses.replace(data, train_rows=functools.partial(data.train_rows, stage=name))
    if config.pack_sequences:
      if model_cfg.packable:  # stage 1's semantic_view reads the packed semantics alike
        data = dataclasses.replace(data, batches=sj_data.packed_batches)
      else:
        logging.info(
          "%s: trained on unpacked rows (%s with the %s head cannot take packed rows)",
          name,
          model_cfg.backbone,
          model_cfg.head,
        )
    init = (
      model.init
      if codebook_init is None
      else functools.partial(model.init, codebook_init=codebook_init)
    )
    spec = loop.StageSpec(
      name=name,
      directory=os.path.join(workdir, name),
      model=model,
      init=init,
      epochs=config.epochs_of(name),
      transform=transform,
    )
    logging.info("%s: %s", name, model_cfg)
    result, params = yield StageRequest(spec, data, settings)
    stage_results[name] = {k: v for k, v in result.items() if k != "history"}
    return params

  if not config.is_solid:
    label_table = ds.item_semantic
    yield from run_stage(
      "main",
      config.model_config("main", num_items=ds.num_items, num_semantics=ds.num_semantics),
      _stage_data(splits, ds, label_table, batches, config),
    )
    final = "main"
  else:
    if table is None:  # id semantics: stage 0, then k-means over its item embeddings
      params0 = yield from run_stage(
        "stage0",
        config.model_config("stage0", num_items=ds.num_items, num_semantics=ds.num_semantics),
        _stage_data(splits, ds, ds.item_semantic, batches, config),
      )
      t0 = time.perf_counter()
      table = semantic_tables.kmeans_table(config, ds, np.asarray(models_lib.item_table(params0)))
      sem_seconds = time.perf_counter() - t0
      if primary:
        semantics_lib.save_table(sem_prefix, table, provenance)
    elif config.needs_stage0 and loop.stage_result(os.path.join(workdir, "stage0")) is not None:
      done = loop.stage_result(os.path.join(workdir, "stage0"))  # clustered in an earlier launch
      stage_results["stage0"] = {k: v for k, v in done.items() if k != "history"}
    num_semantics = int(table.max()) + 1
    data = _stage_data(splits, ds, table, batches, config)
    if config.stage1_dir:
      metacode = semantic_tables.load_metacode(config.stage1_dir)
      stage_results["stage1"] = {
        k: v for k, v in loop.stage_result(config.stage1_dir).items() if k != "history"
      }
      stage_results["stage1"]["reused_from"] = os.path.abspath(config.stage1_dir)
    else:
      params1 = yield from run_stage(
        "stage1",
        config.model_config("stage1", num_items=ds.num_items, num_semantics=num_semantics),
        data,
        transform=rows_lib.semantic_view,
      )
      metacode = np.asarray(models_lib.item_table(params1))
    yield from run_stage(
      "stage2",
      config.model_config("stage2", num_items=ds.num_items, num_semantics=num_semantics),
      data,
      codebook_init=semantic_tables.codebook_table(metacode, config),
    )
    final = "stage2"

  main = stage_results[final]
  results = {
    "method": config.method,
    "final_stage": final,
    "selection": selection_label(config),
    "selected_epoch": main["selected_epoch"],
    **{k: main[k] for k in RESULT_SPLITS if k in main},
    "stopped_epoch": main["stopped_epoch"],
    "stop_reason": main["stop_reason"],
    "stages": stage_results,
    "dataset": dataset_record,
    "config": config.to_dict(),
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

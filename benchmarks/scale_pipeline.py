r"""The whole SOLID pipeline on an Amazon-Electronics-sized log, phase by phase: wall time and peak RSS.

  python -m benchmarks.scale_pipeline --profile=electronics --data_dir=/tmp/scale/electronics \
      --output=docs/perf/scale_pipeline_cpu.json

Phases, all in this process (each phase's peak RSS is the process's high-water mark over that phase
alone: ``/proc/self/clear_refs`` resets it on Linux):

1. ``generate``: `benchmarks.scale_data` writes the RecBole folder (skipped when it exists);
2. ``load_parse``: ``sj.data.load_dataset`` parses the raw files and writes the Arrow cache (a fresh
   cache folder); ``load_cached``: the same call again, read from the cache;
3. ``splits``: ``make_splits`` (leave-last-out, 4 negatives per training positive, 1 sampled
   negative per evaluation positive, the least the launcher takes: the evaluation that counts is
   full-catalogue) and one ``resample_train`` (epoch 1);
4. the launcher's own run (``run_experiment``, SOLID with labels as semantics, one epoch per stage,
   ``--eval_protocol=full --full_eval_users=10000``): ``prelude`` (cached load, splits, the
   semantic table, the evaluation users), then ``stage1`` and ``stage2``, each the whole stage
   (training epoch, validation and test full-catalogue evaluation of the sample, checkpoints);
5. ``full_eval``: the final model ranks all items for the 10,000 test users once more, by itself
   (``FullEvaluator``, compile included and apart).

Every phase is linear in users, items or interactions (none builds a users x items object: the
full-catalogue scores are tiles of [users per batch, 4,096]). The JSON holds the phases, the data
statistics, the run's metrics and the settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from benchmarks import scale_data
from benchmarks import timing

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script: importers (the tests) define their own
  flags.DEFINE_enum("profile", "electronics", list(scale_data.PROFILES), "data set sizes")
  flags.DEFINE_string("data_dir", "", "the RecBole folder (generated there when missing)")
  flags.DEFINE_string("workdir", "", "run directory (default: a temporary folder)")
  flags.DEFINE_integer("batch_size", 1024, "training rows per step")
  flags.DEFINE_integer("full_eval_users", 10_000, "users of the full-catalogue sample")
  flags.DEFINE_integer("dim", 32, "embedding width d")
  flags.DEFINE_string("backbone", "sasrec", "backbone")
  flags.DEFINE_string("embedding_optimizer", "", "TrainConfig.embedding_optimizer (empty: default)")
  flags.DEFINE_string("output", "", "JSON file to write")


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_gib() -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Phases:
  """Wall time and peak RSS of named phases, in order."""

  def __init__(self):
    self.records: list[dict] = []

  @contextlib.contextmanager
  def __call__(self, name: str):
    resettable = _reset_peak()
    start = time.perf_counter()
    yield
    record = {
      "phase": name,
      "seconds": round(time.perf_counter() - start, 2),
      "peak_rss_gib": round(_peak_gib(), 3),
      "peak_is_per_phase": resettable,
    }
    self.records.append(record)
    logging.info("phase %s", record)


def run(profile: str, data_dir: str, workdir: str, cache_dir: str, settings: dict) -> dict:
  import solid_jax as sj  # pylint: disable=import-outside-toplevel
  from solid_jax.train import full_eval, loop, stages  # pylint: disable=import-outside-toplevel

  phases = Phases()
  if not os.path.exists(os.path.join(data_dir, f"{profile}.inter")):
    with phases("generate"):
      scale_data.write(scale_data.PROFILES[profile], data_dir, name=profile)
  with phases("load_parse"):
    ds = sj.data.load_dataset(data_dir, cache_dir=cache_dir)
  with phases("load_cached"):
    ds = sj.data.load_dataset(data_dir, cache_dir=cache_dir)
  stats = {k: v for k, v in ds.summary().items() if k != "side"}
  with phases("splits"):
    splits = sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=1, seed=0)
    sj.data.resample_train(ds, splits, 1)
  meta = splits["meta"]
  stats.update(
    {k: meta[k] for k in ("num_users", "dropped_users", "train_positives", "train_rows")}
  )
  del ds, splits

  os.environ["SOLID_JAX_CACHE"] = cache_dir
  extra = {}
  if settings["embedding_optimizer"]:
    extra["embedding_optimizer"] = settings["embedding_optimizer"]
  config = sj.train.TrainConfig(
    dataset=data_dir,
    method="solid",
    backbone=settings["backbone"],
    dim=settings["dim"],
    epochs=1,
    stage1_epochs=1,
    batch_size=settings["batch_size"],
    eval_negatives=1,
    eval_protocol="full",
    select_metric="full:ndcg@10",
    full_eval_users=settings["full_eval_users"],
    progress=False,
    **extra,
  )
  last = {}
  state = {"phase": phases("prelude")}
  state["phase"].__enter__()

  def train_stage(spec, data, loop_settings):
    state["phase"].__exit__(None, None, None)
    with phases(spec.name):
      result, params = loop.train_stage(spec, data, loop_settings)
    last.update(model=spec.model, params=params, users=data.test_full, name=spec.name)
    state["phase"] = phases(f"after_{spec.name}")
    state["phase"].__enter__()
    return result, params

  results = stages.run_experiment(config, workdir, train_stage=train_stage)
  state["phase"].__exit__(None, None, None)

  with phases("full_eval"):
    start = time.perf_counter()
    evaluator = full_eval.FullEvaluator(last["model"], last["users"])
    evaluator.counts(last["params"])  # compiles; returns host arrays
    first = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluator(last["params"])
    again = time.perf_counter() - start
  return {
    "profile": profile,
    "data": stats,
    "phases": phases.records,
    "peak_rss_gib": max(r["peak_rss_gib"] for r in phases.records),
    "full_eval": {
      "users": int(len(last["users"]["target"])),
      "items": int(last["model"].config.num_items),
      "first_call_s": round(first, 2),
      "seconds": round(again, 2),
      "metrics": metrics,
    },
    "results": {k: results[k] for k in ("valid_full", "test_full", "semantics") if k in results},
    "stages": {
      name: {
        k: stage[k]
        for k in ("train_seconds", "eval_seconds", "train_samples", "train_samples_per_s")
        if k in stage
      }
      for name, stage in results.get("stages", {}).items()
    },
  }


def main(argv):
  del argv
  data_dir = FLAGS.data_dir or os.path.join(tempfile.gettempdir(), f"solid_jax_{FLAGS.profile}")
  settings = {
    "batch_size": FLAGS.batch_size,
    "full_eval_users": FLAGS.full_eval_users,
    "dim": FLAGS.dim,
    "backbone": FLAGS.backbone,
    "embedding_optimizer": FLAGS.embedding_optimizer,
  }
  with tempfile.TemporaryDirectory() as tmp:
    workdir = FLAGS.workdir or os.path.join(tmp, "run")
    out = run(FLAGS.profile, data_dir, workdir, os.path.join(tmp, "cache"), settings)
  out["settings"] = settings
  timing.write_output(json.loads(json.dumps(out, default=float)), FLAGS.output)


if __name__ == "__main__":
  _define_flags()
  app.run(main)

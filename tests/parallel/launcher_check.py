"""The training launcher's path on 8 fake CPU devices: data parallel against one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel/launcher_check.py

(`launcher_test.py` runs it; the flag must be set before JAX is imported, hence the process.)
``stages.run_experiment`` trains SOLID (stage 1 + stage 2, GRU4Rec, d = 8, grouped candidates) on
the tiny synthetic dataset of the training tests for 2 epochs with 50 rows per batch (10 groups of
5: neither a multiple of 8, so every batch is padded with zero-weight rows to 16 groups):

- ``mesh``: ``data_parallel=True`` (the 8 devices);
- ``single``: ``data_parallel=False`` (one device);
- ``crashed``: data parallel with a checkpoint every 4 steps, killed (an exception from the batch
  iterator) in the second epoch of stage 2, then relaunched twice from copies of that workdir:
  ``resumed`` on the 8 devices and ``resumed_single`` with ``data_parallel=False``.

It also scores one split with ``Evaluator`` with and without the mesh (grouped and per-row paths,
one shared scorers dict). Prints one JSON line.
"""

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import solid_jax as sj  # noqa: E402
from solid_jax import parallel  # noqa: E402
from solid_jax.train import TrainConfig  # noqa: E402
from solid_jax.train import checkpoint  # noqa: E402
from solid_jax.train import stages  # noqa: E402
from solid_jax.train import evaluator as evaluator_lib  # noqa: E402
from solid_jax.train import writers  # noqa: E402
from tests.train import synthetic  # noqa: E402

STAGES = ("stage1", "stage2")
CRASH_AFTER = 7  # batches of the second epoch of stage 2 read before the crash


class Crash(RuntimeError):
  pass


def record_batches(seen):
  """Wraps parallel.device_prefetch (as the loop calls it) to record how batches are placed."""
  original = parallel.device_prefetch

  def wrapped(iterator, size=2, sharding=None):
    for batch in original(iterator, size, sharding):
      items = batch["items"]
      seen.add(
        (
          str(getattr(items.sharding, "spec", None)),
          len(items.addressable_shards),
          int(items.shape[0]),
        )
      )
      yield batch

  parallel.device_prefetch = wrapped


def crash_in_stage2(after):
  """sj.data.batches that fails in the second epoch of stage 2 after ``after`` batches."""
  original = sj.data.batches
  calls = {"epoch1": 0}

  def batches(rows, batch_size, *, seed, epoch, shuffle, start_step=0):
    if epoch == 1:
      calls["epoch1"] += 1  # stage 1 asks for its epoch 1 first, then stage 2
    crash = epoch == 1 and calls["epoch1"] == 2
    for i, batch in enumerate(
      original(rows, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start_step=start_step)
    ):
      if crash and i == after:
        raise Crash("killed in the second epoch of stage 2")
      yield batch

  return original, batches


def summary(results, workdir):
  out = {"valid": results["valid"], "test": results["test"], "stages": {}}
  for stage in STAGES:
    lines = writers.read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
    out["stages"][stage] = {
      "devices": results["stages"][stage].get("devices"),
      "train_loss": [line["train_loss"] for line in lines],
      "valid_uauc": [line["valid"]["uauc"] for line in lines],
      "valid": results["stages"][stage]["valid"],
      "test": results["stages"][stage]["test"],
    }
  return out


def evaluator_check(config, mesh):
  ds = sj.data.load_dataset(config.dataset)
  splits = sj.data.make_splits(
    ds, seq_len=config.seq_len, train_negatives=4, eval_negatives=9, seed=0
  )
  model = sj.make_model(
    config.model_config("main", num_items=ds.num_items, num_semantics=ds.num_semantics)
  )
  params = model.init(jax.random.key(1))
  scorers = {}
  out = {}
  for grouped in (True, False):
    # 100 rows per batch: 10 histories of 10 candidates, or 100 rows (neither a multiple of 8).
    plain = evaluator_lib.Evaluator(model, splits["valid"], 100, grouped=grouped, scorers=scorers)
    sharded = evaluator_lib.Evaluator(
      model, splits["valid"], 100, grouped=grouped, scorers=scorers, mesh=mesh
    )
    a, b = np.asarray(plain.scores(params)), np.asarray(sharded.scores(params))
    ma, mb = plain(params), sharded(params)
    out["grouped" if grouped else "rows"] = {
      "rows": int(a.size),
      "max_score_diff": float(np.max(np.abs(a - b))),
      "max_metric_diff": max(abs(ma[k] - mb[k]) for k in ma),
      "arg_spec": str(
        jax.tree.leaves(sharded._parts[0][:2] if grouped else sharded._args)[0].sharding.spec
      ),
      "scores_replicated": bool(sharded.scores(params).sharding.is_fully_replicated),
    }
  out["scorers"] = sorted(str(k) if isinstance(k, str) else f"{k[0]}+mesh" for k in scorers)
  return out


def main():
  jax.config.update("jax_disable_most_optimizations", True)  # tiny shapes: compile fast
  checkpoint.quiet_orbax_logging()
  tmp = tempfile.mkdtemp(prefix="launcher_check_")
  os.environ["SOLID_JAX_CACHE"] = os.path.join(tmp, "cache")
  dataset = str(synthetic.write_s3rec(os.path.join(tmp, "toy")))
  config = TrainConfig(
    dataset=dataset,
    method="solid",
    backbone="gru4rec",
    dim=8,
    batch_size=50,
    eval_batch_size=256,
    eval_negatives=9,
    epochs=2,
    lr=1e-2,
    progress=False,
    tensorboard=False,
  )
  mesh = parallel.make_mesh()
  out = {"devices": jax.device_count(), "evaluator": evaluator_check(config, mesh)}

  seen = set()
  record_batches(seen)
  out["mesh"] = summary(
    stages.run_experiment(config, os.path.join(tmp, "mesh")), os.path.join(tmp, "mesh")
  )
  out["mesh_batches"] = sorted(seen)
  seen.clear()
  single = TrainConfig(**{**config.to_dict(), "data_parallel": False})
  out["single"] = summary(
    stages.run_experiment(single, os.path.join(tmp, "single")), os.path.join(tmp, "single")
  )
  out["single_batches"] = sorted(seen)

  crashing = TrainConfig(**{**config.to_dict(), "checkpoint_every_steps": 4})
  original, batches = crash_in_stage2(CRASH_AFTER)
  sj.data.batches = batches
  crashed = os.path.join(tmp, "crashed")
  try:
    stages.run_experiment(crashing, crashed)
    out["crash"] = "no crash"
  except Crash as e:
    out["crash"] = str(e)
  finally:
    sj.data.batches = original
  with checkpoint.StageCheckpoints(os.path.join(crashed, "stage2"), read_only=True) as ckpts:
    meta = ckpts.restore_meta(ckpts.latest_step())
  out["crash_checkpoint"] = {k: meta[k] for k in ("epoch", "step_in_epoch", "epoch_done")}
  copy = crashed + "_copy"
  shutil.copytree(crashed, copy)
  out["resumed"] = summary(stages.run_experiment(crashing, crashed), crashed)
  single_resume = TrainConfig(**{**crashing.to_dict(), "data_parallel": False})
  out["resumed_single"] = summary(stages.run_experiment(single_resume, copy), copy)
  shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(out))


if __name__ == "__main__":
  main()

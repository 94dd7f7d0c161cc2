r"""Times the full-catalogue evaluation of a whole test split (a benchmark record, JSON).

  python -m experiments.full_eval_benchmark --output=docs/perf/full_eval.json

For every data set: SASRec + SOLID in the SPEC setting (d = 32, L = 10, the model at its init:
the time does not depend on the weights) and the static SASRec of `s3rec_sasrec` (d = 64, L = 50,
2 blocks), every test user ranking every item (``FullEvaluator``, history excluded). Reports the
compile time, every repeat and the median, users x items, and the targets of the evaluation issue
(ml-100k <= 1 s, Beauty <= 10 s on 2 CPU cores) with the load average during the run.
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

import solid_jax as sj
from solid_jax.train import cli
from solid_jax.train.full_eval import FullEvaluator

FLAGS = flags.FLAGS
cli.single_threaded_cpu_kernels()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list(
  "datasets",
  ["ml-100k", os.path.join(os.path.dirname(ROOT), "shared", "data", "beauty")],
  "data sets (names or folders)",
)
flags.DEFINE_integer("repeats", 3, "timed evaluations after the compiling one")
flags.DEFINE_string("output", "", "JSON file (empty: print only)")
TARGETS = {"ml-100k": 1.0, "beauty": 10.0}


def _models(ds):
  base = cli.load_config_file(os.path.join(ROOT, "experiments", "configs", "default.py"))
  published = cli.load_config_file(os.path.join(ROOT, "experiments", "configs", "s3rec_sasrec.py"))
  yield (
    "sasrec_solid_spec",
    base,
    base.model_config("stage2", num_items=ds.num_items, num_semantics=ds.num_semantics),
  )
  published = dataclasses.replace(published, method="static")
  yield (
    "sasrec_static_s3rec",
    published,
    published.model_config("main", num_items=ds.num_items, num_semantics=ds.num_semantics),
  )


def bench(name: str) -> list[dict]:
  ds = sj.data.load_dataset(name)
  out = []
  for label, train_cfg, model_cfg in _models(ds):
    splits = sj.data.make_splits(
      ds, seq_len=train_cfg.seq_len, train_negatives=1, eval_negatives=99, seed=0
    )
    users = sj.data.full_ranking_users(ds, splits, "test")
    model = sj.make_model(model_cfg)
    params = model.init(jax.random.key(0))
    t0 = time.perf_counter()
    evaluator = FullEvaluator(model, users)
    evaluator(params)
    first = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.repeats):
      t0 = time.perf_counter()
      evaluator(params)
      times.append(time.perf_counter() - t0)
    key = os.path.basename(os.path.normpath(name))
    record = {
      "dataset": key,
      "model": label,
      "users": evaluator.num_users,
      "items": ds.num_items - 1,
      "dim": model_cfg.dim,
      "seq_len": model_cfg.seq_len,
      # Rows per device batch of the first length group (every group uses the same batch size).
      "user_batch": int(np.asarray(evaluator._parts[0][1]["target"]).shape[1]),  # pylint: disable=protected-access
      "item_tile": evaluator.tile,
      "first_call_s": first,
      "seconds": times,
      "median_s": float(np.median(times)),
      "target_s": TARGETS.get(key),
      "load_average": os.getloadavg(),
    }
    print(json.dumps(record))
    out.append(record)
  return out


def main(argv):
  del argv
  records = {
    "device": str(jax.devices()[0]),
    "jax": jax.__version__,
    "cpu_count": os.cpu_count(),
    "runs": [r for name in FLAGS.datasets for r in bench(name)],
  }
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  app.run(main)

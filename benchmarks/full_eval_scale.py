r"""Full-catalogue evaluation at Amazon-Electronics scale: seconds per 1,000 users at 476k items.

  python -m benchmarks.full_eval_scale --num_items=476003 --users=1000 \
      --output=docs/perf/full_eval_scale_cpu.json

SASRec + SOLID in the SPEC setting (d = 32, L = 10; DUET generators), the model at its init (the
time does not depend on the weights), synthetic users: histories of 1 to 10 items drawn from a
Zipf law over the catalogue (`benchmarks.synthetic`), a target after them, the history excluded
(``seen``). Every user ranks every item with `solid_jax.train.full_eval.FullEvaluator` (item
tiles of 4,096, a matmul per tile). Reports the compile time, every timed repeat, the median,
seconds per 1,000 users, and the peak RSS of the process.
"""

from __future__ import annotations

import os
import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import synthetic
from benchmarks import throughput
from benchmarks import timing
import solid_jax as sj
from solid_jax.train import cli
from solid_jax.train.full_eval import FullEvaluator

FLAGS = flags.FLAGS
cli.single_threaded_cpu_kernels()
flags.DEFINE_integer("num_items", 476_003, "catalogue size incl. padding (Electronics: 476,002)")
flags.DEFINE_integer("num_semantics", 101, "semantic ids incl. padding")
flags.DEFINE_integer("users", 1000, "users ranked")
flags.DEFINE_integer("repeats", 3, "timed evaluations after the compiling one")
flags.DEFINE_string("output", "", "JSON file (empty: print only)")


def synthetic_users(num_items: int, num_semantics: int, users: int, seed: int = 0) -> dict:
  """The `solid_jax.data.full_ranking_users` layout for synthetic users (L = 10)."""
  catalog = synthetic.make_catalog(num_items, num_semantics, seed=seed)
  rng = np.random.default_rng(seed)
  lengths = rng.choice(np.arange(1, 11), size=users, p=catalog.length_probs)
  drawn = synthetic._zipf_items(catalog, rng, (users, 11))  # pylint: disable=protected-access
  items = np.where(np.arange(10)[None] < lengths[:, None], drawn[:, :10], 0).astype(np.int32)
  target = drawn[:, 10]
  return {
    "user": np.arange(1, users + 1, dtype=np.int32),
    "items": items,
    "semantics": catalog.item_semantic[items].astype(np.int32),
    "target": target,
    "target_semantic": catalog.item_semantic[target].astype(np.int32),
    "seen": items,
  }


def measure(num_items: int, num_semantics: int, users: int, repeats: int) -> dict:
  cfg = throughput.model_config("sasrec", "solid", num_items=num_items, num_semantics=num_semantics)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  split = synthetic_users(num_items, num_semantics, users)
  t0 = time.perf_counter()
  evaluator = FullEvaluator(model, split)
  metrics = evaluator(params)
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    evaluator(params)
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  return {
    "device": str(jax.devices()[0]),
    "model": "sasrec + solid (duet), d=32, L=10, at init",
    "items": num_items - 1,
    "users": users,
    "item_tile": evaluator.tile,
    "first_call_s": first,
    "seconds": times,
    "median_s": median,
    "seconds_per_1000_users": median * 1000 / users,
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "load_average": os.getloadavg(),
    "ndcg@10_at_init": metrics.get("ndcg@10"),
  }


def main(argv):
  del argv
  record = measure(FLAGS.num_items, FLAGS.num_semantics, FLAGS.users, FLAGS.repeats)
  timing.write_output(record, FLAGS.output)


if __name__ == "__main__":
  app.run(main)

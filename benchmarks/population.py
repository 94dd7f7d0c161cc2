r"""Samples/s per member of the vmapped population step, for N members, against the solo step.

  python -m benchmarks.population --sizes=1,3,8,32 --output=docs/perf/population_cpu.json

SASRec + SOLID (DUET generators, ml-100k sizes, d = 32, L = 10), the grouped train step (one
history, 5 candidates) as training runs it. For every N the population step
(`solid_jax.train.population.make_population_step`) updates N stacked members, each from its own
batch; ``member_samples_per_s`` is rows per member per second, ``total_samples_per_s`` the sum
over the members, and ``speedup_vs_solo`` the total against N solo steps run one after another
(the solo step's samples/s measured in the same run).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import synthetic
from benchmarks import throughput
from benchmarks import timing
import solid_jax as sj
from solid_jax.train import optim as optim_lib
from solid_jax.train import population
from solid_jax.train import rows as rows_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["1", "3", "8", "32"], "population sizes N")
flags.DEFINE_integer("batch_size", 1020, "rows per member and step (whole groups of 5)")
flags.DEFINE_integer("num_items", 1683, "catalogue size incl. padding")
flags.DEFINE_integer("repeats", 7, "timed repeats per case")
flags.DEFINE_integer("steps", 3, "steps per timed repeat")
flags.DEFINE_string("output", "", "JSON file to write")


def measure(sizes, *, batch_size=1020, num_items=1683, repeats=7, steps=3) -> dict:
  """Median step times of the solo step and of the population step for every N in ``sizes``."""
  cfg = throughput.model_config("sasrec", "solid", num_items=num_items, num_semantics=21)
  model = sj.make_model(cfg)
  catalog = synthetic.make_catalog(num_items, 21)
  host = synthetic.make_batches(catalog, batch_size, max(sizes), seed=0)
  group = rows_lib.candidate_groups(host[0])
  grouped = [
    throughput.select(b, throughput.TRAIN_KEYS) for b in throughput.grouped_batches(host, group)
  ]
  params = model.init(jax.random.key(0))
  solo = throughput.TrainBench(model, params, host[:1], grouped=True)
  solo_ms = timing.summarize(solo.time(repeats=repeats, steps_per_repeat=steps))["median_ms"]
  records = [
    {
      "members": 0,
      "impl": "solo",
      "median_ms": solo_ms,
      "member_samples_per_s": batch_size / solo_ms * 1e3,
    }
  ]
  tx = optim_lib.make_optimizer(model, params, 1e-3)
  for n in sizes:
    step = population.make_population_step(model, tx, grouped=True, scale_lr=False)
    members = [model.init(jax.random.key(i)) for i in range(n)]
    state = {
      "params": population.stack(members),
      "opt": population.stack([tx.init(p) for p in members]),
    }
    batch = jax.device_put({k: np.stack([b[k] for b in grouped[:n]]) for k in grouped[0]})
    args = (
      jax.device_put(np.zeros(n, np.int32)),
      jax.jit(lambda s: jax.vmap(jax.random.key)(s))(np.arange(n)),
      jax.device_put(np.full(n, 1e-3, np.float32)),
      jax.device_put(np.ones(n, bool)),
    )
    out = {}

    def run(k, out=out, state=state, step=step, batch=batch, args=args):
      for _ in range(k):
        state["params"], state["opt"], out["s"] = step(state["params"], state["opt"], batch, *args)

    def sync(out=out, state=state):
      jax.block_until_ready((state["params"], out.get("s")))

    with jax.transfer_guard("disallow"):
      ms = timing.summarize(timing.time_repeats(run, sync, repeats=repeats, steps_per_repeat=steps))
    median = ms["median_ms"]
    records.append(
      {
        "members": n,
        "impl": "population",
        "median_ms": median,
        "p10_ms": ms["p10_ms"],
        "p90_ms": ms["p90_ms"],
        "member_samples_per_s": batch_size / median * 1e3,
        "total_samples_per_s": n * batch_size / median * 1e3,
        "speedup_vs_solo": n * solo_ms / median,
      }
    )
    print(json.dumps(records[-1]), flush=True)
  return {
    "device": str(jax.devices()[0]),
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "model": "sasrec + solid (duet), d=32, L=10, grouped step, 5 candidates per history",
    "batch_size_per_member": batch_size,
    "num_items": num_items,
    "records": records,
  }


def main(argv):
  del argv
  result = measure(
    [int(s) for s in FLAGS.sizes],
    batch_size=FLAGS.batch_size,
    num_items=FLAGS.num_items,
    repeats=FLAGS.repeats,
    steps=FLAGS.steps,
  )
  timing.write_output(result, FLAGS.output)


if __name__ == "__main__":
  app.run(main)

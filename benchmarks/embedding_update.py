r"""Cost of the item table's update in the SOLID train step, by catalogue size and update rule.

  python -m benchmarks.embedding_update --num_items=1683,100000,476002,1000000 \
      --output=docs/perf/embedding_update_cpu.json

For every catalogue size, the grouped SASRec + SOLID train step (DUET generators, d = 32, L = 10,
1,020 rows = 204 histories of 5 candidates, Zipf batches from `benchmarks.synthetic`) with each
``embedding_optimizer`` of `solid_jax.train.optim.make_optimizer`: dense Adam (the default),
Adagrad and SGD on the table through ``optax.multi_transform`` (dense too), and the row-wise
sparse Adam. Median ms per step over the timed repeats of one run, and the ratio to dense Adam
of the same size.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax

import solid_jax as sj
from benchmarks import synthetic
from benchmarks import throughput
from benchmarks import timing
from solid_jax.train import optim as optim_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("num_items", ["1683", "100000", "476002", "1000000"], "catalogue sizes")
flags.DEFINE_list("optimizers", list(optim_lib.EMBEDDING_OPTIMIZERS), "table update rules")
flags.DEFINE_integer("batch_size", 1020, "rows per step (whole groups of 5)")
flags.DEFINE_integer("repeats", 7, "timed repeats per case")
flags.DEFINE_integer("steps", 5, "steps per timed repeat")
flags.DEFINE_string("output", "", "JSON file to write")


def measure(sizes, optimizers, *, batch_size=1020, repeats=7, steps=5) -> dict:
  records = []
  for n in sizes:
    cfg = throughput.model_config("sasrec", "solid", num_items=n, num_semantics=21)
    model = sj.make_model(cfg)
    params = model.init(jax.random.key(0))
    host = synthetic.make_batches(synthetic.make_catalog(n, 21), batch_size, 4, seed=0)
    base = None
    for name in optimizers:
      bench = throughput.TrainBench(model, params, host, grouped=True, embedding_optimizer=name)
      ms = timing.summarize(bench.time(repeats=repeats, steps_per_repeat=steps))["median_ms"]
      base = ms if name == "adam" else base
      records.append(
        {
          "num_items": n,
          "embedding_optimizer": name,
          "median_ms": ms,
          "samples_per_s": batch_size / ms * 1e3,
          "speedup_vs_adam": None if base is None else base / ms,
          "final_loss": bench.summary()["final_loss"],
        }
      )
      print(records[-1], flush=True)
      del bench
  return {
    "records": records,
    "settings": {
      "batch_size": batch_size,
      "repeats": repeats,
      "steps": steps,
      "model": "sasrec/solid (duet), d=32, L=10, grouped step, groups of 5",
    },
    "device": str(jax.devices()[0]),
  }


def main(argv):
  del argv
  sizes = [int(x) for x in FLAGS.num_items]
  out = measure(
    sizes, FLAGS.optimizers, batch_size=FLAGS.batch_size, repeats=FLAGS.repeats, steps=FLAGS.steps
  )
  timing.write_output(out, FLAGS.output)


if __name__ == "__main__":
  app.run(main)

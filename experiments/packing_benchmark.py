r"""Training throughput on every position, packed rows against padded ones (a benchmark record).

  python -m experiments.packing_benchmark --output=docs/perf/packing.json

For every data set, every config of `--configs` (the published SASRec, GRU4Rec and cloze
BERT4Rec settings: L = 50, batch 256) and every method of `--methods` (static by default; duet,
apg, solid and solid_apg time the dynamic heads, SOLID's stage 2 with the data set's semantic
ids; a config whose backbone cannot take a method is skipped), times the jitted training step over
the same batches of
epoch 0, once as padded rows (``sj.data.batches``) and once packed (``sj.data.packed_batches``),
after a warm-up that compiles every shape. Reports the median step time of each, sequences per
second, the ratio (measured in the same run), the real share of the slots, the packed row counts,
and the load average (the machine is shared; the ratio is what to quote).
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
from solid_jax.train import stages
from solid_jax.train import step as step_lib
from solid_jax.train import optim as optim_lib

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list(
  "datasets",
  [os.path.join(os.path.dirname(ROOT), "shared", "data", "beauty")],
  "data sets (names or folders)",
)
flags.DEFINE_list(
  "configs", ["s3rec_sasrec", "s3rec_gru4rec", "s3rec_bert4rec"], "configs in experiments/configs"
)
flags.DEFINE_list("methods", ["static"], "methods (sj.models.METHODS) of every config")
flags.DEFINE_integer("steps", 20, "timed steps of each layout")
flags.DEFINE_string("output", "", "JSON file (empty: print only)")


def _rows(config, ds, splits):
  if config.objective == "cloze":
    return sj.data.cloze_rows(ds, splits, 0, mask_rate=config.mask_rate)
  return sj.data.position_rows(ds, splits, 0)


def _time(step_fn, params, opt_state, batches):
  times = []
  for i, batch in enumerate(batches):
    batch = jax.device_put({k: v for k, v in batch.items() if k != "user"})
    start = time.perf_counter()
    params, opt_state, scalars = step_fn(params, opt_state, batch, np.int32(i))
    jax.block_until_ready(scalars)
    times.append(time.perf_counter() - start)
  return times


def bench(name: str, dataset: str, method: str = "static") -> dict | None:
  base = cli.load_config_file(name, os.path.join(ROOT, "experiments", "configs"))
  try:
    config = dataclasses.replace(base, method=method)
  except ValueError as e:  # e.g. cloze BERT4Rec trains the static head only
    print(f"skipped {name} / {method}: {e}")
    return None
  ds = sj.data.load_dataset(dataset)
  splits = sj.data.make_splits(
    ds,
    seq_len=config.seq_len,
    train_negatives=config.train_negatives,
    eval_negatives=config.eval_negatives,
    seed=0,
  )
  rows = stages.with_semantics(_rows(config, ds, splits), ds.item_semantic)
  model_cfg = config.model_config(
    config.stages()[-1], num_items=ds.num_items, num_semantics=int(ds.item_semantic.max()) + 1
  )
  model = sj.make_model(model_cfg)
  params = model.init(jax.random.key(0))
  tx = optim_lib.make_optimizer(model, params, config.lr)
  out = {
    "config": name,
    "method": method,
    "dataset": ds.name,
    "users": int(len(rows["items"])),
    "batch_size": config.batch_size,
    "seq_len": config.seq_len,
    "real_slot_share": float(np.mean(rows["items"] != 0)),
  }
  for layout, make in (("padded", sj.data.batches), ("packed", sj.data.packed_batches)):
    batches = list(make(rows, config.batch_size, seed=0, epoch=0))
    step_fn = step_lib.make_train_step(model, tx, seed=0)
    # Warm-up: compile every shape of the epoch once.
    shapes = {}
    for b in batches:
      shapes.setdefault(b["items"].shape, b)
    state = (jax.tree.map(np.copy, params), tx.init(params))
    _time(step_fn, *jax.tree.map(np.copy, state), list(shapes.values()))
    timed = batches[: FLAGS.steps]
    times = _time(step_fn, *jax.tree.map(np.copy, state), timed)
    median = float(np.median(times))
    out[layout] = {
      "median_step_s": median,
      "sequences_per_s": config.batch_size / median,
      "rows_per_batch": sorted({int(b["items"].shape[0]) for b in timed}),
      "steps_timed": len(times),
    }
  out["speedup"] = out["padded"]["median_step_s"] / out["packed"]["median_step_s"]
  return out


def main(argv):
  del argv
  records = [
    bench(name, dataset, method)
    for dataset in FLAGS.datasets
    for name in FLAGS.configs
    for method in FLAGS.methods
  ]
  records = [r for r in records if r is not None]
  report = {
    "jax": jax.__version__,
    "devices": str(jax.devices()),
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "records": records,
  }
  text = json.dumps(report, indent=1)
  print(text)
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)

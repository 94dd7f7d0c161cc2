r"""The main comparison: static, DUET and SOLID (SASRec, ml-100k), then a results table.

  python -m experiments.main --workdir_root=/tmp/solid_main --epochs=5

Each method trains in its own workdir ``<workdir_root>/<dataset>_<backbone>_<method>_seed<seed>``
(SOLID: stage 1 then stage 2), so relaunching resumes unfinished runs and reads finished ones back.
"""

import dataclasses
import os
import time

from absl import app
from absl import flags
from absl import logging

from solid_jax import parallel
from solid_jax.train import checkpoint
from solid_jax.train import cli
from solid_jax.train import stages

FLAGS = flags.FLAGS
cli.single_threaded_cpu_kernels()
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

flags.DEFINE_string("workdir_root", "/tmp/solid_jax_main", "parent of the per-method workdirs")
flags.DEFINE_list("methods", ["static", "duet", "solid"], "methods to run, in order")
flags.DEFINE_string("config", "default", "base config file (experiments/configs/<name>.py)")
flags.DEFINE_string("dataset", "ml-100k", "registered dataset name or folder")
flags.DEFINE_string("backbone", "sasrec", "sequence encoder")
flags.DEFINE_integer("epochs", 5, "epochs of every stage (5: a few minutes on 2 CPU cores)")
flags.DEFINE_integer("seed", 0, "seed of every run")
flags.DEFINE_bool("progress", True, "progress bars (only when stderr is a terminal)")


def main(argv):
  # One of several processes (srun, mpirun, JAX_COORDINATOR_ADDRESS): join them first.
  parallel.maybe_initialize_distributed()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoint.quiet_orbax_logging()
  base = dataclasses.replace(
    cli.load_config_file(FLAGS.config, CONFIGS_DIR),
    dataset=FLAGS.dataset,
    backbone=FLAGS.backbone,
    epochs=FLAGS.epochs,
    seed=FLAGS.seed,
    progress=FLAGS.progress,
  )
  name = os.path.basename(os.path.normpath(FLAGS.dataset))
  start = time.perf_counter()
  results = {}
  for method in FLAGS.methods:
    config = dataclasses.replace(base, method=method)
    workdir = os.path.join(
      FLAGS.workdir_root, f"{name}_{config.backbone}_{method}_seed{config.seed}"
    )
    logging.info("%s -> %s", method, workdir)
    results[method] = stages.run_experiment(config, workdir)
  print(stages.summary_table(results))
  print(
    f"wall time of this launch: {(time.perf_counter() - start) / 60:.2f} min; workdirs under "
    f"{os.path.abspath(FLAGS.workdir_root)}"
  )


if __name__ == "__main__":
  app.run(main)

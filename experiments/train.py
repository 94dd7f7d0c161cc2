r"""Trains one method on one dataset, every stage it needs, in one resumable workdir.

  python -m experiments.train --dataset=ml-100k --backbone=sasrec --method=solid \
      --workdir=/tmp/solid_ml100k --epochs=5 --seed=0

Flags override the fields of ``--config`` (a file in experiments/configs/, default ``default``);
``--flagfile=FILE`` reads flags from a file. Relaunching the same command on the same workdir
resumes from the latest checkpoint; a finished workdir is only reported. SIGTERM / SIGINT save a
checkpoint at the next step boundary and exit with status 75 (relaunch to resume); a workdir
another launch is using is refused. See experiments/README.md.

Populations: ``--seeds=0,1,2`` (and ``--population='lr=1e-3,3e-3;clip_t=0.01,0.1'``) train every
combination as one member of a population, in one vmapped step per stage, each member an
ordinary run in ``WORKDIR/seed_<s>[-lr_<lr>][-clip_t_<t>]...`` (resumable, and readable alone);
``WORKDIR/population.json`` lists them with their metrics:

  python -m experiments.train --dataset=ml-100k --method=solid --workdir=/tmp/pop --seeds=0,1,2
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from solid_jax import parallel
from solid_jax.train import checkpoint
from solid_jax.train import cli
from solid_jax.train import reliability
from solid_jax.train import stages

FLAGS = flags.FLAGS
cli.single_threaded_cpu_kernels()
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

cli.define_flags(FLAGS)
flags.mark_flag_as_required("workdir")
flags.DEFINE_list(
  "seeds",
  None,
  "train these seeds as one population (one vmapped step per stage); each member in "
  "WORKDIR/seed_<s>; overrides --seed",
)
flags.DEFINE_string(
  "population",
  None,
  "hyperparameter values of the population members, e.g. 'lr=1e-3,3e-3;clip_t=0.01,0.1' "
  "(every combination with --seeds; lr, clip_t and consistency_weight may vary)",
)


def main(argv):
  # One of several processes (srun, mpirun, JAX_COORDINATOR_ADDRESS): join them first.
  parallel.maybe_initialize_distributed()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoint.quiet_orbax_logging()
  config = cli.config_from_flags(FLAGS, CONFIGS_DIR)
  logging.info("JAX %s on %s; config %s", jax.__version__, jax.devices(), config)
  try:
    if FLAGS.seeds is not None or FLAGS.population is not None:
      members = stages.population_members(config, FLAGS.workdir, FLAGS.seeds, FLAGS.population)
      results = stages.run_population(*zip(*members))
      path = stages.write_population(FLAGS.workdir, members, results)
      print(stages.population_table(members, results))
      print(f"population: {path}")
      return
    results = stages.run_experiment(config, FLAGS.workdir)
  except reliability.Preempted as e:  # SIGTERM / SIGINT: checkpointed, relaunch to resume
    logging.warning("%s", e)
    sys.exit(reliability.PREEMPTED_EXIT_CODE)
  print(stages.summary_table({config.method: results}))
  print(f"results: {os.path.join(os.path.abspath(FLAGS.workdir), stages.RESULTS_FILE)}")
  logging.info(
    "%s",
    json.dumps(
      {
        k: results[k]
        for k in ("valid", "test", "valid_full", "test_full", "selected_epoch")
        if k in results
      }
    ),
  )


if __name__ == "__main__":
  app.run(main)

r"""Re-scores a workdir's selected checkpoint (both protocols) without training.

  python -m experiments.evaluate --workdir=DIR                 # test split
  python -m experiments.evaluate --workdir=DIR --split=valid,test --save_scores

Works on finished and interrupted workdirs (then the best epoch so far is used); prints the metrics
as JSON and writes the per-user metrics to DIR/<final stage>/per_user_<split>.npz.
"""

import json

from absl import app
from absl import flags

from solid_jax.train import checkpoint
from solid_jax.train import cli
from solid_jax.train import rescore

FLAGS = flags.FLAGS
cli.single_threaded_cpu_kernels()
flags.DEFINE_string("workdir", None, "workdir of experiments.train")
flags.DEFINE_list("split", ["test"], "splits to evaluate: valid, test")
flags.DEFINE_bool("save_scores", False, "also save the raw sampled candidate scores")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for split in FLAGS.split:
    if split not in ("valid", "test"):
      raise app.UsageError(f"--split: expected valid and/or test, got {split!r}")
  checkpoint.quiet_orbax_logging()
  out = rescore.evaluate_workdir(FLAGS.workdir, FLAGS.split, save_scores=FLAGS.save_scores)
  print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
  app.run(main)

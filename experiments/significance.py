r"""Paired significance test between two finished workdirs, over the same users.

  python -m experiments.significance --a=DIR_A --b=DIR_B --metric=full/ndcg@10 [--split=test]

Reads the per-user metrics of both runs' selected epochs (``per_user_<split>.npz``, written by
training or by ``experiments.evaluate``), checks that they cover the same users in the same order,
and prints the means, their difference and the p-value of a two-sided paired randomisation test.
"""

import json

from absl import app
from absl import flags
import numpy as np

from solid_jax.train import rescore

FLAGS = flags.FLAGS
flags.DEFINE_string("a", None, "first workdir")
flags.DEFINE_string("b", None, "second workdir")
flags.DEFINE_string("metric", "full/ndcg@10", "per-user key, e.g. full/ndcg@10, sampled/auc")
flags.DEFINE_string("split", "test", "valid or test")
flags.DEFINE_integer("permutations", 10_000, "random sign patterns")
flags.mark_flags_as_required(["a", "b"])


def main(argv):
  del argv
  a, b = rescore.load_per_user(FLAGS.a, FLAGS.split), rescore.load_per_user(FLAGS.b, FLAGS.split)
  protocol = FLAGS.metric.split("/")[0]
  users_a, users_b = a.get(f"{protocol}/user"), b.get(f"{protocol}/user")
  if users_a is None or users_b is None or not np.array_equal(users_a, users_b):
    raise app.UsageError(
      "the two runs do not hold the same users in the same order "
      f"for {protocol} (other data or seed of the splits?)"
    )
  out = rescore.paired_permutation_test(
    a[FLAGS.metric], b[FLAGS.metric], permutations=FLAGS.permutations
  )
  print(json.dumps({"metric": FLAGS.metric, "split": FLAGS.split, **out}, indent=1))


if __name__ == "__main__":
  app.run(main)

r"""Training curves and codebook usage of a run, drawn to PNG from its ``metrics.jsonl`` files.

  python -m experiments.plot --workdir=/tmp/solid_ml100k [--out=/tmp/solid_ml100k/curves.png]

One column per stage found in the workdir (stage0, stage1, stage2 or main); rows: training loss
(and its BCE part), validation AUC / UAUC / NDCG@10 (and test ones when the run selected on test),
and, for SOLID's stage 2, codebook usage (fraction of codes used) and perplexity.
"""

import os

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position

from solid_jax.train import writers  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS


def _define_flags():
  # Defined only when run as a program, so that importing `plot` defines no global flags.
  flags.DEFINE_string("workdir", None, "run directory (holds stage0|stage1|stage2|main)")
  flags.DEFINE_string("out", None, "PNG path (default: <workdir>/curves.png)")
  flags.DEFINE_integer("dpi", 120, "resolution of the PNG")
  flags.mark_flag_as_required("workdir")


STAGES = ("stage0", "stage1", "stage2", "main")
EVAL_METRICS = ("auc", "uauc", "ndcg@10")


def load_stages(workdir: str) -> dict:
  """Stage name -> list of epoch records, for the stages with a metrics.jsonl."""
  out = {}
  for stage in STAGES:
    records = writers.read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
    if records:
      out[stage] = records
  return out


def plot(workdir: str, out: str, dpi: int = 120) -> str:
  """Draws the curves of ``workdir`` to ``out`` and returns ``out``."""
  stages = load_stages(workdir)
  if not stages:
    raise FileNotFoundError(f"no <stage>/metrics.jsonl under {workdir}")
  has_codebook = any("codebook/usage" in r.get("train", {}) for rs in stages.values() for r in rs)
  nrows = 3 if has_codebook else 2
  fig, axes = plt.subplots(
    nrows, len(stages), figsize=(4.2 * len(stages), 3.0 * nrows), squeeze=False
  )
  for col, (stage, records) in enumerate(stages.items()):
    epochs = [r["epoch"] for r in records]
    ax = axes[0][col]
    ax.plot(epochs, [r["train_loss"] for r in records], "o-", label="loss")
    if all("bce" in r.get("train", {}) for r in records):
      ax.plot(epochs, [r["train"]["bce"] for r in records], "s--", label="BCE part")
    ax.set_title(f"{stage}: training loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1][col]
    for split, style in (("valid", "-"), ("test", ":")):
      for metric in EVAL_METRICS:
        values = [r.get(split, {}).get(metric) for r in records]
        if all(isinstance(v, (int, float)) for v in values):
          ax.plot(epochs, values, "o" + style, label=f"{split} {metric}")
    ax.set_title(f"{stage}: evaluation")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    if has_codebook:
      ax = axes[2][col]
      train = [r.get("train", {}) for r in records]
      if all("codebook/usage" in t for t in train):
        ax.plot(
          epochs,
          [t["codebook/usage"] for t in train],
          "o-",
          color="C2",
          label="usage (fraction of codes)",
        )
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("usage")
        ax2 = ax.twinx()
        ax2.plot(
          epochs, [t["codebook/perplexity"] for t in train], "s--", color="C3", label="perplexity"
        )
        ax2.set_ylabel("perplexity")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="lower right")
        ax.set_title(f"{stage}: codebook (batch means)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
      else:
        ax.axis("off")
  for ax in axes.flat:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  fig.suptitle(os.path.abspath(workdir), fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=dpi)
  plt.close(fig)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = FLAGS.out or os.path.join(FLAGS.workdir, "curves.png")
  print(plot(FLAGS.workdir, out, FLAGS.dpi))


if __name__ == "__main__":
  _define_flags()
  app.run(main)

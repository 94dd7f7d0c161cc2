r"""First results: every method on SASRec over several data sets and seeds -> docs/RESULTS.md.

  python -m experiments.results --workdir_root=/tmp/solid_results --seeds=0,1,2 --epochs=5
  python -m experiments.results --workdir_root=/tmp/solid_results --report_only   # table only

Each (data set, semantics, method, seed) trains in its own workdir under ``--workdir_root``, so a
killed or interrupted sweep resumes where it stopped and finished runs are read back, not retrained.
Runs go seed by seed (all groups for seed 0, then seed 1, ...), so a partial sweep still covers every
row. The report states how many seeds each cell has.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

from solid_jax import models as models_lib
from solid_jax.train import checkpoint
from solid_jax.train import stages
from solid_jax.train.train_config import TrainConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the launcher's flags (only when run as a program, so importing this module for its
  functions never clashes with other launchers' flags)."""
  flags.DEFINE_string("workdir_root", "/tmp/solid_jax_results", "parent of the per-run workdirs")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds of every run")
  flags.DEFINE_integer("epochs", 5, "epochs of every stage")
  flags.DEFINE_list("groups", [], "only these groups (names as in GROUPS); empty = all")
  flags.DEFINE_bool("report_only", False, "do not train; write the report from finished runs")
  flags.DEFINE_string(
    "output",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "RESULTS.md"),
    "where the report goes",
  )


METHODS = models_lib.METHODS.names()
LABELS = {
  "static": "static",
  "duet": "DUET",
  "apg": "APG",
  "solid": "SOLID (DUET)",
  "solid_apg": "SOLID-APG",
  "solid_compat": "SOLID (DUET), paper-compat switch on",
}
METRICS = ("auc", "uauc", "ndcg@10", "hr@10")


@dataclasses.dataclass(frozen=True)
class Group:
  """One table of the report: a data set with one choice of semantics.

  Attributes:
    name: short key (used for ``--groups`` and in workdir names).
    title: heading of the table.
    dataset: registered name of the data set.
    semantics: TrainConfig overrides for the SOLID methods (where semantic ids come from).
    compat_row: also run SOLID with the paper-compat switch on.
    epochs: epochs of every stage; None = the ``--epochs`` flag (small data sets get more).
  """

  name: str
  title: str
  dataset: str
  semantics: Mapping[str, Any]
  compat_row: bool = False
  epochs: int | None = None


GROUPS = (
  Group(
    "ml100k",
    "MovieLens-100K, semantics = first genre (19 classes)",
    "ml-100k",
    {"semantics": "labels"},
    compat_row=True,
  ),
  Group(
    "scimm_clip",
    "Amazon Scientific (mm subset), semantics = k-means (k=24) over "
    "L2-normalised CLIP text + image features",
    "scientific_mm_subset",
    {"semantics": "text_image", "num_clusters": 24},
    epochs=20,
  ),
  Group(
    "scimm_cat",
    "Amazon Scientific (mm subset), semantics = category path at depth 2 (24 classes)",
    "scientific_mm_subset",
    {"semantics": "labels", "category_depth": 2},
    epochs=20,
  ),
  Group(
    "beauty",
    "Amazon Beauty (S3-Rec), semantics = first attribute id (443 classes)",
    "beauty",
    {"semantics": "labels"},
    epochs=3,
  ),
)


def run_specs(group: Group, seed: int, epochs: int) -> list[tuple[str, str, TrainConfig]]:
  """(row key, workdir name, config) of every run of ``group`` for one seed.

  The static / DUET / APG baselines do not use semantics, so groups over the same data set share
  their workdirs (the same name), and they are trained once.
  """
  base = TrainConfig(
    dataset=group.dataset,
    backbone="sasrec",
    epochs=group.epochs or epochs,
    seed=seed,
    progress=False,
  )
  out = []
  for method in METHODS:
    if models_lib.METHODS[method]["head"] == "solid":
      config = dataclasses.replace(base, method=method, **group.semantics)
      name = f"{group.name}_{method}_seed{seed}"
    else:
      config = dataclasses.replace(base, method=method)
      name = f"{group.dataset}_{method}_seed{seed}"
    out.append((method, name, config))
  if group.compat_row:
    config = dataclasses.replace(base, method="solid", paper_compat=True, **group.semantics)
    out.append(("solid_compat", f"{group.name}_solid_compat_seed{seed}", config))
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = sum(values) / n
  if n == 1:
    return mean, math.nan
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Mean and sample std over seeds of the test and valid metrics of finished runs."""
  out: dict[str, Any] = {"n": len(results)}
  for split in ("valid", "test"):
    for m in METRICS:
      out[f"{split}/{m}"] = _mean_std([r[split][m] for r in results])
  out["epochs"] = sorted({r.get("selected_epoch") for r in results})
  out["train_minutes"] = _mean_std([r.get("train_seconds", math.nan) / 60 for r in results])
  return out


def _cell(ms: tuple[float, float]) -> str:
  mean, std = ms
  if math.isnan(mean):
    return "–"
  return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def compare(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> str:
  """'win', 'loss' or 'tie' of ``a`` against ``b`` on a test metric, beyond the seed spread.

  A difference counts only when the means differ by more than the standard deviation of a
  difference of two single runs, sqrt(std_a^2 + std_b^2); with fewer than two seeds on either side
  the verdict is 'undecided'.
  """
  (ma, sa), (mb, sb) = a[f"test/{metric}"], b[f"test/{metric}"]
  if a["n"] < 2 or b["n"] < 2 or math.isnan(sa) or math.isnan(sb):
    return "undecided"
  spread = math.sqrt(sa * sa + sb * sb)
  if ma - mb > spread:
    return "win"
  if mb - ma > spread:
    return "loss"
  return "tie"


def render(
  tables: Mapping[str, Mapping[str, Mapping[str, Any]]], epochs: int, seeds: Sequence[int]
) -> str:
  """The markdown report from aggregated rows (group name -> row key -> aggregate)."""
  lines = [
    "# First results: SASRec with static, DUET, APG, SOLID and SOLID-APG heads",
    "",
    "<!-- Generated file; do not edit by hand. -->",
    "",
    "Generated by `python -m experiments.results "
    f"--seeds={','.join(str(s) for s in seeds)} --epochs={epochs}` (from the repository root, "
    "with `../shared/data` beside it).",
    "",
    "Protocol (SPEC section 3): leave-last-out by time, validation = second to last event, 4 "
    "negatives per training positive resampled every epoch, 99 fixed negatives per "
    "validation/test positive; the epoch is selected on validation UAUC and the test metrics "
    "are those of that epoch. Every stage of a group trains for the number of epochs in its "
    f"heading (default {epochs}) with Adam (lr 1e-3), batch "
    "1024, d = 32, L = 10; SOLID: λ = 0.1, t = 0.01, straight-through codebook initialised "
    "from the stage-1 metacode. Cells are mean ± sample standard deviation over seeds (n = "
    "number of seeds); NDCG/HR ties are broken by expected value, never in the positive's "
    "favour.",
    "",
  ]
  verdicts = []
  for group in GROUPS:
    rows = tables.get(group.name)
    if not rows:
      continue
    lines += [
      f"## {group.title}; {group.epochs or epochs} epochs per stage",
      "",
      "| method | n | test AUC | test UAUC | test NDCG@10 | test HR@10 | valid UAUC | "
      "selected epochs | train min |",
      "|---|---:|---|---|---|---|---|---|---:|",
    ]
    for key, agg in rows.items():
      cells = [LABELS[key], str(agg["n"])] + [_cell(agg[f"test/{m}"]) for m in METRICS]
      cells += [
        _cell(agg["valid/uauc"]),
        ",".join(str(e) for e in agg["epochs"]),
        f"{agg['train_minutes'][0]:.1f}",
      ]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for solid, base in (
      ("solid", "duet"),
      ("solid_apg", "apg"),
      ("solid", "static"),
      ("solid_apg", "static"),
    ):
      if solid in rows and base in rows:
        v = {m: compare(rows[solid], rows[base], m) for m in ("uauc", "ndcg@10", "hr@10")}
        verdicts.append(
          f"- {group.title}: {LABELS[solid]} vs {LABELS[base]}: "
          + ", ".join(f"{m.upper()} {v[m]}" for m in v)
        )
  lines += [
    "## Where SOLID wins, ties or loses",
    "",
    "A win or loss is a difference of test means larger than sqrt(std_a² + std_b²), the "
    "spread of a difference of two single runs; anything smaller is a tie. Each SOLID "
    "variant is compared with the generator it is built on (DUET or APG) and with the "
    "static head.",
    "",
  ]
  lines += verdicts or ["- no finished pair of runs yet"]
  lines.append("")
  return "\n".join(lines)


def collect(
  root: str, seeds: Sequence[int], epochs: int, groups: Sequence[Group], *, train: bool
) -> dict[str, dict[str, dict[str, Any]]]:
  """Runs (when ``train``) or reads every run, and aggregates them per group and row."""
  finished: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for seed in seeds:
    for group in groups:
      for key, name, config in run_specs(group, seed, epochs):
        workdir = os.path.join(root, name)
        path = os.path.join(workdir, "results.json")
        if train and not os.path.exists(path):
          logging.info("run %s -> %s", key, workdir)
          start = time.perf_counter()
          stages.run_experiment(config, workdir)
          logging.info("%s done in %.1f min", name, (time.perf_counter() - start) / 60)
        if os.path.exists(path):
          with open(path) as f:
            finished.setdefault((group.name, key), []).append(json.load(f))
  tables: dict[str, dict[str, dict[str, Any]]] = {}
  for group in groups:
    for key in METHODS + ("solid_compat",):
      if (group.name, key) in finished:
        tables.setdefault(group.name, {})[key] = aggregate(finished[(group.name, key)])
  return tables


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoint.quiet_orbax_logging()
  seeds = [int(s) for s in FLAGS.seeds]
  groups = [g for g in GROUPS if not FLAGS.groups or g.name in FLAGS.groups]
  tables = collect(FLAGS.workdir_root, seeds, FLAGS.epochs, groups, train=not FLAGS.report_only)
  report = render(tables, FLAGS.epochs, seeds)
  # The "published baselines" section belongs to experiments/published.py: keep it.
  from experiments import published  # pylint: disable=import-outside-toplevel

  if os.path.exists(FLAGS.output):
    with open(FLAGS.output) as f:
      old = f.read()
    if published.START in old and published.END in old:
      block = published.START + old.split(published.START, 1)[1].split(published.END, 1)[0]
      report = report.rstrip("\n") + "\n\n" + block + published.END + "\n"
  with open(FLAGS.output, "w") as f:
    f.write(report)
  print(report)


if __name__ == "__main__":
  define_flags()
  app.run(main)

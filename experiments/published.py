r"""Published baselines reproduced: S3-Rec's SASRec (and GRU4Rec) settings on its own data files.

  python -m experiments.published --workdir_root=runs/published            # train what is missing
  python -m experiments.published --workdir_root=runs/published --report_only

Every (backbone, data set, seed) trains in its own workdir under ``--workdir_root`` through
``python -m experiments.train`` (one process per run, so memory is returned between runs); a
killed sweep resumes where it stopped, finished runs are read back. Runs go seed by seed over the
data sets, so a partial sweep covers every row early. The report replaces the "published
baselines" section of ``docs/RESULTS.md`` (between its markers; the rest of the file is left as
``experiments.verdict`` wrote it) and says which cells are still partial.

Published figures (S3-Rec, CIKM 2020, Table 2 / the logs of its public repository; SASRec, GRU4Rec
and BERT4Rec baselines; leave-one-out; sampled = 99 random negatives the user never interacted
with; full = every item ranked):
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- published-baselines:start -->", "<!-- published-baselines:end -->"
# The results.json of every finished run is copied here (committed), so a later session's sweep
# skips it even when the workdirs are gone.
RECORDS = os.path.join(ROOT, "docs", "published")

COLUMNS = (
  ("test", "hr@10"),
  ("test", "ndcg@10"),
  ("test_full", "hr@10"),
  ("test_full", "ndcg@10"),
  ("test_full", "hr@20"),
  ("test_full", "ndcg@20"),
)
COLUMN_NAMES = (
  "sampled HR@10",
  "sampled NDCG@10",
  "full HR@10",
  "full NDCG@10",
  "full HR@20",
  "full NDCG@20",
)
# (backbone, data set) -> published values in COLUMNS order (None: not published).
PUBLISHED = {
  ("sasrec", "beauty"): (0.4696, 0.3156, 0.0605, 0.0318, 0.0902, 0.0394),
  ("sasrec", "sports"): (0.4622, 0.2869, 0.0350, 0.0192, 0.0507, 0.0231),
  ("sasrec", "lastfm"): (0.4706, 0.2755, 0.0688, 0.0390, 0.0972, 0.0463),
  ("gru4rec", "beauty"): (0.4106, 0.2584, 0.0283, 0.0137, None, None),
  ("bert4rec", "beauty"): (0.4739, 0.2975, 0.0347, 0.0170, None, None),
}
CONFIGS = {"sasrec": "s3rec_sasrec", "gru4rec": "s3rec_gru4rec", "bert4rec": "s3rec_bert4rec"}
TOLERANCE = 0.05  # relative; the bar for SASRec
TITLES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec"}
# What the runs show where a mean misses a published figure by more than TOLERANCE (the numbers
# of the report are computed; these sentences say what was tried and what the evidence is).
NOTES = {
  ("sasrec", "lastfm"): (
    "LastFM has 1,090 users, so validation NDCG@20 moves a lot from epoch to epoch, and under "
    "S3-Rec's rule (stop after 10 epochs without a better one) two of the three seeds stop within "
    "the first 25 epochs (epochs column). Tried: that rule exactly (these rows) and the same "
    "settings over 200 epochs with the any-metric rule (superseded table), which land within 5% "
    "of every published LastFM figure. S3-Rec's own LastFM fine-tuning log of its sampled "
    "protocol (`reproduce/` in aHuiWang/CIKM2020-S3Rec) nearly meets the same stop around epoch "
    "22."
  ),
  ("sasrec", "sports"): (
    "Only the full-ranking cutoff-10 cells miss; the @20 cells (the selection metric is "
    "NDCG@20) and the sampled ones are within 5%. Not explained."
  ),
  ("gru4rec", "beauty"): (
    "Above the published GRU4Rec row in every cell. This GRU4Rec is trained like the SASRec "
    "config (every position, embedding dropout 0.3, layer norm, N(0, 0.02) init, early stopping "
    "on validation full NDCG@20); S3-Rec's paper does not give the settings of its GRU4Rec "
    "baseline."
  ),
  ("bert4rec", "beauty"): (
    "Below the published BERT4Rec row. The config departs from BERT4Rec's paper in its loss (BCE "
    "against one uniform negative per masked item, not a softmax over the catalogue) and its "
    "schedule (lr 1e-3 and patience 10 on validation full NDCG@20, so 42-57 epochs, not lr 1e-4 "
    "for 400k steps). A softmax over the catalogue is the likely missing piece; it was not tried."
  ),
}


@dataclasses.dataclass(frozen=True)
class Run:
  backbone: str
  dataset: str
  seed: int

  @property
  def name(self) -> str:
    return f"{self.backbone}_{self.dataset}_seed{self.seed}"


def define_flags() -> None:
  flags.DEFINE_string(
    "workdir_root", os.path.join(ROOT, "runs", "published"), "parent of the per-run workdirs"
  )
  flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
  flags.DEFINE_list("datasets", ["beauty", "lastfm", "sports"], "folders in --data_root")
  flags.DEFINE_list("backbones", ["sasrec", "gru4rec", "bert4rec"], "backbones (keys of CONFIGS)")
  flags.DEFINE_string(
    "data_root", os.path.join(os.path.dirname(ROOT), "shared", "data"), "where the data folders are"
  )
  flags.DEFINE_bool("report_only", False, "do not train; write the report from finished runs")
  flags.DEFINE_string("output", os.path.join(ROOT, "docs", "RESULTS.md"), "report file")
  flags.DEFINE_list("extra_flags", [], "more flags for every run, e.g. --extra_flags=--epochs=2")
  flags.DEFINE_bool(
    "multi_thread",
    True,
    "let XLA's CPU kernels use every core in each run (the "
    "runs go one at a time; the launchers default to one thread)",
  )


def plan(backbones, datasets, seeds) -> list[Run]:
  """Every run, seed-major (all data sets of seed 0 first), SASRec before the others."""
  runs = []
  for backbone in backbones:
    for seed in seeds:
      for dataset in datasets:
        if (backbone, dataset) in PUBLISHED:
          runs.append(Run(backbone, dataset, int(seed)))
  return runs


def record(root: str, run: Run) -> None:
  """Copies a finished run's results.json (without its long history) to ``RECORDS``."""
  path = os.path.join(root, run.name, "results.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    res = json.load(f)
  os.makedirs(RECORDS, exist_ok=True)
  keep = {k: v for k, v in res.items() if k != "stages"}
  keep["stages"] = {
    name: {k: v for k, v in stage.items() if k != "history"}
    for name, stage in res.get("stages", {}).items()
  }
  with open(os.path.join(RECORDS, run.name + ".json"), "w") as f:
    json.dump(keep, f, indent=1, sort_keys=True)


def run_one(
  run: Run, root: str, data_root: str, extra: list[str], *, multi_thread: bool = False
) -> None:
  """Trains (or resumes) one run in its own process; raises if it fails."""
  workdir = os.path.join(root, run.name)
  if load(root, run) is not None:
    return
  saved = os.path.join(workdir, "config.json")
  if os.path.exists(saved):
    with open(saved) as f:
      if stale({"config": json.load(f)}, run.backbone):
        aside = f"{workdir}.superseded"
        logging.warning("%s: trained with another config; moved to %s", workdir, aside)
        os.replace(workdir, aside)
  cmd = [
    sys.executable,
    "-m",
    "experiments.train",
    f"--config={CONFIGS[run.backbone]}",
    f"--dataset={os.path.join(data_root, run.dataset)}",
    "--method=static",
    f"--seed={run.seed}",
    f"--workdir={workdir}",
    "--progress=false",
    *extra,
  ]
  logging.info("running %s", " ".join(cmd))
  env = dict(os.environ)
  if multi_thread and "xla_cpu_multi_thread_eigen" not in env.get("XLA_FLAGS", ""):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true").strip()
  subprocess.run(cmd, check=True, cwd=ROOT, env=env)
  record(root, run)


# Fields of a run's config that may differ from the sweep's without making its record stale.
PER_RUN_FIELDS = ("dataset", "seed", "method", "stage1_dir")


@functools.lru_cache(maxsize=None)
def _sweep_config(backbone: str) -> tuple[tuple[str, Any], ...]:
  from solid_jax.train import cli  # pylint: disable=import-outside-toplevel

  config = cli.load_config_file(CONFIGS[backbone], os.path.join(ROOT, "experiments", "configs"))
  return tuple(dataclasses.asdict(config).items())


def sweep_config(backbone: str) -> dict[str, Any]:
  """The TrainConfig (as a dict) the sweep launches for ``backbone``, before the per-run fields
  (its config file is read once per process)."""
  return dict(_sweep_config(backbone))


def stale(result: dict[str, Any], backbone: str) -> list[str]:
  """How a finished run's config differs from the sweep's current one (empty: it counts)."""
  from solid_jax.train import train_config as config_lib  # pylint: disable=import-outside-toplevel

  return config_lib.config_differences(
    result.get("config", {}),
    sweep_config(backbone),
    ignore=config_lib.RUNTIME_FIELDS + PER_RUN_FIELDS,
  )


def load(root: str, run: Run) -> dict[str, Any] | None:
  """A finished run's results (the committed record, else the workdir's results.json), or None
  when there is none or it was trained with another config than the sweep's current one."""
  for path in (
    os.path.join(RECORDS, run.name + ".json"),
    os.path.join(root, run.name, "results.json"),
  ):
    if os.path.exists(path):
      with open(path) as f:
        result = json.load(f)
      differences = stale(result, run.backbone)
      if not differences:
        return result
      logging.warning(
        "%s: %s holds a run of another config (%s); not counted",
        run.name,
        path,
        "; ".join(differences),
      )
  return None


def in_progress(root: str, run: Run) -> str | None:
  """One line on an unfinished run from its metrics.jsonl (None when absent or finished)."""
  if load(root, run) is not None:
    return None
  path = os.path.join(root, run.name, "main", "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    history = [json.loads(line) for line in f if line.strip()]
  if not history:
    return None
  metric = sweep_config(run.backbone)["select_metric"].split(":", 1)[1]
  best = max(history, key=lambda r: r.get("valid_full", {}).get(metric, -1.0))
  v = best.get("valid_full", {})
  return (
    f"unfinished after {len(history)} epochs; best so far epoch {best['epoch']}: "
    f"valid full {metric.upper()} {v.get(metric, float('nan')):.4f}, NDCG@10 "
    f"{v.get('ndcg@10', float('nan')):.4f}, HR@10 "
    f"{v.get('hr@10', float('nan')):.4f}; valid sampled NDCG@10 "
    f"{best.get('valid', {}).get('ndcg@10', float('nan')):.4f} (validation, not test)"
  )


def _cell(values: list[float]) -> str:
  if not values:
    return "—"
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def superseded_table() -> list[str]:
  """Markdown lines summarising the superseded records (other stopping / selection rules)."""
  folder = os.path.join(RECORDS, "superseded")
  groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    if not name.endswith(".json"):
      continue
    with open(os.path.join(folder, name)) as f:
      res = json.load(f)
    backbone, dataset = name.split("_")[:2]
    config = res.get("config", {})
    rule = (
      f"stop rule {config.get('stop_rule', 'select')}, selected on "
      f"{config.get('select_metric', '?')}"
    )
    groups.setdefault((backbone, dataset, rule), []).append(res)
  if not groups:
    return []
  lines = [
    "Superseded runs (earlier stopping / selection rules), for comparison:",
    "",
    "| backbone | data | rule | n | " + " | ".join(COLUMN_NAMES) + " | epochs (selected/stopped) |",
    "|---|---|---|---:|" + "---|" * len(COLUMN_NAMES) + "---|",
  ]
  for (backbone, dataset, rule), results in groups.items():
    ours = [[r[s][m] for r in results if m in r.get(s, {})] for s, m in COLUMNS]
    epochs = ", ".join(f"{r['selected_epoch']}/{r.get('stopped_epoch', '?')}" for r in results)
    lines.append(
      f"| {TITLES.get(backbone, backbone)} | {dataset} | {rule} | {len(results)} | "
      + " | ".join(map(_cell, ours))
      + f" | {epochs} |"
    )
  lines.append("")
  return lines


def gap_notes(by_key: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
  """One paragraph per (backbone, data set) whose mean misses a published figure by more than
  ``TOLERANCE``: the cells, the gap in units of the seed std, and ``NOTES``."""
  lines = []
  for (backbone, dataset), results in by_key.items():
    if not results:
      continue
    misses = []
    for (split, metric), name, p in zip(COLUMNS, COLUMN_NAMES, PUBLISHED[(backbone, dataset)]):
      values = [r[split][metric] for r in results if metric in r.get(split, {})]
      if p is None or not values:
        continue
      gap = (np.mean(values) - p) / p
      if abs(gap) > TOLERANCE:
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        spread = f", {abs(np.mean(values) - p) / std:.1f} seed std" if std > 0 else ""
        misses.append(f"{name} {100 * gap:+.1f}%{spread}")
    if misses:
      note = NOTES.get((backbone, dataset), "Not explained.")
      lines.append(
        f"- **{TITLES.get(backbone, backbone)}, {dataset}** ({'; '.join(misses)}): {note}"
      )
  if lines:
    lines = ["Where a mean is more than 5% from the published figure:", "", *lines, ""]
  return lines


def report(root: str, runs: list[Run]) -> str:
  """The markdown section: one table per backbone, ours next to the published figures."""
  lines = [
    START,
    "## Published baselines reproduced (S3-Rec's SASRec settings)",
    "",
    "<!-- Generated by `python -m experiments.published`; do not edit by hand. -->",
    "",
    "Settings (`experiments/configs/s3rec_sasrec.py`): hidden 64, 2 blocks, 2 heads, GELU, "
    "dropout 0.5 (embedding, hidden, attention), max length 50, item embedding shared with "
    "the output, every position trained with one uniform negative (BCE), Adam lr 1e-3, "
    "batch 256, up to 200 epochs, stopped after 10 epochs in a row without a better "
    "validation full NDCG@20, and the epoch with the best one is selected and its test "
    "metrics reported (S3-Rec's `run_finetune_full.py`, whose full-ranking table this is; "
    "its sampled table comes from separate runs selected on validation sampled MRR, "
    "ours from the same runs). "
    "Protocol: leave-one-out (last item test, second to last validation); sampled = the "
    "target among 99 uniform negatives the user never interacted with (fixed by the seed); "
    "full = every item ranked, the user's earlier items excluded (the target never), ties "
    "by expected value. Cells: mean ± sample std over seeds (n). The relative gap is "
    "(ours - published) / published of the mean; the bar for SASRec is 5%.",
    "",
  ]
  by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for run in runs:
    res = load(root, run)
    by_key.setdefault((run.backbone, run.dataset), [])
    if res is not None:
      by_key[(run.backbone, run.dataset)].append(res)
  for backbone in sorted({r.backbone for r in runs}, key=list(CONFIGS).index):
    lines += [
      f"### {TITLES.get(backbone, backbone)}",
      "",
      f"Config: `experiments/configs/{CONFIGS[backbone]}.py`"
      + (
        ""
        if backbone == "sasrec"
        else " (its docstring says where it differs from the SASRec settings; no 5% bar)"
      )
      + ".",
      "",
      "| data | n | | " + " | ".join(COLUMN_NAMES) + " | epochs (selected/stopped) |",
      "|---|---:|---|" + "---|" * len(COLUMN_NAMES) + "---|",
    ]
    for (b, dataset), results in by_key.items():
      if b != backbone:
        continue
      published = PUBLISHED[(b, dataset)]
      ours = [[r[s][m] for r in results if r.get(s)] for s, m in COLUMNS]
      epochs = ", ".join(f"{r['selected_epoch']}/{r.get('stopped_epoch', '?')}" for r in results)
      lines.append(
        f"| {dataset} | {len(results)} | ours | " + " | ".join(map(_cell, ours)) + f" | {epochs} |"
      )
      lines.append(
        "| | | published | "
        + " | ".join("—" if p is None else f"{p:.4f}" for p in published)
        + " | |"
      )
      gaps = []
      for values, p in zip(ours, published):
        gaps.append("—" if p is None or not values else f"{100 * (np.mean(values) - p) / p:+.1f}%")
      lines.append("| | | gap | " + " | ".join(gaps) + " | |")
    lines.append("")
  lines += gap_notes(by_key)
  lines.append(
    "Only runs trained with the configs as they are now count; records of earlier "
    "configs are kept in `docs/published/superseded/`."
  )
  lines.append("")
  lines += superseded_table()
  expected = len(runs)
  done = sum(len(v) for v in by_key.values())
  if done < expected:
    lines.append(
      f"**Partial:** {done} of {expected} runs finished; the sweep resumes with the "
      "same command (finished runs are kept in `docs/published/`)."
    )
    for run in runs:
      progress = in_progress(root, run)
      if progress:
        lines.append(f"- {run.name}: {progress}")
    lines.append("")
  lines.append(END)
  return "\n".join(lines)


def marked_section(text: str) -> str | None:
  """The published-baselines section of ``text``, markers included (None where it has none)."""
  _, start, rest = text.partition(START)
  body, end, _ = rest.partition(END)
  return start + body + end if start and end else None


def splice(path: str, section: str) -> None:
  """Replaces the marked section of ``path`` (or appends it)."""
  text = open(path).read() if os.path.exists(path) else ""
  old = marked_section(text)
  if old is not None:
    text = text.replace(old, section, 1)
  else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def main(argv):
  del argv
  runs = plan(FLAGS.backbones, FLAGS.datasets, FLAGS.seeds)
  for run in runs:
    record(FLAGS.workdir_root, run)
  if not FLAGS.report_only:
    for run in runs:
      run_one(
        run, FLAGS.workdir_root, FLAGS.data_root, FLAGS.extra_flags, multi_thread=FLAGS.multi_thread
      )
      splice(FLAGS.output, report(FLAGS.workdir_root, runs))
  splice(FLAGS.output, report(FLAGS.workdir_root, runs))
  print(report(FLAGS.workdir_root, runs))


if __name__ == "__main__":
  define_flags()
  app.run(main)

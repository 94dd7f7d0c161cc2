r"""Scaling curves of the SOLID SASRec training step and inference: batch size and catalogue size.

  python -m experiments.scaling --output_dir=docs/perf

Writes ``scaling.json`` (every point, the FLOP table, the host and its load), ``scaling_batch.png``,
``scaling_catalog.png`` and ``scaling.md`` (the tables pasted into docs/PERFORMANCE.md). Points
whose executable would not fit in memory are skipped with a note. About 10 minutes on 2 CPU
cores.
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "docs/perf", "where the JSON, PNGs and markdown go")
flags.DEFINE_list("batch_sizes", ["256", "1024", "4096", "16384", "65536"], "batch sweep")
flags.DEFINE_list(
  "catalog_sizes", ["1000", "10000", "100000", "1000000"], "catalogue sweep (items incl. padding)"
)
flags.DEFINE_integer("base_items", 1683, "catalogue size of the batch sweep (ml-100k)")
flags.DEFINE_integer("base_batch", 1024, "batch size of the catalogue sweep")
flags.DEFINE_string("backbone", "sasrec", "backbone")
flags.DEFINE_string("method", "solid", "method")
flags.DEFINE_list(
  "phases",
  ["train", "train_grouped", "infer"],
  "train: per-row step; train_grouped: the training loop's step (histories "
  "shared by groups of 5 rows, encoded once); infer: generate + score",
)


def _plot(records, sweep, x_key, x_label, path, peak_note):
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  labels = {
    "train": "train step, per row",
    "train_grouped": "train step, grouped (training loop)",
    "infer": "inference (generate + score)",
  }
  for phase, marker in (("train", "o"), ("train_grouped", "^"), ("infer", "s")):
    pts = sorted(
      (
        (r["batch_flag"] if x_key == "batch" else r[x_key], r)
        for r in records
        if r.get("sweep") == sweep and r["phase"] == phase and "samples_per_s" in r
      ),
      key=lambda p: p[0],
    )
    if not pts:
      continue
    xs = [x for x, _ in pts]
    ys = [r["samples_per_s"] for _, r in pts]
    lo = [r["samples_per_s"] - r["samples_per_s_p10"] for _, r in pts]
    hi = [r["samples_per_s_p90"] - r["samples_per_s"] for _, r in pts]
    ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, capsize=3, label=labels[phase])
    skipped = [
      r["batch_flag"] if x_key == "batch" else r[x_key]
      for r in records
      if r.get("sweep") == sweep and r["phase"] == phase and "skipped" in r
    ]
    for x in skipped:
      ax.axvline(x, color="grey", linestyle=":", linewidth=1)
      ax.annotate(f"{phase}: skipped\n(memory)", (x, ax.get_ylim()[0]), fontsize=7, rotation=90)
  ax.set_xscale("log", base=2 if x_key == "batch" else 10)
  ax.set_yscale("log")
  ax.set_xlabel(x_label)
  ax.set_ylabel("samples / s (median; bars p10-p90)")
  ax.set_title(f"SOLID SASRec, solid_jax, {peak_note}")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _table(records, sweep, x_key, x_label) -> str:
  lines = [
    f"| {x_label} | phase | samples/s (median) | p10-p90 | ms/step | compile s | "
    "GFLOP/s (analytic FLOPs) | executable MiB |",
    "|---|---|---|---|---|---|---|---|",
  ]
  order = {"train": 0, "train_grouped": 1, "infer": 2}
  for r in sorted(
    (r for r in records if r.get("sweep") == sweep),
    key=lambda r: (order.get(r["phase"], 3), r[x_key]),
  ):
    if "skipped" in r:
      lines.append(f"| {r[x_key]:,} | {r['phase']} | skipped: {r['skipped']} | | | | | |")
      continue
    exe = "" if r.get("exe_bytes") is None else f"{r['exe_bytes'] / 2**20:,.0f}"
    lines.append(
      f"| {r[x_key]:,} | {r['phase']} | {r['samples_per_s']:,.0f} | "
      f"{r['samples_per_s_p10']:,.0f}-{r['samples_per_s_p90']:,.0f} | {r['median_ms']:.2f} | "
      f"{r['compile_s']:.1f} | {r.get('achieved_gflops_per_s', float('nan')):.1f} | {exe} |"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import time  # pylint: disable=import-outside-toplevel
  import solid_jax as sj  # pylint: disable=import-outside-toplevel
  from benchmarks import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from benchmarks import scaling  # pylint: disable=import-outside-toplevel
  from benchmarks import suite  # pylint: disable=import-outside-toplevel
  from benchmarks import throughput  # pylint: disable=import-outside-toplevel

  os.makedirs(FLAGS.output_dir, exist_ok=True)
  start = time.time()
  host = suite.host_info()
  peak = flops_lib.measure_peak_flops()
  print(
    f"measured float32 matmul peak: {peak['gflops_per_s']:.0f} GFLOP/s "
    f"(best {peak['best_gflops_per_s']:.0f})"
  )
  records = scaling.run_scaling(
    [int(b) for b in FLAGS.batch_sizes],
    [int(n) for n in FLAGS.catalog_sizes],
    base_items=FLAGS.base_items,
    base_batch=FLAGS.base_batch,
    phases=tuple(FLAGS.phases),
    backbone=FLAGS.backbone,
    method=FLAGS.method,
  )
  cfg = throughput.model_config(
    FLAGS.backbone, FLAGS.method, num_items=FLAGS.base_items, num_semantics=20
  )
  table = scaling.flop_table(cfg, records, peak["gflops_per_s"]) if cfg.backbone == "sasrec" else {}
  host["loadavg_after"] = list(os.getloadavg())
  doc = suite.jsonable(
    {
      "records": records,
      "flops": table,
      "peak": peak,
      "host": host,
      "versions": suite.versions(),
      "wall_s": time.time() - start,
      "model": f"{FLAGS.backbone}/{FLAGS.method}",
      "solid_jax": sj.__version__,
    }
  )
  with open(os.path.join(FLAGS.output_dir, "scaling.json"), "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=1)
  note = (
    f"{host['cpu_count']} CPU cores, load {host['loadavg_1_5_15'][0]:.1f}"
    f"-{host['loadavg_after'][0]:.1f}"
  )
  _plot(
    records,
    "batch",
    "batch",
    f"batch size (catalogue {FLAGS.base_items:,} items)",
    os.path.join(FLAGS.output_dir, "scaling_batch.png"),
    note,
  )
  _plot(
    records,
    "catalog",
    "num_items",
    f"catalogue size (batch {FLAGS.base_batch:,})",
    os.path.join(FLAGS.output_dir, "scaling_catalog.png"),
    note,
  )
  md = [
    "## Batch size",
    "",
    _table(records, "batch", "batch", "batch"),
    "",
    "## Catalogue size",
    "",
    _table(records, "catalog", "num_items", "items"),
    "",
  ]
  with open(os.path.join(FLAGS.output_dir, "scaling.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(md))
  print("\n".join(md))
  print(
    f"total {doc['wall_s'] / 60:.1f} min; load average before {host['loadavg_1_5_15']}, "
    f"after {host['loadavg_after']}"
  )


if __name__ == "__main__":
  app.run(main)

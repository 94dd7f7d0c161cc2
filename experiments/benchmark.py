r"""Throughput of solid_jax against the PyTorch reference, on synthetic but realistic batches.

  python -m experiments.benchmark --backbone=sasrec --method=solid --batch_size=1024 \
      --compare=torch --output=/tmp/bench.json
  python -m experiments.benchmark --all --compare=none --output=/tmp/zoo.json      # every model
  python -m experiments.benchmark --device=gpu --dtype=bfloat16 --compare=torch ...  # accelerator

Times the training step (the training loop's jitted step, donated state) and inference (generate +
score) of solid_jax, then the same model of ``reference/torch_models.py`` eagerly and under
``torch.compile``, in this one process; compilation apart, warm-up excluded, medians over repeats.
Then the input pipeline on ml-100k against the step (``"pipeline"``: the ratio must be >= 5) and the
evaluation of its test split (``"evaluation"``). See docs/PERFORMANCE.md for the JSON keys and
results.
"""

import importlib.util
import json
import os

from absl import app
from absl import flags
from absl import logging

from solid_jax import models as models_lib

FLAGS = flags.FLAGS
METHODS = models_lib.METHODS.names()
BACKBONES = models_lib.BACKBONES.names()

flags.DEFINE_list("backbone", ["sasrec"], f"backbones (comma-separated) among {BACKBONES}")
flags.DEFINE_list("method", ["solid"], f"methods (comma-separated) among {METHODS}")
flags.DEFINE_bool("all", False, "sweep every backbone x method of the model zoo")
flags.DEFINE_integer("batch_size", 1024, "rows per step")
flags.DEFINE_enum(
  "compare",
  "torch",
  ["torch", "torch_eager", "none"],
  "also time the PyTorch reference: eager and torch.compile, eager only, or nothing",
)
flags.DEFINE_string("output", "", "JSON file to write (the document is also summarised on stdout)")
flags.DEFINE_enum(
  "device", "auto", ["auto", "cpu", "gpu"], "JAX / torch device (auto: accelerator when present)"
)
flags.DEFINE_enum(
  "dtype",
  "float32",
  ["float32", "bfloat16"],
  "compute dtype (bfloat16: mixed precision, float32 master weights, both frameworks)",
)
flags.DEFINE_integer("repeats", 20, "timed repeats per measurement")
flags.DEFINE_integer("steps_per_repeat", 5, "steps per timed repeat")
flags.DEFINE_integer("warmup", 1, "untimed repeats at the start of every round")
flags.DEFINE_integer(
  "rounds",
  4,
  "the repeats run in this many rounds interleaving the "
  "implementations, so that load changes hit them alike",
)
flags.DEFINE_list(
  "torch_threads",
  ["0", "1"],
  "intra-op thread counts for the reference on the CPU (0: torch's default, one "
  "per core); each is recorded, ratios use the fastest",
)
flags.DEFINE_integer("num_batches", 8, "distinct synthetic batches (cycled)")
flags.DEFINE_integer("num_items", 1683, "catalogue size incl. padding (default: ml-100k's)")
flags.DEFINE_integer("num_semantics", 20, "semantic ids incl. padding (default: ml-100k's genres)")
flags.DEFINE_float("zipf_exponent", 1.0, "item popularity p(rank r) ~ r^-s")
flags.DEFINE_integer("seed", 0, "seed of the synthetic data and the initialisation")
flags.DEFINE_list("phases", ["train", "infer"], "phases to time")
flags.DEFINE_string(
  "pipeline_dataset",
  "ml-100k",
  "data set of the input-pipeline and evaluation measurements ('' skips them)",
)
flags.DEFINE_integer("pipeline_epochs", 2, "epochs of the input-pipeline measurement")
flags.DEFINE_float(
  "min_pipeline_ratio",
  5.0,
  "exit with an error when the input pipeline delivers "
  "fewer than this many times the training step's batches/s (0: never)",
)
flags.DEFINE_integer("eval_batch_size", 8192, "rows per device batch of the evaluation pass")
flags.DEFINE_bool(
  "ablation",
  False,
  "also time the parts of the SOLID step apart (backbone, generator GRUs, "
  'generator heads, codebook branch; "ablation" in the JSON)',
)
flags.DEFINE_string(
  "profile_dir",
  "",
  "also profile a train step (SOLID if among --method, else "
  "the first model) into this folder and attribute XLA time to source functions "
  '("profile" in the JSON)',
)


def torch_api():
  """The reference module (build_torch_model, train_step), or None when torch is absent."""
  if importlib.util.find_spec("torch") is None:
    logging.warning("torch is not installed: the reference is skipped")
    return None
  from reference import torch_models  # pylint: disable=import-outside-toplevel

  return torch_models


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # Imported here so that JAX_PLATFORMS above takes effect and --help stays fast.
  import jax  # pylint: disable=import-outside-toplevel
  from solid_jax import parallel  # pylint: disable=import-outside-toplevel
  from benchmarks import suite  # pylint: disable=import-outside-toplevel

  parallel.maybe_initialize_distributed()
  backbones = BACKBONES if FLAGS.all else tuple(FLAGS.backbone)
  methods = METHODS if FLAGS.all else tuple(FLAGS.method)
  for m in methods:
    if m not in METHODS:
      raise app.UsageError(f"--method={m}: expected one of {METHODS}")
  for b in backbones:
    if b not in BACKBONES:
      raise app.UsageError(f"--backbone={b}: expected one of {BACKBONES}")
  opts = suite.SuiteOptions(
    backbones=backbones,
    methods=methods,
    batch_size=FLAGS.batch_size,
    num_items=FLAGS.num_items,
    num_semantics=FLAGS.num_semantics,
    repeats=FLAGS.repeats,
    steps_per_repeat=FLAGS.steps_per_repeat,
    warmup=FLAGS.warmup,
    num_batches=FLAGS.num_batches,
    seed=FLAGS.seed,
    zipf_exponent=FLAGS.zipf_exponent,
    dtype=FLAGS.dtype,
    device=FLAGS.device,
    phases=tuple(FLAGS.phases),
    torch_eager=FLAGS.compare in ("torch", "torch_eager"),
    torch_compile=FLAGS.compare == "torch",
    torch_threads=tuple(int(t) for t in FLAGS.torch_threads),
    rounds=FLAGS.rounds,
  )
  api = torch_api() if FLAGS.compare != "none" else None
  logging.info("JAX %s on %s", jax.__version__, jax.devices())
  doc = suite.run_suite(opts, api)
  if FLAGS.profile_dir:
    # SOLID when it is among the methods (the step this benchmark is about), else the first.
    method = "solid" if "solid" in methods else methods[0]
    doc["profile"] = suite.profile_train(backbones[0], method, opts, FLAGS.profile_dir)
  if FLAGS.ablation:
    from benchmarks import ablation  # pylint: disable=import-outside-toplevel

    doc["ablation"] = ablation.component_timings(
      backbones[0],
      batch_size=FLAGS.batch_size,
      num_items=FLAGS.num_items,
      num_semantics=FLAGS.num_semantics,
      seed=FLAGS.seed,
    )
    print(
      "ablation (forward + backward, CPU ms): "
      + ", ".join(f"{k} {v['cpu_ms']:.1f}" for k, v in doc["ablation"]["parts"].items())
      + f"; whole step {doc['ablation']['step']['cpu_ms']:.1f}; with the GRU differentiated "
      f"through its scan: GRUs {doc['ablation']['gru_autodiff']['gru']['cpu_ms']:.1f}, "
      f"whole step {doc['ablation']['gru_autodiff']['step']['cpu_ms']:.1f}"
    )
  if FLAGS.pipeline_dataset:
    doc.update(
      suite.pipeline_and_evaluation(
        doc["records"],
        opts,
        FLAGS.pipeline_dataset,
        epochs=FLAGS.pipeline_epochs,
        eval_batch_size=FLAGS.eval_batch_size,
      )
    )
  doc = suite.jsonable(doc)
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(doc, f, indent=1)
    print(f"wrote {FLAGS.output}")
  for key, value in doc["ratios"].items():
    print(f"{key}: " + ", ".join(f"{k} = {v:.2f}x" for k, v in value.items()))
  if "pipeline" in doc:
    p = doc["pipeline"]
    print(
      f"pipeline: {p['batches_per_s']:.1f} batches/s vs step {p['step_batches_per_s']:.1f} "
      f"batches/s: ratio {p['ratio']:.1f} ({'ok' if p['ok'] else 'BELOW 5x'})"
    )
  if "evaluation" in doc:
    e = doc["evaluation"]
    print(
      f"evaluation of {e['rows']} rows: scoring {e['score_s']:.3f} s, metrics "
      f"{e['metrics_s']:.3f} s"
    )
  if "pipeline" in doc and doc["pipeline"]["ratio"] < FLAGS.min_pipeline_ratio:
    raise SystemExit(
      f"the input pipeline delivers {doc['pipeline']['ratio']:.1f}x the training "
      f"step's batches/s, below --min_pipeline_ratio={FLAGS.min_pipeline_ratio}"
    )


if __name__ == "__main__":
  app.run(main)

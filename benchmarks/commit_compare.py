r"""Speed of this tree against another commit, measured in one run: SOLID train steps and inference.

  python -m benchmarks.commit_compare --baseline=2654a16 --output=docs/perf/commit_compare.json

The baseline is checked out into a temporary git worktree. Each round runs one subprocess per tree
(baseline, then this tree, alternating which goes first), and each subprocess times, on the same
synthetic batches, for SASRec + SOLID (DUET generators, ml-100k sizes):

- ``train_rows``: the jitted train step over B single rows;
- ``train_grouped``: the step over B/G candidate groups (one history, G candidates), as training
  runs it on the SOLID rows (1 positive + 4 negatives);
- ``infer_rows``: ``model.apply`` over B rows;
- ``infer_grouped``: ``generate`` once per history, then ``score`` of its G candidates.

Every case reports the median step time of its timed repeats; the JSON holds the per-round medians,
their median over rounds, and ``ratio = baseline_ms / this_ms`` (above 1: this tree is faster).
Only public API present in both trees is used (``sj.make_model``, ``sj.train.make_optimizer``,
``sj.train.make_train_step``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("baseline", "HEAD~1", "git revision to compare with")
flags.DEFINE_integer("rounds", 3, "rounds (one subprocess per tree each)")
flags.DEFINE_integer("repeats", 15, "timed repeats per case and subprocess")
flags.DEFINE_integer("steps", 5, "calls per timed repeat")
flags.DEFINE_integer("batch_size", 1024, "rows per step")
flags.DEFINE_integer("group", 5, "candidates per history in the grouped cases")
flags.DEFINE_string("output", "", "JSON file to write")

# Runs inside each tree: prints {"case": median_ms, ...} as its last line.
WORKER = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
import solid_jax as sj
B, G, REPEATS, STEPS = (int(a) for a in sys.argv[1:5])
cfg = sj.ModelConfig(backbone="sasrec", head="solid", generator="duet", num_items=1683,
                     num_semantics=20, seq_len=10, dim=32)
model = sj.make_model(cfg)
params = model.init(jax.random.key(0))
rng = np.random.default_rng(0)
L = cfg.seq_len
lengths = rng.integers(1, L + 1, B)
items = np.where(np.arange(L)[None] < lengths[:, None], rng.integers(1, 1683, (B, L)), 0)
sem_of = np.concatenate([[0], rng.integers(1, 20, 1682)])
rows = {"items": items.astype(np.int32), "semantics": sem_of[items].astype(np.int32),
        "target": rng.integers(1, 1683, B).astype(np.int32)}
rows["target_semantic"] = sem_of[rows["target"]].astype(np.int32)
rows["label"] = (np.arange(B) % G == 0).astype(np.float32)
rows["weight"] = np.ones(B, np.float32)
P = B // G
grouped = {"items": rows["items"][:P], "semantics": rows["semantics"][:P],
           "target": rows["target"][:P * G].reshape(P, G),
           "target_semantic": rows["target_semantic"][:P * G].reshape(P, G),
           "label": rows["label"][:P * G].reshape(P, G), "weight": np.ones(P, np.float32)}
dev = lambda b: jax.tree.map(jnp.asarray, b)
rows, grouped = dev(rows), dev(grouped)
tx = sj.train.make_optimizer(model, params, 1e-3)
state = {}
def trainer(g):
  fn = sj.train.make_train_step(model, tx, grouped=g)
  batch = grouped if g else rows
  st = {"p": jax.tree.map(jnp.copy, params), "o": tx.init(params)}
  def run():
    st["p"], st["o"], s = fn(st["p"], st["o"], batch, np.int32(0))
    return s["loss"]
  return run
keys = ("items", "semantics", "target", "target_semantic")
infer_rows = jax.jit(lambda p, b: model.apply(p, b)[0])
def infer_grouped_fn(p, b):
  w = model.generate(p, {**b, "target": b["target"][:, 0], "target_semantic": b["target_semantic"][:, 0]})
  return jax.vmap(lambda t, ts: model.score(p, w, {**b, "target": t, "target_semantic": ts}),
                  in_axes=(1, 1), out_axes=1)(b["target"], b["target_semantic"])
infer_grouped = jax.jit(infer_grouped_fn)
cases = {
  "train_rows": trainer(False),
  "train_grouped": trainer(True),
  "infer_rows": lambda: infer_rows(params, {k: rows[k] for k in keys}),
  "infer_grouped": lambda: infer_grouped(params, {k: grouped[k] for k in keys}),
}
out = {}
for name, fn in cases.items():
  jax.block_until_ready(fn()); jax.block_until_ready(fn())
  times = []
  for _ in range(REPEATS):
    t = time.perf_counter()
    for _ in range(STEPS):
      r = fn()
    jax.block_until_ready(r)
    times.append((time.perf_counter() - t) / STEPS * 1e3)
  out[name] = float(np.median(times))
print(json.dumps(out))
"""


def _run(tree: str, args: list[str]) -> dict[str, float]:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=tree)
  proc = subprocess.run(
    [sys.executable, "-c", WORKER, *args],
    cwd=tree,
    env=env,
    capture_output=True,
    text=True,
    check=False,
    timeout=1800,
  )
  if proc.returncode != 0:
    raise RuntimeError(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(baseline: str, *, rounds: int, args: list[str]) -> dict:
  """Per-round medians of both trees and the ratios of their medians over rounds."""
  rev = subprocess.run(
    ["git", "rev-parse", baseline], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.strip()
  head = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.strip()
  with tempfile.TemporaryDirectory() as tmp:
    old = os.path.join(tmp, "baseline")
    subprocess.run(
      ["git", "worktree", "add", "--detach", old, rev], cwd=ROOT, check=True, capture_output=True
    )
    try:
      per_round = {"baseline": [], "this": []}
      for r in range(rounds):
        order = [("baseline", old), ("this", ROOT)]
        for name, tree in order if r % 2 == 0 else order[::-1]:
          per_round[name].append(_run(tree, args))
    finally:
      subprocess.run(
        ["git", "worktree", "remove", "--force", old], cwd=ROOT, check=False, capture_output=True
      )
  cases = list(per_round["this"][0])
  median = {
    name: {c: float(np.median([m[c] for m in ms])) for c in cases} for name, ms in per_round.items()
  }
  return {
    "baseline": rev,
    "this": head,
    "rounds": per_round,
    "median_ms": median,
    "ratio": {c: median["baseline"][c] / median["this"][c] for c in cases},
  }


def main(argv):
  del argv
  args = [str(FLAGS.batch_size), str(FLAGS.group), str(FLAGS.repeats), str(FLAGS.steps)]
  result = compare(FLAGS.baseline, rounds=FLAGS.rounds, args=args)
  result["settings"] = {
    "batch_size": FLAGS.batch_size,
    "group": FLAGS.group,
    "repeats": FLAGS.repeats,
    "steps": FLAGS.steps,
    "model": "sasrec/solid (duet), ml-100k sizes, L=10, d=32",
  }
  text = json.dumps(result, indent=2)
  print(json.dumps({"median_ms": result["median_ms"], "ratio": result["ratio"]}, indent=2))
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)

r"""Speed of this tree against another commit, measured in one run: SOLID train steps and inference.

  python -m benchmarks.commit_compare --baseline=2654a16 --output=docs/perf/commit_compare.json

The baseline is checked out into a temporary git worktree. A worker runs inside each tree and
builds, on the same synthetic batches, for SASRec + SOLID (DUET generators, ml-100k sizes):

- ``train_rows``: the jitted train step over B single rows;
- ``train_grouped``: the step over B/G candidate groups (one history, G candidates), as training
  runs it on the SOLID rows (1 positive + 4 negatives);
- ``infer_rows``: ``model.apply`` over B rows;
- ``infer_grouped``: ``generate`` once per history, then ``score`` of its G candidates.

``--mode=exported`` (default): each worker exports its cases with ``jax.export`` (programs and
arguments); this process compiles both trees' programs and times them repeat by repeat, in turn
(``rounds * repeats`` repeats per case and tree, alternating which goes first), so both see the
same machine state; the JSON adds the quartiles of the paired per-repeat ratios. An A/A run
(``--baseline=HEAD`` on a clean tree) gives the method's own error. ``--mode=processes``: one
subprocess per tree and round times its cases itself (train steps carrying their state), medians
over rounds; on a noisy machine single rounds move by up to 30%.

Every case reports medians of ms per call and ``ratio = baseline_ms / this_ms`` (above 1: this tree
is faster). Only public API present in both trees is used (``sj.make_model``,
``sj.train.make_optimizer``, ``sj.train.make_train_step``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

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
flags.DEFINE_enum(
  "mode",
  "exported",
  ["exported", "processes"],
  "exported: both trees' programs timed in one process, repeat by repeat; processes: one "
  "subprocess per tree and round",
)
flags.DEFINE_string("output", "", "JSON file to write")

# Runs inside each tree: prints {"case": median_ms, ...} as its last line.
WORKER = r"""
import json, os, sys, time
import jax, jax.numpy as jnp, numpy as np
import solid_jax as sj
B, G, REPEATS, STEPS = (int(a) for a in sys.argv[1:5])
EXPORT_DIR = sys.argv[5] if len(sys.argv) > 5 else ""
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
keys = ("items", "semantics", "target", "target_semantic")
def infer_grouped_fn(p, b):
  w = model.generate(p, {**b, "target": b["target"][:, 0], "target_semantic": b["target_semantic"][:, 0]})
  return jax.vmap(lambda t, ts: model.score(p, w, {**b, "target": t, "target_semantic": ts}),
                  in_axes=(1, 1), out_axes=1)(b["target"], b["target_semantic"])
# case: (function, arguments); every function's outputs are all computed (nothing dead).
cases = {
  "train_rows": (sj.train.make_train_step(model, tx, grouped=False),
                 (params, tx.init(params), rows, np.int32(0))),
  "train_grouped": (sj.train.make_train_step(model, tx, grouped=True),
                    (params, tx.init(params), grouped, np.int32(0))),
  "infer_rows": (lambda p, b: model.apply(p, b)[0], (params, {k: rows[k] for k in keys})),
  "infer_grouped": (infer_grouped_fn, (params, {k: grouped[k] for k in keys})),
}
if EXPORT_DIR:  # write every case as a flat exported program and its arguments
  from jax import export
  for name, (fn, args) in cases.items():
    leaves, tree = jax.tree.flatten(args)
    flat = jax.jit(lambda *xs, fn=fn, tree=tree: jax.tree.leaves(fn(*jax.tree.unflatten(tree, xs))))
    exp = export.export(flat)(*leaves)
    with open(os.path.join(EXPORT_DIR, name + ".bin"), "wb") as f:
      f.write(exp.serialize())
    np.savez(os.path.join(EXPORT_DIR, name + ".npz"), *[np.asarray(x) for x in leaves])
  print(json.dumps(sorted(cases)))
  sys.exit(0)
out = {}
for name, (fn, args) in cases.items():
  if name.startswith("train"):  # carry the state, as training does
    step = fn
    st = {"p": jax.tree.map(jnp.copy, args[0]), "o": args[1]}
    def call(step=step, batch=args[2]):
      st["p"], st["o"], s = step(st["p"], st["o"], batch, np.int32(0))
      return s["loss"]
  else:
    jitted = jax.jit(fn)
    call = lambda jitted=jitted, args=args: jitted(*args)
  jax.block_until_ready(call()); jax.block_until_ready(call())
  times = []
  for _ in range(REPEATS):
    t = time.perf_counter()
    for _ in range(STEPS):
      r = call()
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


def _git(*args: str) -> str:
  return subprocess.run(
    ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.strip()


def _exported_cases(directory: str) -> dict[str, tuple]:
  """The cases a worker exported into ``directory``: name -> (compiled call, flat arguments)."""
  import jax
  from jax import export

  cases = {}
  for name in sorted(f[: -len(".bin")] for f in os.listdir(directory) if f.endswith(".bin")):
    with open(os.path.join(directory, name + ".bin"), "rb") as f:
      exp = export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(directory, name + ".npz")) as z:
      leaves = [jax.device_put(z[f"arr_{i}"]) for i in range(len(z.files))]
    cases[name] = (jax.jit(exp.call), leaves)
  return cases


def _paired_times(trees: dict[str, dict], *, repeats: int, steps: int) -> dict:
  """ms per call of every case of every tree, one repeat of each tree in turn (alternating which
  goes first), all in this process: {tree: {case: [ms per repeat]}}."""
  import jax

  names = list(trees)
  out = {t: {} for t in names}
  for case in trees[names[0]]:
    for t in names:
      fn, args = trees[t][case]
      jax.block_until_ready(fn(*args))
      jax.block_until_ready(fn(*args))
      out[t][case] = []
    for r in range(repeats):
      for t in names if r % 2 == 0 else names[::-1]:
        fn, args = trees[t][case]
        start = time.perf_counter()
        for _ in range(steps):
          res = fn(*args)
        jax.block_until_ready(res)
        out[t][case].append((time.perf_counter() - start) / steps * 1e3)
  return out


def _compare_exported(old: str, *, rounds: int, args: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    trees = {}
    for name, tree in (("baseline", old), ("this", ROOT)):
      directory = os.path.join(tmp, name)
      os.makedirs(directory)
      _run(tree, [*args, directory])
      trees[name] = _exported_cases(directory)
    repeats = int(args[2]) * rounds
    times = _paired_times(trees, repeats=repeats, steps=int(args[3]))
  cases = list(times["this"])
  median = {t: {c: float(np.median(times[t][c])) for c in cases} for t in times}
  paired = {c: np.asarray(times["baseline"][c]) / np.asarray(times["this"][c]) for c in cases}
  return {
    "mode": "exported",
    "times_ms": times,
    "median_ms": median,
    "ratio": {c: median["baseline"][c] / median["this"][c] for c in cases},
    "paired_ratio_quartiles": {
      c: [float(q) for q in np.percentile(paired[c], [25, 50, 75])] for c in cases
    },
  }


def _compare_processes(old: str, *, rounds: int, args: list[str]) -> dict:
  per_round = {"baseline": [], "this": []}
  for r in range(rounds):
    order = [("baseline", old), ("this", ROOT)]
    for name, tree in order if r % 2 == 0 else order[::-1]:
      per_round[name].append(_run(tree, args))
  cases = list(per_round["this"][0])
  median = {
    name: {c: float(np.median([m[c] for m in ms])) for c in cases} for name, ms in per_round.items()
  }
  return {
    "mode": "processes",
    "rounds": per_round,
    "median_ms": median,
    "ratio": {c: median["baseline"][c] / median["this"][c] for c in cases},
  }


MODES = {"exported": _compare_exported, "processes": _compare_processes}


def compare(baseline: str, *, rounds: int, args: list[str], mode: str = "exported") -> dict:
  """Both trees' medians per case and ``ratio = baseline_ms / this_ms``; see the module doc."""
  rev, head = _git("rev-parse", baseline), _git("rev-parse", "HEAD")
  with tempfile.TemporaryDirectory() as tmp:
    old = os.path.join(tmp, "baseline")
    subprocess.run(
      ["git", "worktree", "add", "--detach", old, rev], cwd=ROOT, check=True, capture_output=True
    )
    try:
      result = MODES[mode](old, rounds=rounds, args=args)
    finally:
      subprocess.run(
        ["git", "worktree", "remove", "--force", old], cwd=ROOT, check=False, capture_output=True
      )
  return {"baseline": rev, "this": head, **result}


def main(argv):
  del argv
  args = [str(FLAGS.batch_size), str(FLAGS.group), str(FLAGS.repeats), str(FLAGS.steps)]
  result = compare(FLAGS.baseline, rounds=FLAGS.rounds, args=args, mode=FLAGS.mode)
  result["settings"] = {
    "batch_size": FLAGS.batch_size,
    "group": FLAGS.group,
    "repeats": FLAGS.repeats,
    "steps": FLAGS.steps,
    "mode": FLAGS.mode,
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

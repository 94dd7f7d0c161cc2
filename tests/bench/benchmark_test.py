"""``python -m experiments.benchmark`` end to end on a tiny configuration."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

HAVE_TORCH = importlib.util.find_spec("torch") is not None
REPO = pathlib.Path(__file__).resolve().parents[2]
RECORD_KEYS = {
  "impl",
  "backbone",
  "method",
  "phase",
  "batch",
  "samples_per_s",
  "median_ms",
  "p10_ms",
  "p90_ms",
  "compile_s",
}


pytestmark = pytest.mark.slow  # one benchmark process, about 30 s on 2 cores


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  cmd = [
    sys.executable,
    "-m",
    "experiments.benchmark",
    "--backbone=sasrec",
    "--method=static",
    "--batch_size=64",
    "--repeats=2",
    "--steps_per_repeat=1",
    "--warmup=1",
    "--num_batches=2",
    "--compare=torch_eager",
    "--pipeline_epochs=1",
    "--eval_batch_size=16384",
    "--min_pipeline_ratio=0",
    "--device=cpu",
    f"--output={out}",
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "ratio" in proc.stdout
  return json.loads(out.read_text())


def test_document_has_the_documented_keys(doc):
  assert {"records", "ratios", "device", "host", "versions", "pipeline", "evaluation"} <= set(doc)
  assert doc["versions"]["jax"] and doc["host"]["cpu_count"] >= 1
  assert doc["device"]["jax"]["platform"] == "cpu"


def test_solid_jax_records(doc):
  ours = [r for r in doc["records"] if r["impl"].startswith("solid_jax")]
  assert {(r["impl"], r["phase"]) for r in ours} == {
    ("solid_jax", "train"),
    ("solid_jax_per_row", "train"),
    ("solid_jax", "infer"),
  }
  for r in ours:
    assert RECORD_KEYS <= set(r)
    assert r["backbone"] == "sasrec" and r["method"] == "static" and r["batch_flag"] == 64
    assert r["samples_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3))
    assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert r["compile_s"] > 0
  # The grouped step (the training loop's) batches round(64 / 5) = 13 groups of 5 rows.
  grouped = [r for r in ours if r["impl"] == "solid_jax" and r["phase"] == "train"][0]
  assert grouped["batch"] == 65


def test_torch_reference_records_when_torch_is_installed(doc):
  torch_recs = [r for r in doc["records"] if r["impl"] == "torch_reference"]
  if not HAVE_TORCH:
    assert not torch_recs
    return
  assert {r["phase"] for r in torch_recs} == {"train", "infer"}
  for r in torch_recs:
    assert "error" not in r, r.get("error")
    assert RECORD_KEYS <= set(r) and r["compile_s"] is None and r["threads"] >= 1
  assert set(doc["ratios"]["sasrec/static/train/B64"]) == {
    "solid_jax_over_torch_reference",
    "solid_jax_per_row_over_torch_reference",
    "solid_jax_over_torch_reference_grouped",
  }
  grouped = [r for r in doc["records"] if r["impl"] == "torch_reference_grouped"]
  assert {r["phase"] for r in grouped} == {"train"}
  per_row = {r["threads"]: r for r in torch_recs if r["phase"] == "train"}
  for r in grouped:  # the same rows as the grouped solid_jax step, fewer than per row's batch
    assert "error" not in r, r.get("error")
    assert r["batch"] == next(
      x["batch"] for x in doc["records"] if x["impl"] == "solid_jax" and x["phase"] == "train"
    )
    assert r["threads"] in per_row


def test_pipeline_and_evaluation(doc):
  p = doc["pipeline"]
  assert p["ratio"] == pytest.approx(p["batches_per_s"] / p["step_batches_per_s"])
  assert p["ok"] == (p["ratio"] >= 5)
  assert p["batches_per_epoch"] > 0
  e = doc["evaluation"]
  assert e["rows"] == 94300
  assert e["score_s"] > 0 and e["metrics_s"] > 0
  assert 0.0 <= e["metrics"]["auc"] <= 1.0

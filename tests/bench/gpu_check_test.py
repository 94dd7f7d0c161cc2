"""The one-call accelerator check, through its CPU path at tiny sizes: every step runs, writes its
JSON, and the summary names the steps and the device."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# The other steps (bfloat16, batch 256, the catalogue sweep) are the first one with other sizes.
STEPS = ("throughput_f32_b64", "train_epoch", "full_eval", "population")


@pytest.mark.torch
def test_gpu_check_cpu_path(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      "bash",
      str(REPO / "scripts" / "gpu_check.sh"),
      str(tmp_path),
      "--device=cpu",
      "--tiny",
      "--budget=900",
      "--only=" + ",".join(STEPS),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=1000,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["device"] == "cpu" and summary["tiny"] == 1 and summary["data"] == "ml-100k"
  status = {s["step"]: s["status"] for s in summary["steps"]}
  assert tuple(status) == STEPS
  # A step skipped for the time budget has no log: say so (a loaded machine compiles slowly).
  logs = {k: tmp_path / f"{k}.log" for k in status}
  failed = {
    k: (v, logs[k].read_text()[-2000:] if logs[k].exists() else "no log")
    for k, v in status.items()
    if v != "ok"
  }
  assert not failed, (failed, f"{summary['seconds']} s of a {summary['budget_s']} s budget")
  for step in STEPS:
    record = json.loads((tmp_path / f"{step}.json").read_text())
    assert record, step
  population = json.loads((tmp_path / "population.json").read_text())
  assert [r["members"] for r in population["records"]] == [0, 1, 2]
  throughput = json.loads((tmp_path / "throughput_f32_b64.json").read_text())
  assert "torch_reference" in json.dumps(throughput)
  train = json.loads((tmp_path / "train_epoch.json").read_text())
  assert train["method"] == "solid" and "test_full" in train

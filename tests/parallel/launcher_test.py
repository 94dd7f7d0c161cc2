"""The training launcher (run_experiment -> train_stage) is data parallel on 8 fake CPU devices.

`launcher_check.py` runs in a subprocess because ``--xla_force_host_platform_device_count`` must be
set before JAX is imported. SOLID (stage 1 + stage 2) on a tiny synthetic dataset, 2 epochs,
batches of 10 candidate groups padded to 16 for the 8 devices.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.slow  # five short SOLID runs of two stages each, about 1.5 min
STAGES = ("stage1", "stage2")


@pytest.fixture(scope="module")
def report():
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false",
    JAX_PLATFORMS="cpu",
  )
  proc = subprocess.run(
    [sys.executable, str(HERE / "launcher_check.py")],
    env=env,
    cwd=HERE.parents[1],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_metric_diff(a, b):
  return max(abs(a[split][k] - b[split][k]) for split in ("valid", "test") for k in a[split])


def test_stages_ran_on_eight_devices_with_padded_split_batches(report):
  assert report["devices"] == 8
  for stage in STAGES:
    assert report["mesh"]["stages"][stage]["devices"] == 8
    assert report["single"]["stages"][stage]["devices"] == 1
  # 10 groups per batch padded to 16, split in 8 shards; one device gets the 10 groups as they are.
  assert report["mesh_batches"] == [["P('data',)", 8, 16]]
  assert report["single_batches"] == [["None", 1, 10]]


def test_data_parallel_run_matches_one_device(report):
  # Same batches, steps and per-step keys; only the order of float32 sums differs (Adam).
  mesh, single = report["mesh"], report["single"]
  for stage in STAGES:
    a, b = mesh["stages"][stage], single["stages"][stage]
    assert len(a["train_loss"]) == len(b["train_loss"]) == 2
    for x, y in zip(a["train_loss"], b["train_loss"]):
      assert abs(x - y) <= 1e-4 * abs(y)
    for x, y in zip(a["valid_uauc"], b["valid_uauc"]):
      assert abs(x - y) <= 1e-4
    assert _max_metric_diff(a, b) <= 1e-4
  assert _max_metric_diff(mesh, single) <= 1e-4


def test_resume_on_the_mesh_ends_where_the_uninterrupted_run_ends(report):
  assert "killed" in report["crash"]
  crash = report["crash_checkpoint"]
  assert crash["epoch"] == 1 and crash["step_in_epoch"] > 0 and not crash["epoch_done"]
  resumed, mesh = report["resumed"], report["mesh"]
  assert resumed["valid"] == mesh["valid"] and resumed["test"] == mesh["test"]
  for stage in STAGES:
    assert resumed["stages"][stage] == mesh["stages"][stage]


def test_resume_on_one_device_continues_the_mesh_run(report):
  # data_parallel is a runtime setting: a run checkpointed on 8 devices continues on one.
  resumed, mesh = report["resumed_single"], report["mesh"]
  assert resumed["stages"]["stage2"]["devices"] == 1
  a, b = resumed["stages"]["stage2"], mesh["stages"]["stage2"]
  for x, y in zip(a["train_loss"], b["train_loss"]):
    assert abs(x - y) <= 1e-4 * abs(y)
  assert _max_metric_diff(resumed, mesh) <= 1e-4


def test_sharded_evaluator_matches_the_unsharded_one(report):
  for path in ("grouped", "rows"):
    r = report["evaluator"][path]
    assert r["arg_spec"] == "P(None, 'data')" and r["scores_replicated"]
    assert r["max_score_diff"] < 1e-5
    assert r["max_metric_diff"] < 1e-5
  # One compiled scorer per path and mesh in the shared dict, never one for both.
  assert report["evaluator"]["scorers"] == ["groups", "groups+mesh", "rows", "rows+mesh"]

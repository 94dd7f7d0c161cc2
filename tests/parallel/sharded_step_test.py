"""The data-parallel training step equals the one-device step (SASRec+SOLID, 8 fake CPU devices).

`sharded_check.py` runs in a subprocess because ``--xla_force_host_platform_device_count`` must be
set before JAX is imported.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.slow  # one process compiling six SOLID training steps, about 1 min


@pytest.fixture(scope="module")
def report():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, str(HERE / "sharded_check.py")],
    env=env,
    cwd=HERE.parents[1],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runs_on_eight_devices_with_batch_split_and_params_replicated(report):
  assert report["devices"] == 8
  assert report["mesh"] == {"data": 8}
  for name in ("sgd", "adam", "adam_float64"):
    assert report[name]["batch_specs"] == ["P('data',)"]
    assert report[name]["shards_per_batch"] == [8]
    assert report[name]["param_specs"] == ["P()"]


def test_sgd_trajectory_matches_one_device(report):
  # SGD's update is a continuous function of the gradient: 3 steps agree to 1e-5.
  r = report["sgd"]
  assert r["max_param_change"] > 1e-3  # the parameters did move
  assert r["max_param_diff"] < 1e-5
  for a, b in zip(r["single_losses"], r["sharded_losses"]):
    assert abs(a - b) < 1e-5


def test_adam_float32_losses_match_one_device(report):
  # Adam (the training optimizer) in float32: losses agree to 1e-5, parameters only up to a bound.
  # Adam's update g / (sqrt(v) + 1e-8) turns the float32 summation-order noise of gradient entries
  # that are zero in exact arithmetic or of size ~1e-8 (the attention key bias, whose gradient
  # vanishes because softmax is shift-invariant; a few DUET projection columns) into updates of
  # size ~lr, so a few parameters (under 0.1%) differ by up to ~lr (a single device with the batch
  # rows permuted shows the same). A missing or wrong gradient all-reduce would move almost every
  # parameter by ~lr. `test_adam_float64_trajectory_matches_one_device` shows all parameters agree.
  r = report["adam"]
  assert r["param_dtypes"] == ["float32"]
  for a, b in zip(r["single_losses"], r["sharded_losses"]):
    assert abs(a - b) < 1e-5
  assert r["fraction_over_1e-5"] < 0.01
  assert r["max_param_diff"] <= 2 * r["lr"] * len(r["single_losses"])


def test_adam_float64_trajectory_matches_one_device(report):
  # The same Adam run in float64 (x64 on, parameters and float batch leaves float64, the model
  # computing in float64): the summation-order noise is ~1e-16 relative, and the losses and ALL
  # parameters agree to 1e-5 (measured: about 3e-12).
  r = report["adam_float64"]
  assert r["param_dtypes"] == ["float64"] and r["logits_dtype"] == "float64"
  assert r["batch_dtypes"] == ["float64", "int32"]
  assert r["max_param_change"] > 1e-3  # the parameters did move (3 steps of ~lr)
  assert r["max_param_diff"] < 1e-5
  assert r["fraction_over_1e-5"] == 0.0
  for a, b in zip(r["single_losses"], r["sharded_losses"]):
    assert abs(a - b) < 1e-5


def test_indivisible_batch_is_an_error_or_padded_with_zero_weight(report):
  assert "not a multiple of the 8 local devices" in report["indivisible_error"]
  assert report["padded_rows"] == 64
  assert report["padded_weight_sum"] == 61.0

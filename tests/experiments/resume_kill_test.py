"""A launcher run killed with SIGKILL mid-training and relaunched ends with identical results."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.experiments.conftest import REPO_ROOT, python_module

METRIC_KEYS = {"auc", "uauc", "logloss", "ndcg@5", "hr@5", "ndcg@10", "hr@10", "ndcg@20", "hr@20"}


def _command(config_file, dataset, workdir):
  return python_module(
    "experiments.train",
    f"--config={config_file}",
    f"--dataset={dataset}",
    "--method=solid",
    "--epochs=3",
    "--stage1_epochs=2",
    "--checkpoint_every_steps=3",
    f"--workdir={workdir}",
  )


def _committed_steps(directory):
  if not os.path.isdir(directory):
    return []
  return [n for n in os.listdir(directory) if n.isdigit()]


def _wait_for_stage2_checkpoint(process, workdir, what):
  """Polls until stage 2 of ``workdir`` has a committed checkpoint (stage 1 is finished by then)."""
  deadline = time.monotonic() + 240
  while not _committed_steps(workdir / "stage2"):
    assert process.poll() is None, f"the run ended before it could be {what}"
    assert time.monotonic() < deadline, "no stage-2 checkpoint appeared"
    time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_dataset, tiny_config_file, launcher_env):
  """An uninterrupted run: its workdir and results."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  done = subprocess.run(
    _command(tiny_config_file, toy_dataset, workdir),
    cwd=REPO_ROOT,
    env=launcher_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_sigkill_then_relaunch_gives_identical_results(
  tmp_path, toy_dataset, tiny_config_file, launcher_env, reference
):
  reference, expected = reference
  assert set(expected["valid"]) == METRIC_KEYS

  workdir = tmp_path / "killed"
  process = subprocess.Popen(
    _command(tiny_config_file, toy_dataset, workdir),
    cwd=REPO_ROOT,
    env=launcher_env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    _wait_for_stage2_checkpoint(process, workdir, "killed")
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert process.returncode == -signal.SIGKILL
  assert not (workdir / "results.json").exists()
  assert (workdir / "stage1" / "result.json").exists()

  again = subprocess.run(
    _command(tiny_config_file, toy_dataset, workdir),
    cwd=REPO_ROOT,
    env=launcher_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from the checkpoint" in again.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["valid"] == expected["valid"]  # bitwise: JSON floats compare exactly
  assert results["test"] == expected["test"]
  assert results["selected_epoch"] == expected["selected_epoch"]
  for stage in ("stage1", "stage2"):
    lines = (workdir / stage / "metrics.jsonl").read_text().splitlines()
    ref_lines = (reference / stage / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["train_loss"] for l in lines] == [
      json.loads(l)["train_loss"] for l in ref_lines
    ]

  finished = subprocess.run(
    _command(tiny_config_file, toy_dataset, workdir),
    cwd=REPO_ROOT,
    env=launcher_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert finished.returncode == 0
  assert f"already finished; results in {workdir}/results.json" in finished.stderr


@pytest.mark.slow
def test_sigterm_checkpoints_refuses_a_second_launch_and_resumes(
  tmp_path, toy_dataset, tiny_config_file, launcher_env, reference
):
  """SIGTERM: a checkpoint at the next step, exit status 75, and the relaunch ends bit for bit
  where the uninterrupted run ends; a second launch on the busy workdir fails at once."""
  from solid_jax.train import reliability  # pylint: disable=import-outside-toplevel

  reference, expected = reference
  workdir = tmp_path / "preempted"
  command = _command(tiny_config_file, toy_dataset, workdir)
  # stderr to a file: a pipe nobody reads while polling could fill up and block the run.
  log = tmp_path / "preempted.log"
  with open(log, "w") as err:
    process = subprocess.Popen(
      command, cwd=REPO_ROOT, env=launcher_env, stdout=subprocess.DEVNULL, stderr=err, text=True
    )
  try:
    _wait_for_stage2_checkpoint(process, workdir, "stopped")
    second = subprocess.run(
      command, cwd=REPO_ROOT, env=launcher_env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode != 0
    assert "in use by another launch" in second.stderr and f"pid {process.pid}" in second.stderr
  finally:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
  stderr = log.read_text()
  assert process.returncode == reliability.PREEMPTED_EXIT_CODE, stderr[-3000:]
  assert "received SIGTERM" in stderr and "relaunch the same command" in stderr
  assert not (workdir / "results.json").exists()

  again = subprocess.run(
    command, cwd=REPO_ROOT, env=launcher_env, capture_output=True, text=True, timeout=300
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from the checkpoint" in again.stderr and "stale lock" not in again.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["valid"] == expected["valid"] and results["test"] == expected["test"]
  lines = (workdir / "stage2" / "metrics.jsonl").read_text().splitlines()
  ref_lines = (reference / "stage2" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["train_loss"] for l in lines] == [
    json.loads(l)["train_loss"] for l in ref_lines
  ]

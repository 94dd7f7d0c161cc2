"""The workdir lock, preemption in the loop, and launches that fail their checks."""

import json
import os
import signal
import socket

import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.train import loop
from solid_jax.train import reliability
from solid_jax.train import stages
from solid_jax.train.train_config import TrainConfig
from tests.train.convergence_test import KWARGS, _data, _spec


def test_a_second_lock_of_a_workdir_fails_naming_the_holder(tmp_path):
  with reliability.WorkdirLock(str(tmp_path), command="train A"):
    info = json.loads((tmp_path / reliability.LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(
      reliability.WorkdirLockedError,
      match=rf"in use by another launch \(host .*pid {os.getpid()}.*train A",
    ):
      reliability.WorkdirLock(str(tmp_path), command="train B").acquire()
  # Released cleanly: the next launch takes it without a word about a stale lock.
  with reliability.WorkdirLock(str(tmp_path), command="train B"):
    assert "train B" in (tmp_path / reliability.LOCK_FILE).read_text()
  assert (tmp_path / reliability.LOCK_FILE).read_text() == ""


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
  # What a SIGKILLed holder leaves: the file with its record, the flock gone with the process.
  dead = {
    "host": socket.gethostname(),
    "pid": 999999,
    "started": "then",
    "command": "old run",
    "heartbeat": 0.0,
  }
  (tmp_path / reliability.LOCK_FILE).write_text(json.dumps(dead))
  with caplog.at_level("WARNING"):
    with reliability.WorkdirLock(str(tmp_path), command="new run"):
      pass
  assert any("stale lock" in r.getMessage() and "old run" in r.getMessage() for r in caplog.records)


def test_a_lock_of_another_host_counts_while_its_heartbeat_is_fresh(tmp_path):
  import time  # pylint: disable=import-outside-toplevel

  other = {
    "host": "node-17",
    "pid": 4,
    "started": "now",
    "command": "their run",
    "heartbeat": time.time(),
  }
  (tmp_path / reliability.LOCK_FILE).write_text(json.dumps(other))
  with pytest.raises(reliability.WorkdirLockedError, match="another host.*node-17.*their run"):
    reliability.WorkdirLock(str(tmp_path)).acquire()
  other["heartbeat"] = time.time() - 2 * reliability.STALE_AFTER_S
  (tmp_path / reliability.LOCK_FILE).write_text(json.dumps(other))
  with reliability.WorkdirLock(str(tmp_path)):
    pass


def test_run_experiment_refuses_a_workdir_in_use(tiny_config, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with reliability.WorkdirLock(str(workdir), command="the first launch"):
    with pytest.raises(reliability.WorkdirLockedError, match="the first launch"):
      stages.run_experiment(tiny_config, str(workdir))
  assert not (workdir / stages.CONFIG_FILE).exists()


def test_a_launch_failing_its_checks_leaves_no_workdir(tiny_config, tmp_path):
  import dataclasses  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / "new" / "run"
  bad = dataclasses.replace(tiny_config, dataset=str(tmp_path / "no_such_data"))
  with pytest.raises(stages.DatasetError):
    stages.run_experiment(bad, str(workdir))
  assert not workdir.exists()
  # A workdir that existed before is left as it was.
  workdir.mkdir(parents=True)
  with pytest.raises(stages.DatasetError):
    stages.run_experiment(bad, str(workdir))
  assert workdir.is_dir()


class _SignalAfter:
  """Batches that send this process ``signum`` after ``after`` batches of epoch ``epoch``."""

  def __init__(self, epoch, after, signum=signal.SIGTERM):
    self.epoch, self.after, self.signum = epoch, after, signum

  def __call__(self, rows, batch_size, *, seed, epoch, shuffle, start_step=0):
    for i, batch in enumerate(
      sj.data.batches(
        rows, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start_step=start_step
      )
    ):
      if epoch == self.epoch and i == self.after and start_step == 0:
        os.kill(os.getpid(), self.signum)
      yield batch


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_step_and_the_relaunch_ends_as_uninterrupted(
  toy, tmp_path, signum
):
  kwargs = dict(KWARGS, lr=1e-2)
  whole, params_whole = loop.train_stage(
    _spec(toy, tmp_path / "whole", 3), _data(toy), loop.LoopSettings(**kwargs)
  )
  spec = _spec(toy, tmp_path / "stopped", 3)
  before = signal.getsignal(signum)
  with pytest.raises(reliability.Preempted, match=signal.Signals(signum).name):
    loop.train_stage(spec, _data(toy, _SignalAfter(1, 2, signum)), loop.LoopSettings(**kwargs))
  assert signal.getsignal(signum) is before  # the handler is the loop's only while it trains
  with sj.train.checkpoint.StageCheckpoints(spec.directory, read_only=True) as ckpts:
    meta = ckpts.restore_meta(ckpts.latest_step())
  # Saved mid-epoch, at the first step boundary after the signal (batches are made ahead).
  assert meta["epoch"] == 1 and not meta["epoch_done"] and meta["step_in_epoch"] >= 1
  assert not os.path.exists(os.path.join(spec.directory, loop.RESULT_FILE))
  resumed, params_resumed = loop.train_stage(spec, _data(toy), loop.LoopSettings(**kwargs))
  assert [r["train_loss"] for r in resumed["history"]] == [
    r["train_loss"] for r in whole["history"]
  ]
  assert resumed["valid_full"] == whole["valid_full"]
  jax.tree.map(np.testing.assert_array_equal, params_whole, params_resumed)


@pytest.fixture(scope="module")
def toy(toy_dataset):
  ds = sj.data.load_dataset(toy_dataset)
  return ds, sj.data.make_splits(ds, seq_len=10, train_negatives=2, eval_negatives=9, seed=0)


def test_raising_epochs_continues_a_finished_run_to_where_a_longer_run_ends(tiny_config, tmp_path):
  import dataclasses  # pylint: disable=import-outside-toplevel

  config = dataclasses.replace(tiny_config, method="static", epochs=2)
  longer = dataclasses.replace(config, epochs=3)
  want = stages.run_experiment(longer, str(tmp_path / "three"))
  workdir = str(tmp_path / "continued")
  first = stages.run_experiment(config, workdir)
  assert first["stages"]["main"]["stopped_epoch"] == 2
  got = stages.run_experiment(longer, workdir)
  assert got["stages"]["main"]["stopped_epoch"] == 3
  assert got["valid"] == want["valid"] and got["test"] == want["test"]
  assert got["selected_epoch"] == want["selected_epoch"]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "main", "metrics.jsonl"))]
  ref = [json.loads(l) for l in open(tmp_path / "three" / "main" / "metrics.jsonl")]
  assert [l["train_loss"] for l in lines] == [l["train_loss"] for l in ref]
  # Fewer epochs, or any other change, is still refused with the differences listed.
  with pytest.raises(stages.WorkdirError, match="epochs: 3 -> 2"):
    stages.run_experiment(config, workdir)
  with pytest.raises(stages.WorkdirError, match=r"lr: 0.01 -> 0.02"):
    stages.run_experiment(dataclasses.replace(longer, lr=0.02), workdir)


def test_continue_rules():
  base = TrainConfig(method="static", epochs=5, patience=3)
  saved = base.to_dict()
  import dataclasses  # pylint: disable=import-outside-toplevel

  assert stages.continues(saved, dataclasses.replace(base, epochs=9))
  assert stages.continues(saved, dataclasses.replace(base, patience=0))  # 0: never stop
  assert stages.continues(saved, dataclasses.replace(base, patience=4))
  assert not stages.continues(saved, dataclasses.replace(base, patience=2))
  assert not stages.continues(saved, dataclasses.replace(base, epochs=4))
  assert not stages.continues(saved, dataclasses.replace(base, epochs=9, lr=0.5))
  solid = TrainConfig(method="solid", epochs=5, stage1_epochs=2)
  # Stage 2 trains on; stage 1 is unchanged by epochs when it has its own count.
  assert stages.continues(solid.to_dict(), dataclasses.replace(solid, epochs=8))
  shared = TrainConfig(method="solid", epochs=5)  # stage 1 follows --epochs too
  assert not stages.continues(shared.to_dict(), dataclasses.replace(shared, epochs=8))
  assert not stages.continues(solid.to_dict(), dataclasses.replace(solid, patience=4))


def test_changed_data_is_refused_even_when_the_run_finished(tiny_config, tmp_path):
  import dataclasses  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel

  data = tmp_path / "data"
  shutil.copytree(tiny_config.dataset, data)
  config = dataclasses.replace(tiny_config, method="static", epochs=1, dataset=str(data))
  workdir = str(tmp_path / "run")
  stages.run_experiment(config, workdir)
  files = sorted(p for p in data.iterdir() if p.is_file() and not p.name.startswith("."))
  with open(files[0], "a") as f:
    f.write("\n")
  victim = files[0]
  text = victim.read_text().splitlines()
  victim.write_text("\n".join(text[:-3]) + "\n")  # drop the last interactions
  with pytest.raises(stages.WorkdirError, match="fingerprint"):
    stages.run_experiment(config, workdir)

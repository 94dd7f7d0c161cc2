"""Tests of train_stage: records, selection, exact resume after a crash, non-finite losses."""

import io
import json
import os
import sys
import time

import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.train import checkpoint
from solid_jax.train import loop

KWARGS = dict(
  seed=0, batch_size=64, lr=1e-2, eval_batch_size=128, progress=False, tensorboard=False
)


@pytest.fixture(scope="module")
def toy(toy_dataset):
  ds = sj.data.load_dataset(toy_dataset)
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=9, seed=0)
  return ds, splits


def _data(toy, batches=sj.data.batches):
  ds, splits = toy
  train_rows = lambda e: splits["train"] if e == 0 else sj.data.resample_train(ds, splits, e)
  return loop.StageData(
    train_rows=train_rows, valid=splits["valid"], test=splits["test"], batches=batches
  )


def _spec(toy, directory, epochs=2, head="static"):
  ds, _ = toy
  model = sj.make_model(
    sj.ModelConfig(
      backbone="gru4rec", head=head, num_items=ds.num_items, num_semantics=ds.num_semantics, dim=8
    )
  )
  return loop.StageSpec(
    name="main", directory=str(directory), model=model, init=model.init, epochs=epochs
  )


class Crash(RuntimeError):
  pass


def _crashing_batches(epoch, after):
  """sj.data.batches that raises after yielding ``after`` batches of ``epoch`` (a killed run)."""

  def batches(rows, batch_size, *, seed, epoch: int, shuffle, start_step=0):
    for i, batch in enumerate(
      sj.data.batches(
        rows, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start_step=start_step
      )
    ):
      if epoch == crash_epoch and i == after:
        raise Crash(f"crash in epoch {epoch} after {after} batches")
      yield batch

  crash_epoch = epoch
  return batches


def test_records_selection_and_retention(toy, tmp_path):
  result, params = loop.train_stage(_spec(toy, tmp_path), _data(toy), loop.LoopSettings(**KWARGS))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["epoch"] for l in lines] == [1, 2]
  for line in lines:
    assert {"step", "train_loss", "valid", "samples_per_s", "seconds", "train"} <= set(line)
    assert set(line["valid"]) == {
      "auc",
      "uauc",
      "logloss",
      "ndcg@5",
      "hr@5",
      "ndcg@10",
      "hr@10",
      "ndcg@20",
      "hr@20",
    }
  best = max(lines, key=lambda l: (l["valid"]["uauc"], -l["step"]))
  assert result["selected_epoch"] == best["epoch"] and result["valid"] == best["valid"]
  assert result["devices"] == jax.device_count() == 1  # data_parallel is on; one device here
  assert set(result["test"]) == set(best["valid"])
  assert json.load(open(tmp_path / "result.json"))["test"] == result["test"]
  with checkpoint.StageCheckpoints(tmp_path, read_only=True) as ckpts:
    assert ckpts.all_steps() == sorted({best["step"], lines[-1]["step"]})
    restored = ckpts.restore_params(best["step"], params)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # A finished stage is read back, not retrained (no data is touched).
  again, again_params = loop.train_stage(_spec(toy, tmp_path), None, loop.LoopSettings(**KWARGS))
  assert again == json.load(open(tmp_path / "result.json"))
  for a, b in zip(jax.tree.leaves(again_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_mid_epoch_is_exact(toy, tmp_path):
  reference, _ = loop.train_stage(
    _spec(toy, tmp_path / "ref"), _data(toy), loop.LoopSettings(**KWARGS)
  )
  # The loop reads the batch iterator `prefetch` (2) batches ahead of the step, so an iterator that
  # fails after yielding 5 batches of epoch 2 stops the run after 3 steps of that epoch: one of them
  # ends on an even global step, so a mid-epoch checkpoint exists (18 steps per epoch here).
  crashed = _data(toy, batches=_crashing_batches(epoch=1, after=5))
  with pytest.raises(Crash):
    loop.train_stage(
      _spec(toy, tmp_path / "run"), crashed, loop.LoopSettings(checkpoint_every_steps=2, **KWARGS)
    )
  with checkpoint.StageCheckpoints(tmp_path / "run", read_only=True) as ckpts:
    meta = ckpts.restore_meta(ckpts.latest_step())
  assert meta["epoch"] == 1 and meta["step_in_epoch"] > 0 and not meta["epoch_done"]
  resumed, _ = loop.train_stage(
    _spec(toy, tmp_path / "run"), _data(toy), loop.LoopSettings(checkpoint_every_steps=2, **KWARGS)
  )
  assert resumed["valid"] == reference["valid"] and resumed["test"] == reference["test"]
  assert [h["train_loss"] for h in resumed["history"]] == [
    h["train_loss"] for h in reference["history"]
  ]
  assert [h["valid"] for h in resumed["history"]] == [h["valid"] for h in reference["history"]]
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [l["epoch"] for l in lines] == [1, 2]


def test_non_finite_loss_stops_with_step_and_epoch(toy, tmp_path):
  def poisoned(rows, batch_size, *, seed, epoch, shuffle, start_step=0):
    for i, batch in enumerate(
      sj.data.batches(
        rows, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start_step=start_step
      )
    ):
      if epoch == 1 and start_step + i == 2:
        batch = {**batch, "label": np.full_like(batch["label"], np.nan)}
      yield batch

  with pytest.raises(loop.NonFiniteLossError) as error:
    loop.train_stage(
      _spec(toy, tmp_path), _data(toy, batches=poisoned), loop.LoopSettings(**KWARGS)
    )
  message = str(error.value)
  with checkpoint.StageCheckpoints(tmp_path, read_only=True) as ckpts:
    steps = ckpts.all_steps()
    meta = ckpts.restore_meta(steps[-1])
    params = ckpts.restore_params(steps[-1])
  steps_per_epoch = meta["global_step"]
  assert f"optimizer step {steps_per_epoch + 3} (epoch 2, step 3 of {steps_per_epoch}" in message
  assert "last good checkpoint" in message
  assert steps == [steps_per_epoch] and meta["epoch_done"] and meta["epoch"] == 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  assert not os.path.exists(tmp_path / "result.json")


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_shows_rate_and_eta_only_on_a_terminal(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  bar = loop._progress_bar(1000, 0, "stage2 epoch 1/5", True)
  for _ in range(4):
    time.sleep(0.02)
    bar.update(100)
  bar.refresh()
  text = terminal.getvalue()
  assert "stage2 epoch 1/5" in text and "sample/s" in text and "<" in text  # elapsed<remaining
  bar.close()
  assert loop._progress_bar(1000, 0, "x", False) is None
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  assert loop._progress_bar(1000, 0, "x", True) is None

"""Both protocols in the loop, selection metric, early stopping (also across a crash), position
training rows, per-user files, and the configuration checks of these options."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.train import loop
from solid_jax.train import rescore
from solid_jax.train import stages
from solid_jax.train.train_config import TrainConfig, config_differences, parse_select_metric
from tests.train.loop_test import Crash, _crashing_batches

KWARGS = dict(seed=0, batch_size=16, eval_batch_size=128, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def toy(toy_dataset):
  ds = sj.data.load_dataset(toy_dataset)
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=2, eval_negatives=9, seed=0)
  return ds, splits


def _data(toy, batches=sj.data.batches, positions=True):
  ds, splits = toy
  if positions:
    train_rows = lambda e: sj.data.position_rows(ds, splits, e)
  else:
    train_rows = lambda e: splits["train"] if e == 0 else sj.data.resample_train(ds, splits, e)
  return loop.StageData(
    train_rows=train_rows,
    valid=splits["valid"],
    test=splits["test"],
    batches=batches,
    valid_full=sj.data.full_ranking_users(ds, splits, "valid"),
    test_full=sj.data.full_ranking_users(ds, splits, "test"),
  )


def _spec(toy, directory, epochs, head="static"):
  ds, _ = toy
  model = sj.make_model(
    sj.ModelConfig(
      backbone="sasrec",
      head=head,
      num_items=ds.num_items,
      num_semantics=ds.num_semantics,
      dim=8,
      num_heads=2,
      causal=True,
      embedding="layer_norm",
      target_tower="embedding",
      head_layers=0 if head == "static" else 2,
      dropout_embedding=0.2,
      dropout_hidden=0.2,
    )
  )
  return loop.StageSpec(
    name="main", directory=str(directory), model=model, init=model.init, epochs=epochs
  )


def test_stopped_early_rule():
  rec = lambda v: {"valid_full": {"ndcg@10": v}}
  hist = [rec(v) for v in (0.1, 0.3, 0.2, 0.25)]
  assert not loop.stopped_early(hist, 3, "valid_full", "ndcg@10")
  assert loop.stopped_early(hist, 2, "valid_full", "ndcg@10")
  assert not loop.stopped_early(hist[:3], 2, "valid_full", "ndcg@10")
  assert not loop.stopped_early(hist, 0, "valid_full", "ndcg@10")
  # A tie with the best is no improvement.
  assert loop.stopped_early([rec(0.3), rec(0.3)], 1, "valid_full", "ndcg@10")


def test_both_protocols_positions_and_per_user_files(toy, tmp_path):
  result, _ = loop.train_stage(
    _spec(toy, tmp_path, 3), _data(toy), loop.LoopSettings(lr=1e-2, **KWARGS)
  )
  assert set(result["valid"]) == set(sj.metrics.metric_names())
  assert set(result["test_full"]) == set(sj.metrics.full_metric_names())
  assert result["selection"] == {"split": "valid", "protocol": "full", "metric": "ndcg@10"}
  best = max(result["history"], key=lambda r: (r["valid_full"]["ndcg@10"], -r["step"]))
  assert result["selected_epoch"] == best["epoch"]
  assert result["stop_reason"] == "max_epochs" and result["stopped_epoch"] == 3
  losses = [r["train_loss"] for r in result["history"]]
  assert losses[-1] < losses[0]
  with np.load(tmp_path / "per_user_test.npz") as z:
    users = len(toy[1]["test"]["label"]) // 10
    assert z["full/ndcg@10"].shape == (users,) and z["sampled/auc"].shape == (users,)
    assert np.mean(z["full/ndcg@10"]) == pytest.approx(result["test_full"]["ndcg@10"], abs=1e-6)
    assert np.mean(z["sampled/auc"]) == pytest.approx(result["test"]["uauc"], abs=1e-6)
    assert "sampled/scores" not in z.files


def test_sampled_selection_and_one_protocol(toy, tmp_path):
  result, _ = loop.train_stage(
    _spec(toy, tmp_path, 2),
    _data(toy),
    loop.LoopSettings(
      lr=1e-2, select_metric="sampled:uauc", eval_protocol="sampled", save_scores=True, **KWARGS
    ),
  )
  assert "valid_full" not in result and "test_full" not in result
  assert result["selection"]["protocol"] == "sampled"
  with np.load(tmp_path / "per_user_valid.npz") as z:
    assert (
      z["sampled/scores"].shape
      == z["sampled/candidates"].shape
      == (len(toy[1]["valid"]["label"]) // 10, 10)
    )


def test_patience_stops_and_a_crashed_run_stops_at_the_same_epoch(toy, tmp_path):
  # lr so small that no epoch improves on the first: the run stops after 1 + patience epochs.
  kwargs = dict(KWARGS, lr=1e-12, patience=2)
  whole, params_whole = loop.train_stage(
    _spec(toy, tmp_path / "whole", 10), _data(toy), loop.LoopSettings(**kwargs)
  )
  assert whole["stop_reason"] == "patience" and whole["stopped_epoch"] == 3
  assert whole["epochs"] == 10
  spec = _spec(toy, tmp_path / "crash", 10)
  with pytest.raises(Crash):
    loop.train_stage(
      spec,
      _data(toy, _crashing_batches(2, 1)),
      loop.LoopSettings(checkpoint_every_steps=1, **kwargs),
    )
  resumed, params_resumed = loop.train_stage(
    spec, _data(toy), loop.LoopSettings(checkpoint_every_steps=1, **kwargs)
  )
  assert resumed["stopped_epoch"] == 3 and resumed["selected_epoch"] == whole["selected_epoch"]
  for a, b in zip(whole["history"], resumed["history"]):
    assert a["valid_full"] == b["valid_full"] and a["train_loss"] == b["train_loss"]
  jax.tree.map(np.testing.assert_array_equal, params_whole, params_resumed)
  # Killed after the stopping epoch was checkpointed but before result.json: no more training.
  os.remove(tmp_path / "whole" / loop.RESULT_FILE)
  again, _ = loop.train_stage(
    _spec(toy, tmp_path / "whole", 10), _data(toy), loop.LoopSettings(**kwargs)
  )
  assert again["stopped_epoch"] == 3 and again["history"] == whole["history"]


def _packed_crashing(epoch, after):
  plain = _crashing_batches(epoch, after)

  def batches(rows, batch_size, **kwargs):
    for batch in plain(rows, batch_size, **kwargs):
      yield sj.data.pack_rows(batch)

  return batches


def test_packed_training_trains_as_unpacked_and_resumes_exactly(toy, tmp_path):
  kwargs = dict(KWARGS, lr=1e-2, patience=0)
  spec = lambda d, e=2: dataclasses.replace(
    _spec(toy, tmp_path / d, e),
    model=sj.make_model(
      dataclasses.replace(
        _spec(toy, tmp_path / d, e).model.config, dropout_embedding=0.0, dropout_hidden=0.0
      )
    ),
  )
  assert spec("a").model.config.packable
  plain, _ = loop.train_stage(spec("plain"), _data(toy), loop.LoopSettings(**kwargs))
  packed, params = loop.train_stage(
    spec("packed"), _data(toy, sj.data.packed_batches), loop.LoopSettings(**kwargs)
  )
  # Without dropout a packed batch is the same computation in another layout.
  for a, b in zip(plain["history"], packed["history"]):
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["valid_full"]["ndcg@10"] == pytest.approx(a["valid_full"]["ndcg@10"], abs=1e-4)
  with pytest.raises(Crash):
    loop.train_stage(
      spec("crash"),
      _data(toy, _packed_crashing(1, 2)),
      loop.LoopSettings(checkpoint_every_steps=1, **kwargs),
    )
  resumed, params_resumed = loop.train_stage(
    spec("crash"),
    _data(toy, sj.data.packed_batches),
    loop.LoopSettings(checkpoint_every_steps=1, **kwargs),
  )
  assert [r["train_loss"] for r in resumed["history"]] == [
    r["train_loss"] for r in packed["history"]
  ]
  jax.tree.map(np.testing.assert_array_equal, params, params_resumed)


def test_position_rows_invariants(toy):
  ds, splits = toy
  rows = sj.data.position_rows(ds, splits, 0)
  again = sj.data.position_rows(ds, splits, 0)
  other = sj.data.position_rows(ds, splits, 1)
  jax.tree.map(np.testing.assert_array_equal, rows, again)
  assert not np.array_equal(rows["target"][..., 1:], other["target"][..., 1:])
  for r, user in enumerate(rows["user"]):
    seq = ds.user_sequence(user)
    n = len(seq)
    live = rows["items"][r] != 0
    m = int(live.sum())
    assert m == min(n - 3, 10) and live[:m].all()
    # Targets e_{n-2-m} .. e_{n-3} (the last m training targets), inputs one step earlier.
    np.testing.assert_array_equal(rows["items"][r, :m], seq[n - 3 - m : n - 3])
    np.testing.assert_array_equal(rows["target"][r, :m, 0], seq[n - 2 - m : n - 2])
    negs = rows["target"][r, :m, 1:]
    assert not np.isin(negs, seq).any() and (negs > 0).all()
    assert (rows["target"][r, m:] == 0).all() and (rows["label"][r, m:] == 0).all()


def test_full_ranking_users_exclude_the_past_only(toy):
  ds, splits = toy
  for split, before in (("valid", 2), ("test", 1)):
    users = sj.data.full_ranking_users(ds, splits, split)
    for i, user in enumerate(users["user"][:10]):
      seq = ds.user_sequence(user)
      assert users["target"][i] == seq[len(seq) - before]
      seen = users["seen"][i]
      np.testing.assert_array_equal(seen[seen != 0], seq[: len(seq) - before])


def test_full_ranking_sample_is_a_fixed_subset_shared_by_valid_and_test(toy):
  ds, splits = toy
  full = {s: sj.data.full_ranking_users(ds, splits, s) for s in ("valid", "test")}
  part = {s: sj.data.full_ranking_users(ds, splits, s, sample=7) for s in ("valid", "test")}
  np.testing.assert_array_equal(part["valid"]["user"], part["test"]["user"])
  users = part["valid"]["user"]
  assert users.size == 7 and np.all(np.diff(users) > 0)  # distinct, in the split's order
  for s in ("valid", "test"):
    rows = np.searchsorted(full[s]["user"], part[s]["user"])
    for key in ("items", "semantics", "target", "target_semantic"):
      np.testing.assert_array_equal(part[s][key], full[s][key][rows])
    width = part[s]["seen"].shape[1]  # as wide as the longest sampled history
    np.testing.assert_array_equal(part[s]["seen"], full[s]["seen"][rows, :width])
    assert (full[s]["seen"][rows, width:] == 0).all()
  again = sj.data.full_ranking_users(ds, splits, "valid", sample=7)
  np.testing.assert_array_equal(again["user"], users)
  everyone = sj.data.full_ranking_users(ds, splits, "valid", sample=10**6)
  np.testing.assert_array_equal(everyone["user"], full["valid"]["user"])
  with pytest.raises(ValueError, match="sample"):
    sj.data.full_ranking_users(ds, splits, "valid", sample=-1)
  with pytest.raises(ValueError, match="full_eval_users"):
    TrainConfig(full_eval_users=-1)


def test_config_checks_of_the_new_options():
  assert parse_select_metric("full:ndcg@10") == ("full", "ndcg@10")
  assert parse_select_metric("sampled:uauc") == ("sampled", "uauc")
  for bad in ("ndcg@10", "full:uauc", "sampled:mrr", "both:ndcg@10"):
    with pytest.raises(ValueError, match="select_metric"):
      parse_select_metric(bad)
  with pytest.raises(ValueError, match="needs the full protocol"):
    TrainConfig(eval_protocol="sampled")
  with pytest.raises(ValueError, match="causal backbone"):
    TrainConfig(objective="positions")
  TrainConfig(objective="positions", causal=True)
  TrainConfig(objective="positions", backbone="gru4rec")
  TrainConfig(objective="positions", causal=True, pack_sequences=True)
  with pytest.raises(ValueError, match="pack_sequences"):
    TrainConfig(pack_sequences=True)
  # A config.json written before these fields existed is the same run with their defaults.
  saved = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("patience", "objective")}
  assert config_differences(saved, TrainConfig().to_dict()) == []
  assert config_differences(saved, TrainConfig(patience=3).to_dict()) == ["patience: 0 -> 3"]
  # The static head's own layer count; the dynamic heads keep head_layers.
  cfg = TrainConfig(method="static", static_head_layers=0)
  assert cfg.model_config("main", num_items=5, num_semantics=3).head_layers == 0
  cfg = TrainConfig(method="duet", static_head_layers=0)
  assert cfg.model_config("main", num_items=5, num_semantics=3).head_layers == 2


@pytest.mark.slow
def test_run_experiment_and_rescore(tiny_config, tmp_path):
  config = dataclasses.replace(
    tiny_config, method="solid", backbone="gru4rec", objective="positions", epochs=2, patience=5
  )
  workdir = str(tmp_path / "run")
  results = stages.run_experiment(config, workdir)
  for key in ("valid", "test", "valid_full", "test_full"):
    assert key in results, key
  assert results["selection"] == "valid full:ndcg@10"
  assert results["stop_reason"] == "max_epochs"
  # stage 1 ranks semantic ids: selected on sampled UAUC, no full protocol.
  assert results["stages"]["stage1"]["selection"]["protocol"] == "sampled"
  assert "valid_full" not in results["stages"]["stage1"]
  with open(os.path.join(workdir, stages.RESULTS_FILE)) as f:
    saved = json.load(f)
  os.remove(os.path.join(workdir, "stage2", "per_user_test.npz"))
  out = rescore.evaluate_workdir(workdir, ("valid", "test"))
  assert out["stage"] == "stage2" and "finished" in out["source"]
  for split in ("test", "test_full"):
    for key, value in saved[split].items():
      assert out[split][key] == pytest.approx(value, abs=1e-6), (split, key)
  rows = rescore.load_per_user(workdir, "test")
  assert np.mean(rows["full/ndcg@10"]) == pytest.approx(saved["test_full"]["ndcg@10"], abs=1e-6)


def test_paired_permutation_test_against_exact_enumeration():
  import itertools  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  a = rng.random(8)
  b = a - rng.normal(0.1, 0.2, size=8)
  diff = a - b
  exact = np.mean(
    [
      abs(np.dot(s, diff)) / 8 >= abs(diff.mean()) - 1e-12
      for s in itertools.product([-1, 1], repeat=8)
    ]
  )
  got = rescore.paired_permutation_test(a, b, permutations=20_000)
  assert got["p_value"] == pytest.approx(exact, abs=0.015)
  assert got["mean_diff"] == pytest.approx(diff.mean())
  assert rescore.paired_permutation_test(a, a)["p_value"] == 1.0
  many = rng.random(200)
  far = rescore.paired_permutation_test(many + 0.5, many, permutations=999)
  assert far["p_value"] == pytest.approx(1 / 1000)
  with pytest.raises(ValueError, match="one shape"):
    rescore.paired_permutation_test(a, a[:3])


def test_any_metric_stop_rule():
  rec = lambda a, b: {"valid_full": {"hr@10": a, "ndcg@10": b}}
  # Epoch 2 improves hr only, which resets the counter and becomes the reference as a whole.
  hist = [rec(0.1, 0.3), rec(0.2, 0.1), rec(0.15, 0.2), rec(0.2, 0.1)]
  assert not loop.stopped_early(hist, 2, "valid_full", "ndcg@10", "any")  # epoch 3: ndcg > 0.1
  assert not loop.stopped_early(hist + [rec(0.2, 0.2)], 2, "valid_full", "ndcg@10", "any")
  assert loop.stopped_early(hist + [rec(0.1, 0.05)] * 2, 2, "valid_full", "ndcg@10", "any")
  assert loop.stopped_early(hist, 2, "valid_full", "ndcg@10", "select")
  with pytest.raises(ValueError, match="stop rule"):
    loop.stopped_early(hist, 2, "valid_full", "ndcg@10", "sometimes")

"""Tests of run_experiment: pre-flight errors, stage orchestration, results, relaunches."""

import dataclasses
import json
import logging as std_logging
import os

import numpy as np
import pytest

import solid_jax as sj
from solid_jax import semantics
from solid_jax.train import checkpoint
from solid_jax.train import loop
from solid_jax.train import stages
from solid_jax.train.train_config import TrainConfig

METRIC_KEYS = {"auc", "uauc", "logloss", "ndcg@5", "hr@5", "ndcg@10", "hr@10", "ndcg@20", "hr@20"}


def _no_training(workdir):
  return not any(
    os.path.isdir(os.path.join(workdir, s)) for s in ("stage0", "stage1", "stage2", "main")
  )


def test_unwritable_workdir_fails_before_anything(tiny_config, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(stages.WorkdirError, match="not writable"):
    stages.run_experiment(tiny_config, str(blocker / "run"))


def test_missing_dataset_fails_before_training(tiny_config, tmp_path):
  config = dataclasses.replace(tiny_config, dataset=str(tmp_path / "no_such_dataset"))
  with pytest.raises(stages.DatasetError, match="no_such_dataset"):
    stages.run_experiment(config, str(tmp_path / "run"))
  assert _no_training(tmp_path / "run")
  assert not os.path.exists(tmp_path / "run" / "config.json")


def test_other_config_on_a_workdir_is_refused(tiny_config, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(tiny_config.to_dict()))
  changed = dataclasses.replace(tiny_config, lr=0.5, epochs=4, progress=True)
  with pytest.raises(stages.WorkdirError) as error:
    stages.run_experiment(changed, str(workdir))
  assert "epochs: 2 -> 4" in str(error.value) and "lr: 0.01 -> 0.5" in str(error.value)
  assert "progress" not in str(error.value)
  assert _no_training(workdir)


def _fake_stage1(directory, vocabulary, dim):
  """A finished stage-1 directory whose metacode has ``vocabulary`` rows."""
  params = {"backbone": {"item_embedding": {"embedding": np.zeros((vocabulary, dim), np.float32)}}}
  with checkpoint.StageCheckpoints(directory) as ckpts:
    ckpts.save(7, params, {"count": np.zeros((), np.int32)}, {"epoch": 0}, selection=0.5)
    ckpts.wait()
  with open(os.path.join(directory, loop.RESULT_FILE), "w") as f:
    json.dump({"selected_step": 7, "selected_epoch": 1, "valid": {}, "test": {}}, f)


def test_stage1_with_another_vocabulary_fails_before_training(tiny_config, tmp_path):
  ds = sj.data.load_dataset(tiny_config.dataset)
  _fake_stage1(tmp_path / "other" / "stage1", ds.num_semantics + 2, tiny_config.dim)
  config = dataclasses.replace(
    tiny_config, method="solid", stage1_dir=str(tmp_path / "other" / "stage1")
  )
  with pytest.raises(stages.Stage1MismatchError) as error:
    stages.run_experiment(config, str(tmp_path / "run"))
  message = str(error.value)
  assert f"{ds.num_semantics + 2} semantic ids" in message
  assert f"this run's data has {ds.num_semantics} semantic ids" in message
  assert _no_training(tmp_path / "run")


def test_unfinished_stage1_dir_is_refused(tiny_config, tmp_path):
  (tmp_path / "empty").mkdir()
  config = dataclasses.replace(tiny_config, stage1_dir=str(tmp_path / "empty"))
  with pytest.raises(stages.Stage1MismatchError, match="no finished stage 1"):
    stages.run_experiment(config, str(tmp_path / "run"))


def test_features_missing_for_the_semantic_source(tiny_config, tmp_path):
  config = dataclasses.replace(tiny_config, semantics="text_image", num_clusters=3)
  with pytest.raises(ValueError, match="features/clip_text"):
    stages.run_experiment(config, str(tmp_path / "run"))
  assert _no_training(tmp_path / "run")


@pytest.mark.parametrize("depth,classes", [(0, 3), (1, 1), (2, 3), (3, 6)])
def test_category_depth_sets_the_label_classes(tiny_config, toy_features_dataset, depth, classes):
  config = dataclasses.replace(tiny_config, dataset=toy_features_dataset, category_depth=depth)
  ds = stages.load_data(config)
  assert ds.num_semantics == classes + 1
  paths = ds.side["categories"]
  np.testing.assert_array_equal(ds.item_semantic, semantics.from_category_paths(paths, depth or 2))


def test_with_semantics_recomputes_columns():
  table = np.array([0, 2, 1, 2], np.int32)
  rows = {
    "items": np.array([[1, 3, 0], [2, 0, 0]]),
    "target": np.array([2, 3]),
    "semantics": np.zeros((2, 3), np.int32),
    "label": np.array([1.0, 0.0]),
  }
  out = stages.with_semantics(rows, table)
  np.testing.assert_array_equal(out["semantics"], [[2, 2, 0], [1, 0, 0]])
  np.testing.assert_array_equal(out["target_semantic"], [1, 2])
  assert out["label"] is rows["label"]


def test_summary_table_lists_methods_and_both_protocols():
  full_keys = sj.metrics.full_metric_names()

  def res(v, selection="valid full:ndcg@10", full=True):
    m = {k: v for k in METRIC_KEYS}
    out = {
      "valid": m,
      "test": {**m, "uauc": v + 0.01},
      "selected_epoch": 3,
      "stopped_epoch": 5,
      "train_seconds": 90.0,
      "selection": selection,
    }
    if full:
      out["valid_full"] = {k: v / 10 for k in full_keys}
      out["test_full"] = {k: v / 10 + 0.001 for k in full_keys}
    return out

  text = stages.summary_table({"static": res(0.5), "duet": res(0.6, full=False), "solid": res(0.7)})
  lines = text.splitlines()
  assert lines[0].split()[:5] == ["method", "epoch", "valid", "sampled", "UAUC"]
  assert "test full NDCG@10" in lines[0] and "test full COVERAGE@10" in lines[0]
  assert [l.split()[0] for l in lines[2:5]] == ["static", "duet", "solid"]
  assert lines[4].split() == (
    ["solid", "3/5", "0.7000", "0.7000", "0.0700", "0.7000", "0.7100", "0.7000", "0.7000"]
    + ["0.0710"] * 4
    + ["1.50"]
  )
  assert lines[3].split()[4] == "n/a"  # no full protocol for that run
  assert lines[-1].startswith("epoch (selected/last trained) selected on: valid full:ndcg@10")


@pytest.mark.slow
def test_solid_runs_both_stages_and_relaunch_reads_results(tiny_config, tmp_path, caplog):
  config = dataclasses.replace(tiny_config, method="solid", tensorboard=True)
  workdir = str(tmp_path / "run")
  results = stages.run_experiment(config, workdir)
  assert set(results["valid"]) == METRIC_KEYS and set(results["test"]) == METRIC_KEYS
  assert results["selection"] == "valid full:ndcg@10" and results["final_stage"] == "stage2"
  assert set(results["stages"]) == {"stage1", "stage2"}
  for stage in ("stage1", "stage2"):
    info = results["stages"][stage]
    assert info["train_samples_per_s"] > 0 and info["train_seconds"] > 0
    assert len(open(os.path.join(workdir, stage, "metrics.jsonl")).readlines()) == 2
    assert os.listdir(os.path.join(workdir, stage, "tensorboard"))
  assert results["stages"]["stage2"]["valid"] == results["valid"]
  assert (
    "codebook/usage"
    in json.loads(open(os.path.join(workdir, "stage2", "metrics.jsonl")).readline())["train"]
  )
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["test"] == results["test"]
  assert json.load(open(os.path.join(workdir, "config.json"))) == config.to_dict()
  table, info = semantics.load_table(os.path.join(workdir, "semantics"))
  ds = sj.data.load_dataset(config.dataset)
  np.testing.assert_array_equal(table, ds.item_semantic)
  assert info["source"] == "labels" and info["dataset_fingerprint"] == ds.fingerprint
  # Stage 2 started from stage 1's metacode: same vocabulary, and stage 1 kept its checkpoints.
  with checkpoint.StageCheckpoints(os.path.join(workdir, "stage1"), read_only=True) as ckpts:
    assert ckpts.param_shapes(results["stages"]["stage1"]["selected_step"])["backbone"][
      "item_embedding"
    ]["embedding"] == (ds.num_semantics, config.dim)

  with caplog.at_level(std_logging.INFO, logger="absl"):
    again = stages.run_experiment(config, workdir)
  assert again == results
  assert f"already finished; results in {workdir}/results.json" in caplog.messages

  # A lambda variant reuses this stage 1 instead of training its own.
  variant = dataclasses.replace(
    config, consistency_weight=0.5, stage1_dir=os.path.join(workdir, "stage1")
  )
  reused = stages.run_experiment(variant, str(tmp_path / "variant"))
  assert reused["stages"]["stage1"]["reused_from"] == os.path.join(workdir, "stage1")
  assert reused["stages"]["stage1"]["valid"] == results["stages"]["stage1"]["valid"]
  assert not os.path.exists(tmp_path / "variant" / "stage1")
  assert set(reused["test"]) == METRIC_KEYS


@pytest.mark.slow
def test_id_semantics_train_stage0_then_cluster(tiny_config, tmp_path):
  config = dataclasses.replace(
    tiny_config, method="solid", semantics="id", num_clusters=4, epochs=1
  )
  workdir = str(tmp_path / "run")
  results = stages.run_experiment(config, workdir)
  assert set(results["stages"]) == {"stage0", "stage1", "stage2"}
  table, info = semantics.load_table(os.path.join(workdir, "semantics"))
  assert info["source"] == "id" and info["k"] == 4 and info["num_semantics"] == 5
  assert table[0] == 0 and sorted(set(table[1:].tolist())) == [1, 2, 3, 4]
  assert results["semantics"]["source"] == "id"
  # Killed after the clustering: the relaunch reads stage 0 and the table back.
  os.remove(os.path.join(workdir, "results.json"))
  again = stages.run_experiment(config, workdir)
  assert again["stages"]["stage0"] == results["stages"]["stage0"]
  assert again["test"] == results["test"]


@pytest.mark.slow
def test_feature_semantics_and_test_selection(tiny_config, toy_features_dataset, tmp_path):
  config = dataclasses.replace(
    tiny_config,
    dataset=toy_features_dataset,
    method="solid_apg",
    semantics="text_image",
    num_clusters=3,
    epochs=1,
    select_on="test",
  )
  results = stages.run_experiment(config, str(tmp_path / "run"))
  assert results["selection"] == "test full:ndcg@10 (authors' protocol; optimistic)"
  table, info = semantics.load_table(str(tmp_path / "run" / "semantics"))
  assert info["source"] == "text_image" and info["k"] == 3
  # The synthetic features are cluster directions plus noise: k-means finds the clusters.
  truth = np.arange(30) % 3
  pairs = set(zip(table[1:].tolist(), truth.tolist()))
  assert len(pairs) == 3


def test_validation_can_rank_a_sample_while_test_ranks_every_user(tiny_config, tmp_path):
  config = dataclasses.replace(tiny_config, method="static", epochs=1, valid_full_users=7)
  assert (stages.full_sample(config, "valid"), stages.full_sample(config, "test")) == (7, 0)
  both = dataclasses.replace(config, full_eval_users=11)
  assert (stages.full_sample(both, "valid"), stages.full_sample(both, "test")) == (7, 11)
  stages.run_experiment(config, str(tmp_path / "run"))
  ds = stages.load_data(config)
  splits = sj.data.make_splits(
    ds, seq_len=config.seq_len, eval_negatives=config.eval_negatives, seed=config.seed
  )
  everyone = sj.data.full_ranking_users(ds, splits, "test")["user"]
  sample = sj.data.full_ranking_users(ds, splits, "valid", sample=7)["user"]
  assert 7 < everyone.size
  users = {}
  for split in ("valid", "test"):
    with np.load(tmp_path / "run" / "main" / loop.PER_USER_FILE.format(split=split)) as z:
      users[split] = np.sort(z["full/user"])
  np.testing.assert_array_equal(users["valid"], np.sort(sample))
  np.testing.assert_array_equal(users["test"], np.sort(everyone))
  with pytest.raises(ValueError, match="valid_full_users"):
    TrainConfig(valid_full_users=-1)

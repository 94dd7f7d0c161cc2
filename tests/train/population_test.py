"""Populations: every member of a vmapped population equals its solo run (also after a kill and a
resume with one member's checkpoints behind the others), learning rates, t and lambda per
member, and the checks on what members may differ in."""

import dataclasses
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.train import loop
from solid_jax.train import population
from solid_jax.train import stages
from tests.train.loop_test import Crash, _crashing_batches

SETTINGS = dict(batch_size=32, eval_batch_size=128, progress=False, tensorboard=False)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def toy(toy_dataset):
  ds = sj.data.load_dataset(toy_dataset)
  model = sj.make_model(
    sj.ModelConfig(
      backbone="sasrec",
      head="solid",
      generator="duet",
      codebook="straight_through",
      num_items=ds.num_items,
      num_semantics=ds.num_semantics,
      dim=8,
      num_heads=2,
      head_layers=2,
      dropout_embedding=0.2,
      dropout_hidden=0.2,
    )
  )
  return ds, model


def _member(
  toy, directory, seed, *, lr=3e-3, batches=sj.data.batches, epochs=2, model_fields=None, **settings
):
  ds, model = toy
  if model_fields:  # a member with its own run-time model fields (t, lambda)
    model = sj.make_model(dataclasses.replace(model.config, **model_fields))
  # Every member has its own splits (negatives), data order and keys: all follow its seed.
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=2, eval_negatives=9, seed=seed)
  data = loop.StageData(
    train_rows=lambda e: splits["train"] if e == 0 else sj.data.resample_train(ds, splits, e),
    valid=splits["valid"],
    test=splits["test"],
    batches=batches,
    valid_full=sj.data.full_ranking_users(ds, splits, "valid"),
    test_full=sj.data.full_ranking_users(ds, splits, "test"),
  )
  spec = loop.StageSpec(
    name="main", directory=str(directory), model=model, init=model.init, epochs=epochs
  )
  return population.Member(
    spec, data, loop.LoopSettings(seed=seed, lr=lr, **{**SETTINGS, **settings})
  )


def _assert_same_run(got, want, got_params=None, want_params=None):
  """Two stage results agree to float tolerance.

  A member's first step equals the solo step to 1 ulp, but the vmapped matmuls sum in another
  order and Adam amplifies the last-bit differences of near-zero gradients over the steps; so
  the epochs' training losses are compared to 1e-4, the selected parameters to 2e-3 and the
  rank metrics to 0.02 (a swapped pair of nearly tied scores moves AUC by 1 / pairs).
  """
  assert got["selected_epoch"] == want["selected_epoch"]
  assert got["stopped_epoch"] == want["stopped_epoch"]
  np.testing.assert_allclose(
    [r["train_loss"] for r in got["history"]],
    [r["train_loss"] for r in want["history"]],
    rtol=1e-4,
  )
  for split in ("valid", "test", "valid_full", "test_full"):
    assert (split in got) == (split in want), split
    for k, v in want.get(split, {}).items():
      np.testing.assert_allclose(got[split][k], v, atol=0.02, err_msg=f"{split} {k}")
  if want_params is not None:
    # The attention key bias shifts every logit of a query by the same amount, so its gradient is
    # zero up to rounding, and Adam turns that rounding noise into steps of size lr: it walks
    # differently in any two runs whose last bits differ, without changing any output.
    got_params, want_params = (_without_key_bias(p) for p in (got_params, want_params))
    diff = jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), got_params, want_params
    )
    worst = max(jax.tree_util.tree_leaves_with_path(diff), key=lambda kv: kv[1])
    assert worst[1] < 2e-3, (jax.tree_util.keystr(worst[0]), worst[1])


def _without_key_bias(params):
  params = jax.tree.map(lambda x: x, params)  # a copy of the dict structure
  for layer in params["backbone"]["transformer"].values():
    del layer["attention"]["key"]["bias"]
  return params


@pytest.fixture(scope="module")
def solo(toy, tmp_path_factory):
  """Each member trained alone by loop.train_stage."""
  root = tmp_path_factory.mktemp("solo")
  out = {}
  for seed in SEEDS:
    m = _member(toy, root / f"seed_{seed}", seed, checkpoint_every_steps=3)
    out[seed] = loop.train_stage(m.spec, m.data, m.settings)
  return out


def test_every_member_equals_its_solo_run(toy, solo, tmp_path):
  members = [_member(toy, tmp_path / f"seed_{s}", s, checkpoint_every_steps=3) for s in SEEDS]
  init = toy[1].init(jax.random.key(0))
  results = population.train_population(members)
  assert len(results) == len(SEEDS)
  for seed, (result, params) in zip(SEEDS, results):
    _assert_same_run(result, solo[seed][0], params, solo[seed][1])
    assert os.path.exists(tmp_path / f"seed_{seed}" / loop.RESULT_FILE)
    # The selected parameters of the member come back, one model's worth (not stacked).
    assert jax.tree.structure(params) == jax.tree.structure(init)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init)
  # The members really differ (their own data order, negatives and keys).
  assert results[0][0]["history"][0]["train_loss"] != results[1][0]["history"][0]["train_loss"]
  # A finished population is read back, not retrained.
  again = population.train_population(members)
  assert [r for r, _ in again] == [r for r, _ in results]


def test_a_killed_population_resumes_where_an_uninterrupted_one_ends(toy, solo, tmp_path):
  crash = _crashing_batches(epoch=1, after=4)
  members = [
    _member(toy, tmp_path / f"seed_{s}", s, checkpoint_every_steps=3, batches=crash) for s in SEEDS
  ]
  with pytest.raises(Crash):
    population.train_population(members)
  # Member 0 loses its newest checkpoint (a kill between two members' saves): on resume it is
  # stepped alone, the others frozen, until the members are at the same position again.
  stage0 = tmp_path / "seed_0"
  with loop.checkpoint_lib.StageCheckpoints(stage0, read_only=True) as ckpts:
    steps = sorted(ckpts.all_steps())
  assert len(steps) == 2
  shutil.rmtree(stage0 / str(steps[-1]))
  members = [
    dataclasses.replace(m, data=dataclasses.replace(m.data, batches=sj.data.batches))
    for m in members
  ]
  for seed, (result, params) in zip(SEEDS, population.train_population(members)):
    _assert_same_run(result, solo[seed][0], params, solo[seed][1])


def test_members_with_their_own_learning_rates(toy, tmp_path):
  lrs = (3e-3, 1e-3)
  want = []
  for i, lr in enumerate(lrs):
    m = _member(toy, tmp_path / f"solo_{i}", 0, lr=lr, epochs=1)
    want.append(loop.train_stage(m.spec, m.data, m.settings)[0])
  members = [_member(toy, tmp_path / f"pop_{i}", 0, lr=lr, epochs=1) for i, lr in enumerate(lrs)]
  for (got, _), expected in zip(population.train_population(members), want):
    _assert_same_run(got, expected)


HYPER = ({"clip_t": 0.01, "consistency_weight": 0.1}, {"clip_t": 0.1, "consistency_weight": 1.0})


def test_members_with_their_own_t_and_lambda_equal_their_solo_runs_after_a_kill(toy, tmp_path):
  """Members that differ in t and lambda (traced through the vmapped step) each equal the solo
  run of a model built with their values, also when the population is killed and resumed."""
  want = []
  for i, fields in enumerate(HYPER):
    m = _member(toy, tmp_path / f"solo_{i}", 0, model_fields=fields)
    want.append(loop.train_stage(m.spec, m.data, m.settings))
  assert want[0][0]["history"][0]["train_loss"] != want[1][0]["history"][0]["train_loss"]
  crash = _crashing_batches(epoch=1, after=4)
  members = [
    _member(toy, tmp_path / f"pop_{i}", 0, model_fields=f, checkpoint_every_steps=3, batches=crash)
    for i, f in enumerate(HYPER)
  ]
  assert set(population.hyper_of(members)) == {"clip_t", "consistency_weight"}
  with pytest.raises(Crash):
    population.train_population(members)
  members = [
    dataclasses.replace(m, data=dataclasses.replace(m.data, batches=sj.data.batches))
    for m in members
  ]
  for (got, params), (expected, expected_params) in zip(population.train_population(members), want):
    _assert_same_run(got, expected, params, expected_params)


def test_members_may_differ_in_seed_lr_t_and_lambda_only(toy, tmp_path):
  a = _member(toy, tmp_path / "a", 0)
  with pytest.raises(ValueError, match="batch_size"):
    population.train_population([a, _member(toy, tmp_path / "b", 1, batch_size=8)])
  with pytest.raises(ValueError, match="model settings"):
    population.train_population([a, _member(toy, tmp_path / "b", 1, model_fields={"dim": 16})])
  with pytest.raises(ValueError, match="own"):
    population.train_population([a, _member(toy, tmp_path / "a", 1)])


@pytest.mark.parametrize(
  "seeds,spec,names",
  [
    (["0", "1"], None, ["seed_0", "seed_1"]),
    (["1"], "clip_t=0.01,0.1", ["seed_1-clip_t_0.01", "seed_1-clip_t_0.1"]),
  ],
)
def test_run_population_equals_solo_runs_stage_by_stage(tiny_config, tmp_path, seeds, spec, names):
  """SOLID's stages through the launcher's entry point: every member's results.json equals its
  solo run_experiment (stage 1, the metacode it hands on, stage 2); members of several seeds, or
  of several t."""
  config = dataclasses.replace(tiny_config, method="solid", epochs=2)
  members = stages.population_members(config, str(tmp_path / "pop"), seeds, spec)
  assert [os.path.basename(w) for _, w in members] == names
  results = stages.run_population(*zip(*members))
  for (member_config, member_dir), got in zip(members, results):
    solo_dir = str(tmp_path / f"solo_{os.path.basename(member_dir)}")
    want = stages.run_experiment(member_config, solo_dir)
    for name in ("stage1", "stage2"):
      _assert_same_run(_stage(member_dir, name), _stage(solo_dir, name))
    assert got["test"] == _stage(member_dir, "stage2")["test"]
    assert got["config"] == want["config"]  # the member is an ordinary run of its seed
  path = stages.write_population(str(tmp_path / "pop"), members, results)
  with open(path) as f:
    entries = json.load(f)["members"]
  assert [(e["seed"], e["clip_t"]) for e in entries] == [(c.seed, c.clip_t) for c, _ in members]
  assert entries[1]["workdir"] == names[1]
  table = stages.population_table(members, results)
  assert "mean" in table and len(table.splitlines()) == (4 if spec is None else 5)


def _stage(workdir, stage):
  with open(os.path.join(workdir, stage, loop.RESULT_FILE)) as f:
    return json.load(f)


def test_population_members_and_spec():
  config = sj.train.TrainConfig(seed=7)
  members = stages.population_members(config, "/w", ["0", "1"], "lr=1e-3,3e-3")
  assert [(c.seed, c.lr, w) for c, w in members] == [
    (0, 1e-3, "/w/seed_0-lr_0.001"),
    (0, 3e-3, "/w/seed_0-lr_0.003"),
    (1, 1e-3, "/w/seed_1-lr_0.001"),
    (1, 3e-3, "/w/seed_1-lr_0.003"),
  ]
  members = stages.population_members(
    config, "/w", ["0"], "clip_t=0.01,0.1; consistency_weight=0.1,1"
  )
  assert [(c.clip_t, c.consistency_weight, w) for c, w in members] == [
    (0.01, 0.1, "/w/seed_0-clip_t_0.01-consistency_weight_0.1"),
    (0.01, 1.0, "/w/seed_0-clip_t_0.01-consistency_weight_1"),
    (0.1, 0.1, "/w/seed_0-clip_t_0.1-consistency_weight_0.1"),
    (0.1, 1.0, "/w/seed_0-clip_t_0.1-consistency_weight_1"),
  ]
  assert [c.seed for c, _ in stages.population_members(config, "/w", None, None)] == [7]
  with pytest.raises(ValueError, match="NAME"):
    stages.parse_population("dim=8,16")
  with pytest.raises(ValueError, match="twice"):
    stages.population_members(config, "/w", ["1", "1"], None)
  with pytest.raises(ValueError, match="seed and lr, clip_t, consistency_weight only"):
    stages.run_population([config, dataclasses.replace(config, dim=16)], ["/tmp/a", "/tmp/b"])


def test_population_table_groups_the_seeds_of_every_combination():
  config = sj.train.TrainConfig()
  members = stages.population_members(config, "/w", ["0", "1"], "clip_t=0.01,0.1")
  results = [{"test_full": {"ndcg@10": v, "hr@10": 2 * v}} for v in (0.1, 0.3, 0.2, 0.5)]
  lines = stages.population_table(members, results).splitlines()
  assert lines[0].split()[:3] == ["seed", "lr", "clip_t"]
  # 4 members, then one mean row per t over its two seeds: (0.1, 0.2) and (0.3, 0.5).
  assert len(lines) == 7
  assert lines[5].split()[:4] == ["mean", "0.001", "0.01", "0.1500+-0.0707"]
  assert lines[6].split()[:4] == ["mean", "0.001", "0.1", "0.4000+-0.1414"]


def test_stack_batches_pads_packed_rows_and_rejects_other_differences():
  a = sj.data.pack_rows({"items": np.array([[1, 2, 3, 0], [4, 0, 0, 0]])}, row_multiple=1)
  b = sj.data.pack_rows({"items": np.array([[1, 2, 3, 0], [4, 5, 6, 0]])}, row_multiple=1)
  assert a["segment"].shape == (1, 4) and b["segment"].shape == (2, 4)
  stacked = population.stack_batches([a, b])
  assert stacked["items"].shape == (2, 2, 4)
  np.testing.assert_array_equal(stacked["items"][0], [[1, 2, 3, 4], [0, 0, 0, 0]])
  np.testing.assert_array_equal(stacked["weight"][0, 1], 0)
  np.testing.assert_array_equal(stacked["segment"][0, 1], 0)
  with pytest.raises(ValueError, match="shape of 'items'"):
    population.stack_batches([{"items": np.zeros((2, 4))}, {"items": np.zeros((3, 4))}])
  with pytest.raises(ValueError, match="keys"):
    population.stack_batches([{"items": np.zeros(2)}, {"label": np.zeros(2)}])


def test_packed_members_of_different_row_counts_equal_their_solo_runs(
  tiny_config, tmp_path, monkeypatch
):
  """Packed batches hold as many rows as their users need, so members that draw different users
  step on batches of different row counts (one row multiple: every count occurs); each member
  still equals its solo run."""
  monkeypatch.setattr(
    sj.data, "packed_batches", functools.partial(sj.data.packed_batches, row_multiple=1)
  )
  config = dataclasses.replace(
    tiny_config,
    backbone="sasrec",
    method="static",
    objective="positions",
    pack_sequences=True,
    causal=True,
    dropout_hidden=0.2,
    batch_size=8,
    epochs=2,
  )
  shapes = []
  stack = population.stack_batches
  monkeypatch.setattr(
    population,
    "stack_batches",
    lambda batches: shapes.append({len(b["segment"]) for b in batches}) or stack(batches),
  )
  members = stages.population_members(config, str(tmp_path / "pop"), ["0", "1"], None)
  stages.run_population(*zip(*members))
  assert any(len(s) > 1 for s in shapes), shapes  # the members' row counts did differ
  for member_config, member_dir in members:
    solo_dir = str(tmp_path / f"solo_{os.path.basename(member_dir)}")
    stages.run_experiment(member_config, solo_dir)
    _assert_same_run(_stage(member_dir, "main"), _stage(solo_dir, "main"))


def test_packed_solid_population_trains_both_stages_packed_and_equals_solo_runs(
  tiny_config, tmp_path, monkeypatch
):
  """SOLID's stage 1 (the semantic view of the rows) and stage 2 (the dynamic head) both train on
  packed rows, and each member of a packed population still equals its solo run."""
  calls = []
  packed_batches = functools.partial(sj.data.packed_batches, row_multiple=1)
  monkeypatch.setattr(
    sj.data,
    "packed_batches",
    lambda rows, *a, **k: calls.append(rows["items"].shape) or packed_batches(rows, *a, **k),
  )
  config = dataclasses.replace(
    tiny_config,
    backbone="sasrec",
    method="solid",
    objective="positions",
    pack_sequences=True,
    causal=True,
    batch_size=8,
    epochs=1,
  )
  members = stages.population_members(config, str(tmp_path / "pop"), ["0", "1"], None)
  stages.run_population(*zip(*members))
  assert calls, "no stage drew packed batches"
  for member_config, member_dir in members:
    for stage in ("stage1", "stage2"):
      assert np.isfinite(_stage(member_dir, stage)["history"][-1]["train_loss"])
    solo_dir = str(tmp_path / f"solo_{os.path.basename(member_dir)}")
    calls.clear()
    stages.run_experiment(member_config, solo_dir)
    assert len(calls) >= 2, "stage 1 and stage 2 each draw packed batches"
    _assert_same_run(_stage(member_dir, "stage2"), _stage(solo_dir, "stage2"))

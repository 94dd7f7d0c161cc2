"""Tests of the compiled training step and the on-device evaluator, with the real models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from solid_jax import parallel
from solid_jax.train import step as step_lib
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib


def _model(head="solid", **kwargs):
  cfg = sj.ModelConfig(
    backbone="gru4rec", head=head, num_items=31, num_semantics=4, dim=8, seq_len=10, **kwargs
  )
  return sj.make_model(cfg)


@pytest.fixture(scope="module")
def toy_splits(toy_dataset):
  ds = sj.data.load_dataset(toy_dataset)
  return sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=9, seed=0)


def _numpy_bce(logits, labels, weights):
  x, y, w = (np.asarray(a, np.float64) for a in (logits, labels, weights))
  losses = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
  return np.sum(w * losses) / np.sum(w)


def test_weighted_bce_matches_float64_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=64).astype(np.float32) * 4
  logits[:3] = [60.0, -60.0, 0.0]
  labels = (rng.random(64) < 0.3).astype(np.float32)
  weights = np.ones(64, np.float32)
  weights[-5:] = 0.0
  logits[-5:] = 1e30  # padding rows may hold anything
  out = step_lib.weighted_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
  np.testing.assert_allclose(
    float(out), _numpy_bce(logits[:-5], labels[:-5], weights[:-5]), rtol=1e-6
  )


def test_candidate_groups_and_group_view(toy_splits):
  train = toy_splits["train"]
  assert rows_lib.candidate_groups(train) == 5
  assert rows_lib.candidate_groups(toy_splits["valid"]) == 10
  groups = rows_lib.to_groups(train, 5)
  p = len(train["label"]) // 5
  assert groups["items"].shape == (p, 10) and groups["target"].shape == (p, 5)
  np.testing.assert_array_equal(groups["label"][:, 0], 1.0)
  np.testing.assert_array_equal(groups["target"].reshape(-1), train["target"])
  ragged = {k: v[:-1] for k, v in train.items()}
  assert rows_lib.candidate_groups(ragged) is None
  single = {k: v[::5] for k, v in train.items()}
  assert rows_lib.candidate_groups(single) is None


def test_semantic_view():
  batch = {"items": 1, "semantics": 2, "target": 3, "target_semantic": 4, "label": 5}
  assert rows_lib.semantic_view(batch) == {
    "items": 2,
    "semantics": 2,
    "target": 4,
    "target_semantic": 4,
    "label": 5,
  }


def _first_groups(split, groups, g):
  rows = {k: v[: groups * g] for k, v in split.items()}
  row_batch = {**rows, "weight": np.ones(groups * g, np.float32)}
  group_batch = {**rows_lib.to_groups(rows, g), "weight": np.ones(groups, np.float32)}
  return row_batch, group_batch


@pytest.mark.parametrize("head", [pytest.param("solid", marks=pytest.mark.slow), "duet"])
def test_grouped_step_equals_row_step(toy_splits, head):
  model = _model(head)
  params = jax.jit(model.init)(jax.random.key(0))
  tx = optim_lib.make_optimizer(model, params, 1e-2)
  row_batch, group_batch = _first_groups(toy_splits["train"], 12, 5)
  outs = []
  for grouped, batch in ((False, row_batch), (True, group_batch)):
    fn = step_lib.make_train_step(model, tx, seed=0, grouped=grouped)
    p = jax.tree.map(jnp.array, params)
    p, _, scalars = fn(p, tx.init(p), batch, np.int32(0))
    outs.append((p, scalars))
  (p_rows, s_rows), (p_groups, s_groups) = outs
  assert float(s_rows["weight"]) == float(s_groups["weight"]) == 60.0
  for key in s_rows:
    np.testing.assert_allclose(s_groups[key], s_rows[key], rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(p_rows), jax.tree.leaves(p_groups)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_frozen_leaves_do_not_move(toy_splits):
  model = _model("solid", codebook="frozen", paper_compat=True)
  params = jax.jit(model.init)(jax.random.key(0))
  tx = optim_lib.make_optimizer(model, params, 1e-1)
  fn = step_lib.make_train_step(model, tx, seed=0, grouped=True)
  _, batch = _first_groups(toy_splits["train"], 12, 5)
  before = jax.tree.map(np.array, params)
  after, _, _ = fn(jax.tree.map(jnp.array, params), tx.init(params), batch, np.int32(0))
  mask = model.trainable(params)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, after)
  flat_mask = jax.tree_util.tree_leaves_with_path(mask)
  flat_moved = dict(jax.tree_util.tree_leaves_with_path(moved))
  frozen = [path for path, m in flat_mask if not m]
  assert frozen, "frozen codebook and paper-compat projections expected"
  assert not any(flat_moved[path] for path in frozen)
  assert any(flat_moved[path] for path, m in flat_mask if m)


@pytest.mark.parametrize("head", [pytest.param("solid", marks=pytest.mark.slow), "static"])
def test_grouped_evaluator_equals_row_scores(toy_splits, head):
  model = _model(head)
  params = jax.jit(model.init)(jax.random.key(3))
  valid = toy_splits["valid"]
  grouped = evaluator_lib.Evaluator(model, valid, 64)
  rows = evaluator_lib.Evaluator(model, valid, 64, grouped=False)
  assert grouped.group == 10 and rows.group is None
  reference, _ = jax.jit(model.apply)(params, {k: valid[k] for k in rows_lib.MODEL_KEYS})
  np.testing.assert_allclose(grouped.scores(params), reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rows.scores(params), reference, rtol=1e-5, atol=1e-5)
  metrics = grouped(params)
  expected = sj.metrics.evaluate(np.asarray(reference), valid["label"], valid["user"])
  assert set(metrics) == set(expected)
  for key in metrics:
    np.testing.assert_allclose(metrics[key], float(expected[key]), rtol=1e-4, atol=1e-5)


def test_evaluator_on_a_mesh_equals_the_plain_one(toy_splits):
  # One device here; tests/parallel/launcher_test.py checks 8. The batch split is P(None, "data"),
  # the scores come back replicated, and a shared scorers dict keeps one scorer per mesh.
  model = _model("static")
  params = jax.jit(model.init)(jax.random.key(3))
  mesh = parallel.make_mesh()
  scorers = {}
  for grouped in (True, False):
    plain = evaluator_lib.Evaluator(
      model, toy_splits["valid"], 64, grouped=grouped, scorers=scorers
    )
    sharded = evaluator_lib.Evaluator(
      model, toy_splits["valid"], 64, grouped=grouped, scorers=scorers, mesh=mesh
    )
    arrays = sharded._parts[0][:2] if grouped else sharded._args
    assert jax.tree.leaves(arrays)[0].sharding.spec == jax.sharding.PartitionSpec(
      None, parallel.DATA_AXIS
    )
    scores = sharded.scores(params)
    assert scores.sharding.is_fully_replicated
    np.testing.assert_allclose(scores, plain.scores(params), rtol=1e-6, atol=1e-6)
    assert sharded(params) == pytest.approx(plain(params), abs=1e-6)
  assert set(scorers) == {"groups", "rows", ("groups", mesh), ("rows", mesh)}

"""The tiled model-level full-catalogue evaluator against scoring every (user, item) pair."""

import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax import ranking
from solid_jax.train.full_eval import FullEvaluator
from tests.models.conftest import HEADS, NUM_ITEMS, ROLLED, config, item_semantic


def _users(seed, num_users=13, seq_len=10):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, seq_len + 1, size=num_users)
  items = rng.integers(1, NUM_ITEMS, size=(num_users, seq_len)).astype(np.int32)
  items[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0
  target = rng.integers(1, NUM_ITEMS, size=num_users).astype(np.int32)
  seen = np.concatenate([items, rng.integers(0, NUM_ITEMS, size=(num_users, 3))], axis=1)
  seen[:3, 0] = target[:3]
  sem = item_semantic()
  return {
    "user": np.arange(num_users, dtype=np.int32) + 100,
    "items": items,
    "semantics": sem[items],
    "target": target,
    "target_semantic": sem[target],
    "seen": seen.astype(np.int32),
  }


def _all_pairs(model, params, users):
  """float[U, N]: model.apply on every (user, item) pair, item 0 included (never ranked)."""
  u = len(users["target"])
  rows = {k: np.repeat(users[k], NUM_ITEMS, axis=0) for k in ("items", "semantics")}
  rows["target"] = np.tile(np.arange(NUM_ITEMS, dtype=np.int32), u)
  rows["target_semantic"] = item_semantic()[rows["target"]]
  logits, _ = jax.jit(model.apply)(params, rows)
  return np.asarray(logits).reshape(u, NUM_ITEMS)


@pytest.mark.parametrize("head,generator", HEADS)
@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "din", "bert4rec"])
def test_tiled_evaluator_equals_scoring_every_pair(backbone, head, generator):
  model = sj.make_model(config(backbone, head, generator), scan_unroll=ROLLED)
  params = model.init(jax.random.key(7))
  users = _users(1)
  # Tiles that split the catalogue and the users unevenly.
  evaluator = FullEvaluator(model, users, user_batch=5, item_tile=8)
  got, per_user = evaluator.evaluate(params, per_user=True)
  scores = _all_pairs(model, params, users)
  want, want_rows = sj.metrics.evaluate_full(
    scores, users["target"], users["seen"], return_per_user=True
  )
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key
  # Scores computed two ways may differ in the last bits; the ranks agree.
  np.testing.assert_array_equal(per_user["above"], want_rows["above"])
  np.testing.assert_array_equal(per_user["user"], users["user"])


def test_one_tile_and_many_tiles_agree():
  model = sj.make_model(config("sasrec", "solid"), scan_unroll=ROLLED)
  params = model.init(jax.random.key(0))
  users = _users(2, num_users=20)
  a = FullEvaluator(model, users)(params)
  b = FullEvaluator(model, users, user_batch=3, item_tile=7)(params)
  for key in a:
    assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_sampled_per_user_means_are_the_sampled_metrics():
  rng = np.random.default_rng(0)
  users, group = 50, 10
  scores = rng.integers(0, 4, size=users * group).astype(np.float32)  # many ties
  labels = np.tile(np.eye(1, group)[0], users).astype(np.float32)
  ids = np.repeat(np.arange(users), group)
  rows = ranking.sampled_per_user(scores, labels, group)
  m = sj.metrics.evaluate(scores, labels, ids)
  assert np.mean(rows["auc"]) == pytest.approx(m["uauc"], abs=1e-6)
  for k in (5, 10):
    assert np.mean(rows[f"ndcg@{k}"]) == pytest.approx(m[f"ndcg@{k}"], abs=1e-6)
    assert np.mean(rows[f"hr@{k}"]) == pytest.approx(m[f"hr@{k}"], abs=1e-6)


@pytest.mark.parametrize(
  "backbone,options",
  [
    (
      "sasrec",
      dict(
        causal=True,
        embedding="layer_norm",
        position_alignment="end",
        target_tower="embedding",
        ff_activation="gelu",
      ),
    ),
    ("bert4rec", {}),
    ("gru4rec", {}),
  ],
)
def test_length_groups_cut_to_their_width_score_as_full_rows(backbone, options):
  """Users grouped by history length (widths 8, 16, 24) rank as when every row has 24 slots."""
  model = sj.make_model(config(backbone, "static", seq_len=24, **options), scan_unroll=ROLLED)
  params = model.init(jax.random.key(3))
  users = _users(4, num_users=40, seq_len=24)
  groups = sj.data.packing.length_buckets(users["items"])
  assert [w for _, w in groups] == [8, 16, 24]
  grouped = FullEvaluator(model, users, user_batch=16)
  assert len(grouped._parts) == 3
  got, rows = grouped.evaluate(params, per_user=True)
  want, want_rows = FullEvaluator(model, users, user_batch=16, by_length=False).evaluate(
    params, per_user=True
  )
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key
  np.testing.assert_array_equal(rows["above"], want_rows["above"])
  np.testing.assert_array_equal(rows["user"], want_rows["user"])

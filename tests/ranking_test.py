"""Full-catalogue metrics against an independent float64 NumPy reference (explicit tie enumeration)."""

import numpy as np
import pytest

import solid_jax as sj
from solid_jax import ranking


def _reference(scores, target, seen, ks=(5, 10, 20, 50), cov_k=10):
  """Per-user metrics by brute force: every order of the target's tie block, float64."""
  scores = np.asarray(scores, np.float64)
  u, n = scores.shape
  per = {f"hr@{k}": [] for k in ks} | {f"ndcg@{k}": [] for k in ks} | {"rr": []}
  cover_prob_not = np.ones(n)
  for i in range(u):
    ranked = np.ones(n, bool)
    ranked[0] = False
    for s in seen[i]:
      if s != 0 and s != target[i]:
        ranked[s] = False
    st = scores[i, target[i]]
    others = [j for j in range(n) if ranked[j] and j != target[i]]
    above = sum(scores[i, j] > st for j in others)
    ties = sum(scores[i, j] == st for j in others)
    positions = np.arange(above + 1, above + ties + 2)  # uniform over the tie block
    for k in ks:
      per[f"hr@{k}"].append(np.mean(positions <= k))
      per[f"ndcg@{k}"].append(np.mean(np.where(positions <= k, 1 / np.log2(positions + 1), 0)))
    per["rr"].append(np.mean(1.0 / positions))
    # Coverage: probability of each ranked item to be in the top cov_k under random tie orders.
    vals = scores[i, ranked]
    ids = np.flatnonzero(ranked)
    if ids.size <= cov_k:
      p = np.ones(ids.size)
    else:
      kth = np.sort(vals)[::-1][cov_k - 1]
      g = np.sum(vals > kth)
      t = np.sum(vals == kth)
      p = np.where(vals > kth, 1.0, np.where(vals == kth, (cov_k - g) / t, 0.0))
    cover_prob_not[ids] *= 1 - p
  out = {name: float(np.mean(v)) for name, v in per.items() if name != "rr"}
  out["mrr"] = float(np.mean(per["rr"]))
  out["coverage@10"] = float(np.mean(1 - cover_prob_not[1:]))
  return out, {k: np.asarray(v) for k, v in per.items()}


def _case(seed, u=37, n=70, s=6, levels=None):
  rng = np.random.default_rng(seed)
  if levels is None:
    scores = rng.normal(size=(u, n)).astype(np.float32)
  else:  # few distinct values: many ties
    scores = rng.integers(0, levels, size=(u, n)).astype(np.float32)
  target = rng.integers(1, n, size=u)
  seen = rng.integers(0, n, size=(u, s))
  seen[rng.random((u, s)) < 0.2] = 0
  seen[: u // 4, 0] = target[: u // 4]  # the target also in the history: must stay ranked
  return scores, target, seen


@pytest.mark.parametrize("levels", [None, 2, 5, 40])
@pytest.mark.parametrize("tile", [7, 16, 4096])
def test_matches_float64_reference(levels, tile):
  scores, target, seen = _case(0 if levels is None else levels, levels=levels)
  got, per_user = sj.metrics.evaluate_full(scores, target, seen, tile=tile, return_per_user=True)
  want, want_per_user = _reference(scores, target, seen)
  assert set(got) == set(sj.metrics.full_metric_names())
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=2e-6), key
  for key, value in want_per_user.items():
    np.testing.assert_allclose(per_user[key], value, atol=2e-6, err_msg=key)


def test_all_ties_and_padding_column():
  # Every score equal: the target is uniform over the ranked items; column 0 never ranks even
  # though it has the highest score.
  u, n = 5, 30
  scores = np.zeros((u, n), np.float32)
  scores[:, 0] = 100.0
  target = np.arange(1, u + 1)
  seen = np.zeros((u, 3), np.int32)
  got = sj.metrics.evaluate_full(scores, target, seen)
  ranked = n - 1
  assert got["hr@10"] == pytest.approx(10 / ranked, rel=1e-6)
  assert got["mrr"] == pytest.approx(sum(1 / p for p in range(1, ranked + 1)) / ranked, rel=1e-5)
  assert got["coverage@10"] == pytest.approx(1 - (1 - 10 / ranked) ** u, rel=1e-5)


def test_exclusion_changes_rank_and_target_is_never_excluded():
  scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
  target = np.array([3])
  base = sj.metrics.evaluate_full(scores, target, np.zeros((1, 1)))
  assert base["mrr"] == pytest.approx(1 / 3)
  excluded = sj.metrics.evaluate_full(scores, target, np.array([[1, 2, 3, 0]]))
  assert excluded["mrr"] == pytest.approx(1.0)  # items 1, 2 gone; 3 (target) kept
  assert excluded["hr@5"] == 1.0


def test_user_order_does_not_matter():
  scores, target, seen = _case(3, levels=4)
  perm = np.random.default_rng(1).permutation(scores.shape[0])
  a = sj.metrics.evaluate_full(scores, target, seen)
  b = sj.metrics.evaluate_full(scores[perm], target[perm], seen[perm])
  for key in a:
    assert a[key] == pytest.approx(b[key], abs=1e-7), key


def test_fewer_ranked_items_than_coverage_k():
  # 6 items, 3 excluded: only 2 other items rank, all of them in every top 10.
  scores = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
  got = sj.metrics.evaluate_full(scores, np.array([1, 2]), np.array([[3, 4, 5], [3, 4, 5]]))
  want, _ = _reference(scores, np.array([1, 2]), np.array([[3, 4, 5], [3, 4, 5]]))
  assert got["coverage@10"] == pytest.approx(want["coverage@10"])
  assert got["hr@5"] == 1.0


def test_mrr_far_down_the_ranking_is_accurate():
  # A target ranked ~5000th with a few ties: the digamma form must not lose the value.
  n = 6000
  scores = np.linspace(1, 0, n, dtype=np.float32)[None, :].repeat(3, 0)
  scores[1, 4000:4003] = scores[1, 4003]
  target = np.array([5000, 4003, 100])
  got, per = sj.metrics.evaluate_full(scores, target, np.zeros((3, 1)), return_per_user=True)
  want = [1 / 5000, np.mean([1 / p for p in range(4001, 4005)]), 1 / 100]
  np.testing.assert_allclose(per["rr"], want, rtol=1e-4)


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="targets"):
    sj.metrics.evaluate_full(np.zeros((2, 5)), np.array([0, 1]), np.zeros((2, 1)))
  with pytest.raises(ValueError, match="mismatch"):
    sj.metrics.evaluate_full(np.zeros((2, 5)), np.array([1, 1, 1]), np.zeros((2, 1)))


def test_per_user_formula_by_enumeration():
  # The closed forms equal the mean over every position of the tie block.
  above = np.array([0, 3, 8, 49, 100, 0])
  ties = np.array([0, 4, 3, 2, 7, 60])
  got = ranking.per_user_metrics(above, ties)
  for i, (a, t) in enumerate(zip(above, ties)):
    pos = np.arange(a + 1, a + t + 2)
    for k in (5, 10, 20, 50):
      assert float(got[f"hr@{k}"][i]) == pytest.approx(np.mean(pos <= k), abs=1e-6)
      assert float(got[f"ndcg@{k}"][i]) == pytest.approx(
        np.mean(np.where(pos <= k, 1 / np.log2(pos + 1), 0)), abs=1e-6
      )
    assert float(got["rr"][i]) == pytest.approx(np.mean(1 / pos), rel=1e-5)

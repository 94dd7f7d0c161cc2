"""Tests of solid_jax.metrics against independent float64 NumPy references.

The references use plain loops over users, explicit pair counting for AUC, brute-force enumeration
of every tie order for tiny lists, and the closed forms of SPEC section 3 for larger ones.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solid_jax import metrics

KEYS = ("auc", "uauc", "logloss", "ndcg@5", "hr@5", "ndcg@10", "hr@10", "ndcg@20", "hr@20")
KS = (5, 10, 20)


# --------------------------------------------------------------------------------------------------
# References (float64 NumPy, written independently of the implementation).


def _auc_pairs(scores, labels):
  """AUC by explicit pair counting; nan when one label is absent."""
  pos = scores[labels == 1].astype(np.float64)
  neg = scores[labels == 0].astype(np.float64)
  if len(pos) == 0 or len(neg) == 0:
    return math.nan
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return wins / (len(pos) * len(neg))


def _auc_ranks(scores, labels):
  """AUC from average ranks (Mann-Whitney U), for sizes where pair counting is too slow."""
  scores = scores.astype(np.float64)
  uniq, first, counts = np.unique(np.sort(scores), return_index=True, return_counts=True)
  avg_rank = first + (counts + 1) / 2.0
  ranks = avg_rank[np.searchsorted(uniq, scores)]
  num_pos = labels.sum()
  num_neg = len(labels) - num_pos
  return (ranks[labels == 1].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)


def _logloss(scores, labels, from_logits=True):
  x = scores.astype(np.float64)
  p = 1.0 / (1.0 + np.exp(-x)) if from_logits else x
  return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))


def _ideal_dcg(num_pos, k):
  return sum(1.0 / math.log2(i + 1) for i in range(1, min(k, num_pos) + 1))


def _list_ndcg_hr_closed_form(scores, labels, k):
  """Expected NDCG@k and HR@k of one list under a uniformly random order of tied rows."""
  dcg = 0.0
  blocks = {}
  for s, y in zip(scores, labels):
    if y != 1:
      continue
    above = int((scores > s).sum())
    tied = int((scores == s).sum()) - 1
    positions = range(above + 1, above + tied + 2)
    dcg += sum(1.0 / math.log2(p + 1) for p in positions if p <= k) / (tied + 1)
    blocks[float(s)] = (above, tied + 1, int(labels[scores == s].sum()))
  # HR: 1 if a positive's whole tie block is in the top k, else the chance that the block straddling
  # position k puts one of its positives in one of its top-k slots.
  hr = 0.0
  for above, size, num_pos in blocks.values():
    if above + size <= k:
      hr = 1.0
    elif above < k and hr < 1.0:
      slots = k - above
      hr = 1.0 - math.comb(size - num_pos, slots) / math.comb(size, slots)
  return dcg / _ideal_dcg(int(labels.sum()), k), hr


def _list_ndcg_hr_brute_force(scores, labels, k):
  """Average over every order of the rows that is non-increasing in score (all tie orders)."""
  ndcg = hr = 0.0
  count = 0
  for order in itertools.permutations(range(len(scores))):
    s = scores[list(order)]
    if np.any(s[1:] > s[:-1]):
      continue
    y = labels[list(order)][:k]
    ndcg += sum(1.0 / math.log2(p + 2) for p in range(len(y)) if y[p] == 1)
    hr += float(y.any())
    count += 1
  return ndcg / count / _ideal_dcg(int(labels.sum()), k), hr / count


def _reference(
  scores, labels, users, ks=KS, list_metric=_list_ndcg_hr_closed_form, from_logits=True
):
  """All metrics with loops over users."""
  scores = np.asarray(scores)
  labels = np.asarray(labels).astype(np.int64)
  users = np.asarray(users)
  out = {"auc": _auc_pairs(scores, labels), "logloss": _logloss(scores, labels, from_logits)}
  aucs = []
  ranking = {k: [] for k in ks}
  for u in np.unique(users):
    s, y = scores[users == u].astype(np.float64), labels[users == u]
    if 0 < y.sum() < len(y):
      aucs.append(_auc_pairs(s, y))
    if y.sum() > 0:
      for k in ks:
        ranking[k].append(list_metric(s, y, k))
  out["uauc"] = float(np.mean(aucs)) if aucs else math.nan
  for k in ks:
    values = np.array(ranking[k]).reshape(-1, 2)
    out[f"ndcg@{k}"] = float(values[:, 0].mean()) if len(values) else math.nan
    out[f"hr@{k}"] = float(values[:, 1].mean()) if len(values) else math.nan
  return out


def _assert_close(got, want, atol=1e-6):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)


def _random_lists(rng, num_users, max_len, pos_rate, decimals=None):
  sizes = rng.integers(1, max_len + 1, num_users)
  users = np.repeat(rng.permutation(10 * num_users)[:num_users], sizes)
  scores = rng.normal(size=users.size).astype(np.float32)
  if decimals is not None:
    scores = np.round(scores, decimals).astype(np.float32)
  labels = (rng.random(users.size) < pos_rate).astype(np.int64)
  perm = rng.permutation(users.size)
  return scores[perm], labels[perm], users[perm]


# --------------------------------------------------------------------------------------------------
# Tests.


def test_keys_and_types():
  rng = np.random.default_rng(0)
  m = metrics.evaluate(*_random_lists(rng, 20, 30, 0.3))
  assert tuple(m) == KEYS
  assert all(type(v) is float for v in m.values())
  assert tuple(metrics.evaluate(*_random_lists(rng, 5, 30, 0.3), ks=(3,))) == (
    "auc",
    "uauc",
    "logloss",
    "ndcg@3",
    "hr@3",
  )


def test_random_data_matches_reference():
  rng = np.random.default_rng(1)
  scores, labels, users = _random_lists(rng, 60, 80, 0.2)
  _assert_close(metrics.evaluate(scores, labels, users), _reference(scores, labels, users))


def test_tie_heavy_data_matches_reference():
  rng = np.random.default_rng(2)
  scores, labels, users = _random_lists(rng, 80, 60, 0.3, decimals=1)
  pos_scores = set(scores[labels == 1].tolist())
  assert len(set(scores[labels == 0].tolist()) & pos_scores) > 5  # positive-negative ties exist
  _assert_close(metrics.evaluate(scores, labels, users), _reference(scores, labels, users))


def test_ties_match_brute_force_enumeration():
  rng = np.random.default_rng(3)
  scores, labels, users = _random_lists(rng, 150, 6, 0.4)
  scores = rng.integers(0, 3, scores.size).astype(np.float32)  # lists of <= 6 rows, heavy ties
  ks = (1, 2, 3, 5)
  want = _reference(scores, labels, users, ks=ks, list_metric=_list_ndcg_hr_brute_force)
  _assert_close(metrics.evaluate(scores, labels, users, ks=ks), want)
  # The closed forms of the reference agree with the enumeration as well.
  _assert_close(_reference(scores, labels, users, ks=ks), want, atol=1e-12)


def test_invariant_to_row_permutation():
  rng = np.random.default_rng(4)
  scores, labels, users = _random_lists(rng, 50, 40, 0.3, decimals=1)
  base = metrics.evaluate(scores, labels, users)
  for _ in range(3):
    perm = rng.permutation(scores.size)
    _assert_close(metrics.evaluate(scores[perm], labels[perm], users[perm]), base, atol=1e-6)


def test_single_label_users_excluded_from_uauc():
  rng = np.random.default_rng(5)
  mixed_scores = rng.normal(size=30).astype(np.float32)
  mixed_labels = (np.arange(30) % 3 == 0).astype(np.int64)
  scores = np.concatenate([mixed_scores, rng.normal(size=12).astype(np.float32)])
  labels = np.concatenate([mixed_labels, np.ones(5, np.int64), np.zeros(7, np.int64)])
  users = np.concatenate([np.full(30, 7), np.full(5, 3), np.full(7, 11)])
  perm = rng.permutation(scores.size)
  m = metrics.evaluate(scores[perm], labels[perm], users[perm])
  np.testing.assert_allclose(m["uauc"], _auc_pairs(mixed_scores, mixed_labels), atol=1e-6)
  _assert_close(m, _reference(scores, labels, users))
  # The all-positive user has NDCG = HR = 1 and counts in the average; the all-negative one not.
  ndcg_mixed, _ = _list_ndcg_hr_closed_form(mixed_scores.astype(np.float64), mixed_labels, 10)
  np.testing.assert_allclose(m["ndcg@10"], (ndcg_mixed + 1.0) / 2, atol=1e-6)


def test_protocol_lists_of_100_rows():
  rng = np.random.default_rng(6)
  num_users = 300
  users = np.repeat(np.arange(num_users), 100)
  labels = np.zeros(users.size, np.int64)
  labels[np.arange(num_users) * 100 + rng.integers(0, 100, num_users)] = 1
  scores = np.round(rng.normal(size=users.size) + labels, 1).astype(np.float32)
  perm = rng.permutation(users.size)
  scores, labels, users = scores[perm], labels[perm], users[perm]
  _assert_close(metrics.evaluate(scores, labels, users), _reference(scores, labels, users))


def test_constant_scores():
  num_users = 50
  users = np.repeat(np.arange(num_users), 100)
  labels = (np.arange(users.size) % 100 == 17).astype(np.int64)
  m = metrics.evaluate(np.zeros(users.size, np.float32), labels, users)
  assert m["auc"] == pytest.approx(0.5, abs=1e-6)
  assert m["uauc"] == pytest.approx(0.5, abs=1e-6)
  assert m["logloss"] == pytest.approx(math.log(2), abs=1e-6)
  for k in KS:
    assert m[f"hr@{k}"] == pytest.approx(k / 100, abs=1e-6)
    assert m[f"ndcg@{k}"] == pytest.approx(
      sum(1 / math.log2(p + 1) for p in range(1, k + 1)) / 100, abs=1e-6
    )


def test_perfect_model():
  rng = np.random.default_rng(7)
  scores, labels, users = _random_lists(rng, 40, 50, 0.2)
  scores = np.where(labels == 1, 5.0 + rng.random(labels.size), -5.0 - rng.random(labels.size))
  m = metrics.evaluate(scores.astype(np.float32), labels, users)
  for key in KEYS:
    if key != "logloss":
      assert m[key] == pytest.approx(1.0, abs=1e-6), key


def test_numpy_and_jax_inputs_agree():
  rng = np.random.default_rng(8)
  scores, labels, users = _random_lists(rng, 40, 50, 0.25, decimals=1)
  want = _reference(scores, labels, users)
  _assert_close(metrics.evaluate(scores, labels, users), want)
  jax_inputs = (jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(users))
  _assert_close(metrics.evaluate(*jax_inputs), want)
  _assert_close(metrics.evaluate(scores, labels.astype(bool), users.astype(np.int32)), want)
  _assert_close(metrics.evaluate(list(scores), list(labels.astype(np.float32)), list(users)), want)
  # Ids beyond int32 are remapped on the host.
  _assert_close(metrics.evaluate(scores, labels, users.astype(np.int64) * 10**10 - 3), want)


def test_probabilities_input():
  rng = np.random.default_rng(9)
  scores, labels, users = _random_lists(rng, 40, 50, 0.25)
  probs = (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
  want = _reference(probs, labels, users, from_logits=False)
  _assert_close(metrics.evaluate(probs, labels, users, from_logits=False), want)
  logit_m = metrics.evaluate(scores, labels, users)
  np.testing.assert_allclose(logit_m["logloss"], want["logloss"], atol=1e-6)


def test_undefined_metrics_are_nan():
  scores = np.array([0.3, 0.1, 0.2, 0.9], np.float32)
  all_neg = metrics.evaluate(scores, np.zeros(4), np.array([1, 1, 2, 2]))
  assert math.isnan(all_neg["auc"]) and math.isnan(all_neg["uauc"]) and math.isnan(all_neg["hr@5"])
  assert all_neg["logloss"] == pytest.approx(_logloss(scores, np.zeros(4)), abs=1e-6)
  split = metrics.evaluate(scores, np.array([1, 1, 0, 0]), np.array([1, 1, 2, 2]))
  assert math.isnan(split["uauc"]) and split["auc"] == pytest.approx(0.25)  # 1 of 4 pairs won
  assert split["hr@5"] == pytest.approx(1.0)
  empty = metrics.evaluate(np.zeros(0, np.float32), np.zeros(0), np.zeros(0, np.int64))
  assert tuple(empty) == KEYS and all(math.isnan(v) for v in empty.values())


def test_evaluate_jit_with_mask_on_device_arrays():
  rng = np.random.default_rng(10)
  scores, labels, users = _random_lists(rng, 30, 40, 0.3, decimals=1)
  mask = rng.random(scores.size) < 0.7
  # Masked rows get labels and scores that would change every metric if they were counted.
  junk_scores = np.where(mask, scores, 9.0).astype(np.float32)
  junk_labels = np.where(mask, labels, 1 - labels)
  got = metrics.evaluate_jit(
    jnp.asarray(junk_scores), jnp.asarray(junk_labels), jnp.asarray(users), jnp.asarray(mask)
  )
  assert all(isinstance(v, jax.Array) and v.shape == () for v in got.values())
  want = _reference(scores[mask], labels[mask], users[mask])
  _assert_close({k: float(v) for k, v in got.items()}, want)
  unmasked = metrics.evaluate_jit(
    jnp.asarray(scores[mask]), jnp.asarray(labels[mask]), jnp.asarray(users[mask])
  )
  _assert_close({k: float(v) for k, v in unmasked.items()}, want)


def test_similar_sizes_compile_once():
  assert metrics.padded_size(1500) == metrics.padded_size(2048) == 2048
  assert metrics.padded_size(0) == metrics.padded_size(1) == 1024
  assert metrics.padded_size(2049) == 4096
  rng = np.random.default_rng(11)
  scores, labels, users = _random_lists(rng, 100, 80, 0.3)
  assert scores.size >= 2048
  metrics.evaluate(scores[:1100], labels[:1100], users[:1100])
  before = metrics.evaluate_jit._cache_size()
  for n in (1300, 1700, 2048):
    want = _reference(scores[:n], labels[:n], users[:n])
    _assert_close(metrics.evaluate(scores[:n], labels[:n], users[:n]), want)
  assert metrics.evaluate_jit._cache_size() == before


def _matrix_reference(scores, labels, ks=KS):
  """Float64 reference for equal-length lists with one positive each: scores, labels float[U, M]."""
  s = scores.astype(np.float64)
  pos_score = s[labels == 1]  # [U]
  above = (s > pos_score[:, None]).sum(1)
  tied = (s == pos_score[:, None]).sum(1) - 1
  negs_tied = tied
  num_neg = s.shape[1] - 1
  out = {"uauc": float(np.mean((num_neg - above - tied + 0.5 * negs_tied) / num_neg))}
  for k in ks:
    ndcg = np.zeros(len(s))
    for p in range(1, s.shape[1] + 1):
      inside = (above + 1 <= p) & (p <= above + tied + 1) & (p <= k)
      ndcg += inside / np.log2(p + 1) / (tied + 1)
    out[f"ndcg@{k}"] = float(ndcg.mean())
    out[f"hr@{k}"] = float(np.clip((k - above) / (tied + 1), 0, 1).mean())
  return out


@pytest.mark.slow
def test_large_n_float32_accuracy():
  rng = np.random.default_rng(12)
  num_users, list_len = 20_000, 100
  labels = np.zeros((num_users, list_len), np.int64)
  labels[np.arange(num_users), rng.integers(0, list_len, num_users)] = 1
  scores = np.round(rng.normal(size=labels.shape) + 1.5 * labels, 3).astype(np.float32)
  want = _matrix_reference(scores, labels)
  want["auc"] = _auc_ranks(scores.ravel(), labels.ravel())
  want["logloss"] = _logloss(scores.ravel(), labels.ravel())
  users = np.repeat(rng.permutation(num_users) * 7 + 3, list_len)
  perm = rng.permutation(users.size)
  got = metrics.evaluate(scores.ravel()[perm], labels.ravel()[perm], users[perm])
  _assert_close(got, want, atol=1e-5)
  assert abs(got["auc"] - want["auc"]) < 1e-6

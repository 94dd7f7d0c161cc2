"""make_splits / resample_train: the exact protocol against a slow reference, negatives, seeds."""

import time

import chex
import numpy as np
import pytest

from solid_jax import data
from solid_jax.data import splits as splits_lib

L = 4


@pytest.fixture(scope="module")
def tiny():
  """Seven users (one with 2 events, one with exactly 3, one longer than L+3), 40 items."""
  rng = np.random.default_rng(123)
  lengths = {"u1": 2, "u2": 3, "u3": 4, "u4": 9, "u5": 12, "u6": 5, "u7": 7}
  users, items = [], []
  for user, n in lengths.items():
    users += [user] * n
    seq = rng.integers(1, 20, size=n).tolist()  # Items 1..19 are watched (repeats allowed)...
    items += seq
  items_all = [str(i) for i in range(1, 41)]  # ...and 20..40 never.
  labels = {str(i): f"c{i % 3}" for i in range(1, 41)}
  return data.from_interactions(
    users, [str(i) for i in items], name="tiny", items=items_all, item_labels=labels
  )


def reference_positives(ds, seq_len):
  """Pure-Python protocol: (user, history, target) per split, in user/time order."""
  rows = {"train": [], "valid": [], "test": []}
  for u in range(1, ds.num_users):
    seq = ds.user_sequence(u).tolist()
    n = len(seq)
    if n < 3:
      continue
    for t in range(1, n - 2):
      rows["train"].append((u, seq[max(0, t - seq_len) : t], seq[t]))
    rows["valid"].append((u, seq[max(0, n - 2 - seq_len) : n - 2], seq[n - 2]))
    rows["test"].append((u, seq[max(0, n - 1 - seq_len) : n - 1], seq[n - 1]))
  return rows


def test_protocol_matches_the_reference(tiny):
  negatives = {"train": 3, "valid": 5, "test": 5}
  out = data.make_splits(tiny, seq_len=L, train_negatives=3, eval_negatives=5, seed=7)
  ref = reference_positives(tiny, L)
  for name in ("train", "valid", "test"):
    split, per = out[name], 1 + negatives[name]
    n_rows = len(ref[name]) * per
    chex.assert_shape(
      [split["user"], split["target"], split["target_semantic"], split["label"]], (n_rows,)
    )
    chex.assert_shape([split["items"], split["semantics"]], (n_rows, L))
    for key, dtype in (
      ("user", np.int32),
      ("items", np.int32),
      ("semantics", np.int32),
      ("target", np.int32),
      ("target_semantic", np.int32),
      ("label", np.float32),
    ):
      assert split[key].dtype == dtype, (name, key)
    for p, (user, hist, target) in enumerate(ref[name]):
      block = slice(p * per, (p + 1) * per)
      padded = hist + [0] * (L - len(hist))
      np.testing.assert_array_equal(split["label"][block], [1.0] + [0.0] * (per - 1))
      assert split["target"][p * per] == target
      np.testing.assert_array_equal(split["user"][block], user)  # Negatives share user...
      np.testing.assert_array_equal(split["items"][block], [padded] * per)  # ...and history.
    for r in range(n_rows):  # Semantics: item by item, padding stays 0.
      assert split["semantics"][r].tolist() == [
        int(tiny.item_semantic[i]) for i in split["items"][r]
      ]
      assert split["target_semantic"][r] == tiny.item_semantic[split["target"][r]]
  meta = out["meta"]
  assert meta["dropped_users"] == 1 and meta["num_users"] == 6
  assert meta["train_positives"] == sum(n - 3 for n in (3, 4, 9, 12, 5, 7))
  assert meta["train_rows"] == meta["train_positives"] * 4
  assert meta["seed"] == 7


def test_histories_are_right_padded(tiny):
  out = data.make_splits(tiny, seq_len=L, train_negatives=1, eval_negatives=1)
  for split in (out["train"], out["valid"], out["test"]):
    real = split["items"] != 0
    n = real.sum(axis=1)
    assert (n >= 1).all()
    np.testing.assert_array_equal(real, np.arange(L)[None, :] < n[:, None])


def test_negatives_are_unseen_distinct_and_in_range(tiny):
  out = data.make_splits(tiny, seq_len=L, train_negatives=4, eval_negatives=15, seed=3)
  seen = {u: set(tiny.user_sequence(u).tolist()) for u in range(1, tiny.num_users)}
  for name, k in (("train", 4), ("valid", 15), ("test", 15)):
    split = out[name]
    neg = split["label"] == 0
    assert neg.sum() == (split["label"] == 1).sum() * k
    for user, target in zip(split["user"][neg], split["target"][neg]):
      assert 1 <= target < tiny.num_items and target not in seen[user]
    lists = split["target"].reshape(-1, k + 1)[:, 1:]
    assert all(len(set(row)) == k for row in lists.tolist())


def test_determinism_and_epochs(tiny):
  a = data.make_splits(tiny, seq_len=L, eval_negatives=10, seed=11)
  b = data.make_splits(tiny, seq_len=L, eval_negatives=10, seed=11)
  c = data.make_splits(tiny, seq_len=L, eval_negatives=10, seed=12)
  for name in ("train", "valid", "test"):
    for key in splits_lib.ROW_KEYS:
      np.testing.assert_array_equal(a[name][key], b[name][key])
  assert not np.array_equal(a["test"]["target"], c["test"]["target"])
  epoch0 = data.resample_train(tiny, a, 0)
  for key in splits_lib.ROW_KEYS:
    np.testing.assert_array_equal(epoch0[key], a["train"][key])
  epoch1 = data.resample_train(tiny, a, 1)
  pos = a["train"]["label"] == 1
  np.testing.assert_array_equal(epoch1["target"][pos], a["train"]["target"][pos])
  np.testing.assert_array_equal(epoch1["items"], a["train"]["items"])
  assert not np.array_equal(epoch1["target"][~pos], a["train"]["target"][~pos])
  np.testing.assert_array_equal(data.resample_train(tiny, a, 1)["target"], epoch1["target"])


def test_resample_refuses_other_data(tiny):
  out = data.make_splits(tiny, seq_len=L, eval_negatives=10)
  other = data.from_interactions([1, 1, 1], [1, 2, 3])
  with pytest.raises(data.DataError, match="another data set"):
    data.resample_train(other, out, 1)


def test_negatives_are_uniform_over_unseen_items():
  # One user who saw items 1..5 (25 events); items 6..30 are the 25 candidates.
  ds = data.from_interactions([1] * 25, [1 + k % 5 for k in range(25)], items=list(range(1, 31)))
  out = data.make_splits(ds, seq_len=3, train_negatives=4, eval_negatives=0, seed=0)
  counts = np.zeros(ds.num_items)
  for epoch in range(60):
    rows = data.resample_train(ds, out, epoch)
    np.add.at(counts, rows["target"][rows["label"] == 0], 1)
  assert counts[:6].sum() == 0
  observed = counts[6:]
  expected = observed.sum() / observed.size
  chi2 = ((observed - expected) ** 2 / expected).sum()
  assert chi2 < 51.2  # 99.9% quantile of chi-square with 24 degrees of freedom.


def test_exact_fallback_for_users_who_saw_almost_everything():
  # 12 items, the user saw 9: 3 unseen, 3 negatives per list -> every list is that set.
  ds = data.from_interactions([1] * 9, list(range(1, 10)), items=list(range(1, 13)))
  out = data.make_splits(ds, seq_len=3, train_negatives=3, eval_negatives=3)
  lists = out["train"]["target"].reshape(-1, 4)[:, 1:]
  assert all(sorted(row) == [10, 11, 12] for row in lists.tolist())


def test_ml100k_counts(tmp_path):
  ds = data.load_dataset("ml-100k", cache_dir=tmp_path)
  out = data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=99, seed=0)
  meta = out["meta"]
  assert meta["num_users"] == 943 and meta["dropped_users"] == 0
  assert ds.num_items - 1 == 1682
  assert meta["train_positives"] == 100000 - 3 * 943 == 97171
  assert out["train"]["label"].shape == (97171 * 5,)
  assert out["valid"]["label"].shape == (943 * 100,) and out["test"]["label"].shape == (94300,)
  # SPEC section 5: the authors' conversion has no validation split, hence n-2 training
  # positives per user: 98,114 positives, 490,570 rows.
  assert int((ds.seq_lengths[1:] - 2).sum()) * 5 == 490570
  # No negative was ever seen by its user (vectorised check over the whole test split).
  keys = (
    np.repeat(np.arange(ds.num_users), ds.seq_lengths).astype(np.int64) * ds.num_items
    + ds.seq_items
  )
  for split in (out["train"], out["test"]):
    neg = split["label"] == 0
    assert not np.isin(
      split["user"][neg].astype(np.int64) * ds.num_items + split["target"][neg], keys
    ).any()
  start = time.perf_counter()
  data.resample_train(ds, out, 1)
  assert time.perf_counter() - start < 5.0  # Vectorised: about 0.5 s on 2 busy cores.

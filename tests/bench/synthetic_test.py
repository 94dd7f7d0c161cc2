"""Synthetic benchmark batches: layout, padding convention, statistics, determinism."""

import numpy as np
import pytest

from benchmarks import synthetic


@pytest.fixture(scope="module")
def catalog():
  return synthetic.make_catalog(501, 11, 10, seed=0)


def test_layout_and_padding_convention(catalog):
  b = synthetic.make_batch(catalog, 200, seed=1)
  assert b["items"].shape == (200, 10) and b["items"].dtype == np.int32
  assert b["semantics"].shape == (200, 10) and b["semantics"].dtype == np.int32
  for k in ("target", "target_semantic", "user"):
    assert b[k].shape == (200,) and b[k].dtype == np.int32
  assert b["label"].dtype == np.float32 and b["weight"].dtype == np.float32
  lengths = (b["items"] != 0).sum(1)
  assert lengths.min() >= 1
  # items[b, :n] are real, items[b, n:] are padding (no hole in a history).
  np.testing.assert_array_equal(b["items"] != 0, np.arange(10)[None, :] < lengths[:, None])
  assert b["items"].max() < 501 and b["target"].min() >= 1 and b["target"].max() < 501
  np.testing.assert_array_equal(b["semantics"], catalog.item_semantic[b["items"]])
  np.testing.assert_array_equal(b["target_semantic"], catalog.item_semantic[b["target"]])
  assert catalog.item_semantic[0] == 0 and catalog.item_semantic[1:].min() >= 1
  np.testing.assert_array_equal(b["label"], (np.arange(200) % 5 == 0).astype(np.float32))
  np.testing.assert_array_equal(b["weight"], 1.0)
  # Groups of 5 rows share user and history, as the training split lays them out.
  np.testing.assert_array_equal(
    b["items"][:195].reshape(39, 5, 10), np.repeat(b["items"][:195:5][:, None], 5, axis=1)
  )
  np.testing.assert_array_equal(b["user"], np.arange(200) // 5 + 1)


def test_deterministic_in_the_seed(catalog):
  a, b = synthetic.make_batch(catalog, 64, seed=3), synthetic.make_batch(catalog, 64, seed=3)
  c = synthetic.make_batch(catalog, 64, seed=4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["items"], c["items"])


def test_history_lengths_follow_the_ml100k_distribution(catalog):
  b = synthetic.make_batch(catalog, 100000, seed=5)  # 20,000 histories
  lengths = (b["items"] != 0).sum(1)
  freq = np.bincount(lengths, minlength=11)[1:] / lengths.size
  expected = np.asarray(synthetic.ML100K_HISTORY_LENGTH_COUNTS, np.float64)
  expected /= expected.sum()
  np.testing.assert_allclose(freq, expected, atol=0.01)


def test_history_length_probs_folds_longer_histories():
  p = synthetic.history_length_probs(3, counts=(1, 1, 1, 1))
  np.testing.assert_allclose(p, [0.25, 0.25, 0.5])


def test_item_popularity_is_zipf():
  cat = synthetic.make_catalog(1001, 5, 10, zipf_exponent=1.0, seed=2)
  b = synthetic.make_batch(cat, 100000, seed=0)
  counts = np.sort(np.bincount(b["items"][b["items"] > 0], minlength=1001)[1:])[::-1]
  # p(rank r) ∝ 1/r: the top item is about twice as frequent as the second, 10x the tenth.
  assert 1.6 < counts[0] / counts[1] < 2.5
  assert 7 < counts[0] / counts[9] < 14


@pytest.mark.shared_data
def test_ml100k_counts_match_the_data(shared_data):
  del shared_data  # the registered name reads the same files
  import solid_jax as sj  # pylint: disable=import-outside-toplevel

  ds = sj.data.load_dataset("ml-100k")
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=99, seed=0)
  train = splits["train"]
  positives = train["label"] > 0
  lengths = (train["items"][positives] != 0).sum(1)
  counts = tuple(int(c) for c in np.bincount(lengths, minlength=11)[1:])
  assert counts == synthetic.ML100K_HISTORY_LENGTH_COUNTS

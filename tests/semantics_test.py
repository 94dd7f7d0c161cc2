"""Tests of solid_jax.semantics: label tables, k-means tables, saved tables with provenance."""

import json

import numpy as np
import pytest

from solid_jax import semantics


def _blobs(seed=0, k=4, per=30, dim=6, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, dim)) * 5.0
  truth = np.repeat(np.arange(k), per)
  rng.shuffle(truth)
  x = centres[truth] + rng.normal(size=(truth.size, dim)) * spread
  # Row 0 is the padding item: far away, so clustering it would be visible.
  return np.concatenate([np.full((1, dim), 1e3), x]).astype(np.float32), truth


def _same_partition(a, b):
  """Whether two labelings define the same partition (up to renaming)."""
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_from_labels_numbers_by_first_appearance_and_missing_last():
  table = semantics.from_labels([None, "drama", "comedy", None, "drama", "", "war"])
  np.testing.assert_array_equal(table, [0, 1, 2, 4, 1, 4, 3])
  assert table.dtype == np.int32


def test_from_labels_without_missing_has_contiguous_ids():
  table = semantics.from_labels([None, 7, 3, 7, 9])
  np.testing.assert_array_equal(table, [0, 1, 2, 1, 3])


def test_first_labels():
  assert semantics.first_labels([None, ["a", "b"], [], "c", ("d",)]) == [None, "a", None, "c", "d"]


@pytest.mark.parametrize(
  "depth,expected", [(1, [0, 1, 1, 1, 2, 3]), (2, [0, 1, 1, 2, 3, 4]), (3, [0, 1, 2, 3, 4, 5])]
)
def test_from_category_paths_depths(depth, expected):
  paths = [None, "A,B,C", ["A", "B", "D"], "A,E", "F", []]
  np.testing.assert_array_equal(semantics.from_category_paths(paths, depth), expected)


def test_from_category_paths_rejects_depth_zero():
  with pytest.raises(ValueError, match="depth"):
    semantics.from_category_paths(["", "A"], 0)


def test_l2_normalize_against_numpy_float64():
  x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  x[2] = 0.0
  out = semantics.l2_normalize(x)
  ref = x.astype(np.float64) / np.maximum(
    np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True), 1e-12
  )
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(out[2], 0.0)


def test_item_vectors_concatenates_normalised_parts():
  rng = np.random.default_rng(2)
  parts = {
    "id": rng.normal(size=(4, 3)),
    "text": rng.normal(size=(4, 5)) * 10,
    "image": rng.normal(size=(4, 2)),
  }
  out = semantics.item_vectors(parts, "id_text_image")
  assert out.shape == (4, 10)
  np.testing.assert_allclose(np.linalg.norm(out[:, 3:8], axis=1), 1.0, rtol=1e-5)
  with pytest.raises(KeyError, match="image"):
    semantics.item_vectors({"text": parts["text"]}, "text_image")


def test_kmeans_recovers_well_separated_blobs():
  x, truth = _blobs()
  table = semantics.cluster_items(x, 4, seed=0, iters=20)
  assert table[0] == 0
  assert sorted(set(table[1:].tolist())) == [1, 2, 3, 4]
  assert _same_partition(table[1:], truth)


def test_kmeans_is_deterministic_given_the_seed():
  x, _ = _blobs(seed=3, k=6, per=20, spread=2.0)  # overlapping blobs: the seed matters
  a = semantics.cluster_items(x, 6, seed=5, iters=10)
  b = semantics.cluster_items(x, 6, seed=5, iters=10)
  np.testing.assert_array_equal(a, b)
  others = [semantics.cluster_items(x, 6, seed=s, iters=1) for s in range(6, 12)]
  assert any(not np.array_equal(a, o) for o in others)


def test_kmeans_table_has_padding_zero_and_ids_one_to_k():
  x = np.random.default_rng(4).normal(size=(101, 4)).astype(np.float32)
  table = semantics.cluster_items(x, 7, seed=0, iters=15)
  assert table.shape == (101,) and table.dtype == np.int32
  assert table[0] == 0
  assert table[1:].min() == 1 and table[1:].max() == 7
  assert len(set(table[1:].tolist())) == 7


def test_kmeans_rejects_more_clusters_than_items():
  with pytest.raises(ValueError, match="clusters"):
    semantics.cluster_items(np.zeros((4, 2), np.float32), 4)


def test_save_and_load_table_checks_provenance(tmp_path):
  table = np.array([0, 1, 2, 1, 3], np.int32)
  prov = {"source": "text", "k": 3, "seed": 0, "dataset_fingerprint": "abc"}
  prefix = str(tmp_path / "sem")
  semantics.save_table(prefix, table, prov)
  loaded, info = semantics.load_table(prefix, prov)
  np.testing.assert_array_equal(loaded, table)
  assert info["num_semantics"] == 4 and info["k"] == 3
  with pytest.raises(semantics.ProvenanceError, match="seed: saved 0, expected 1"):
    semantics.load_table(prefix, {**prov, "seed": 1})
  with pytest.raises(semantics.ProvenanceError, match="dataset_fingerprint"):
    semantics.load_table(prefix, {**prov, "dataset_fingerprint": "other"})


def test_load_table_detects_a_replaced_table(tmp_path):
  prefix = str(tmp_path / "sem")
  semantics.save_table(prefix, np.array([0, 1, 2], np.int32), {"source": "labels"})
  with open(prefix + ".npz", "wb") as f:
    np.savez(f, table=np.array([0, 2, 1], np.int32))
  with pytest.raises(semantics.ProvenanceError, match="hash"):
    semantics.load_table(prefix)
  with open(prefix + ".json") as f:
    assert json.load(f)["source"] == "labels"


def test_ml100k_first_genre_table_matches_the_loader():
  import solid_jax as sj  # pylint: disable=import-outside-toplevel

  try:
    ds = sj.data.load_dataset("ml-100k")
  except sj.data.DataError as e:  # the recbole wheel that ships the files is not installed
    pytest.skip(str(e))
  table = semantics.from_labels(semantics.first_labels(ds.side["genres"]))
  np.testing.assert_array_equal(table, ds.item_semantic)
  assert table.max() == 19


@pytest.mark.shared_data
def test_clip_features_of_scientific_mm_subset_cluster(shared_data):
  import solid_jax as sj  # pylint: disable=import-outside-toplevel

  ds = sj.data.load_dataset(str(shared_data / "scientific_mm_subset"))
  parts = semantics.dataset_vectors(ds)
  assert set(parts) == {"text", "image"}
  assert parts["text"].shape == parts["image"].shape == (ds.num_items, 512)
  vectors = semantics.item_vectors(parts, "text_image")
  np.testing.assert_allclose(np.linalg.norm(vectors[1:, :512], axis=1), 1.0, rtol=1e-5)
  table = semantics.cluster_items(vectors, 20, seed=0, iters=20)
  assert table[0] == 0 and sorted(set(table[1:].tolist())) == list(range(1, 21))
  np.testing.assert_array_equal(table, semantics.cluster_items(vectors, 20, seed=0, iters=20))
  # Clusters of CLIP features agree with the category paths far more than chance.
  by_category = semantics.from_category_paths(ds.side["categories"], 2)
  majority = sum(np.bincount(by_category[table == c]).max() for c in range(1, 21))
  purity = majority / (ds.num_items - 1)
  chance = np.bincount(by_category[1:]).max() / (ds.num_items - 1)
  assert purity > chance + 0.1


def test_shuffled_labels_keep_the_classes_and_their_sizes_but_not_the_items():
  table = np.asarray([0] + [1] * 30 + [2] * 10 + [3] * 5, np.int32)
  shuffled = semantics.shuffled_labels(table, seed=0)
  assert shuffled[0] == 0 and shuffled.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(shuffled), np.bincount(table))
  assert np.mean(shuffled[1:] != table[1:]) > 0.3
  np.testing.assert_array_equal(shuffled, semantics.shuffled_labels(table, seed=0))
  assert not np.array_equal(shuffled, semantics.shuffled_labels(table, seed=1))

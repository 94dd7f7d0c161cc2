"""Registered names: the embedded ml-100k (recbole wheel) and the shared data folders."""

import builtins
import collections
import importlib
import importlib.util
import sys

import numpy as np
import pytest

from solid_jax import data
from solid_jax.data import registry


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
  return data.load_dataset("ml-100k", cache_dir=tmp_path_factory.mktemp("cache"))


def reference_sequences(inter_path):
  """Independent reading of the .inter file: per user, sort by (timestamp, file line)."""
  events = collections.defaultdict(list)
  with open(inter_path, encoding="utf-8") as f:
    next(f)
    for line_no, line in enumerate(f):
      user, item, _, stamp = line.rstrip("\n").split("\t")
      events[user].append((float(stamp), line_no, item))
  return {u: [item for _, _, item in sorted(v)] for u, v in events.items()}


def test_ml100k_is_embedded(ml100k):
  assert registry.registered_datasets()["ml-100k"] == "embedded"
  assert ml100k.source.startswith("recbole==") and ml100k.source.endswith(" wheel")
  assert ml100k.num_users - 1 == 943 and ml100k.num_items - 1 == 1682
  assert ml100k.num_interactions == 100000
  assert ml100k.num_semantics == 20  # 19 genre classes including "unknown", plus padding.
  assert set(ml100k.semantic_vocab[1:]) == {
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
  }
  assert ml100k.item_vocab[1:4] == ["1", "2", "3"]  # 1-based raw ids keep their value.


def test_ml100k_semantics_are_the_first_genre(ml100k):
  genres = ml100k.side["genres"]
  assert genres[1] == ["Animation", "Children's", "Comedy"]  # Toy Story, in file order.
  for i in range(1, ml100k.num_items):
    assert ml100k.semantic_vocab[ml100k.item_semantic[i]] == genres[i][0]


def test_ml100k_sequences_match_an_independent_reading(ml100k):
  folder = registry.embedded_ml100k_folder()
  expected = reference_sequences(folder / "ml-100k.inter")
  for u in range(1, ml100k.num_users):
    got = [ml100k.item_vocab[i] for i in ml100k.user_sequence(u)]
    assert got == expected[ml100k.user_vocab[u]]
  stamps = ml100k.seq_timestamps
  for u in (1, 500, 943):
    s = stamps[ml100k.seq_offsets[u] : ml100k.seq_offsets[u + 1]]
    assert np.all(np.diff(s) >= 0)


def test_ml100k_loads_without_importing_recbole(tmp_path, monkeypatch):
  real_import = builtins.__import__

  def guarded(name, *args, **kwargs):
    if name == "recbole" or name.startswith("recbole."):
      raise AssertionError("recbole was imported")
    return real_import(name, *args, **kwargs)

  monkeypatch.delitem(sys.modules, "recbole", raising=False)
  monkeypatch.setattr(builtins, "__import__", guarded)
  real_import_module = importlib.import_module
  monkeypatch.setattr(
    importlib,
    "import_module",
    lambda name, *a: guarded(name) if name.startswith("recbole") else real_import_module(name, *a),
  )
  ds = data.load_dataset("ml-100k", cache_dir=tmp_path, use_cache=False)
  assert ds.num_items == 1683
  assert "recbole" not in sys.modules


def test_missing_recbole_gives_the_install_command(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a)
  )
  with pytest.raises(data.DataError, match=r"pip install --no-deps recbole==1\.2\.1"):
    data.load_dataset("ml-100k")


def test_shared_names_follow_the_environment(tmp_path, monkeypatch):
  (tmp_path / "beauty").mkdir()
  (tmp_path / "lastfm").mkdir()
  monkeypatch.setenv(registry.SHARED_ENV, str(tmp_path))
  assert registry.registered_datasets() == {
    "ml-100k": "embedded",
    "beauty": str(tmp_path / "beauty"),
    "lastfm": str(tmp_path / "lastfm"),
  }
  monkeypatch.setenv(registry.SHARED_ENV, str(tmp_path / "absent"))
  assert registry.registered_datasets() == {"ml-100k": "embedded"}
  with pytest.raises(data.DataError, match="neither a registered name"):
    data.load_dataset("beauty")


def test_registered_name_loads_its_folder(s3rec_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(registry.SHARED_ENV, str(s3rec_dir.parent))
  (s3rec_dir.parent / "lastfm").symlink_to(s3rec_dir)
  ds = data.load_dataset("lastfm", cache_dir=tmp_path / "c")
  assert ds.name == "lastfm" and ds.format == "s3rec" and ds.num_users == 4


# Counts from each folder's SOURCE.md: users, items, interactions, semantic classes (defaults).
SHARED = {
  "beauty": (22363, 12101, 198502, "s3rec"),
  "sports": (35598, 18357, 296337, "s3rec"),
  "lastfm": (1090, 3646, 52551, "s3rec"),
  "scientific": (8317, 4344, 58492, "lcrec"),
  "office": (4905, 2420, 53258, "lcrec"),
  "instruments": (17112, 6250, 136226, "lcrec"),
  "scientific_mm_subset": (2928, 1585, 19712, "unisrec"),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_datasets_load_with_documented_counts(name, shared_data, tmp_path, monkeypatch):
  monkeypatch.setenv(registry.SHARED_ENV, str(shared_data))
  ds = data.load_dataset(name, cache_dir=tmp_path)
  users, items, interactions, fmt = SHARED[name]
  assert (ds.num_users - 1, ds.num_items - 1, ds.num_interactions, ds.format) == (
    users,
    items,
    interactions,
    fmt,
  )
  assert ds.item_semantic[0] == 0 and ds.item_semantic[1:].min() >= 1


@pytest.mark.shared_data
def test_shared_semantic_defaults(shared_data, tmp_path, monkeypatch):
  monkeypatch.setenv(registry.SHARED_ENV, str(shared_data))
  # Distinct category paths at depth 2 / first-level codes, as counted in SOURCE.md.
  assert data.load_dataset("scientific", cache_dir=tmp_path).num_semantics - 1 == 26
  assert data.load_dataset("office", cache_dir=tmp_path).num_semantics - 1 == 43
  assert data.load_dataset("office", cache_dir=tmp_path, category_depth=3).num_semantics - 1 == 136
  assert data.load_dataset("instruments", cache_dir=tmp_path).num_semantics - 1 == 126
  assert (
    data.load_dataset("instruments", cache_dir=tmp_path, codes="image").num_semantics - 1 == 172
  )
  mm = data.load_dataset("scientific_mm_subset", cache_dir=tmp_path)
  assert mm.num_semantics - 1 == 24
  feats = np.fromfile(
    shared_data / "scientific_mm_subset" / "Scientific.feat3CLS", dtype=np.float32
  ).reshape(-1, 512)
  image = mm.side["features/clip_image"]
  assert image.shape == (1586, 512)
  np.testing.assert_array_equal(image[1:], feats)  # item2index runs 0..1584: row k -> id k + 1.
  assert mm.item_vocab[1:4] == ["0", "1", "2"]


@pytest.mark.shared_data
def test_shared_ml100k_copy_is_the_embedded_one(shared_data, tmp_path, ml100k):
  copy = data.load_dataset(shared_data / "ml-100k", cache_dir=tmp_path)
  assert copy.fingerprint == ml100k.fingerprint
  np.testing.assert_array_equal(copy.seq_items, ml100k.seq_items)

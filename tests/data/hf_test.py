"""Arrow caching through Hugging Face `datasets`: hits, invalidation, location, no network."""

import socket

import numpy as np
import pytest

from solid_jax import data
from solid_jax.data import formats
from solid_jax.data import hf


@pytest.fixture
def count_parses(monkeypatch):
  calls = []
  real = formats.parse_folder

  def counting(*args, **kwargs):
    calls.append(args[0].folder)
    return real(*args, **kwargs)

  monkeypatch.setattr(formats, "parse_folder", counting)
  return calls


def assert_same(a, b):
  assert a.user_vocab == b.user_vocab and a.item_vocab == b.item_vocab
  np.testing.assert_array_equal(a.seq_offsets, b.seq_offsets)
  np.testing.assert_array_equal(a.seq_items, b.seq_items)
  np.testing.assert_array_equal(a.item_semantic, b.item_semantic)
  assert a.semantic_vocab == b.semantic_vocab and a.fingerprint == b.fingerprint
  assert sorted(a.side) == sorted(b.side) and sorted(a.user_side) == sorted(b.user_side)
  for key in a.side:
    if isinstance(a.side[key], np.ndarray):
      assert a.side[key].dtype == b.side[key].dtype
      np.testing.assert_array_equal(a.side[key], b.side[key])
    else:
      assert a.side[key] == b.side[key], key
  for key in a.user_side:
    assert a.user_side[key] == b.user_side[key]
  if a.seq_timestamps is None:
    assert b.seq_timestamps is None
  else:
    np.testing.assert_array_equal(a.seq_timestamps, b.seq_timestamps)


def test_second_load_reads_the_cache(recbole_dir, tmp_path, count_parses):
  cache = tmp_path / "cache"
  first = data.load_dataset(recbole_dir, cache_dir=cache)
  assert len(count_parses) == 1
  second = data.load_dataset(recbole_dir, cache_dir=cache)
  assert len(count_parses) == 1  # The parser was not called again.
  assert_same(first, second)
  assert len(first.fingerprint) == 64
  entries = [p for p in cache.iterdir() if p.is_dir()]
  assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
  assert (entries[0] / "arrow" / "events").is_dir()


def test_cache_round_trip_keeps_features_and_lists(unisrec_dir, tmp_path, count_parses):
  first = data.load_dataset(unisrec_dir, cache_dir=tmp_path / "c")
  second = data.load_dataset(unisrec_dir, cache_dir=tmp_path / "c")
  assert len(count_parses) == 1
  assert_same(first, second)
  assert second.side["features/clip_text"].shape == (5, 512)


def test_changed_file_is_parsed_again(s3rec_dir, tmp_path, count_parses):
  cache = tmp_path / "cache"
  before = data.load_dataset(s3rec_dir, cache_dir=cache)
  path = s3rec_dir / "Toy.txt"
  path.write_text(path.read_text() + "4 6 5 4\n")
  after = data.load_dataset(s3rec_dir, cache_dir=cache)
  assert len(count_parses) == 2
  assert after.num_users == before.num_users + 1
  assert after.fingerprint != before.fingerprint
  again = data.load_dataset(s3rec_dir, cache_dir=cache)
  assert len(count_parses) == 2 and again.num_users == after.num_users


def test_semantic_options_do_not_reparse(lcrec_dir, tmp_path, count_parses):
  a = data.load_dataset(lcrec_dir, cache_dir=tmp_path / "c", category_depth=1)
  b = data.load_dataset(lcrec_dir, cache_dir=tmp_path / "c", category_depth=3)
  assert len(count_parses) == 1
  assert a.num_semantics < b.num_semantics


def test_cache_location_argument_env_and_default(s3rec_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("SOLID_JAX_CACHE", str(tmp_path / "from-env"))
  assert hf.cache_root() == tmp_path / "from-env"
  assert hf.cache_root(tmp_path / "arg") == tmp_path / "arg"
  data.load_dataset(s3rec_dir)
  assert any((tmp_path / "from-env").iterdir())
  monkeypatch.delenv("SOLID_JAX_CACHE")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert hf.cache_root() == tmp_path / "home" / ".cache" / "solid_jax"


def test_use_cache_false_writes_nothing(s3rec_dir, tmp_path, count_parses):
  for _ in range(2):
    data.load_dataset(s3rec_dir, cache_dir=tmp_path / "c", use_cache=False)
  assert len(count_parses) == 2
  assert not (tmp_path / "c").exists()


def test_corrupt_cache_entry_is_rebuilt(s3rec_dir, tmp_path, count_parses):
  cache = tmp_path / "c"
  data.load_dataset(s3rec_dir, cache_dir=cache)
  entry = next(p for p in cache.iterdir() if p.is_dir())
  (entry / "meta.json").write_text("{not json")
  ds = data.load_dataset(s3rec_dir, cache_dir=cache)
  assert len(count_parses) == 2 and ds.num_users == 4


def test_nothing_touches_the_network(lcrec_dir, tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  cold = data.load_dataset(lcrec_dir, cache_dir=tmp_path / "c")
  warm = data.load_dataset(lcrec_dir, cache_dir=tmp_path / "c")
  assert_same(cold, warm)


def test_to_arrow_is_a_datasets_dataset_dict(s3rec_dir, tmp_path):
  import datasets  # pylint: disable=import-outside-toplevel

  ds = data.load_dataset(s3rec_dir, cache_dir=tmp_path / "c")
  tables, meta = hf.to_arrow(ds)
  assert isinstance(tables, datasets.DatasetDict)
  assert tables["events"].num_rows == ds.num_interactions
  assert tables["items"].num_rows == ds.num_items
  assert_same(hf.from_arrow(tables, meta), ds)


def test_from_interactions_takes_datasets_columns():
  """The Hub path: columns of a `datasets.Dataset` (here synthetic, built offline)."""
  import datasets  # pylint: disable=import-outside-toplevel

  rows = datasets.Dataset.from_dict(
    {
      "user_id": ["AX", "BQ", "AX", "AX", "BQ", "BQ"],
      "parent_asin": ["B01", "B02", "B02", "B03", "B01", "B03"],
      "rating": [5.0, 4.0, 3.0, 5.0, 1.0, 2.0],
      "timestamp": [
        1700000003000,
        1700000001000,
        1700000001000,
        1700000002000,
        1700000005000,
        1700000004000,
      ],
    }
  )
  ds = data.from_interactions(
    rows["user_id"], rows["parent_asin"], rows["timestamp"], name="amazon-like"
  )
  assert ds.user_vocab == ["", "AX", "BQ"] and ds.item_vocab == ["", "B01", "B02", "B03"]
  assert ds.user_sequence(1).tolist() == [2, 3, 1]  # AX: B02 (t=1), B03 (t=2), B01 (t=3).
  assert ds.user_sequence(2).tolist() == [2, 3, 1]
  splits = data.make_splits(ds, seq_len=2, train_negatives=0, eval_negatives=0)
  np.testing.assert_array_equal(splits["test"]["items"], [[2, 3], [2, 3]])

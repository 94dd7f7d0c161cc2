"""Readers of every format on hand-made folders; the authors' line format; Dataset checks."""

import numpy as np
import pytest

from solid_jax import data
from solid_jax.data import formats


def load(folder, tmp_path, **options):
  return data.load_dataset(folder, cache_dir=tmp_path / "cache", **options)


def sequences(ds):
  return [ds.user_sequence(u).tolist() for u in range(1, ds.num_users)]


def test_detects_every_format(recbole_dir, s3rec_dir, lcrec_dir, codes_dir, unisrec_dir):
  found = {
    d.name: formats.inspect_folder(d).format
    for d in (recbole_dir, s3rec_dir, lcrec_dir, codes_dir, unisrec_dir)
  }
  assert found == {
    "tiny-recbole": "recbole_atomic",
    "tiny-s3rec": "s3rec",
    "tiny-lcrec": "lcrec",
    "tiny-codes": "lcrec",
    "tiny-unisrec": "unisrec",
  }
  assert "train" not in formats.inspect_folder(unisrec_dir).files


def test_recbole_sorts_by_timestamp_stable_on_ties(recbole_dir, tmp_path):
  ds = load(recbole_dir, tmp_path)
  assert ds.format == "recbole_atomic"
  assert ds.user_vocab == ["", "1", "2"]
  assert ds.item_vocab == ["", "1", "2", "3", "4", "5"]  # Item 5 only in the .item catalogue.
  # User 2 has (3, t=50) before (1, t=50) in the file: the tie keeps file order.
  assert sequences(ds) == [[1, 4, 2], [4, 3, 1]]
  np.testing.assert_array_equal(ds.seq_timestamps, [10, 20, 30, 40, 50, 50])
  assert ds.side["genres"][1] == ["Drama", "Comedy"]
  assert ds.side["title"][3] == "Gamma" and ds.side["year"][4] == "1993"
  assert ds.user_side["gender"] == ["", "F", "M"]
  # First genre token, ids by first appearance: Drama 1, Action 2, Comedy 3, Horror 4.
  np.testing.assert_array_equal(ds.item_semantic, [0, 1, 2, 3, 1, 4])
  assert ds.semantic_vocab == ["", "Drama", "Action", "Comedy", "Horror"]
  assert ds.num_semantics == 5 and ds.num_items == 6 and ds.num_users == 3


def test_s3rec_first_attribute(s3rec_dir, tmp_path):
  ds = load(s3rec_dir, tmp_path)
  assert ds.item_vocab == ["", "1", "2", "3", "4", "5", "6"]  # 1-based ids kept.
  assert sequences(ds) == [[1, 2, 3, 4], [2, 5, 1], [6, 1, 2, 3, 5]]
  np.testing.assert_array_equal(ds.item_semantic, [0, 1, 2, 3, 1, 2, 3])
  assert ds.semantic_vocab == ["", "7", "3", "9"]
  assert ds.side["attributes"][3] == [9, 7]


def test_lcrec_shifts_zero_based_ids_and_splits_paths_without_space(lcrec_dir, tmp_path):
  ds = load(lcrec_dir, tmp_path)
  assert ds.item_vocab == ["", "0", "1", "2", "3", "4"]
  assert sequences(ds) == [[1, 2, 3, 4], [5, 1, 4], [3, 2]]
  assert ds.side["categories"][1] == [
    "Industrial & Scientific",
    "Tapes, Adhesives & Sealants",
    "Glue",
  ]
  assert ds.side["categories"][3] == []
  assert ds.side["title"][1] == "A & B"  # HTML entities unescaped.
  np.testing.assert_array_equal(ds.item_semantic, [0, 1, 2, 3, 1, 2])
  assert ds.semantic_vocab[3] == "<missing>"
  deeper = load(lcrec_dir, tmp_path, category_depth=3)
  # Item 3 has no category: "<missing>" takes the last id, after every real label.
  np.testing.assert_array_equal(deeper.item_semantic, [0, 1, 2, 5, 3, 4])
  assert deeper.semantic_vocab[5] == "<missing>"
  coarse = load(lcrec_dir, tmp_path, category_depth=1)
  np.testing.assert_array_equal(coarse.item_semantic, [0, 1, 1, 2, 1, 1])


def test_lcrec_office_paths_split_at_comma_space(office_dir, tmp_path):
  ds = load(office_dir, tmp_path)
  assert ds.side["categories"][1] == ["Office Electronics", "Phones", "Cordless"]
  assert ds.semantic_vocab == [
    "",
    "Office Electronics > Phones",
    "Office Electronics > Printers",
    "Office & School Supplies > Paper",
  ]
  np.testing.assert_array_equal(
    load(office_dir, tmp_path, category_depth=1).item_semantic, [0, 1, 1, 2]
  )


def test_lcrec_codes(codes_dir, tmp_path):
  ds = load(codes_dir, tmp_path)
  assert ds.semantic_source.startswith("text codes")
  np.testing.assert_array_equal(ds.item_semantic, [0, 1, 2, 1, 3])
  np.testing.assert_array_equal(ds.side["codes/text"][1], [5, 1, 2, 3])
  np.testing.assert_array_equal(ds.side["codes/text"][0], [-1, -1, -1, -1])
  assert ds.side["asin"] == ["", "ASIN0", "ASIN1", "ASIN2", "ASIN3"]
  assert ds.user_side["reviewer_id"] == ["", "U0", "U1"]
  image = load(codes_dir, tmp_path, codes="image")
  np.testing.assert_array_equal(image.item_semantic, [0, 1, 1, 2, 2])
  two = load(codes_dir, tmp_path, code_levels=2)
  assert two.num_semantics == 5


def test_unisrec_full_sequences_features_and_categories(unisrec_dir, tmp_path):
  ds = load(unisrec_dir, tmp_path)
  assert sequences(ds) == [[1, 2, 3, 4], [4, 3, 1, 2]]  # test history + test target.
  raw = np.fromfile(unisrec_dir / "Sci.feat1CLS", dtype=np.float32).reshape(-1, 512)
  text = ds.side["features/clip_text"]
  assert text.shape == (5, 512) and text.dtype == np.float32
  np.testing.assert_array_equal(text[0], 0)
  for k in range(4):  # File row k belongs to item index k, internal id k + 1.
    np.testing.assert_array_equal(text[k + 1], raw[k])
  np.testing.assert_array_equal(ds.side["features/clip_image"][1:], -raw)
  assert ds.side["text"][3] == "third item."
  assert ds.side["asin"][1] == "B0"
  np.testing.assert_array_equal(ds.item_semantic, [0, 1, 2, 3, 1])
  assert ds.semantic_vocab[2] == "Industrial & Scientific > Tapes, Adhesives & Sealants"


def test_format_option_forces_a_reader(lcrec_dir, tmp_path):
  with pytest.raises(data.DataError, match="no supported data set"):
    load(lcrec_dir, tmp_path, format="s3rec")


def test_explicit_semantics_choice_and_missing_side(s3rec_dir, tmp_path):
  assert load(s3rec_dir, tmp_path, semantics="none").num_semantics == 2
  with pytest.raises(data.DataError, match="no side information 'categories'"):
    load(s3rec_dir, tmp_path, semantics="category")


# ----------------------------------------------------------------------------------------------
# Authors' line format.


def test_authors_file_round_trip(s3rec_dir, tmp_path):
  ds = load(s3rec_dir, tmp_path)
  split = data.make_splits(ds, seq_len=3, train_negatives=1, eval_negatives=1, seed=0)["test"]
  items_path, sem_path = tmp_path / "test.txt", tmp_path / "sem.txt"
  data.write_authors_file(split, items_path, sem_path)
  back = data.read_authors_file(items_path, sem_path)
  assert set(back) == set(formats_keys())
  for key in formats_keys():
    np.testing.assert_array_equal(back[key], split[key], err_msg=key)
    assert back[key].dtype == split[key].dtype
  without = data.read_authors_file(items_path)
  np.testing.assert_array_equal(without["semantics"], 0)
  np.testing.assert_array_equal(without["target_semantic"], 0)


def formats_keys():
  return ("user", "items", "semantics", "target", "target_semantic", "label")


def test_authors_file_lines(tmp_path):
  split = {
    "user": np.array([3, 3]),
    "items": np.array([[4, 5, 0], [7, 0, 0]]),
    "target": np.array([6, 8]),
    "label": np.array([1.0, 0.0]),
    "semantics": np.array([[1, 2, 0], [3, 0, 0]]),
    "target_semantic": np.array([2, 1]),
  }
  data.write_authors_file(split, tmp_path / "a.txt", tmp_path / "s.txt")
  assert (tmp_path / "a.txt").read_text().splitlines() == ["3;6;4,0,0;4,5,0;1", "3;8;0,0,0;7,0,0;0"]
  assert (tmp_path / "s.txt").read_text().splitlines() == ["3;2;1,0,0;1,2,0;1", "3;1;0,0,0;3,0,0;0"]
  data.write_authors_file(split, tmp_path / "z.txt", trigger="zeros")
  assert (tmp_path / "z.txt").read_text().splitlines()[0] == "3;6;0,0,0;4,5,0;1"


def test_authors_file_left_padding_and_truncation(tmp_path):
  (tmp_path / "a.txt").write_text("5;7;0,0,0,0,0;0,0,1,2,3;1\n6;8;;9,4;0\n")
  (tmp_path / "s.txt").write_text("5;2;0,0,0,0,0;0,0,11,12,13;1\n6;1;;19,14;0\n")
  out = data.read_authors_file(tmp_path / "a.txt", tmp_path / "s.txt")
  np.testing.assert_array_equal(out["items"], [[1, 2, 3, 0, 0], [9, 4, 0, 0, 0]])
  np.testing.assert_array_equal(out["semantics"], [[11, 12, 13, 0, 0], [19, 14, 0, 0, 0]])
  np.testing.assert_array_equal(out["target_semantic"], [2, 1])
  short = data.read_authors_file(tmp_path / "a.txt", tmp_path / "s.txt", seq_len=2)
  np.testing.assert_array_equal(short["items"], [[2, 3], [9, 4]])  # The newest items are kept.
  np.testing.assert_array_equal(short["semantics"], [[12, 13], [19, 14]])


def test_authors_semantic_file_must_be_aligned(tmp_path):
  (tmp_path / "a.txt").write_text("5;7;;1,2;1\n5;8;;1,2;0\n")
  (tmp_path / "s.txt").write_text("5;2;;3,4;1\n5;1;;3,4;1\n")
  with pytest.raises(data.DataError, match=r"s\.txt, line 2, field label"):
    data.read_authors_file(tmp_path / "a.txt", tmp_path / "s.txt")


# ----------------------------------------------------------------------------------------------
# Dataset, with_semantics, from_interactions.


def test_with_semantics_validates(s3rec_dir, tmp_path):
  ds = load(s3rec_dir, tmp_path)
  new = ds.with_semantics(np.array([0, 2, 2, 1, 1, 1, 2]), "hand-made")
  assert new.num_semantics == 3 and new.semantic_source == "hand-made"
  assert ds.num_semantics == 4  # The original is unchanged.
  bad = {
    "shape": np.array([0, 1, 1]),
    "only padding": np.array([0, 1, 0, 1, 1, 1, 1]),
    "padding": np.array([1, 1, 1, 1, 1, 1, 1]),
    "contiguous": np.array([0, 1, 3, 1, 3, 1, 3]),
  }
  for message, table in bad.items():
    with pytest.raises(data.DataError, match=message):
      ds.with_semantics(table, "bad")
  with pytest.raises(data.DataError, match="integer"):
    ds.with_semantics(np.zeros(7, np.float32), "bad")
  relabelled = ds.with_semantics(np.array([0, 5, 9, 5, 9, 5, 40]), "k-means", relabel=True)
  np.testing.assert_array_equal(relabelled.item_semantic, [0, 1, 2, 1, 2, 1, 3])
  assert relabelled.semantic_vocab == ["", "5", "9", "40"]


def test_from_interactions_sorts_and_maps_raw_ids():
  users = ["bob", "amy", "bob", "amy", "bob"]
  items = ["B10", "B9", "B9", "B7", "B10"]
  stamps = [5, 3, 2, 1, 2]  # bob: B9 (t=2) and B10 (t=2) tie -> column order.
  ds = data.from_interactions(
    users, items, stamps, name="syn", item_labels={"B10": "x", "B9": "y"}, items=["B7", "B8"]
  )
  assert ds.user_vocab == ["", "amy", "bob"]
  assert ds.item_vocab == ["", "B10", "B7", "B8", "B9"]
  assert [ds.item_vocab[i] for i in ds.user_sequence(1)] == ["B7", "B9"]
  assert [ds.item_vocab[i] for i in ds.user_sequence(2)] == ["B9", "B10", "B10"]
  np.testing.assert_array_equal(ds.seq_timestamps, [1, 3, 2, 2, 5])
  # Labels by first appearance over internal ids (B10 x, B9 y); B7 and B8 have none: last.
  np.testing.assert_array_equal(ds.item_semantic, [0, 1, 3, 3, 2])
  assert ds.semantic_vocab == ["", "x", "y", "<missing>"]
  assert len(ds.fingerprint) == 64


def test_from_interactions_numeric_ids_sort_numerically():
  ds = data.from_interactions(np.array([10, 9, 10]), ["10", "9", "100"])
  assert ds.user_vocab == ["", "9", "10"]
  assert ds.item_vocab == ["", "9", "10", "100"]
  assert ds.num_semantics == 2 and ds.semantic_source.startswith("none")
  assert [ds.item_vocab[i] for i in ds.user_sequence(2)] == ["10", "100"]


def test_from_interactions_rejects_bad_columns():
  with pytest.raises(data.DataError, match="equal length"):
    data.from_interactions([1, 2], [1])
  with pytest.raises(data.DataError, match="timestamps"):
    data.from_interactions([1, 2], [1, 2], ["a", "b"])
  with pytest.raises(data.DataError, match="no interactions"):
    data.from_interactions([], [])


def test_authors_fast_and_checked_readers_agree(tmp_path):
  path = tmp_path / "a.txt"
  path.write_text("4;9;1,2;1,2,3;1\n4;8;0;1,2,3;0\n7;5;3;6,0;1.0\n")
  fast, checked = formats._parse_authors_fast(path), formats._parse_authors_checked(path)
  assert fast is not None
  for key in checked:
    np.testing.assert_array_equal(np.asarray(fast[key]), np.asarray(checked[key]), err_msg=key)
  for broken in (
    "4;9;;1;1\n",
    "4;9;1;1\n",
    "4;x;1;1;1\n",
    "4;9;1;1;2\n",
    "4;9;1;1;1\n\n5;1;1;1;0\n",
  ):
    path.write_text(broken)
    assert formats._parse_authors_fast(path) is None, broken

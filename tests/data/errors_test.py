"""Bad input raises DataError naming the file, the line and the field; one test per case."""

import json
import logging

import numpy as np
import pytest

from solid_jax import data
from tests.data.conftest import write


def load(folder, tmp_path):
  return data.load_dataset(folder, cache_dir=tmp_path / "cache")


def test_data_error_is_a_value_error():
  assert issubclass(data.DataError, ValueError)
  err = data.DataError("bad id", path="x.txt", line=3, field="item_id")
  assert str(err) == "x.txt, line 3, field item_id: bad id"
  assert (err.path, err.line, err.field) == ("x.txt", 3, "item_id")


def test_wrong_number_of_fields_in_atomic_file(recbole_dir, tmp_path):
  path = recbole_dir / "tiny.inter"
  lines = path.read_text().splitlines()
  lines[2] = "1\t2\t5"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(data.DataError) as err:
    load(recbole_dir, tmp_path)
  assert str(path) in str(err.value) and err.value.line == 3
  assert "expected 4 tab-separated fields" in str(err.value) and err.value.field == "timestamp"


def test_wrong_number_of_fields_in_authors_file(tmp_path):
  path = write(tmp_path / "train.txt", "1;2;0,0;3,4;1\n1;2;0,0;3,4\n")
  with pytest.raises(data.DataError, match=r"train\.txt, line 2, field label: expected 5"):
    data.read_authors_file(path)


def test_non_integer_id_in_sequence_file(s3rec_dir, tmp_path):
  write(s3rec_dir / "Toy.txt", "1 1 2 3\n2 2 x 1\n")
  with pytest.raises(data.DataError, match=r"Toy\.txt, line 2, field item_id_2: 'x' is not an"):
    load(s3rec_dir, tmp_path)


def test_non_integer_id_in_authors_file(tmp_path):
  path = write(tmp_path / "test.txt", "1;2;0,0;3,4;1\n1;2;0,0;3,q;0\n")
  with pytest.raises(data.DataError, match=r"line 2, field click_seq position 2: 'q'"):
    data.read_authors_file(path)


def test_non_integer_id_in_json(lcrec_dir, tmp_path):
  write(lcrec_dir / "Sci.inter.json", json.dumps({"0": [0, 1], "1": [4, "zz", 3]}))
  with pytest.raises(
    data.DataError,
    match=r'Sci\.inter\.json, field user "1", position 1: '
    r"'zz' is not an integer",
  ):
    load(lcrec_dir, tmp_path)


def test_item_out_of_range(lcrec_dir, tmp_path):
  write(lcrec_dir / "Sci.inter.json", json.dumps({"0": [0, 1], "1": [4, 9, 3]}))
  with pytest.raises(
    data.DataError,
    match=r'field user "1", position 1: item id 9 is out of '
    r"range",
  ):
    load(lcrec_dir, tmp_path)


def test_mismatched_feature_matrix_rows(unisrec_dir, tmp_path):
  np.zeros((3, 512), np.float32).tofile(unisrec_dir / "Sci.feat3CLS")
  with pytest.raises(
    data.DataError,
    match=r"Sci\.feat3CLS: mismatched feature-matrix rows: "
    r"the file has 3 rows, the data set has 4 items",
  ):
    load(unisrec_dir, tmp_path)


def test_feature_file_not_whole_rows(unisrec_dir, tmp_path):
  np.zeros(1000, np.float32).tofile(unisrec_dir / "Sci.feat1CLS")
  with pytest.raises(data.DataError, match="not a whole number of float32 rows"):
    load(unisrec_dir, tmp_path)


def test_users_with_too_few_events_are_dropped_and_logged(caplog):
  ds = data.from_interactions([1, 1, 1, 2, 2, 3], [1, 2, 3, 1, 2, 4])
  with caplog.at_level(logging.INFO):
    splits = data.make_splits(ds, seq_len=2, train_negatives=0, eval_negatives=0)
  assert splits["meta"]["dropped_users"] == 2
  assert splits["meta"]["num_users"] == 1
  assert "dropped 2 of 3 users with fewer than 3 events" in caplog.text
  np.testing.assert_array_equal(splits["test"]["user"], [1])


def test_empty_file(s3rec_dir, tmp_path):
  write(s3rec_dir / "Toy.txt", "\n  \n")
  with pytest.raises(data.DataError, match=r"Toy\.txt: empty file"):
    load(s3rec_dir, tmp_path)


def test_empty_json_file(lcrec_dir, tmp_path):
  write(lcrec_dir / "Sci.item.json", "")
  with pytest.raises(data.DataError, match=r"Sci\.item\.json: empty file"):
    load(lcrec_dir, tmp_path)


def test_header_only_atomic_file(recbole_dir, tmp_path):
  write(recbole_dir / "tiny.inter", "user_id:token\titem_id:token\n")
  with pytest.raises(data.DataError, match="no data rows after the header"):
    load(recbole_dir, tmp_path)


def test_non_utf8_text(recbole_dir, tmp_path):
  path = recbole_dir / "tiny.item"
  raw = path.read_bytes().replace(b"Gamma", b"G\xe4mma")
  path.write_bytes(raw)
  offset = raw.index(b"\xe4")
  with pytest.raises(data.DataError) as err:
    load(recbole_dir, tmp_path)
  assert err.value.line == 4
  assert f"byte offset {offset}" in str(err.value) and "not valid UTF-8" in str(err.value)


def test_malformed_json(lcrec_dir, tmp_path):
  write(lcrec_dir / "Sci.inter.json", '{"0": [0, 1],\n "1": [4, 3,]\n}')
  with pytest.raises(data.DataError, match=r"line 2, field column \d+: malformed JSON"):
    load(lcrec_dir, tmp_path)


def test_duplicate_user_line(s3rec_dir, tmp_path):
  write(s3rec_dir / "Toy.txt", "1 1 2 3\n2 2 1\n1 4 5\n")
  with pytest.raises(
    data.DataError,
    match=r"line 3, field user_id: duplicate user_id '1' "
    r"\(first on line 1\)",
  ):
    load(s3rec_dir, tmp_path)


def test_bad_label_in_authors_file(tmp_path):
  path = write(tmp_path / "t.txt", "1;2;;3,4;2\n")
  with pytest.raises(data.DataError, match="line 1, field label: label must be 0 or 1"):
    data.read_authors_file(path)


def test_unknown_name_or_missing_folder(tmp_path):
  with pytest.raises(data.DataError, match="neither a registered name"):
    data.load_dataset(str(tmp_path / "nope"))


def test_folder_without_a_known_format(tmp_path):
  write(tmp_path / "odd" / "readme.md", "nothing here")
  with pytest.raises(data.DataError, match="no supported data set found"):
    data.load_dataset(tmp_path / "odd", cache_dir=tmp_path / "cache")


def test_too_few_unseen_items_for_negatives():
  ds = data.from_interactions([1, 1, 1, 2, 2, 2], [1, 2, 3, 1, 2, 4])
  with pytest.raises(data.DataError, match="user 1 has only 1 items never interacted with"):
    data.make_splits(ds, train_negatives=0, eval_negatives=2)

"""A folder in the SOLID authors' layout (train.txt / test.txt, semantic copies in a sub-folder)
loads as a data set, through ``load_dataset`` and through the training entry point."""

import numpy as np
import pytest

from solid_jax import data
from solid_jax.data import formats
from tests.train import synthetic


def _write_authors_folder(ds, folder, seq_len=3, sub="sasrec"):
  """What a user of the authors' code has: their files, written from our splits (no valid)."""
  splits = data.make_splits(ds, seq_len=seq_len, train_negatives=1, eval_negatives=2, seed=0)
  (folder / sub).mkdir(parents=True)
  for part in ("train", "test"):
    data.write_authors_file(splits[part], folder / f"{part}.txt", folder / sub / f"{part}.txt")
  return splits


@pytest.fixture
def authors_folder(tmp_path):
  source = synthetic.write_s3rec(tmp_path / "toy", num_users=30, num_items=25)
  ds = data.load_dataset(source, cache_dir=tmp_path / "cache")
  folder = tmp_path / "authors" / "id"
  _write_authors_folder(ds, folder)
  return ds, folder


def test_authors_folder_is_detected_and_sequences_are_rebuilt(authors_folder, tmp_path):
  ds, folder = authors_folder
  spec = formats.inspect_folder(folder)
  assert spec.format == "solid_authors"
  assert set(spec.files) == {"train", "test", "semantic_train", "semantic_test"}
  back = data.load_dataset(folder, cache_dir=tmp_path / "cache2")
  assert back.format == "solid_authors"
  # Raw ids of the files are the internal ids of the source: every user's whole sequence comes
  # back (train positives, then the test window; the valid target lies inside that window).
  rebuilt = {
    int(back.user_vocab[u]): [int(back.item_vocab[i]) for i in back.user_sequence(u)]
    for u in range(1, back.num_users)
  }
  want = {
    u: ds.user_sequence(u).tolist() for u in range(1, ds.num_users) if len(ds.user_sequence(u)) >= 3
  }
  assert rebuilt == want
  # Semantics from the aligned copies: the same classes as the source's.
  source_semantic = {i: int(ds.item_semantic[i]) for i in range(1, ds.num_items)}
  got = {int(back.item_vocab[i]): int(back.item_semantic[i]) for i in range(1, back.num_items)}
  pairs = {(source_semantic[i], s) for i, s in got.items()}
  assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})  # a bijection
  assert back.semantic_source.startswith("the semantic ids of the authors'")
  assert np.all(np.asarray(back.side["authors_semantic"][1:]) > 0)


def test_misaligned_or_inconsistent_semantic_copy_names_the_line(authors_folder, tmp_path):
  _, folder = authors_folder
  sem = folder / "sasrec" / "train.txt"
  lines = sem.read_text().splitlines()
  user, target, trigger, click, label = lines[0].split(";")
  lines[0] = ";".join([user, str(int(target) + 1), trigger, click, label])
  sem.write_text("\n".join(lines) + "\n")
  with pytest.raises(data.DataError, match=r"keeps one semantic id") as e:
    data.load_dataset(folder, cache_dir=tmp_path / "c")
  assert "sasrec/train.txt" in str(e.value) and "line" in str(e.value)
  sem.write_text("\n".join(lines[:-1]) + "\n")
  with pytest.raises(data.DataError, match="line-aligned"):
    data.load_dataset(folder, cache_dir=tmp_path / "c2")


def test_positive_that_does_not_continue_the_sequence_is_an_error(authors_folder, tmp_path):
  _, folder = authors_folder
  path = folder / "test.txt"
  lines = path.read_text().splitlines()
  positive = next(k for k, line in enumerate(lines) if line.endswith(";1"))
  user, target, trigger, click, label = lines[positive].split(";")
  items = click.split(",")
  items[0] = "9999"  # an item this user never had, at the oldest slot of a full window
  lines[positive] = ";".join([user, target, trigger, ",".join(items), label])
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(data.DataError, match="does not continue") as e:
    data.load_dataset(folder, cache_dir=tmp_path / "c")
  assert f"line {positive + 1}" in str(e.value)


def test_authors_folder_trains_through_the_launcher(authors_folder, tmp_path):
  from solid_jax.train import TrainConfig, stages  # pylint: disable=import-outside-toplevel

  _, folder = authors_folder
  config = TrainConfig(
    dataset=str(folder),
    backbone="gru4rec",
    method="static",
    dim=8,
    seq_len=3,
    batch_size=32,
    eval_batch_size=64,
    eval_negatives=3,
    epochs=1,
    progress=False,
    tensorboard=False,
  )
  results = stages.run_experiment(config, str(tmp_path / "run"))
  assert results["dataset"]["source"] == str(folder)
  assert np.isfinite(results["test_full"]["ndcg@10"])


def test_missing_labels_get_the_last_id_everywhere():
  from solid_jax import semantics  # pylint: disable=import-outside-toplevel

  table, vocab = data.dataset.labels_to_ids(
    ["", "<missing>", "b", "a", "<missing>"], missing="<missing>"
  )
  assert table.tolist() == [0, 3, 1, 2, 3] and vocab == ["", "b", "a", "<missing>"]
  assert data.formats.MISSING == "<missing>"
  assert semantics.from_labels([None, None, "b", "a", None]).tolist() == [0, 3, 1, 2, 3]

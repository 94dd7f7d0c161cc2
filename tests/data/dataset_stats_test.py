"""experiments/dataset_stats.py renders docs/DATASETS.md from loaded data sets."""

import pytest

from experiments import dataset_stats


def test_generator_on_the_embedded_dataset(tmp_path):
  output = tmp_path / "DATASETS.md"
  rows = dataset_stats.generate(["ml-100k"], output, cache_dir=tmp_path / "cache")
  assert rows[0]["train_rows"] == 97171 * 5 and rows[0]["test_rows"] == 94300
  text = output.read_text()
  assert text.startswith("# Data sets")
  assert "`python -m experiments.dataset_stats`" in text
  assert "| ml-100k | recbole_atomic | 943 | 1,682 | 100,000 | 106.04 |" in text
  assert "| 19 | 485,855 | 94,300 | 94,300 |" in text


@pytest.mark.shared_data
def test_generator_on_a_shared_dataset(shared_data, tmp_path):
  output = tmp_path / "DATASETS.md"
  rows = dataset_stats.generate(
    [shared_data / "scientific_mm_subset"], output, cache_dir=tmp_path / "cache"
  )
  row = rows[0]
  assert (row["users"], row["items"], row["interactions"]) == (2928, 1585, 19712)
  # Leave-last-out: n - 3 training positives per user, 1 + 4 rows each; 100 rows per user to test.
  assert row["train_rows"] == (19712 - 3 * 2928) * 5 and row["test_rows"] == 2928 * 100
  text = output.read_text()
  assert (
    "| unisrec | 2,928 | 1,585 | 19,712 | 6.73 | category path truncated at depth 2 | 24 |" in text
  )
  assert "features/clip_image" in text

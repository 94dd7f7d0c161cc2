"""The synthetic large-log generator and the phase-by-phase pipeline, at a small size."""

import json

import numpy as np
import pytest

import solid_jax as sj
from benchmarks import scale_data
from benchmarks import scale_pipeline

SMALL = scale_data.Profile(users=500, items=120, interactions=2_000, max_length=100)


def test_length_exponent_gives_the_mean():
  for mean, longest in ((1.86, 5000), (2.37, 5000), (4.0, 100)):
    a = scale_data.length_exponent(mean, longest)
    n = np.arange(1, longest + 1)
    p = n**-a / np.sum(n**-a)
    assert abs(float(p @ n) - mean) < 1e-6
  with pytest.raises(ValueError, match="out of reach"):
    scale_data.length_exponent(0.5, 10)


def test_generated_folder_has_the_profile_counts_and_loads(tmp_path):
  stats = scale_data.write(SMALL, str(tmp_path), name="small", seed=3)
  assert (stats["users"], stats["items"], stats["interactions"]) == (500, 120, 2_000)
  assert json.loads((tmp_path / "SOURCE.json").read_text())["interactions"] == 2_000
  ds = sj.data.load_dataset(str(tmp_path), use_cache=False)
  assert (ds.num_users - 1, ds.num_items - 1, ds.num_interactions) == (500, 120, 2_000)
  assert ds.format == "recbole_atomic" and ds.num_semantics > 2  # categories -> semantic ids
  lengths = ds.seq_lengths[1:]
  assert lengths.min() >= 1 and lengths.max() <= SMALL.max_length
  # Timestamps increase within every user (the reader sorts by them; the generator draws them so).
  ts = ds.seq_timestamps
  for u in range(1, ds.num_users, 37):
    s, e = ds.seq_offsets[u], ds.seq_offsets[u + 1]
    assert np.all(np.diff(ts[s:e]) >= 0)
  # Zipf popularity: the most used item is far above the mean count.
  counts = np.bincount(ds.seq_items, minlength=ds.num_items)[1:]
  assert counts.min() >= 1 and counts.max() > 5 * counts.mean()
  again = scale_data.write(SMALL, str(tmp_path / "again"), name="small", seed=3)
  assert (tmp_path / "small.inter").read_bytes() == (
    tmp_path / "again" / "small.inter"
  ).read_bytes()
  assert again["length_exponent"] == stats["length_exponent"]


def test_pipeline_runs_every_phase(tmp_path, monkeypatch):
  monkeypatch.setitem(scale_data.PROFILES, "small", SMALL)
  monkeypatch.setenv("SOLID_JAX_CACHE", str(tmp_path / "cache"))  # run() sets it; restored after
  settings = {
    "batch_size": 256,
    "full_eval_users": 50,
    "dim": 8,
    "backbone": "sasrec",
    "embedding_optimizer": "rowwise_adam",
  }
  out = scale_pipeline.run(
    "small", str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "cache"), settings
  )
  phases = [r["phase"] for r in out["phases"]]
  assert phases[:4] == ["generate", "load_parse", "load_cached", "splits"]
  assert {"prelude", "stage1", "stage2", "full_eval"} <= set(phases)
  assert all(r["seconds"] >= 0 and r["peak_rss_gib"] > 0 for r in out["phases"])
  assert out["full_eval"]["users"] == 50 and out["full_eval"]["items"] == 121
  assert 0 <= out["results"]["test_full"]["ndcg@10"] <= 1
  # The stand-alone evaluation of the final model equals the run's own test evaluation.
  np.testing.assert_allclose(
    out["full_eval"]["metrics"]["ndcg@10"], out["results"]["test_full"]["ndcg@10"], rtol=1e-6
  )

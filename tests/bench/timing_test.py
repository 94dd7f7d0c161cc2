"""Timing helpers: percentiles, record schema, warm-up exclusion."""

import numpy as np

from benchmarks import timing


def test_summarize_matches_numpy():
  x = np.random.default_rng(0).random(31) * 10
  s = timing.summarize(x)
  assert s["repeats"] == 31
  np.testing.assert_allclose(
    [s["median_ms"], s["p10_ms"], s["p90_ms"]],
    [np.median(x), np.percentile(x, 10), np.percentile(x, 90)],
  )


def test_record_throughput_from_the_median():
  r = timing.record(
    "solid_jax", "train", 1000, [10.0, 20.0, 30.0], compile_s=1.5, backbone="sasrec"
  )
  assert r["samples_per_s"] == 1000 / 0.020
  assert r["samples_per_s_p10"] <= r["samples_per_s"] <= r["samples_per_s_p90"]
  assert r["compile_s"] == 1.5 and r["backbone"] == "sasrec" and r["batch"] == 1000


def test_time_repeats_excludes_warmup_and_syncs_each_repeat():
  calls = []
  out = timing.time_repeats(
    lambda n: calls.append(("run", n)),
    lambda: calls.append(("sync",)),
    repeats=3,
    steps_per_repeat=4,
    warmup=2,
  )
  assert len(out) == 3
  assert calls == [("run", 4), ("sync",)] * 5

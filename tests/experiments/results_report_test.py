"""The results report: aggregation over seeds and the win / tie / loss rule."""

import math

from experiments import results


def _run(uauc, seed_offset=0.0):
  metrics = {m: uauc + seed_offset for m in results.METRICS}
  return {"valid": dict(metrics), "test": dict(metrics), "selected_epoch": 3, "train_seconds": 60.0}


def test_aggregate_mean_and_sample_std():
  agg = results.aggregate([_run(0.70), _run(0.72), _run(0.74)])
  mean, std = agg["test/uauc"]
  assert agg["n"] == 3
  assert math.isclose(mean, 0.72)
  assert math.isclose(std, 0.02)  # sample std (n - 1)
  assert agg["epochs"] == [3]
  assert math.isclose(agg["train_minutes"][0], 1.0)


def test_compare_uses_the_spread_of_a_difference():
  a = results.aggregate([_run(0.80), _run(0.82)])  # mean 0.81, std 0.01414
  close = results.aggregate([_run(0.79), _run(0.81)])  # mean 0.80: diff 0.01 < spread 0.02
  far = results.aggregate([_run(0.70), _run(0.72)])  # mean 0.71: diff 0.10 > spread
  assert results.compare(a, close, "uauc") == "tie"
  assert results.compare(a, far, "uauc") == "win"
  assert results.compare(far, a, "uauc") == "loss"
  single = results.aggregate([_run(0.5)])
  assert results.compare(a, single, "uauc") == "undecided"


def test_baselines_are_shared_between_groups_of_one_dataset():
  names = {}
  for group in results.GROUPS:
    for key, name, config in results.run_specs(group, seed=0, epochs=5):
      names.setdefault(name, set()).add(group.name)
      assert config.seed == 0 and config.backbone == "sasrec"
      if key in ("solid", "solid_apg", "solid_compat"):
        assert len(names[name]) == 1
  shared = [n for n, groups in names.items() if len(groups) > 1]
  assert sorted(shared) == [
    "scientific_mm_subset_apg_seed0",
    "scientific_mm_subset_duet_seed0",
    "scientific_mm_subset_static_seed0",
  ]


def test_render_lists_rows_and_verdicts():
  tables = {
    "ml100k": {
      "static": results.aggregate([_run(0.70), _run(0.71)]),
      "duet": results.aggregate([_run(0.80), _run(0.81)]),
      "solid": results.aggregate([_run(0.90), _run(0.91)]),
    }
  }
  text = results.render(tables, epochs=5, seeds=[0, 1])
  assert "| SOLID (DUET) | 2 |" in text
  assert "SOLID (DUET) vs DUET: UAUC win" in text
  assert "SOLID (DUET) vs static: UAUC win" in text

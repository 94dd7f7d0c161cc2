"""The verdict sweep: every cell is a valid run; the report's tables, paired tests and verdicts."""

import json
import math
import os

import numpy as np
import pytest

from experiments import verdict
from solid_jax.train import loop
from solid_jax.train.train_config import TrainConfig


def test_every_cell_is_a_valid_configuration_with_its_bases_in_its_group():
  names = set()
  for group in verdict.GROUPS:
    assert group.name not in names
    names.add(group.name)
    for row in group.rows:
      config = verdict.cell_config(group, row, max_epochs=100, patience=5)
      assert config.dataset == group.dataset and config.backbone == group.backbone
      assert config.patience >= 5 and config.eval_protocol in ("full", "both")
      assert set(verdict.ROWS[row].base) <= set(group.rows), (group.name, row)
  # Tier i (and its explanations, tier v) first: a partial sweep is already useful.
  tiers = [g.tier for g in verdict.GROUPS]
  first = [t for t in tiers if t in ("i", "v")]
  assert tiers[: len(first)] == first and tiers[len(first) :] == sorted(
    tiers[len(first) :], key=["ii", "iii", "iv"].index
  )


def test_cells_that_train_the_same_thing_share_a_directory():
  by_name = {g.name: g for g in verdict.GROUPS}
  clip, cat, ablations = by_name["i_scimm_clip"], by_name["i_scimm_cat"], by_name["iv_scimm"]
  # The baselines do not depend on the semantics; SOLID does.
  assert verdict.cell_dir("R", clip, "duet") == verdict.cell_dir("R", cat, "duet")
  assert verdict.cell_dir("R", clip, "solid") != verdict.cell_dir("R", cat, "solid")
  # The ablations compare against tier i's own SOLID run.
  assert verdict.cell_dir("R", clip, "solid") == verdict.cell_dir("R", ablations, "solid")
  assert verdict.cell_dir("R", ablations, "sem_labels") != verdict.cell_dir("R", cat, "solid")
  assert len({verdict.cell_dir("R", ablations, k) for k in ablations.rows}) == len(ablations.rows)


def _fake_member(root, group, row, seed, ndcg):
  """A finished member's workdir (config.json, results.json, the final stage's per-user file),
  archived under ``root`` as the sweep archives it."""
  workdir = os.path.join(root, "runs", f"{group.name}_{row}_{seed}")
  config = verdict.cell_config(group, row, max_epochs=100, patience=5)
  stage = config.stages()[-1]
  os.makedirs(os.path.join(workdir, stage))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(TrainConfig.from_dict({**config.to_dict(), "seed": seed}).to_dict(), f)
  users = np.arange(200, dtype=np.int32)
  metrics = {m: float(ndcg.mean()) for m in ("ndcg@10", "hr@10", "ndcg@20")}
  sampled = {m: 0.5 for m in verdict.SAMPLED}
  result = {
    "test_full": metrics,
    "test": sampled,
    "valid_full": metrics,
    "valid": sampled,
    "train_seconds": 60.0,
    "train_samples_per_s": 1000.0,
    "stages": {stage: {"selected_epoch": 3, "stopped_epoch": 8}},
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(result, f)
  np.savez(
    os.path.join(workdir, stage, loop.PER_USER_FILE.format(split="test")),
    **{"full/user": users, "full/ndcg@10": ndcg, "full/hr@10": (ndcg > 0).astype(np.float32)},
  )
  verdict.archive_member(workdir, verdict.member_path(root, group, row, seed))


def test_the_report_tests_solid_against_its_bases(tmp_path):
  group = verdict.GROUPS[0]
  rng = np.random.default_rng(0)
  base = rng.uniform(0.0, 0.4, size=200)
  for seed in range(3):
    noise = rng.normal(0, 0.01, size=200)
    _fake_member(str(tmp_path), group, "duet", seed, base + noise)
    _fake_member(str(tmp_path), group, "static", seed, base + 0.1 + noise)  # clearly better
    _fake_member(str(tmp_path), group, "solid", seed, base + 0.002 * seed + noise)  # a tie
  cells = {k: verdict.read_cell(str(tmp_path), group, k, [0, 1, 2]) for k in group.rows}
  found = {(c["row"], c["base"]): c for c in verdict.comparisons(group, cells)}
  assert found[("solid", "static")]["verdict"] == "loss"
  assert found[("solid", "static")]["p"] < 0.001
  assert found[("solid", "duet")]["verdict"] == "tie"
  assert found[("solid", "duet")]["users"] == 200
  assert math.isclose(
    found[("solid", "duet")]["diff"],
    np.mean([r["test_full"]["ndcg@10"] for r in cells["solid"]])
    - np.mean([r["test_full"]["ndcg@10"] for r in cells["duet"]]),
  )
  text = verdict.render(str(tmp_path), verdict.GROUPS, [0, 1, 2], "--seeds=0,1,2")
  assert text.startswith("# The SOLID verdict (PARTIAL:")
  assert "| SOLID (DUET) vs static |" in text and "| loss |" in text
  assert "**SOLID (DUET) vs static**: 0 wins; 0 ties; 1 loss (loss: i_scimm_clip)" in text
  assert "**SOLID (DUET) vs DUET**: 0 wins; 1 tie; 0 losses" in text
  assert "| APG | 0 | pending |" in text


def test_fewer_than_two_seeds_are_undecided(tmp_path):
  group = verdict.GROUPS[0]
  values = np.linspace(0, 0.3, 200)
  _fake_member(str(tmp_path), group, "duet", 0, values)
  _fake_member(str(tmp_path), group, "solid", 0, values + 0.2)
  cells = {k: verdict.read_cell(str(tmp_path), group, k, [0]) for k in group.rows}
  (solid_vs_duet,) = verdict.comparisons(group, cells)
  assert solid_vs_duet["verdict"].startswith("undecided")


def test_a_cell_is_named_by_its_settings_that_differ_from_the_defaults(monkeypatch):
  group = verdict.GROUPS[0]
  before = verdict.cell_dir("R", group, "solid")
  # Progress bars, TensorBoard and the like do not name a cell; a changed default would.
  original = verdict.cell_config

  def noisy(*args, **kwargs):
    import dataclasses  # pylint: disable=import-outside-toplevel

    return dataclasses.replace(original(*args, **kwargs), progress=True, prefetch=5)

  monkeypatch.setattr(verdict, "cell_config", noisy)
  assert verdict.cell_dir("R", group, "solid") == before


def test_the_hand_written_findings_go_under_the_summary(tmp_path):
  (tmp_path / "findings.md").write_text("**Reading.** SOLID ties static here.\n")
  text = verdict.render(str(tmp_path), verdict.GROUPS, [0, 1, 2], "")
  summary, protocol = text.split("## Summary", 1)[1].split("## Protocol", 1)
  assert "**Reading.** SOLID ties static here." in summary and "Reading" not in protocol


def test_the_selection_filters_by_tier_group_and_row_in_priority_order():
  everything = verdict.select(verdict.GROUPS)
  assert len(everything) == sum(len(g.rows) for g in verdict.GROUPS)
  picked = verdict.select(
    verdict.GROUPS, names=["iv_scimm", "v_office"], rows=["solid", "no_codebook_apg"]
  )
  assert [(g.name, k) for g, k in picked] == [
    ("v_office", "solid"),
    ("iv_scimm", "solid"),
    ("iv_scimm", "no_codebook_apg"),
  ]
  assert {g.tier for g, _ in verdict.select(verdict.GROUPS, tiers=["ii"])} == {"ii"}
  with pytest.raises(ValueError, match="unknown row"):
    verdict.select(verdict.GROUPS, rows=["no_such_row"])


def test_a_rewritten_report_keeps_the_published_baselines_section(tmp_path):
  from experiments import published

  doc = tmp_path / "RESULTS.md"
  section = f"{published.START}\n## Published baselines\n| a | b |\n{published.END}"
  doc.write_text(f"# old report\n\n{section}\n\ntrailing text of the old report\n")
  new = verdict.keep_published("# new report\n", str(doc))
  assert new == f"# new report\n\n{section}\n"
  assert verdict.keep_published("# new\n", str(tmp_path / "absent.md")) == "# new\n"


def test_some_ablations_are_also_tested_against_the_generator_or_another_ablation():
  assert verdict.ROWS["no_semantic"].base == ("solid", "duet")
  assert verdict.ROWS["no_semantic_apg"].base == ("solid_apg", "apg")
  assert verdict.ROWS["sem_random"].base == ("solid", "duet")
  assert verdict.ROWS["sem_random_apg"].base == ("solid_apg", "apg")
  assert verdict.ROWS["no_codebook"].base == ("solid",)
  assert verdict.ROWS["no_semantic_t1"].base == ("solid", "duet", "no_semantic")
  assert verdict.ROWS["no_semantic_t1_apg"].base == ("solid_apg", "apg", "no_semantic_apg")
  assert verdict.ROWS["no_semantic_t1"].overrides == {"solid_branches": "item", "clip_t": 1.0}


def test_every_archived_cell_is_still_named_by_its_group_and_row():
  # A setting added to a group or TrainConfig must not rename the cells already in the archive.
  archive = os.path.join(verdict.REPO, "docs", "verdict")
  names = {verdict.cell_dir(archive, g, k) for g in verdict.GROUPS for k in g.rows}
  archived = {
    os.path.join(archive, data, cell)
    for data in os.listdir(archive)
    if os.path.isdir(os.path.join(archive, data))
    for cell in os.listdir(os.path.join(archive, data))
  }
  assert archived and archived <= names, sorted(archived - names)


def test_din_on_beauty_selects_on_a_validation_sample_and_says_so(tmp_path):
  by_name = {g.name: g for g in verdict.GROUPS}
  din = by_name["iii_din_beauty"]
  for row in din.rows:
    config = verdict.cell_config(din, row, max_epochs=100, patience=5)
    assert config.valid_full_users == 5000 and config.full_eval_users == 0
  assert verdict.cell_dir("R", din, "static") != verdict.cell_dir(
    "R", by_name["ii_beauty"], "static"
  )
  for group in verdict.GROUPS:
    if group is not din:
      assert not group.overrides and not group.note
      for row in group.rows:
        assert verdict.cell_config(group, row, max_epochs=100, patience=5).valid_full_users == 0
  text = verdict.render(str(tmp_path), verdict.GROUPS, [0, 1, 2], "")
  section = text.split("### Beauty, DIN", 1)[1].split("###", 1)[0]
  assert "5,000 validation users" in section and "every test user" in section
  assert text.count("`--valid_full_users=") == 1

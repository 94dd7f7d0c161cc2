r"""The SOLID verdict: converged runs over data sets, backbones and ablations -> docs/RESULTS.md.

  python -m experiments.verdict --workdir_root=runs/verdict                 # train what is missing
  python -m experiments.verdict --workdir_root=runs/verdict --tiers=i       # one tier
  python -m experiments.verdict --workdir_root=runs/verdict --report_only   # tables only

Every cell of the report (a group: data set, backbone, settings; a row: a method or an ablation)
trains its seeds as one population (``stages.run_population``: one vmapped step, every member an
ordinary workdir ``ROOT/<data set>/<row>-<config digest>/seed_<s>``), each stage until its
validation full NDCG@10 stops improving (``--patience``) or ``--max_epochs``. A finished member is
archived in ``--archive`` (``docs/verdict``, committed: its results and per-user test NDCG@10); the
report is built from the archive alone. A killed sweep relaunched with the same command resumes the
population under way from its checkpoints; a later sitting on another machine skips every archived
cell. Cells run in the priority order of ``GROUPS`` (tier i first, cheapest data set first), and the
report marks a partial sweep as partial.

Report, per group: full-catalogue metrics first (test NDCG@10, HR@10, NDCG@20), then the SOLID
paper's sampled ones (AUC, UAUC, NDCG@10, HR@10), mean +- sample std over seeds; the codebook's
usage over the test split; the selected epochs, wall time and training samples/s. Every SOLID row
is compared with its base (the generator it is built on, and the static head) by a paired
randomisation test over test users on per-user full NDCG@10 (each user's value averaged over the
seeds; `rescore.paired_permutation_test`); the verdict is a win or a loss only when p < 0.05 and
the difference of the means exceeds the seed spread sqrt(std_a^2 + std_b^2), a tie otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from solid_jax.train import checkpoint
from solid_jax.train import rescore
from solid_jax.train import stages
from solid_jax.train.train_config import RUNTIME_FIELDS, TrainConfig

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHA = 0.05


def define_flags() -> None:
  """The launcher's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir_root", os.path.join(REPO, "runs", "verdict"), "parent of the runs")
  flags.DEFINE_string(
    "archive",
    os.path.join(REPO, "docs", "verdict"),
    "where every finished member's results and per-user test NDCG@10 are kept (committed: the "
    "report and a later sitting read them from there)",
  )
  flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds of every cell (one population)")
  flags.DEFINE_list("tiers", [], "only these tiers (i, v, ii, iii, iv); empty = all")
  flags.DEFINE_list("groups", [], "only these groups (names as in GROUPS); empty = all")
  flags.DEFINE_list(
    "rows", [], "only these rows (keys as in ROWS) of the selected groups; empty = all"
  )
  flags.DEFINE_integer("max_epochs", 100, "epoch limit of every stage")
  flags.DEFINE_integer("patience", 5, "stop a stage after this many epochs without improvement")
  flags.DEFINE_float("hours", 0.0, "stop starting new cells after this many hours (0 = no limit)")
  flags.DEFINE_bool("report_only", False, "do not train; write the report from finished cells")
  flags.DEFINE_string("output", os.path.join(REPO, "docs", "RESULTS.md"), "the report")


# ---------------------------------------------------------------------------------------- the cells


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of a table: a method with TrainConfig overrides (``base``: the rows it is tested
  against)."""

  label: str
  method: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  base: tuple[str, ...] = ()


# The ablations of SOLID: (key, label, TrainConfig overrides); each is run with both generators
# and tested against SOLID with the same generator.
ABLATIONS = (
  ("no_codebook", "no codebook", {"codebook": "none"}),
  ("no_semantic", "item branch only", {"solid_branches": "item"}),
  ("no_item", "semantic branch only", {"solid_branches": "semantic"}),
  ("no_semantic_t1", "item branch only, t = 1", {"solid_branches": "item", "clip_t": 1.0}),
  ("soft_clip", "soft clip", {"clip": "soft"}),
  ("t_0.001", "t = 0.001", {"clip_t": 0.001}),
  ("t_0.1", "t = 0.1", {"clip_t": 0.1}),
  ("t_1", "t = 1", {"clip_t": 1.0}),
  ("frozen", "frozen codebook", {"codebook": "frozen"}),
  ("ema", "EMA codebook", {"codebook": "ema"}),
  ("embedding_space", "quantise the item rows", {"quantize_space": "embedding"}),
  ("paper_compat", "paper-compat", {"paper_compat": True}),
  ("sem_labels", "semantics = categories", {"semantics": "labels", "num_clusters": 0}),
  ("sem_id", "semantics = k-means(id)", {"semantics": "id"}),
  ("sem_text_image", "semantics = k-means(text + image)", {"semantics": "text_image"}),
  (
    "sem_random",
    "semantics = random ids (same C and class sizes)",
    {"semantics": "random", "num_clusters": 0},
  ),
)

# Bases beyond SOLID with the same generator, "generator" standing for the plain generator (DUET /
# APG): is the item branch alone the generator alone, and do meaningless semantic ids still help?
# The item branch alone with t = 1 is also tested against the same branch at the published t:
# whether the bound |w| <= t is what holds that branch below its generator.
EXTRA_BASES = {
  "no_semantic": ("generator",),
  "no_semantic_t1": ("generator", "no_semantic"),
  "sem_random": ("generator",),
}

ROWS: dict[str, Row] = {
  "static": Row("static", "static"),
  "duet": Row("DUET", "duet", base=("static",)),
  "apg": Row("APG", "apg", base=("static",)),
  "solid": Row("SOLID (DUET)", "solid", base=("duet", "static")),
  "solid_apg": Row("SOLID-APG", "solid_apg", base=("apg", "static")),
  **{
    f"{key}{suffix}": Row(
      f"{label}, {what}",
      method,
      overrides,
      (method,)
      + tuple(generator if b == "generator" else b + suffix for b in EXTRA_BASES.get(key, ())),
    )
    for key, what, overrides in ABLATIONS
    for suffix, label, method, generator in (
      ("", "SOLID", "solid", "duet"),
      ("_apg", "SOLID-APG", "solid_apg", "apg"),
    )
  },
}

# Why DUET loses to the static head, and whether a smaller generator init or learning rate fixes it
# (tested against the published DUET and against static).
FIXES = (
  ("init0.1", "generator init x 0.1", {"generator_init_scale": 0.1}),
  ("init0.01", "generator init x 0.01", {"generator_init_scale": 0.01}),
  ("lr3e-4", "lr 3e-4", {"lr": 3e-4}),
)
ROWS.update(
  {
    f"{method}_{key}": Row(f"{label}, {what}", method, overrides, (method, "static"))
    for key, what, overrides in FIXES
    for method, label in (("duet", "DUET"), ("solid", "SOLID (DUET)"))
  }
)

# Which of SOLID's branches the smaller init helps: each branch alone at x 0.01, against the whole
# of SOLID at x 0.01 (at the published init the item branch alone is the generator alone, tier iv).
BRANCH_FIXES = (
  ("item", "item branch only"),
  ("semantic", "semantic branch only"),
)
BRANCH_ROWS = {
  f"solid_{branch}_init0.01": Row(
    f"SOLID, {what}, generator init x 0.01",
    "solid",
    {"solid_branches": branch, "generator_init_scale": 0.01},
    ("solid_init0.01", "static"),
  )
  for branch, what in BRANCH_FIXES
}
# Whether the item branch alone fails because t caps it: with branches="item" every generated
# weight is bound(w, t), |w| <= t; the item row with t = 1 lifts that cap and changes nothing else.
_item = BRANCH_ROWS["solid_item_init0.01"]
BRANCH_ROWS["solid_item_init0.01_t1"] = Row(
  f"{_item.label}, t = 1",
  _item.method,
  {**_item.overrides, "clip_t": 1.0},
  ("solid_item_init0.01", "static"),
)
ROWS.update(BRANCH_ROWS)

MAIN_ROWS = ("static", "duet", "apg", "solid", "solid_apg")
FIX_ROWS = (
  ("static", "duet", "solid")
  + tuple(f"{m}_{k}" for m in ("duet", "solid") for k, _, _ in FIXES)
  + tuple(BRANCH_ROWS)
)
# The ablation keys of every data set ("sem_labels" / "sem_text_image" where the group's own
# semantics are another source and the data has that one).
ABLATION_KEYS = tuple(k for k, _, _ in ABLATIONS if k not in ("sem_labels", "sem_text_image"))


def ablation_rows(*extra: str) -> tuple[str, ...]:
  """The main rows and every ablation with both generators."""
  return MAIN_ROWS + tuple(f"{k}{s}" for k in ABLATION_KEYS + extra for s in ("", "_apg"))


@dataclasses.dataclass(frozen=True)
class Group:
  """A table: one data set, backbone and setting, and its rows."""

  name: str
  tier: str
  title: str
  dataset: str
  rows: tuple[str, ...]
  backbone: str = "sasrec"
  config: str = ""  # a config file (experiments/configs) the settings start from; "" = defaults
  semantics: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"semantics": "labels"})
  # Settings of every row of this table (before the row's own), and the sentence the report prints
  # under its title to say so.
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  note: str = ""


# The tiers of the report, in its order.
TIERS = {
  "i": "SASRec with static, DUET, APG, SOLID and SOLID-APG on every data set (the SOLID paper's "
  "setting: d = 32, L = 10)",
  "v": "why DUET loses to the static head, and whether a smaller generator init or learning rate "
  "fixes it (for DUET, for SOLID and for each of SOLID's branches)",
  "ii": "static, DUET and SOLID on the calibrated SASRec (S3-Rec's settings)",
  "iii": "GRU4Rec, DIN and BERT4Rec with static, DUET and SOLID",
  "iv": "ablations of SOLID (both generators)",
}

SCIMM_CLIP = {"semantics": "text_image", "num_clusters": 24}
SCIMM_CAT = {"semantics": "labels", "category_depth": 2}

# DIN is not factorised: its full-catalogue ranking runs the head once per (user, item) pair. On
# Beauty (22,363 users x 12,102 items, static head, 2 cores) a pass over 5,000 validation users
# takes about 70 s per seed, against about 8 s for an epoch's training of all three seeds in one
# vmapped step; a pass over every validation user would take about 5 min per seed and epoch. So
# these cells select their epoch (and stop early) on a fixed random sample of validation users;
# their test split still ranks every user.
VALID_SAMPLES = {("din", "beauty"): 5000}


def selection_sample(backbone: str, dataset: str) -> dict[str, Any]:
  """The Group settings (``overrides`` and ``note``) of a table whose validation ranks a sample."""
  users = VALID_SAMPLES.get((backbone, dataset))
  if not users:
    return {}
  return {
    "overrides": {"valid_full_users": users},
    "note": (
      f"Epoch selection and early stopping rank the full catalogue for a fixed random sample of "
      f"{users:,} validation users (`--valid_full_users={users}`): DIN scores every (user, item) "
      "pair through its head, so ranking every validation user would cost about 5 min per seed and "
      "epoch for the static head on 2 cores, against about 8 s for the epoch's training of all "
      "three seeds. The test metrics rank every test user."
    ),
  }


# In priority order: a partial sweep covers tier i on the cheapest data sets first, a data set's
# tier v (it explains tier i's DUET) right after it, then tiers ii, iii and iv.
GROUPS: tuple[Group, ...] = (
  Group(
    "i_scimm_clip",
    "i",
    "Scientific (mm subset), SASRec; semantics = k-means (k = 24) of CLIP text + image",
    "scientific_mm_subset",
    MAIN_ROWS,
    semantics=SCIMM_CLIP,
  ),
  Group(
    "i_scimm_cat",
    "i",
    "Scientific (mm subset), SASRec; semantics = category path at depth 2",
    "scientific_mm_subset",
    MAIN_ROWS,
    semantics=SCIMM_CAT,
  ),
  Group(
    "v_scimm",
    "v",
    "Explanations: Scientific (mm subset), SASRec, k-means CLIP semantics",
    "scientific_mm_subset",
    FIX_ROWS,
    semantics=SCIMM_CLIP,
  ),
  Group("i_office", "i", "Office, SASRec; semantics = category path", "office", MAIN_ROWS),
  Group("v_office", "v", "Explanations: Office, SASRec, category semantics", "office", FIX_ROWS),
  Group("i_ml100k", "i", "MovieLens-100K, SASRec; semantics = first genre", "ml-100k", MAIN_ROWS),
  Group(
    "v_ml100k",
    "v",
    "Explanations: MovieLens-100K, SASRec, first-genre semantics",
    "ml-100k",
    FIX_ROWS,
  ),
  Group(
    "i_instruments", "i", "Instruments, SASRec; semantics = text codes", "instruments", MAIN_ROWS
  ),
  Group("i_beauty", "i", "Beauty, SASRec; semantics = first attribute", "beauty", MAIN_ROWS),
  Group(
    "v_beauty", "v", "Explanations: Beauty, SASRec, first-attribute semantics", "beauty", FIX_ROWS
  ),
  Group("i_sports", "i", "Sports, SASRec; semantics = first attribute", "sports", MAIN_ROWS),
  *(
    Group(
      f"ii_{name}",
      "ii",
      f"{title}, calibrated SASRec (S3-Rec's settings)",
      name,
      ("static", "duet", "solid"),
      config="s3rec_sasrec",
    )
    for name, title in (("beauty", "Beauty"), ("sports", "Sports"), ("lastfm", "LastFM"))
  ),
  *(
    Group(
      f"iii_{backbone}_{key}",
      "iii",
      f"{title}, {label}",
      dataset,
      ("static", "duet", "solid"),
      backbone=backbone,
      semantics=semantics,
      **selection_sample(backbone, dataset),
    )
    for backbone, label in (("gru4rec", "GRU4Rec"), ("din", "DIN"), ("bert4rec", "BERT4Rec"))
    for key, title, dataset, semantics in (
      ("ml100k", "MovieLens-100K", "ml-100k", {"semantics": "labels"}),
      ("scimm", "Scientific (mm subset)", "scientific_mm_subset", SCIMM_CLIP),
      ("beauty", "Beauty", "beauty", {"semantics": "labels"}),
    )
  ),
  Group(
    "iv_scimm",
    "iv",
    "Ablations: Scientific (mm subset), SASRec, k-means CLIP semantics",
    "scientific_mm_subset",
    ablation_rows("sem_labels"),
    semantics=SCIMM_CLIP,
  ),
  Group(
    "iv_beauty",
    "iv",
    "Ablations: Beauty, SASRec, first-attribute semantics",
    "beauty",
    ablation_rows(),
  ),
  # GRU4Rec on Beauty is the tier iii cell where SOLID (DUET) beats DUET: do its semantic ids
  # matter there (random ids of the same C and class sizes), and does its codebook?
  Group(
    "iv_gru4rec_beauty",
    "iv",
    "Ablations: Beauty, GRU4Rec, first-attribute semantics (SOLID (DUET) only)",
    "beauty",
    ("static", "duet", "solid", "no_codebook", "sem_random"),
    backbone="gru4rec",
  ),
)


def cell_config(group: Group, row_key: str, *, max_epochs: int, patience: int) -> TrainConfig:
  """The TrainConfig of a cell (seed 0; a population replaces the seed)."""
  row = ROWS[row_key]
  if group.config:
    from solid_jax.train import cli  # pylint: disable=import-outside-toplevel

    base = cli.load_config_file(group.config, os.path.join(REPO, "experiments", "configs"))
    base = dataclasses.replace(base, patience=max(base.patience, patience))
  else:
    base = TrainConfig(
      epochs=max_epochs,
      patience=patience,
      select_metric="full:ndcg@10",
      eval_protocol="both",
    )
  config = dataclasses.replace(
    base,
    **group.overrides,
    dataset=group.dataset,
    backbone=group.backbone,
    method=row.method,
    seed=0,
    progress=False,
    tensorboard=False,
  )
  if config.is_solid:
    config = dataclasses.replace(config, **group.semantics)
  return dataclasses.replace(config, **row.overrides)


def cell_dir(root: str, group: Group, row_key: str) -> str:
  """``ROOT/<dataset>/<row>-<digest>``: the digest names the cell's configuration, so cells of
  several groups that train the same thing (a data set's baselines, which do not depend on the
  semantics; tier i's SOLID rows that the ablations compare against) share one directory."""
  config = cell_config(group, row_key, max_epochs=0, patience=0).to_dict()
  # Only the settings that differ from TrainConfig's defaults: a field added to TrainConfig later
  # (with a default) leaves every existing cell's name as it is.
  defaults = TrainConfig().to_dict()
  skip = ("epochs", "patience", "seed") + RUNTIME_FIELDS
  settings = {k: v for k, v in config.items() if k not in skip and v != defaults.get(k)}
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(root, group.dataset.replace("/", "_"), f"{row_key}-{digest}")


def run_cell(
  root: str, archive: str, group: Group, row_key: str, seeds: Sequence[int], **limits
) -> None:
  """Trains (or resumes) the cell's seeds as one population in ``root`` (finished members are
  read back) and archives every member (`archive_member`) under ``archive``."""
  config = cell_config(group, row_key, **limits)
  members = stages.population_members(
    config, cell_dir(root, group, row_key), [str(s) for s in seeds], None
  )
  start = time.perf_counter()
  results = stages.run_population([c for c, _ in members], [w for _, w in members])
  stages.write_population(cell_dir(root, group, row_key), members, results)
  for s, (_, workdir) in zip(seeds, members):
    archive_member(workdir, member_path(archive, group, row_key, s))
  logging.info(
    "%s / %s: %d seeds in %.1f min",
    group.name,
    row_key,
    len(seeds),
    (time.perf_counter() - start) / 60,
  )


# ------------------------------------------------------------------------------------- the report

FULL = ("ndcg@10", "hr@10", "ndcg@20")
SAMPLED = ("auc", "uauc", "ndcg@10", "hr@10")


def archive_member(workdir: str, path: str) -> None:
  """Keeps what the report needs of a finished member in the repository: ``path + ".json"`` (its
  results.json) and ``path + ".npz"`` (test users and their full NDCG@10, compressed), so that a
  sweep spread over several machines and sittings needs no workdir of an earlier one."""
  with open(os.path.join(workdir, stages.RESULTS_FILE)) as f:
    result = json.load(f)
  per_user = rescore.load_per_user(workdir, "test")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(
    path + ".npz",
    **{k: per_user[k] for k in ("full/user", "full/ndcg@10")},
  )
  with open(path + ".json", "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)


def member_path(archive: str, group: Group, row_key: str, seed: int) -> str:
  return os.path.join(cell_dir(archive, group, row_key), f"seed_{seed}")


def read_cell(archive: str, group: Group, row_key: str, seeds: Sequence[int]) -> list[dict]:
  """The archived members of a cell: their results, with ``"per_user"`` (the .npz) added."""
  out = []
  for s in seeds:
    path = member_path(archive, group, row_key, s)
    if os.path.exists(path + ".json") and os.path.exists(path + ".npz"):
      with open(path + ".json") as f:
        out.append({**json.load(f), "per_user": path + ".npz"})
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (nan with fewer than 2 values)."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return math.nan, math.nan
  mean = float(np.mean(values))
  return mean, float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def per_user_pooled(members: Sequence[Mapping[str, Any]], metric: str = "full/ndcg@10"):
  """(users int[U], metric float[U] averaged over the members) of the users every member has."""
  tables = []
  for m in members:
    with np.load(m["per_user"]) as z:
      tables.append({k: z[k] for k in z.files})
  user_key = metric.split("/")[0] + "/user"
  common = tables[0][user_key]
  for t in tables[1:]:
    common = np.intersect1d(common, t[user_key])
  values = []
  for t in tables:
    order = np.argsort(t[user_key])
    pos = order[np.searchsorted(t[user_key], common, sorter=order)]
    values.append(np.asarray(t[metric], np.float64)[pos])
  return common, np.mean(values, axis=0)


def compare(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Row a against row b on test full NDCG@10: means, seed spread, paired test, verdict."""
  (ma, sa), (mb, sb) = (mean_std([r["test_full"]["ndcg@10"] for r in rows]) for rows in (a, b))
  users_a, va = per_user_pooled(a)
  users_b, vb = per_user_pooled(b)
  users = np.intersect1d(users_a, users_b)
  test = rescore.paired_permutation_test(
    va[np.searchsorted(users_a, users)], vb[np.searchsorted(users_b, users)]
  )
  spread = math.sqrt(sa * sa + sb * sb) if math.isfinite(sa) and math.isfinite(sb) else math.nan
  diff = ma - mb
  if min(len(a), len(b)) < 2 or not math.isfinite(spread):
    verdict = "undecided (< 2 seeds)"
  elif test["p_value"] < ALPHA and abs(diff) > spread:
    verdict = "win" if diff > 0 else "loss"
  else:
    verdict = "tie"
  return {
    "diff": diff,
    "spread": spread,
    "p": test["p_value"],
    "users": test["users"],
    "verdict": verdict,
  }


def _cell(ms: tuple[float, float], digits: int = 4) -> str:
  mean, std = ms
  if not math.isfinite(mean):
    return "–"
  return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _epochs(r: Mapping[str, Any]) -> str:
  parts = []
  for name, stage in r.get("stages", {}).items():
    parts.append(f"{name.replace('stage', 's')}:{stage['selected_epoch']}/{stage['stopped_epoch']}")
  return " ".join(parts)


def table(group: Group, cells: Mapping[str, list[dict[str, Any]]]) -> list[str]:
  lines = [
    "| row | n | full NDCG@10 | full HR@10 | full NDCG@20 | AUC | UAUC | NDCG@10 | HR@10 "
    "| codebook: codes used, perplexity (test) | selected/stopped epoch per stage (seed 0) "
    "| train min | samples/s (final stage) |",
    "|---|---:|---|---|---|---|---|---|---|---|---|---:|---:|",
  ]
  for key in group.rows:
    rows = cells.get(key) or []
    if not rows:
      lines.append(f"| {ROWS[key].label} | 0 | pending |" + " |" * 10)
      continue
    full = [_cell(mean_std([r["test_full"][m] for r in rows])) for m in FULL]
    sampled = [_cell(mean_std([r["test"][m] for r in rows])) for m in SAMPLED]
    usage = "–"
    if "test_codebook" in rows[0]:
      used = mean_std([r["test_codebook"]["codes_used"] for r in rows])
      ppl = mean_std([r["test_codebook"]["perplexity"] for r in rows])
      usage = f"{used[0]:.1f}, {ppl[0]:.1f}"
    minutes = mean_std([r["train_seconds"] / 60 for r in rows])[0]
    rate = mean_std([r.get("train_samples_per_s") for r in rows])[0]
    lines.append(
      "| "
      + " | ".join(
        [ROWS[key].label, str(len(rows)), *full, *sampled, usage, _epochs(rows[0])]
        + [f"{minutes:.1f}", f"{rate:,.0f}" if math.isfinite(rate) else "–"]
      )
      + " |"
    )
  return lines


def comparisons(group: Group, cells: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """Every row of ``group`` against each of its bases (``cells``: row -> finished runs)."""
  out = []
  for key in group.rows:
    for base in ROWS[key].base:
      if cells.get(key) and cells.get(base):
        out.append({"group": group, "row": key, "base": base, **compare(cells[key], cells[base])})
  return out


PLURAL = {"win": "wins", "tie": "ties", "loss": "losses"}


def summary(all_comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
  """Counts of wins / ties / losses per kind of comparison, with the groups of each."""
  lines = []
  kinds: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for c in all_comparisons:
    kinds.setdefault((c["row"], c["base"]), []).append(c)
  for (row, base), items in kinds.items():
    by = {v: [c["group"].name for c in items if c["verdict"] == v] for v in ("win", "tie", "loss")}
    lines.append(
      f"- **{ROWS[row].label} vs {ROWS[base].label}**: "
      + "; ".join(f"{len(by[v])} {v if len(by[v]) == 1 else PLURAL[v]}" for v in by)
      + "".join(f" ({v}: {', '.join(by[v])})" for v in by if by[v] and v != "tie")
    )
  return lines or ["- no finished pair of cells yet"]


def findings(archive: str) -> list[str]:
  """The hand-written reading of the evidence, ``<archive>/findings.md``, if there is one."""
  path = os.path.join(archive, "findings.md")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [f.read().strip(), ""]


def render(archive: str, groups: Sequence[Group], seeds: Sequence[int], args: str) -> str:
  """The report of every archived member under ``archive``."""
  cells = {g.name: {k: read_cell(archive, g, k, seeds) for k in g.rows} for g in groups}
  dirs = {cell_dir(archive, g, k): cells[g.name][k] for g in groups for k in g.rows}
  total = len(dirs)
  done = sum(1 for runs in dirs.values() if len(runs) == len(seeds))
  found = [c for g in groups for c in comparisons(g, cells[g.name])]
  # A pair of cells shared by several groups (tier i's SOLID and its bases, which the ablation
  # tables repeat) counts once in the summary.
  unique = {
    (cell_dir(archive, c["group"], c["row"]), cell_dir(archive, c["group"], c["base"])): c
    for c in reversed(found)
  }
  lines = [
    "# The SOLID verdict" + ("" if done == total else f" (PARTIAL: {done} of {total} cells)"),
    "",
    "<!-- Generated file; do not edit by hand. -->",
    "",
    f"Generated by `python -m experiments.verdict {args}` from the repository root, with "
    "`../shared/data` beside it. The sweep resumes where it stopped; cells still training or "
    "not started are marked *pending*.",
    "",
    "## Summary",
    "",
    "A verdict compares test full-catalogue NDCG@10 over the test users: a **win** or a **loss** "
    f"needs both a paired randomisation test p < {ALPHA} (per-user NDCG@10 averaged over the seeds, "
    "10,000 sign patterns) and a difference of the seed means larger than the seed spread "
    "sqrt(std_a² + std_b²); anything else is a **tie**.",
    "",
    *summary(list(reversed(unique.values()))),
    "",
    *findings(archive),
    "## Protocol",
    "",
    "Leave-last-out by time (validation = second-to-last event, test = last). Every stage trains "
    "with Adam (lr 1e-3, batch 1,024 rows, 4 negatives per positive resampled every epoch) until "
    "its validation full-catalogue NDCG@10 has not improved for `--patience` epochs (stage 1, "
    "which ranks semantic ids, selects on sampled UAUC), and keeps its best epoch. Tier i is the "
    "SOLID paper's setting: d = 32, L = 10, the authors' embedding and towers, 2 head layers, "
    "λ = 0.1, t = 0.01 (hard clip), straight-through codebook initialised from the stage-1 "
    "metacode. Metrics: full-catalogue ranking over every item but the user's history "
    "(`sj.metrics.evaluate_full`) first, then the paper's sampled protocol (99 fixed negatives). "
    "Cells: mean ± sample std over the seeds (n = finished seeds); *codebook* = codes chosen at "
    "least once and the perplexity of the choices over every test history; a cell's seeds "
    "train together as one population (one vmapped step), so *train min* (all stages) is the "
    "wall time of the whole cell, all seeds at once, and *samples/s* the training rows of one "
    "seed per second of that time (final stage).",
    "",
  ]
  for tier, title in TIERS.items():
    in_tier = [g for g in groups if g.tier == tier]
    if not in_tier:
      continue
    lines += [f"## Tier {tier}: {title}", ""]
    for g in in_tier:
      lines += [f"### {g.title}", ""] + ([g.note, ""] if g.note else [])
      lines += [*table(g, cells[g.name]), ""]
      rows = [c for c in found if c["group"] is g]
      if rows:
        lines += [
          "| comparison | Δ full NDCG@10 | seed spread | p | users | verdict |",
          "|---|---:|---:|---:|---:|---|",
        ]
        for c in rows:
          lines.append(
            f"| {ROWS[c['row']].label} vs {ROWS[c['base']].label} | {c['diff']:+.4f} | "
            f"{c['spread']:.4f} | {c['p']:.4f} | {c['users']:,} | {c['verdict']} |"
          )
        lines.append("")
  return "\n".join(lines)


def keep_published(report: str, path: str) -> str:
  """The report with the published-baselines block of ``path`` (experiments/published.py's)."""
  from experiments import published  # pylint: disable=import-outside-toplevel

  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    block = published.marked_section(old)
    if block is not None:
      report = report.rstrip("\n") + "\n\n" + block + "\n"
  return report


def select(
  groups: Sequence[Group],
  tiers: Sequence[str] = (),
  names: Sequence[str] = (),
  rows: Sequence[str] = (),
) -> list[tuple[Group, str]]:
  """The (group, row key) cells to train, in the report's priority order; an empty filter keeps
  everything. Unknown tier, group or row names are refused."""
  for kind, given, known in (
    ("tier", tiers, TIERS),
    ("group", names, {g.name for g in groups}),
    ("row", rows, ROWS),
  ):
    unknown = sorted(set(given) - set(known))
    if unknown:
      raise ValueError(f"unknown {kind} {unknown}; known: {sorted(known)}")
  return [
    (g, key)
    for g in groups
    if (not tiers or g.tier in tiers) and (not names or g.name in names)
    for key in g.rows
    if not rows or key in rows
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoint.quiet_orbax_logging()
  seeds = [int(s) for s in FLAGS.seeds]
  cells = select(GROUPS, FLAGS.tiers, FLAGS.groups, FLAGS.rows)
  args = " ".join(
    f"--{name}={','.join(v) if isinstance(v, list) else v}"
    for name, v in (
      ("seeds", FLAGS.seeds),
      ("max_epochs", FLAGS.max_epochs),
      ("patience", FLAGS.patience),
    )
  )
  limits = {"max_epochs": FLAGS.max_epochs, "patience": FLAGS.patience}
  start = time.time()

  def write_report():
    report = keep_published(render(FLAGS.archive, GROUPS, seeds, args), FLAGS.output)
    with open(FLAGS.output, "w") as f:
      f.write(report)

  if not FLAGS.report_only:
    for g, key in cells:
      if len(read_cell(FLAGS.archive, g, key, seeds)) == len(seeds):
        continue
      if FLAGS.hours and time.time() - start > FLAGS.hours * 3600:
        logging.info("--hours=%s reached; stopping before %s / %s", FLAGS.hours, g.name, key)
        write_report()
        return
      run_cell(FLAGS.workdir_root, FLAGS.archive, g, key, seeds, **limits)
      write_report()  # after every cell, so that a stop keeps what finished
  write_report()
  print(open(FLAGS.output).read())


if __name__ == "__main__":
  define_flags()
  app.run(main)

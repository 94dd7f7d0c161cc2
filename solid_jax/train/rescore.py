"""Re-scores a workdir's selected checkpoint without training (``experiments/evaluate.py``).

``evaluate_workdir(DIR)`` rebuilds the run's data and model from ``DIR/config.json`` (the data
must still have the fingerprint of ``DIR/dataset.json``), restores the parameters of the final
stage at its selected epoch (``result.json``), or, for a run that was interrupted, at the best
epoch checkpointed so far, and evaluates both protocols. It reads the checkpoints read-only and
writes only the per-user files (``DIR/<stage>/per_user_<split>.npz``, as training does).
"""

from __future__ import annotations

import json
import logging as logging_std
import os
from typing import Any, Sequence

import numpy as np

from solid_jax import semantics as semantics_lib
from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import full_eval
from solid_jax.train import loop
from solid_jax.train import semantic_tables
from solid_jax.train import stages
from solid_jax.train import workdir as workdir_lib
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train.train_config import TrainConfig


class _DropOrbaxReadOnly(logging_std.Filter):
  """Drops orbax's notes that a read-only manager will not write (expected when re-scoring)."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    text = record.getMessage().lower().replace("_", " ").replace("-", " ")
    return "read only" not in text


def _selected(stage_dir: str) -> tuple[int, str]:
  """(step, how it was found) of the stage's selected parameters."""
  done = loop.stage_result(stage_dir)
  if done is not None:
    return int(done["selected_step"]), f"selected epoch {done['selected_epoch']} (finished)"
  with checkpoint_lib.StageCheckpoints(stage_dir, read_only=True) as ckpts:
    best, latest = ckpts.best_step(), ckpts.latest_step()
  if best is not None:
    return best, "best epoch so far (the run has not finished)"
  if latest is not None:
    return latest, "latest mid-epoch checkpoint (no epoch has ended)"
  raise FileNotFoundError(f"{stage_dir} holds no checkpoint")


def evaluate_workdir(
  workdir: str, splits: Sequence[str] = ("test",), *, save_scores: bool = False, write: bool = True
) -> dict[str, Any]:
  """Evaluates the final stage of a workdir at its selected checkpoint.

  Args:
    workdir: a workdir of ``experiments.train`` (finished or interrupted).
    splits: "valid" and/or "test".
    save_scores: also save the raw sampled candidate scores.
    write: write the per-user files.

  Returns:
    ``{"stage", "step", "source", "<split>": sampled metrics, "<split>_full": full metrics}``.

  Raises:
    FileNotFoundError: not a workdir, or it has no checkpoint of its final stage.
    stages.WorkdirError: the data changed since the run was trained.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, stages.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{workdir} is not a workdir of experiments.train ({stages.CONFIG_FILE} missing)"
    )
  with open(path) as f:
    config = TrainConfig.from_dict(json.load(f))
  ds = stages.load_data(config)
  workdir_lib.check_dataset(workdir, ds, write=False)
  final = config.stages()[-1]
  stage_dir = os.path.join(workdir, final)
  step, source = _selected(stage_dir)

  from solid_jax import data as sj_data  # pylint: disable=import-outside-toplevel
  import solid_jax as sj  # pylint: disable=import-outside-toplevel

  if config.is_solid:
    table, _ = semantics_lib.load_table(os.path.join(workdir, semantic_tables.SEMANTICS_PREFIX))
  else:
    table = ds.item_semantic
  num_semantics = int(table.max()) + 1 if config.is_solid else ds.num_semantics
  model = sj.make_model(
    config.model_config(final, num_items=ds.num_items, num_semantics=num_semantics)
  )
  split_data = sj_data.make_splits(
    ds,
    seq_len=config.seq_len,
    train_negatives=config.train_negatives,
    eval_negatives=config.eval_negatives,
    seed=config.seed,
  )
  absl_logger = logging_std.getLogger("absl")
  quiet = _DropOrbaxReadOnly()
  absl_logger.addFilter(quiet)
  try:
    with checkpoint_lib.StageCheckpoints(stage_dir, read_only=True) as ckpts:
      params = ckpts.restore_params(step)
  finally:
    absl_logger.removeFilter(quiet)
  out: dict[str, Any] = {"stage": final, "step": step, "source": source}
  for split in splits:
    rows = stages.with_semantics(split_data[split], table)
    users = stages.with_semantics(sj_data.full_ranking_users(ds, split_data, split), table)
    sampled = evaluator_lib.Evaluator(model, rows, config.eval_batch_size)
    full = full_eval.FullEvaluator(model, users)
    metrics, per_user = loop.evaluate_selected(
      params, split, sampled, full, save_scores=save_scores
    )
    out.update(metrics)
    if write:
      loop.write_per_user(os.path.join(stage_dir, loop.PER_USER_FILE.format(split=split)), per_user)
  return out


def load_per_user(workdir: str, split: str = "test") -> dict[str, np.ndarray]:
  """The per-user metrics of a workdir's final stage (``per_user_<split>.npz``) as a dict."""
  with open(os.path.join(workdir, stages.CONFIG_FILE)) as f:
    config = TrainConfig.from_dict(json.load(f))
  path = os.path.join(workdir, config.stages()[-1], loop.PER_USER_FILE.format(split=split))
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def paired_permutation_test(
  a: np.ndarray, b: np.ndarray, *, permutations: int = 10_000, seed: int = 0
) -> dict[str, float]:
  """Two-sided paired randomisation test of ``mean(a - b)`` over users (sign flips).

  Under the null hypothesis the two runs are exchangeable for every user, so each per-user
  difference keeps or flips its sign with probability 1/2; the p-value is the share of random sign
  patterns whose mean difference is at least as far from 0 as the observed one (with the observed
  pattern counted, so it is never 0).

  Args:
    a, b: float[U] per-user metrics of two runs over the same users in the same order (e.g.
      ``load_per_user(DIR)["full/ndcg@10"]``).
    permutations: random sign patterns.
    seed: seed of the patterns.

  Returns:
    ``{"mean_a", "mean_b", "mean_diff", "p_value", "users"}``.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"expected two per-user vectors of one shape, got {a.shape} and {b.shape}")
  diff = a - b
  observed = abs(diff.mean()) if diff.size else 0.0
  rng = np.random.default_rng(seed)
  hits = 0
  for start in range(0, permutations, 1000):
    n = min(1000, permutations - start)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, diff.size))
    hits += int(np.sum(np.abs(signs @ diff) / max(diff.size, 1) >= observed - 1e-12))
  return {
    "mean_a": float(a.mean()),
    "mean_b": float(b.mean()),
    "mean_diff": float(diff.mean()),
    "p_value": (hits + 1) / (permutations + 1),
    "users": int(diff.size),
  }

"""Where a SOLID run's item -> semantic id table comes from: category labels, k-means over
learned id embeddings (stage 0) or over text / image features, and a stage-1 metacode reused from
another workdir (``--stage1_dir``); the checks that a table fits the data before training.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from solid_jax import models as models_lib
from solid_jax import semantics as semantics_lib
from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import loop
from solid_jax.train import streams
from solid_jax.train.train_config import TrainConfig


SEMANTICS_PREFIX = "semantics"


class Stage1MismatchError(ValueError):
  """A stage-1 checkpoint does not fit the stage-2 data (vocabulary or width)."""


def with_semantics(rows: Mapping[str, np.ndarray], table: np.ndarray) -> dict[str, np.ndarray]:
  """Rows with ``semantics`` / ``target_semantic`` recomputed from a semantic table.

  Args:
    rows: a split (``items`` int32[N, L], ``target`` int32[N], ...).
    table: int32[num_items], 0 at padding.

  Returns:
    A new dict with ``semantics = table[items]`` and ``target_semantic = table[target]``.
  """
  out = dict(rows)
  # Ids past the table (a cloze model's [MASK]) have no semantic id: 0.
  known = lambda ids: np.where(ids < len(table), ids, 0)  # noqa: E731
  out["semantics"] = table[known(rows["items"])]
  out["target_semantic"] = table[known(rows["target"])]
  return out


def num_clusters(config: TrainConfig, ds) -> int:
  return config.num_clusters or (ds.num_semantics - 1)


def semantic_provenance(config: TrainConfig, ds) -> dict[str, Any]:
  out = {
    "source": config.semantics,
    "seed": config.seed,
    "dataset": ds.name,
    "dataset_fingerprint": ds.fingerprint,
  }
  if config.semantics == "labels":
    out["labels"] = ds.semantic_source
  elif config.semantics == "random":
    out["labels"] = ds.semantic_source
    out["algorithm"] = "the labels dealt to the items in a random order (semantics.shuffled_labels)"
  else:
    out.update(
      k=num_clusters(config, ds),
      kmeans_iters=config.kmeans_iters,
      algorithm="k-means (k-means++ seeding, Lloyd) over L2-normalised parts",
    )
  if config.needs_stage0:
    out.update(
      stage0_backbone=config.backbone, stage0_epochs=config.epochs_of("stage0"), dim=config.dim
    )
  return out


def kmeans_table(config: TrainConfig, ds, id_embedding: np.ndarray | None) -> np.ndarray:
  parts = semantics_lib.dataset_vectors(ds)
  if id_embedding is not None:
    parts["id"] = np.asarray(id_embedding, np.float32)
  vectors = semantics_lib.item_vectors(parts, config.semantics)
  return semantics_lib.cluster_items(
    vectors, num_clusters(config, ds), seed=config.seed, iters=config.kmeans_iters
  )


def check_semantic_source(config: TrainConfig, ds) -> None:
  """Errors that would otherwise surface only after training (missing features, bad k)."""
  if not config.is_solid:
    return
  if config.semantics in ("labels", "random"):
    if config.num_clusters:
      raise ValueError(
        f"--num_clusters applies to k-means semantics only, not --semantics={config.semantics}"
      )
    return
  need = [p for p in semantics_lib.KMEANS_SOURCES[config.semantics] if p != "id"]
  have = semantics_lib.dataset_vectors(ds)
  missing = [semantics_lib.FEATURE_KEYS[p] for p in need if p not in have]
  if missing:
    raise ValueError(
      f"--semantics={config.semantics} needs item features {missing}, which "
      f"dataset {ds.name!r} does not have (side information: {sorted(ds.side)})"
    )
  k = num_clusters(config, ds)
  if not 1 <= k <= ds.num_items - 1:
    raise ValueError(f"--num_clusters={k}: expected 1..{ds.num_items - 1} (the number of items)")


def stage1_metacode_shape(stage1_dir: str) -> tuple[tuple[int, ...], dict[str, Any]]:
  result = loop.stage_result(stage1_dir)
  if result is None:
    raise Stage1MismatchError(
      f"--stage1_dir={stage1_dir} holds no finished stage 1 ({loop.RESULT_FILE} missing)"
    )
  ckpts = checkpoint_lib.StageCheckpoints(stage1_dir, read_only=True)
  try:
    shapes = ckpts.param_shapes(result["selected_step"])
  finally:
    ckpts.close()
  try:
    shape = models_lib.item_table(shapes)
  except (KeyError, TypeError):
    raise Stage1MismatchError(
      f"the stage-1 checkpoint in {stage1_dir} has no item embedding "
      f"table (parameters: {sorted(shapes)})"
    ) from None
  return tuple(shape), result


def check_stage1(
  stage1_dir: str, *, num_semantics: int, dim: int, table: np.ndarray | None = None
) -> None:
  """Checks that a finished stage 1 fits the stage-2 data before anything is trained.

  Args:
    stage1_dir: the stage-1 directory.
    num_semantics: the semantic vocabulary of this run (incl. padding).
    dim: this run's embedding width.
    table: this run's semantic table, compared with the one saved next to ``stage1_dir`` if any.

  Raises:
    Stage1MismatchError: no finished stage 1, a metacode of another vocabulary size or width, or
      a different semantic table.
  """
  shape, _ = stage1_metacode_shape(stage1_dir)
  if shape != (num_semantics, dim):
    raise Stage1MismatchError(
      f"the stage-1 checkpoint in {stage1_dir} has a metacode of {shape[0]} semantic ids x "
      f"{shape[1]} (incl. padding), but this run's data has {num_semantics} semantic ids and "
      f"dim {dim}: it was trained on another vocabulary"
    )
  prefix = os.path.join(os.path.dirname(os.path.abspath(stage1_dir)), SEMANTICS_PREFIX)
  if table is not None and os.path.exists(prefix + ".json"):
    theirs, _ = semantics_lib.load_table(prefix)
    if theirs.shape != table.shape or not np.array_equal(theirs, table):
      raise Stage1MismatchError(
        f"the semantic table next to {stage1_dir} ({prefix}.npz) differs from this run's: the "
        "metacode rows would mean other semantic ids"
      )


def load_metacode(stage1_dir: str) -> np.ndarray:
  result = loop.stage_result(stage1_dir)
  ckpts = checkpoint_lib.StageCheckpoints(stage1_dir, read_only=True)
  try:
    params = ckpts.restore_params(result["selected_step"])
  finally:
    ckpts.close()
  return np.asarray(models_lib.item_table(params))


def codebook_table(metacode: np.ndarray, config: TrainConfig) -> np.ndarray:
  """Stage 2's initial codebook: the metacode float[C, d] itself, or with ``num_codes = K < C``
  row 0 (padding) and the k-means centroids of its rows 1..C-1 in ``K - 1`` clusters (the
  ``"codebook"`` stream of stage 2).

  Raises:
    ValueError: ``num_codes`` exceeds the metacode's rows (no table of more distinct codes can be
      made from it).
  """
  rows = metacode.shape[0]
  k = config.num_codes
  if not k or k == rows:
    return metacode
  if k > rows:
    raise ValueError(
      f"--num_codes={k} exceeds the stage-1 metacode's {rows} rows (the semantic vocabulary with "
      "padding); a codebook initialised from it has at most that many codes"
    )
  from solid_jax.nn import codebook as codebook_lib  # pylint: disable=import-outside-toplevel

  key = streams.key(config.seed, "stage2", "codebook")
  return np.asarray(codebook_lib.kmeans_init(key, metacode[1:], k, iters=config.kmeans_iters))

"""One random stream per stage and purpose.

Every random draw of a training run comes from a stream named by ``(seed, stage, purpose)``:

- ``"init"``: the stage's parameter initialisation (``jax.random`` key);
- ``"dropout"``: the root of the per-step keys ``fold_in(root, step)`` of dropout and of the
  EMA codebook's revival (``jax.random`` key);
- ``"batches"``: the order of the training rows of every epoch (an integer seed of the numpy
  generator of ``solid_jax.data.batches``);
- ``"negatives"``: the training negatives (and masks, positions) of every epoch (an integer
  stream of ``solid_jax.data.resample_train`` / ``position_rows`` / ``cloze_rows``);
- ``"codebook"``: the k-means that fits a stage-2 codebook of ``--num_codes`` codes to the
  metacode (``semantic_tables.codebook_table``).

Stages are told apart by name ("main", "stage0", "stage1", "stage2", or a plugin's), so two stages
of one run never share an initialisation, a dropout mask, a batch order or a set of negatives, and
purposes never share a key (the key of the init is not the dropout key of step 0). The stream is a
pure function of its three parts, so a relaunch draws what the first launch drew.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

PURPOSES = ("init", "dropout", "batches", "negatives", "codebook")


def stage_id(stage: str) -> int:
  """A stable non-negative 31-bit integer naming ``stage`` (CRC-32 of its name)."""
  return zlib.crc32(stage.encode("utf-8")) & 0x7FFFFFFF


def _purpose_id(purpose: str) -> int:
  if purpose not in PURPOSES:
    raise ValueError(f"random stream purpose {purpose!r}; expected one of {PURPOSES}")
  return PURPOSES.index(purpose) + 1


def key(seed: int, stage: str, purpose: str) -> jax.Array:
  """The ``jax.random`` key of a stream: ``fold_in(fold_in(key(seed), stage_id), purpose)``."""
  root = jax.random.fold_in(jax.random.key(seed), stage_id(stage))
  return jax.random.fold_in(root, _purpose_id(purpose))


def numpy_seed(seed: int, stage: str, purpose: str) -> int:
  """A non-negative integer seed of a stream, for the numpy generators of the data pipeline
  (``np.random.SeedSequence([seed, stage_id, purpose])``, 63 bits)."""
  state = np.random.SeedSequence([int(seed), stage_id(stage), _purpose_id(purpose)]).generate_state(
    2, np.uint32
  )
  return (int(state[0]) << 31) ^ int(state[1])

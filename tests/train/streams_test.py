"""Every stage and every purpose draws from a random stream of its own (`solid_jax.train.streams`)."""

import dataclasses
import itertools

import jax
import numpy as np

from solid_jax import models as models_lib
from solid_jax.train import loop
from solid_jax.train import stages
from solid_jax.train import streams

STAGES = ("main", "stage0", "stage1", "stage2")


def test_every_stage_and_purpose_has_its_own_key_and_seed():
  keys = {
    (stage, purpose): tuple(np.asarray(jax.random.key_data(streams.key(0, stage, purpose))))
    for stage, purpose in itertools.product(STAGES, streams.PURPOSES)
  }
  assert len(set(keys.values())) == len(keys)
  seeds = {
    (stage, purpose): streams.numpy_seed(0, stage, purpose)
    for stage, purpose in itertools.product(STAGES, streams.PURPOSES)
  }
  assert len(set(seeds.values())) == len(seeds)
  assert all(s >= 0 for s in seeds.values())
  # Pure functions of (seed, stage, purpose); another seed gives other streams.
  assert streams.numpy_seed(0, "stage1", "batches") == streams.numpy_seed(0, "stage1", "batches")
  assert streams.numpy_seed(1, "stage1", "batches") != streams.numpy_seed(0, "stage1", "batches")
  # The init key is not the dropout key of step 0 (the loop's per-step keys fold in the step).
  init = streams.key(0, "main", "init")
  step0 = jax.random.fold_in(streams.key(0, "main", "dropout"), 0)
  assert not np.array_equal(jax.random.key_data(init), jax.random.key_data(step0))


def _correlation(a, b):
  a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
  return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_solid_stages_draw_init_batches_and_negatives_from_their_own_streams(tiny_config, tmp_path):
  config = dataclasses.replace(tiny_config, method="solid", epochs=1)
  init_keys, first_batches, negatives, inits = {}, {}, {}, {}

  def recording_stage(spec, data, settings):
    original_init, original_batches = spec.init, data.batches

    def init(key):
      jax.debug.callback(
        lambda k: init_keys.__setitem__(spec.name, np.asarray(k)), jax.random.key_data(key)
      )
      return original_init(key)

    def batches(*args, **kwargs):
      iterator = original_batches(*args, **kwargs)
      first = next(iterator)
      first_batches.setdefault(spec.name, first["user"].copy())
      yield first
      yield from iterator

    negatives[spec.name] = data.train_rows(0)["target"]
    spec = dataclasses.replace(spec, init=init)
    result, params = loop.train_stage(spec, dataclasses.replace(data, batches=batches), settings)
    inits[spec.name] = models_lib.item_table(
      original_init(jax.random.wrap_key_data(init_keys[spec.name]))
    )
    return result, params

  stages.run_experiment(config, str(tmp_path / "run"), train_stage=recording_stage)
  assert set(init_keys) == {"stage1", "stage2"}
  assert not np.array_equal(init_keys["stage1"], init_keys["stage2"])
  # Stage 2's item rows 1..C-1 are not a rescaled copy of stage 1's semantic table (the same key
  # made them so: the initialisers draw the same uniforms for the leading rows).
  c = inits["stage1"].shape[0]
  assert abs(_correlation(inits["stage1"][1:c], inits["stage2"][1:c])) < 0.9
  # Other batch orders and other negatives (the positives are the same rows).
  assert not np.array_equal(first_batches["stage1"], first_batches["stage2"])
  assert negatives["stage1"].shape == negatives["stage2"].shape
  assert not np.array_equal(negatives["stage1"], negatives["stage2"])

"""Every model option reaches the launcher; SOLID's options (bound, quantised space, branches,
codebook size, no codebook) and the codebook's usage over a whole split."""

import dataclasses

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.model_config import ModelConfig
from solid_jax.models import solid as solid_lib
from solid_jax.nn import codebook as codebook_lib
from solid_jax.train import cli
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train import semantic_tables
from solid_jax.train import stages
from solid_jax.train.train_config import TrainConfig

# ModelConfig fields a launch derives (from the method, the data and the objective).
DERIVED = {"head", "generator", "num_items", "num_semantics", "cloze"}


def test_every_model_option_is_a_launcher_flag():
  model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - DERIVED
  train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
  assert model_fields <= train_fields, sorted(model_fields - train_fields)
  values = flags.FlagValues()
  cli.define_flags(values)
  assert model_fields <= set(values), sorted(model_fields - set(values))


def test_solid_options_reach_the_stage_2_model():
  config = TrainConfig(
    method="solid",
    num_codes=5,
    ema_dead_steps=7,
    ema_prior=2.5,
    clip="soft",
    clip_t=0.1,
    quantize_space="embedding",
    solid_branches="item",
    codebook="ema",
    bert_layers=3,
    din_hidden="16,8",
  )
  cfg = config.model_config("stage2", num_items=50, num_semantics=9)
  assert (cfg.num_codes, cfg.codebook_size, cfg.ema_dead_steps, cfg.ema_prior) == (5, 5, 7, 2.5)
  assert (cfg.clip, cfg.clip_t, cfg.quantize_space, cfg.solid_branches) == (
    "soft",
    0.1,
    "embedding",
    "item",
  )
  assert (cfg.bert_layers, cfg.din_hidden) == (3, (16, 8))
  assert TrainConfig().model_config("stage2", num_items=50, num_semantics=9).num_codes is None
  with pytest.raises(ValueError, match="din_hidden"):
    TrainConfig(din_hidden="16,x")
  with pytest.raises(ValueError, match="num_codes"):
    TrainConfig(num_codes=1)


def test_soft_bound_is_t_tanh_x_over_t_with_a_gradient_everywhere():
  # |x| <= 5 t: further out tanh(x / t) rounds to 1 in float32 and the gradient to 0, so the soft
  # bound helps only weights within a few t of the band.
  x = np.linspace(-0.05, 0.05, 41)
  t = 0.01
  np.testing.assert_allclose(
    solid_lib.bound(jnp.asarray(x, jnp.float32), t, "soft"), t * np.tanh(x / t), rtol=1e-5
  )
  np.testing.assert_allclose(solid_lib.bound(jnp.asarray(x, jnp.float32), t), np.clip(x, -t, t))
  grad_soft = jax.vmap(jax.grad(lambda v: solid_lib.bound(v, t, "soft")))(jnp.asarray(x))
  grad_hard = jax.vmap(jax.grad(lambda v: solid_lib.bound(v, t, "hard")))(jnp.asarray(x))
  assert np.all(np.asarray(grad_soft) > 0)
  assert np.sum(np.asarray(grad_hard) == 0) > 30  # outside the band the hard clip is flat


def _batch(cfg, rows=6):
  rng = np.random.default_rng(0)
  items = rng.integers(1, cfg.num_items, size=(rows, cfg.seq_len)).astype(np.int32)
  items[0, 3:] = 0
  return {
    "items": items,
    "semantics": (items % (cfg.num_semantics - 1) + 1) * (items > 0),
    "target": rng.integers(1, cfg.num_items, size=rows).astype(np.int32),
    "target_semantic": np.ones(rows, np.int32),
    "label": np.ones(rows, np.float32),
  }


def _grads(cfg):
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  batch = _batch(cfg)

  def loss(p):
    logits, aux = model.apply(p, {k: v for k, v in batch.items() if k != "label"})
    return jnp.mean(jnp.square(logits)) + aux["aux_loss"]

  return params, jax.grad(loss)(params)


def _norm(tree):
  return float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))


def test_quantising_the_item_rows_reads_the_item_table_not_the_sequence_embedding():
  base = ModelConfig(num_items=40, num_semantics=6, dim=8, num_heads=2)
  params, grads = _grads(dataclasses.replace(base, quantize_space="embedding"))
  # The commitment loss pulls the item table's rows towards their codes; seq_trans of the
  # backbone sees the sequence only through the static path.
  table = params["backbone"]["item_embedding"]["embedding"]
  codes = sj.make_model(dataclasses.replace(base, quantize_space="embedding")).apply(
    params, {k: v for k, v in _batch(base).items() if k != "label"}
  )[1]
  assert "codebook/counts" in codes
  assert table.shape == (40, 8)
  assert _norm(grads["head"]["item_generator"]) > 0
  assert _norm(grads["backbone"]["item_embedding"]) > 0


@pytest.mark.parametrize(
  "branches, silent", [("item", "semantic_generator"), ("semantic", "item_generator")]
)
def test_one_branch_alone_leaves_the_other_without_gradient(branches, silent):
  cfg = ModelConfig(num_items=40, num_semantics=6, dim=8, num_heads=2, solid_branches=branches)
  _, grads = _grads(cfg)
  live = "item_generator" if silent == "semantic_generator" else "semantic_generator"
  assert _norm(grads["head"][silent]) == 0
  assert _norm(grads["head"][live]) > 0


def test_without_a_codebook_the_item_branch_is_unquantised():
  cfg = ModelConfig(num_items=40, num_semantics=6, dim=8, num_heads=2, codebook="none")
  params, grads = _grads(cfg)
  assert "codebook" not in params["head"]
  # The item branch's gradient reaches the backbone's embedding through the unquantised query.
  assert _norm(grads["backbone"]["seq_trans"]) > 0
  model = sj.make_model(cfg)
  with_table = model.init(jax.random.key(0), codebook_init=np.zeros((6, 8), np.float32))
  assert "codebook" not in with_table["head"]


def test_a_smaller_codebook_is_fitted_to_the_metacode():
  metacode = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
  metacode[0] = 0
  config = TrainConfig(method="solid", num_codes=5)
  table = semantic_tables.codebook_table(metacode, config)
  assert table.shape == (5, 4)
  np.testing.assert_array_equal(table[0], 0.0)
  # Every centroid is a mean of metacode rows: inside their bounding box.
  assert np.all(table[1:] >= metacode[1:].min(0) - 1e-6)
  assert np.all(table[1:] <= metacode[1:].max(0) + 1e-6)
  np.testing.assert_array_equal(
    semantic_tables.codebook_table(metacode, dataclasses.replace(config, num_codes=0)), metacode
  )
  with pytest.raises(ValueError, match="exceeds the stage-1 metacode's 12 rows"):
    semantic_tables.codebook_table(metacode, dataclasses.replace(config, num_codes=13))


def test_codebook_usage_counts_every_history_position_of_a_split_once():
  cfg = ModelConfig(num_items=40, num_semantics=6, dim=8, num_heads=2)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(1))
  rng = np.random.default_rng(3)
  users, g = 23, 4
  items = rng.integers(0, 40, size=(users, cfg.seq_len)).astype(np.int32)
  items[:, 0] = rng.integers(1, 40, size=users)
  split = {
    "user": np.repeat(np.arange(users), g).astype(np.int32),
    "items": np.repeat(items, g, axis=0),
    "semantics": np.repeat(items % 5 + (items > 0), g, axis=0).astype(np.int32),
    "target": rng.integers(1, 40, size=users * g).astype(np.int32),
    "target_semantic": np.ones(users * g, np.int32),
    "label": np.tile([1.0, 0.0, 0.0, 0.0], users).astype(np.float32),
  }
  small = evaluator_lib.CodebookUsage(model, split, batch_size=5)(params)
  large = evaluator_lib.CodebookUsage(model, split, batch_size=64)(params)
  assert small["positions"] == large["positions"] == float(np.sum(items != 0))
  assert small["codes_used"] == large["codes_used"]
  assert small["perplexity"] == pytest.approx(large["perplexity"], rel=1e-5)
  # The split's figures from the codebook's own indices.
  _, aux = model.apply(
    params,
    {k: split[k][::g] for k in ("items", "semantics", "target")}
    | {"target_semantic": np.ones(users, np.int32)},
  )
  perplexity, usage = codebook_lib.summarize_counts(aux["codebook/counts"])
  assert small["perplexity"] == pytest.approx(float(perplexity), rel=1e-5)
  assert small["usage"] == pytest.approx(float(usage))


def test_a_solid_run_reports_codebook_usage_over_valid_and_test(tiny_config, tmp_path):
  config = dataclasses.replace(tiny_config, method="solid", epochs=1)
  results = stages.run_experiment(config, str(tmp_path / "run"))
  for split in ("valid_codebook", "test_codebook"):
    usage = results[split]
    assert set(usage) == {"perplexity", "usage", "codes_used", "positions"}
    assert 0 < usage["usage"] <= 1 and usage["perplexity"] >= 1 and usage["positions"] > 0
  record = results["stages"]["stage2"]
  assert "valid_codebook" in record and "valid_codebook" not in results["stages"]["stage1"]


def test_random_semantics_deal_the_labels_to_other_items(tiny_config, tmp_path):
  ds = sj.data.load_dataset(tiny_config.dataset)
  config = dataclasses.replace(tiny_config, method="solid", semantics="random", epochs=1)
  results = stages.run_experiment(config, str(tmp_path / "run"))
  table, info = sj.semantics.load_table(str(tmp_path / "run" / "semantics"))
  np.testing.assert_array_equal(np.bincount(table), np.bincount(ds.item_semantic))
  assert not np.array_equal(table, ds.item_semantic)
  assert info["source"] == "random" and "random order" in info["algorithm"]
  assert results["semantics"]["source"] == "random"
  with pytest.raises(ValueError, match="num_clusters applies to k-means semantics only"):
    stages.run_experiment(dataclasses.replace(config, num_clusters=3), str(tmp_path / "other"))


def test_the_generator_init_scale_scales_the_generated_weights_at_init():
  base = ModelConfig(head="duet", num_items=60, num_semantics=6, dim=8, num_heads=2)
  batch = {k: v for k, v in _batch(base).items() if k != "label"}
  weights = {}
  for scale in (1.0, 0.1):
    model = sj.make_model(dataclasses.replace(base, generator_init_scale=scale))
    weights[scale] = model.generate(model.init(jax.random.key(0)), batch)
  # The same draws times the scale: every generated weight is linear in the projections.
  for a, b in zip(jax.tree.leaves(weights[1.0]), jax.tree.leaves(weights[0.1])):
    np.testing.assert_allclose(0.1 * np.asarray(a), b, rtol=1e-4, atol=1e-6)
  config = TrainConfig(method="solid", generator_init_scale=0.1)
  for stage in ("stage1", "stage2"):
    assert config.model_config(stage, num_items=50, num_semantics=9).generator_init_scale == 0.1

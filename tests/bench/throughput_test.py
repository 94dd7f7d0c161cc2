"""The benchmarked step and inference pass: one trace for many batches, donation, transfer guard."""

import chex
import jax
import numpy as np
import pytest

import solid_jax as sj
from benchmarks import synthetic
from benchmarks import throughput
from solid_jax.train import step as step_lib
from solid_jax.train import optim as optim_lib


@pytest.fixture(scope="module")
def setup():
  cfg = throughput.model_config("sasrec", "solid", num_items=101, num_semantics=7)
  model = sj.make_model(cfg)
  params = jax.device_get(model.init(jax.random.key(0)))
  catalog = synthetic.make_catalog(cfg.num_items, cfg.num_semantics, cfg.seq_len, seed=0)
  return model, params, synthetic.make_batches(catalog, 30, 3, seed=0)  # 6 groups of 5 rows


@pytest.mark.slow  # compiles the SOLID training step
def test_train_step_traces_once_over_batches_and_steps(setup):
  model, params, batches = setup
  tx = optim_lib.make_optimizer(model, params, 1e-3)
  chex.clear_trace_counter()
  raw = step_lib.make_train_step(model, tx).__wrapped__
  step = jax.jit(chex.assert_max_traces(raw, n=1), donate_argnums=(0, 1))
  p, o = jax.device_put((params, tx.init(params)))
  for i in range(6):
    b = jax.device_put({k: batches[i % 3][k] for k in throughput.TRAIN_KEYS})
    p, o, scalars = step(p, o, b, jax.device_put(np.int32(i)))
  assert np.isfinite(float(scalars["loss"]))


def test_infer_fn_traces_once(setup):
  model, params, batches = setup
  chex.clear_trace_counter()
  infer = jax.jit(chex.assert_max_traces(throughput.make_infer_fn(model), n=1))
  for b in batches + batches:
    logits = infer(params, {k: b[k] for k in throughput.MODEL_KEYS})
  chex.assert_shape(logits, (30,))
  chex.assert_tree_all_finite(logits)


@pytest.mark.slow  # compiles the SOLID training step
def test_train_bench_times_device_resident_batches_under_the_transfer_guard(setup):
  model, params, batches = setup
  bench = throughput.TrainBench(model, params, batches, grouped=True)  # the training loop's step
  assert bench.group == 5 and bench.batches[0]["target"].shape == (6, 5)
  step_ms = bench.time(repeats=2, steps_per_repeat=2, warmup=1)
  assert len(step_ms) == 2 and min(step_ms) > 0
  summary = bench.summary()
  assert summary["compile_s"] > 0 and np.isfinite(summary["final_loss"])
  assert bench.i == 6  # warm-up + timed steps all ran
  # The caller's parameters were copied, not donated.
  chex.assert_trees_all_equal(jax.device_get(params), params)
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="[Dd]isallowed"):
    bench.compiled(bench.params, bench.opt_state, jax.device_get(bench.batches[0]), bench.step)


def test_grouped_bench_rejects_rows_without_groups(setup):
  model, params, batches = setup
  rows = {k: v[:7] for k, v in batches[0].items()}
  with pytest.raises(ValueError, match="whole groups"):
    throughput.TrainBench(model, params, [rows], grouped=True)


def test_mixed_precision_keeps_float32_master_weights(setup):
  _, _, batches = setup
  model = sj.make_model(throughput.model_config("sasrec", "static", num_items=101, num_semantics=7))
  params = model.init(jax.random.key(0))
  bench = throughput.TrainBench(model, params, batches[:1], compute_dtype=jax.numpy.bfloat16)
  bench.time(repeats=1, steps_per_repeat=1, warmup=0)
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(bench.params)}
  assert dtypes == {np.dtype(np.float32)}
  assert np.isfinite(bench.summary()["final_loss"])

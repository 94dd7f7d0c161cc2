"""Sharded vs one-device training steps of SASRec+SOLID, in a fresh process with fake CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel/sharded_check.py

(`sharded_step_test.py` runs it; the flag must be set before JAX is imported, hence the process.)
Both runs use the training loop's step (``solid_jax.train.step.make_train_step``) on the same global
batches, with SGD and with Adam (the training optimizer) in float32, then with Adam in float64
(``jax_enable_x64`` switched on in this process after the float32 runs; parameters and float batch
leaves cast to float64). Prints one JSON line with the losses, parameter differences, dtypes,
shardings seen and the error raised for an indivisible batch.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import solid_jax as sj  # noqa: E402
from solid_jax import parallel  # noqa: E402
from benchmarks import synthetic  # noqa: E402
from benchmarks import throughput  # noqa: E402
from solid_jax.train import step as step_lib  # noqa: E402
from solid_jax.train import optim as optim_lib  # noqa: E402
from solid_jax.train import rows as rows_lib  # noqa: E402

STEPS = 3
BATCH = 64


def diffs(a, b) -> np.ndarray:
  pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  return np.concatenate(
    [np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).ravel() for x, y in pairs]
  )


def run_single(model, tx, params0, batches):
  """The loop's jitted step on the first device."""
  step = step_lib.make_train_step(model, tx)
  device = jax.devices()[0]
  params, opt_state = jax.device_put(
    jax.tree_util.tree_map(jnp.array, (params0, tx.init(params0))), device
  )
  losses = []
  for i, b in enumerate(batches):
    params, opt_state, scalars = step(
      params, opt_state, jax.device_put(b, device), jax.device_put(np.int32(i), device)
    )
    losses.append(float(scalars["loss"]))
  return jax.device_get(params), losses


def run_sharded(model, tx, params0, batches, mesh):
  """The loop's pure step, traced at most once, jitted for data parallelism over ``mesh``."""
  raw_step = step_lib.make_train_step(model, tx).__wrapped__
  chex.clear_trace_counter()  # the counter is keyed by the step's code, shared by both optimizers
  step = parallel.make_sharded_train_step(chex.assert_max_traces(raw_step, n=1), mesh)
  params, opt_state = parallel.replicate((params0, tx.init(params0)), mesh)
  losses, specs, shards = [], set(), set()
  stream = parallel.device_prefetch(iter(batches), size=2, sharding=parallel.batch_sharding(mesh))
  for i, b in enumerate(stream):
    specs.add(str(b["items"].sharding.spec))
    shards.add(len(b["items"].addressable_shards))
    params, opt_state, scalars = step(params, opt_state, b, parallel.replicate(np.int32(i), mesh))
    losses.append(float(scalars["loss"]))
  info = {
    "batch_specs": sorted(specs),
    "shards_per_batch": sorted(shards),
    "param_specs": sorted({str(x.sharding.spec) for x in jax.tree_util.tree_leaves(params)}),
  }
  return jax.device_get(params), losses, info


def to_float64(tree):
  """Host copies with every floating-point leaf in float64 (integer leaves unchanged)."""
  return jax.tree_util.tree_map(
    lambda x: (
      np.asarray(x, np.float64)
      if np.issubdtype(np.asarray(x).dtype, np.floating)
      else np.asarray(x)
    ),
    tree,
  )


def compare(model, tx, params0, batches, mesh):
  single_params, single_losses = run_single(model, tx, params0, batches)
  sharded_params, sharded_losses, info = run_sharded(model, tx, params0, batches, mesh)
  d = diffs(single_params, sharded_params)
  return {
    "single_losses": single_losses,
    "sharded_losses": sharded_losses,
    "max_param_diff": float(d.max()),
    "fraction_over_1e-5": float(np.mean(d > 1e-5)),
    "max_param_change": float(diffs(single_params, params0).max()),
    "param_dtypes": sorted(
      {str(x.dtype) for x in jax.tree_util.tree_leaves((single_params, sharded_params))}
    ),
    **info,
  }


def main():
  cfg = throughput.model_config("sasrec", "solid", num_items=101, num_semantics=7)
  model = sj.make_model(cfg)
  params0 = jax.device_get(model.init(jax.random.key(0)))  # host copies: the steps donate
  catalog = synthetic.make_catalog(cfg.num_items, cfg.num_semantics, cfg.seq_len, seed=1)
  batches = [
    {k: b[k] for k in throughput.TRAIN_KEYS}
    for b in synthetic.make_batches(catalog, BATCH, STEPS, seed=3)
  ]
  mesh = parallel.make_mesh()
  out = {"devices": len(jax.devices()), "mesh": dict(mesh.shape)}
  lr = 1e-3
  for name, tx in (
    ("sgd", optax.sgd(1e-2)),
    ("adam", optim_lib.make_optimizer(model, params0, lr)),
  ):
    out[name] = compare(model, tx, params0, batches, mesh)
  out["adam"]["lr"] = lr
  # The same Adam run in float64: the summation-order noise of near-zero gradients is ~1e-16
  # relative instead of ~1e-7, so Adam has nothing left to amplify.
  jax.config.update("jax_enable_x64", True)
  params64, batches64 = to_float64(params0), [to_float64(b) for b in batches]
  logits, _ = model.apply(
    params64, {k: v for k, v in batches64[0].items() if k in rows_lib.MODEL_KEYS}
  )
  out["adam_float64"] = compare(
    model, optim_lib.make_optimizer(model, params64, lr), params64, batches64, mesh
  )
  out["adam_float64"]["lr"] = lr
  out["adam_float64"]["logits_dtype"] = str(logits.dtype)
  out["adam_float64"]["batch_dtypes"] = sorted({str(v.dtype) for v in batches64[0].values()})
  jax.config.update("jax_enable_x64", False)
  short = {k: v[: BATCH - 3] for k, v in batches[0].items()}
  try:
    parallel.shard_batch(short, mesh)
    out["indivisible_error"] = ""
  except ValueError as e:
    out["indivisible_error"] = str(e)
  padded = parallel.shard_batch(short, mesh, pad=True)
  out["padded_rows"] = int(padded["items"].shape[0])
  out["padded_weight_sum"] = float(np.asarray(padded["weight"]).sum())
  print(json.dumps(out))


if __name__ == "__main__":
  main()

"""Tests of the orbax wrapper: round trip, latest + best retention, uncommitted saves."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from solid_jax.train import checkpoint


def _state(seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "emb": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
    "head": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "bias": jnp.zeros(2)},
  }
  tx = optax.adam(1e-2)
  grads = jax.tree.map(jnp.ones_like, params)
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam: decay ** int32 count
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _equal(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_round_trip_is_bitwise(tmp_path):
  params, opt_state = _state()
  with checkpoint.StageCheckpoints(tmp_path / "stage") as ckpts:
    ckpts.save(12, params, opt_state, {"epoch": 1, "history": [{"uauc": 0.5}]}, selection=0.5)
    ckpts.wait()
    template_p, template_o = _state(seed=1)
    p, o, meta = ckpts.restore(12, template_p, template_o)
  assert _equal(p, params) and _equal(o, opt_state)
  assert meta == {"epoch": 1, "history": [{"uauc": 0.5}]}
  with checkpoint.StageCheckpoints(tmp_path / "stage", read_only=True) as ckpts:
    assert _equal(ckpts.restore_params(12, template_p), params)
    assert ckpts.param_shapes(12) == {"emb": (5, 3), "head": {"bias": (2,), "kernel": (3, 2)}}
    assert ckpts.restore_meta(12)["epoch"] == 1


def test_keeps_latest_and_best_earliest_on_ties(tmp_path):
  params, opt_state = _state()
  with checkpoint.StageCheckpoints(tmp_path) as ckpts:
    for step, selection in [(10, 0.5), (20, 0.7), (25, None), (30, 0.7), (40, 0.6)]:
      ckpts.save(step, params, opt_state, {"step": step}, selection=selection)
      ckpts.wait()
    assert ckpts.all_steps() == [20, 40]
    assert ckpts.latest_step() == 40 and ckpts.best_step() == 20
  # Mid-epoch checkpoints (no selection value) are only kept while they are the latest.
  with checkpoint.StageCheckpoints(tmp_path) as ckpts:
    ckpts.save(45, params, opt_state, {"step": 45})
    ckpts.wait()
    assert ckpts.all_steps() == [20, 45] and ckpts.best_step() == 20


def test_uncommitted_save_is_ignored_and_removed(tmp_path):
  params, opt_state = _state()
  with checkpoint.StageCheckpoints(tmp_path) as ckpts:
    ckpts.save(5, params, opt_state, {"step": 5}, selection=0.1)
    ckpts.wait()
  # What a process killed in the middle of writing step 9 leaves behind.
  partial = tmp_path / "9.orbax-checkpoint-tmp-1234567"
  (partial / "params").mkdir(parents=True)
  (partial / "params" / "garbage").write_bytes(b"\0" * 10)
  with checkpoint.StageCheckpoints(tmp_path, read_only=True) as ckpts:
    assert ckpts.latest_step() == 5
  with checkpoint.StageCheckpoints(tmp_path) as ckpts:
    assert ckpts.latest_step() == 5
    p, _, _ = ckpts.restore(5, params, opt_state)
  assert not partial.exists()
  assert _equal(p, params)


def test_quiet_orbax_logging_drops_only_orbax_info():
  checkpoint.quiet_orbax_logging()
  checkpoint.quiet_orbax_logging()
  from absl import logging as absl_logging

  logger = absl_logging.get_absl_logger()
  filters = [f for f in logger.filters if isinstance(f, checkpoint._OrbaxInfoFilter)]
  assert len(filters) == 1
  orbax_file = os.sep.join(["", "site-packages", "orbax", "checkpoint", "x.py"])
  record = lambda level, path: logging.LogRecord("absl", level, path, 1, "m", None, None)
  assert not filters[0].filter(record(logging.INFO, orbax_file))
  assert filters[0].filter(record(logging.WARNING, orbax_file))
  assert filters[0].filter(record(logging.INFO, "/work/solid_jax/train/loop.py"))


def test_saved_meta_is_a_snapshot(tmp_path):
  # Orbax writes the JSON item in a background thread; the caller goes on training (and changing
  # its bookkeeping) meanwhile. Larger arrays make the background write come later.
  params = {"w": np.zeros((200, 200), np.float32)}
  opt_state = optax.adam(1e-3).init(params)
  with checkpoint.StageCheckpoints(tmp_path) as ckpts:
    for step in range(1, 11):
      meta = {"history": [{"epoch": e} for e in range(step)], "running": {"loss": 1.0}}
      ckpts.save(step, params, opt_state, meta, selection=float(step))
      meta["history"].append({"epoch": -1})
      meta["running"]["loss"] = 5.0
      ckpts.wait()
      assert ckpts.restore_meta(step) == {
        "history": [{"epoch": e} for e in range(step)],
        "running": {"loss": 1.0},
      }

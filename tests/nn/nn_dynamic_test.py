"""Generators (DUET, APG) and the per-user dynamic head against NumPy float64 references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solid_jax.configs import ModelConfig
from solid_jax.nn import dynamic
from solid_jax.nn import hypernet

B = 5


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _cfg(backbone="sasrec", head="duet"):
  return ModelConfig(backbone=backbone, head=head, num_items=10, num_semantics=4, dim=8,
                     num_heads=2, din_hidden=(12, 6), apg_rank=3)


def test_layer_specs():
  assert hypernet.layer_specs(_cfg()) == [(8, 8, "tanh"), (8, 8, None)]
  assert hypernet.layer_specs(_cfg("din")) == [(16, 12, "tanh"), (12, 6, "tanh"), (6, 1, None)]


@pytest.mark.parametrize("backbone", ["sasrec", "din"])
def test_duet_projection_and_head_match_numpy(backbone):
  cfg = _cfg(backbone)
  specs = hypernet.layer_specs(cfg)
  gen = hypernet.init(jax.random.key(0), cfg, "duet")
  z = np.random.default_rng(0).normal(size=(B, cfg.dim)).astype(np.float32)
  x = np.random.default_rng(1).normal(size=(B, specs[0][0])).astype(np.float32)
  weights = hypernet.project(gen, jnp.asarray(z), cfg, "duet")
  for j, (n_in, n_out, _) in enumerate(specs):
    chex.assert_shape(weights[f"layer_{j}"]["w"], (B, n_in, n_out))
    chex.assert_shape(weights[f"layer_{j}"]["b"], (B, n_out))
  got = jax.jit(lambda w, x: dynamic.head(w, None, x, specs))(weights, x)
  proj = _np(gen["proj"])
  for u in range(B):
    y = x[u].astype(np.float64)
    for j, (n_in, n_out, act) in enumerate(specs):
      p = proj[f"layer_{j}"]
      flat = z[u] @ p["A"] + p["a"]
      w = np.array([[flat[i * n_out + o] for o in range(n_out)] for i in range(n_in)])  # row-major
      y = y @ w + (z[u] @ p["B"] + p["c"])
      y = np.tanh(y) if act == "tanh" else y
    np.testing.assert_allclose(got[u], y, rtol=2e-4, atol=2e-4)


def test_apg_low_rank_equals_its_dense_product():
  cfg = _cfg()
  specs = hypernet.layer_specs(cfg)
  gen = hypernet.init(jax.random.key(1), cfg, "apg")
  shared = hypernet.apg_shared_init(jax.random.key(2), cfg)
  shared = jax.tree.map(lambda a: a + 0.1, shared)  # non-zero biases
  z = jnp.asarray(np.random.default_rng(2).normal(size=(B, cfg.dim)), jnp.float32)
  x = np.random.default_rng(3).normal(size=(B, cfg.dim)).astype(np.float32)
  weights = hypernet.project(gen, z, cfg, "apg")
  chex.assert_shape(weights["layer_0"]["core"], (B, 3, 3))
  got = jax.jit(lambda w, x: dynamic.head(w, shared, x, specs))(weights, x)
  sh = _np(shared)
  cores = _np(weights)
  for u in range(B):
    y = x[u].astype(np.float64)
    for j, (_, _, act) in enumerate(specs):
      v, uu, s = sh[f"layer_{j}"]["V"], sh[f"layer_{j}"]["U"], cores[f"layer_{j}"]["core"][u]
      w_dense = v["kernel"] @ s @ uu["kernel"]  # materialised in the test only
      b_dense = v["bias"] @ s @ uu["kernel"] + uu["bias"]
      y = y @ w_dense + b_dense
      y = np.tanh(y) if act == "tanh" else y
    np.testing.assert_allclose(got[u], y, rtol=2e-4, atol=2e-4)


def test_apg_core_is_row_major_reshape():
  cfg = _cfg()
  gen = hypernet.init(jax.random.key(3), cfg, "apg")
  z = jnp.ones((1, cfg.dim))
  core = hypernet.project(gen, z, cfg, "apg")["layer_1"]["core"][0]
  p = _np(gen["proj"]["layer_1"])
  flat = np.ones(cfg.dim) @ p["A"] + p["a"]
  np.testing.assert_allclose(core, flat.reshape(3, 3), rtol=1e-5)


def test_combine_clips_item_branch_only():
  item = {"layer_0": {"w": jnp.asarray([[-5.0, 0.001, 3.0]]), "b": jnp.asarray([[0.2]])}}
  sem = {"layer_0": {"w": jnp.asarray([[1.0, 2.0, 3.0]]), "b": jnp.asarray([[-7.0]])}}
  out = hypernet.combine(item, sem, 0.01)
  np.testing.assert_allclose(out["layer_0"]["w"], [[0.99, 2.001, 3.01]], rtol=1e-6)
  np.testing.assert_allclose(out["layer_0"]["b"], [[-6.99]], rtol=1e-6)


def test_generators_init_with_fmod_normal_and_expected_shapes():
  cfg = _cfg("din")
  gen = hypernet.init(jax.random.key(4), cfg, "duet")
  assert set(gen) == {"gru", "mlp", "proj"}
  p0 = gen["proj"]["layer_0"]
  chex.assert_shape(
      [p0["A"], p0["a"], p0["B"], p0["c"]], [(8, 16 * 12), (16 * 12,), (8, 12), (12,)]
  )
  for leaf in jax.tree.leaves(gen["proj"]):
    assert float(jnp.max(jnp.abs(leaf))) < 2.0
  with pytest.raises(ValueError, match="kind"):
    hypernet.init(jax.random.key(0), cfg, "lora")


def test_generate_fuses_grus_and_reads_state_at_n_minus_1():
  cfg = _cfg()
  g1 = hypernet.init(jax.random.key(5), cfg, "duet")
  g2 = hypernet.init(jax.random.key(6), cfg, "duet")
  rng = np.random.default_rng(7)
  s1 = rng.normal(size=(B, 6, cfg.dim)).astype(np.float32)
  s2 = rng.normal(size=(B, 6, cfg.dim)).astype(np.float32)
  lengths = jnp.asarray([6, 1, 3, 4, 2])
  w1, w2 = hypernet.generate([g1, g2], [s1, s2], lengths, cfg, "duet")
  alone = hypernet.generate([g2], [s2], lengths, cfg, "duet")[0]
  chex.assert_trees_all_close(w2, alone, rtol=1e-5, atol=1e-5)
  # Items after position n-1 do not matter.
  s1b = s1.copy()
  s1b[2, 3:] = 100.0
  w1b = hypernet.generate([g1], [s1b], lengths, cfg, "duet")[0]
  chex.assert_trees_all_close(w1, w1b, rtol=1e-5, atol=1e-5)

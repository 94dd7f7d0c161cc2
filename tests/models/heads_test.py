"""Generators (DUET, APG), the per-user dynamic layers and SOLID's combination against NumPy
float64 references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.models import hyper
from solid_jax.models import solid
from solid_jax.models.base import dense_head_specs

B = 5


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _cfg(backbone="sasrec", head="duet"):
  return sj.ModelConfig(
    backbone=backbone,
    head=head,
    num_items=10,
    num_semantics=4,
    dim=8,
    num_heads=2,
    din_hidden=(12, 6),
    apg_rank=3,
  )


def _specs(backbone):
  return tuple(sj.models.BACKBONES[backbone].head_specs(_cfg(backbone)))


def _project(kind, specs, state, seed):
  """(generator params, weights, condition z = mlp(state)) of a fresh generator."""
  gen = hyper.Generator(8, specs, kind, rank=3)
  params = gen.init(jax.random.key(seed), jnp.asarray(state), method=hyper.Generator.project)
  weights = gen.apply(params, jnp.asarray(state), method=hyper.Generator.project)
  z = gen.apply(params, jnp.asarray(state), method=lambda m, s: m.mlp(s))
  return params["params"], weights, np.asarray(z, np.float64)


def _apply_head(cls, cfg, specs, weights, x, seed, shift=0.0):
  head = cls(cfg, specs=specs)
  params = head.init(jax.random.key(seed), weights, x)
  params = jax.tree.map(lambda a: a + shift, params)
  return _np(params.get("params", {})), head.apply(params, weights, x)


@pytest.mark.parametrize("backbone", ["sasrec", "din"])
def test_duet_projection_and_head_match_numpy(backbone):
  cfg, specs = _cfg(backbone), _specs(backbone)
  state = np.random.default_rng(0).normal(size=(B, cfg.dim)).astype(np.float32)
  x = np.random.default_rng(1).normal(size=(B, specs[0][0])).astype(np.float32)
  gen, weights, z = _project("duet", specs, state, 0)
  for j, (n_in, n_out, _) in enumerate(specs):
    chex.assert_shape(weights[f"layer_{j}"]["w"], (B, n_in, n_out))
    chex.assert_shape(weights[f"layer_{j}"]["b"], (B, n_out))
  shared, got = _apply_head(hyper.DuetHead, cfg, specs, weights, x, 1)
  assert shared == {}  # DUET layers own no parameters
  proj = _np(gen["proj"])
  for u in range(B):
    y = x[u].astype(np.float64)
    for j, (n_in, n_out, act) in enumerate(specs):
      p = proj[f"layer_{j}"]
      flat = z[u] @ p["w"]["kernel"] + p["w"]["bias"]
      w = np.array([[flat[i * n_out + o] for o in range(n_out)] for i in range(n_in)])  # row-major
      y = y @ w + (z[u] @ p["b"]["kernel"] + p["b"]["bias"])
      y = np.tanh(y) if act == "tanh" else y
    np.testing.assert_allclose(got[u], y, rtol=2e-4, atol=2e-4)


def test_apg_low_rank_equals_its_dense_product():
  cfg, specs = _cfg(head="apg"), _specs("sasrec")
  state = np.random.default_rng(2).normal(size=(B, cfg.dim)).astype(np.float32)
  x = np.random.default_rng(3).normal(size=(B, cfg.dim)).astype(np.float32)
  _, weights, _ = _project("apg", specs, state, 1)
  chex.assert_shape(weights["layer_0"]["core"], (B, 3, 3))
  params, got = _apply_head(hyper.ApgHead, cfg, specs, weights, x, 2, shift=0.1)
  sh = params["shared"]
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
  gen, weights, z = _project("apg", _specs("sasrec"), np.ones((1, 8), np.float32), 3)
  p = _np(gen["proj"]["layer_1"]["core"])
  flat = z[0] @ p["kernel"] + p["bias"]
  np.testing.assert_allclose(weights["layer_1"]["core"][0], flat.reshape(3, 3), rtol=1e-5)


def test_dynamic_layers_are_the_one_user_function_vmapped():
  rng = np.random.default_rng(4)
  w = {
    "w": jnp.asarray(rng.normal(size=(B, 4, 3)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(B, 3)), jnp.float32),
  }
  x = jnp.asarray(rng.normal(size=(B, 4)), jnp.float32)
  got = sj.nn.dynamic.duet_layers(w, x)
  for u in range(B):
    one = {k: v[u] for k, v in w.items()}
    np.testing.assert_allclose(got[u], sj.nn.dynamic.duet_layer(one, x[u]), rtol=1e-6)


def test_combine_clips_item_branch_only():
  item = {"layer_0": {"w": jnp.asarray([[-5.0, 0.001, 3.0]]), "b": jnp.asarray([[0.2]])}}
  sem = {"layer_0": {"w": jnp.asarray([[1.0, 2.0, 3.0]]), "b": jnp.asarray([[-7.0]])}}
  out = solid.combine(item, sem, 0.01)
  np.testing.assert_allclose(out["layer_0"]["w"], [[0.99, 2.001, 3.01]], rtol=1e-6)
  np.testing.assert_allclose(out["layer_0"]["b"], [[-6.99]], rtol=1e-6)


def test_generators_init_with_fmod_normal_and_expected_shapes():
  z = np.zeros((1, 8), np.float32)
  gen, _, _ = _project("duet", _specs("din"), z, 4)
  p0 = gen["proj"]["layer_0"]
  chex.assert_shape(
    [p0["w"]["kernel"], p0["w"]["bias"], p0["b"]["kernel"], p0["b"]["bias"]],
    [(8, 16 * 12), (16 * 12,), (8, 12), (12,)],
  )
  for leaf in jax.tree.leaves(gen["proj"]):
    assert float(jnp.max(jnp.abs(leaf))) < 2.0
  with pytest.raises(ValueError, match="kind"):
    hyper.Generator(8, _specs("din"), "lora").init(
      jax.random.key(0), jnp.asarray(z), method=hyper.Generator.project
    )


def test_generate_fuses_grus_and_reads_state_at_n_minus_1():
  specs = tuple(dense_head_specs(_cfg()))
  rng = np.random.default_rng(7)
  s1 = rng.normal(size=(B, 6, 8)).astype(np.float32)
  s2 = rng.normal(size=(B, 6, 8)).astype(np.float32)
  lengths = jnp.asarray([6, 1, 3, 4, 2])
  g1, g2 = hyper.Generator(8, specs), hyper.Generator(8, specs)
  p1 = g1.init(jax.random.key(5), s1, lengths)
  p2 = g2.init(jax.random.key(6), s2, lengths)

  def fused(g1, g2):
    return hyper.generate_weights([g1, g2], [s1, s2], lengths)

  w1, w2 = jax.jit(lambda a, b: fused(g1.bind(a), g2.bind(b)))(p1, p2)
  chex.assert_trees_all_close(w2, g2.apply(p2, s2, lengths), rtol=1e-5, atol=1e-5)
  # Items after position n-1 do not matter.
  s1b = s1.copy()
  s1b[2, 3:] = 100.0
  chex.assert_trees_all_close(w1, g1.apply(p1, s1b, lengths), rtol=1e-5, atol=1e-5)

"""Model-level properties of the zoo.

Per-user independence, padding invariance, extreme inputs, vmap, auxiliary losses, paper_compat,
EMA state threading, codebook initialisation.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from tests.models.conftest import B
from tests.models.conftest import NUM_SEMANTICS
from tests.models.conftest import ROLLED
from tests.models.conftest import built
from tests.models.conftest import config
from tests.models.conftest import loss_fn
from tests.models.conftest import make_batch

# One SOLID model per backbone (the semantic branch and the codebook included), both generators.
CASES = [
  ("sasrec", "solid", "duet", "straight_through"),
  ("gru4rec", "solid", "apg", "ema"),
  ("din", "solid", "duet", "frozen"),
  ("bert4rec", "solid", "apg", "straight_through"),
]


def _rows(batch, index):
  return {k: v[index] for k, v in batch.items()}


@pytest.mark.parametrize("backbone,head,generator,mode", CASES)
def test_logits_of_a_user_do_not_depend_on_other_rows(backbone, head, generator, mode):
  b = built(config(backbone, head, generator, mode))
  batch = make_batch(10)
  logits, _ = b.apply(b.params, batch)
  perm = np.random.default_rng(0).permutation(B)
  permuted, _ = b.apply(b.params, _rows(batch, perm))
  np.testing.assert_allclose(permuted, np.asarray(logits)[perm], rtol=1e-5, atol=1e-6)
  other = make_batch(11)
  mixed = {k: np.concatenate([v[:2], other[k][2:]]) for k, v in batch.items()}
  mixed_logits, _ = b.apply(b.params, mixed)
  np.testing.assert_allclose(mixed_logits[:2], logits[:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone,head,generator,mode", CASES)
def test_padding_embeddings_do_not_change_the_output(backbone, head, generator, mode):
  b = built(config(backbone, head, generator, mode))
  batch = make_batch(12)
  logits, aux = b.apply(b.params, batch)
  noise = jax.random.normal(jax.random.key(1), (2, b.cfg.dim)) * 50.0
  params = jax.tree.map(lambda x: x, b.params)  # a copy of the nested dicts
  table = params["backbone"]["item_embedding"]
  table["embedding"] = table["embedding"].at[0].set(noise[0])
  if head == "solid":
    table = params["head"]["semantic_embedding"]
    table["embedding"] = table["embedding"].at[0].set(noise[1])
  logits2, aux2 = b.apply(params, batch)
  np.testing.assert_array_equal(logits2, logits)
  np.testing.assert_array_equal(aux2["aux_loss"], aux["aux_loss"])
  np.testing.assert_array_equal(aux2["codebook/perplexity"], aux["codebook/perplexity"])


def test_rows_with_zero_weight_do_not_change_the_auxiliary_losses():
  b = built(config("sasrec", "solid", "duet", "straight_through"))
  batch = make_batch(13)
  batch["weight"] = np.asarray([1, 1, 1, 0, 0, 0], np.float32)
  _, aux = b.apply(b.params, batch)
  other = make_batch(14)
  mixed = {
    k: (np.concatenate([v[:3], other[k][3:]]) if k in other else v) for k, v in batch.items()
  }
  _, aux2 = b.apply(b.params, mixed)
  for key in ("aux_loss", "consistency_loss", "codebook/usage", "codebook/perplexity"):
    np.testing.assert_allclose(aux2[key], aux[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("backbone,head,generator,mode", CASES + [("din", "apg", "duet", "ema")])
def test_aux_loss_is_zero_without_solid_and_positive_with_it(backbone, head, generator, mode):
  b = built(config(backbone, head, generator, mode))
  _, aux = b.apply(b.params, make_batch(15))
  if head == "solid":
    assert float(aux["aux_loss"]) > 0.0
    assert float(aux["consistency_loss"]) > 0.0
  else:
    assert float(aux["aux_loss"]) == 0.0


def _grad_finite(model, params, batch):
  """Loss, logits and every gradient finite (eager: one compile per model would cost more here)."""
  (loss, (logits, aux)), grads = jax.value_and_grad(loss_fn(model), has_aux=True)(params, batch)
  leaves = [loss, logits, aux["aux_loss"]] + jax.tree.leaves(grads)
  return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


@pytest.mark.parametrize(
  "backbone,generator,clip_t", [("sasrec", "duet", 1e6), ("din", "apg", 1e-8)]
)
def test_finite_gradients_at_extreme_inputs(backbone, generator, clip_t):
  cfg = config(backbone, "solid", generator, "straight_through", clip_t=clip_t)
  model = sj.make_model(cfg, scan_unroll=ROLLED)
  params = model.init(jax.random.key(2))
  huge = jax.tree.map(lambda x: x, params)
  huge["backbone"]["item_embedding"]["embedding"] *= 1e4
  huge["head"]["semantic_embedding"]["embedding"] *= 1e4
  huge["head"]["codebook"] = {"codes": params["head"]["codebook"]["codes"] * 1e3}
  # Ordinary rows, then rows whose history is all padding but one item.
  mixed = make_batch(16, lengths=[10, 4, 7, 1, 1, 1])
  assert _grad_finite(model, huge, mixed)
  assert _grad_finite(model, params, make_batch(16, lengths=[1] * B))


@pytest.mark.parametrize("backbone,head,generator,mode", CASES)
def test_rows_without_items_give_finite_outputs(backbone, head, generator, mode):
  b = built(config(backbone, head, generator, mode))
  batch = make_batch(17, lengths=[0, 3, 0, 10, 1, 0])
  logits, aux = b.apply(b.params, batch)
  assert np.all(np.isfinite(np.asarray(logits)))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(aux))
  if backbone == "sasrec":
    assert _grad_finite(b.model, b.params, make_batch(17, lengths=[0] * B))


def test_apply_is_vmappable():
  b = built(config("gru4rec", "solid", "apg", "ema"))
  b1, b2 = make_batch(18), make_batch(19)
  stacked = jax.tree.map(lambda x, y: np.stack([x, y]), b1, b2)
  logits, aux = jax.jit(jax.vmap(b.model.apply, in_axes=(None, 0)))(b.params, stacked)
  chex.assert_shape(logits, (2, B))
  for i, single in enumerate((b1, b2)):
    want, want_aux = b.apply(b.params, single)
    np.testing.assert_allclose(logits[i], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["aux_loss"][i], want_aux["aux_loss"], rtol=1e-5)
    chex.assert_trees_all_close(
      jax.tree.map(lambda x, i=i: x[i], aux["codebook_state"]),
      want_aux["codebook_state"],
      rtol=1e-5,
      atol=1e-6,
    )


@pytest.mark.parametrize(
  "head,generator", [("duet", "duet"), ("apg", "duet"), ("solid", "duet"), ("solid", "apg")]
)
def test_paper_compat_freezes_exactly_the_generator_projections(head, generator):
  for compat in (False, True):
    cfg = config("sasrec", head, generator, paper_compat=compat)
    model = sj.make_model(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0))
    flat, _ = jax.tree_util.tree_flatten_with_path(model.trainable(params))
    frozen = {"/".join(str(k.key) for k in path) for path, t in flat if not t}
    gens = ("generator",) if head != "solid" else ("item_generator", "semantic_generator")
    parts = ("w", "b") if (head == "duet" or generator == "duet" and head == "solid") else ("core",)
    want = {
      f"head/{g}/proj/layer_{j}/{part}/{n}"
      for g in gens
      for j in range(2)
      for part in parts
      for n in ("kernel", "bias")
    }
    assert frozen == (want if compat else set())


def test_ema_state_is_threaded_through_update_state():
  b = built(config("gru4rec", "solid", "apg", "ema"))
  batch = make_batch(20)
  _, aux = b.apply(b.params, batch)
  params = b.model.update_state(b.params, aux)
  new, old = params["head"]["codebook"], b.params["head"]["codebook"]
  assert float(new["ema"]["step"]) == 1.0
  assert not np.allclose(new["codes"], old["codes"])
  np.testing.assert_array_equal(new["codes"][0], old["codes"][0])
  chex.assert_trees_all_equal_structs(params, b.params)
  # The new codes are the ones used next: the lookup changes with them.
  new["codes"] = new["codes"] * 0 + 1.0
  _, aux2 = b.apply(params, batch)
  assert float(aux2["commitment_loss"]) != float(aux["commitment_loss"])
  # Other modes: identity.
  st = built(config("sasrec", "solid", "duet", "straight_through"))
  _, aux_st = st.apply(st.params, batch)
  assert st.model.update_state(st.params, aux_st) is st.params


def test_codebook_init_from_a_metacode():
  cfg = config("sasrec", "solid", "duet", "frozen")
  model = sj.make_model(cfg)
  table = np.random.default_rng(3).normal(size=(NUM_SEMANTICS, cfg.dim)).astype(np.float32)
  params = model.init(jax.random.key(0), codebook_init=table)
  np.testing.assert_array_equal(params["head"]["codebook"]["codes"], table)
  with pytest.raises(ValueError):
    sj.make_model(config("sasrec", "duet")).init(jax.random.key(0), codebook_init=table)
  # Stage 1 model: a DUET model over semantic ids; its item table is the metacode.
  stage1 = sj.make_model(sj.ModelConfig(backbone="sasrec", head="duet", num_items=NUM_SEMANTICS))
  metacode = sj.models.item_table(stage1.init(jax.random.key(1)))
  params = model.init(jax.random.key(0), codebook_init=metacode)
  np.testing.assert_array_equal(params["head"]["codebook"]["codes"], metacode)


def test_unrolled_default_equals_rolled_scan():
  # Three GRUs: the backbone's and the two branches'.
  b = built(config("gru4rec", "solid", "apg", "straight_through"))
  default = sj.make_model(b.cfg)
  batch = make_batch(21)
  logits, aux = jax.jit(default.apply)(b.params, batch)
  want, want_aux = b.apply(b.params, batch)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux["aux_loss"], want_aux["aux_loss"], rtol=1e-6)


@pytest.mark.parametrize("backbone,head,generator,mode", CASES[:2])
def test_hyper_overrides_equal_a_model_built_with_those_values(backbone, head, generator, mode):
  """``apply(..., hyper=...)``: a traced t and lambda give the outputs of a model whose config
  holds them, each member of a vmap its own; unknown fields are refused."""
  b = built(config(backbone, head, generator, mode))
  batch = make_batch(21)
  values = {"clip_t": 0.3, "consistency_weight": 2.0}
  other = built(config(backbone, head, generator, mode, **values))
  want, want_aux = other.apply(b.params, batch)
  got, got_aux = jax.jit(b.model.apply)(b.params, batch, hyper=values)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_aux["aux_loss"], want_aux["aux_loss"], rtol=1e-6)
  default, _ = b.apply(b.params, batch)
  assert np.max(np.abs(np.asarray(got) - np.asarray(default))) > 1e-4  # t changes the outputs
  # Several values in one vmapped call, each equal to its own model.
  ts = jnp.asarray([0.01, 0.3], jnp.float32)
  stacked, aux = jax.jit(jax.vmap(lambda t: b.model.apply(b.params, batch, hyper={"clip_t": t})))(
    ts
  )
  chex.assert_shape(stacked, (2, B))
  np.testing.assert_allclose(stacked[0], default, rtol=1e-6, atol=1e-6)
  single, _ = built(config(backbone, head, generator, mode, clip_t=0.3)).apply(b.params, batch)
  np.testing.assert_allclose(stacked[1], single, rtol=1e-6, atol=1e-6)
  # lambda is traced: d aux_loss / d lambda is the (unweighted) consistency loss.
  grad = jax.grad(
    lambda lam: b.model.apply(b.params, batch, hyper={"consistency_weight": lam})[1]["aux_loss"]
  )(1.0)
  np.testing.assert_allclose(grad, want_aux["consistency_loss"], rtol=1e-5)
  with pytest.raises(ValueError, match="run-time fields"):
    b.model.apply(b.params, batch, hyper={"dim": 8})

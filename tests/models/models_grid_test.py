"""Backbone x head x codebook mode: shapes, dtypes, losses, gradients, jit, generate/score."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from tests.models.conftest import B
from tests.models.conftest import BACKBONES
from tests.models.conftest import HEADS
from tests.models.conftest import MODES
from tests.models.conftest import ROLLED
from tests.models.conftest import built
from tests.models.conftest import config
from tests.models.conftest import loss_fn
from tests.models.conftest import make_batch

FULL_GRID = [
  (bb, head, gen, mode)
  for bb in BACKBONES
  for head, gen in HEADS
  for mode in (MODES if head == "solid" else ("straight_through",))
]
# Gradient grid. The head and generator wiring is the same for SASRec, GRU4Rec and BERT4Rec (same
# head shapes, same sequence embeddings) and differs for DIN, so: every head on SASRec and DIN,
# every codebook mode with both generators on SASRec, and GRU4Rec / BERT4Rec with the static and
# two SOLID heads (their own backbone parameters).
GRAD_GRID = (
  [(bb, head, gen, "straight_through") for bb in ("sasrec", "din") for head, gen in HEADS]
  + [("sasrec", "solid", gen, mode) for gen in ("duet", "apg") for mode in ("frozen", "ema")]
  + [
    (bb, head, gen, mode)
    for bb in ("gru4rec", "bert4rec")
    for head, gen, mode in (
      ("static", "duet", "straight_through"),
      ("solid", "duet", "ema"),
      ("solid", "apg", "frozen"),
    )
  ]
)
# Parameters that legitimately receive no gradient, by codebook mode (paper_compat off).
NO_GRAD = {
  "straight_through": set(),
  "frozen": {"head/codebook/codes"},
  "ema": {
    "head/codebook/codes",
    "head/codebook/ema/count",
    "head/codebook/ema/sum",
    "head/codebook/ema/prior",
    "head/codebook/ema/unused",
    "head/codebook/ema/step",
    "head/codebook/ema/seed",
  },
}


def _paths(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


@pytest.mark.parametrize("backbone,head,generator,mode", FULL_GRID)
def test_shapes_and_dtypes(backbone, head, generator, mode):
  cfg = config(backbone, head, generator, mode)
  model = sj.make_model(cfg, scan_unroll=ROLLED)
  params = jax.eval_shape(model.init, jax.random.key(0))
  batch = make_batch(1)
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float32
  logits, aux = jax.eval_shape(model.apply, params, batch)
  chex.assert_shape(logits, (B,))
  assert logits.dtype == jnp.float32
  assert aux["aux_loss"].shape == () and aux["aux_loss"].dtype == jnp.float32
  weights = jax.eval_shape(model.generate, params, batch)
  if head == "static":
    assert weights == {}
  for leaf in jax.tree.leaves(weights):
    assert leaf.shape[0] == B and leaf.dtype == jnp.float32
  assert jax.tree.structure(model.trainable(params)) == jax.tree.structure(params)
  if head == "solid":
    expected = {
      "aux_loss",
      "consistency_loss",
      "codebook_loss",
      "commitment_loss",
      "codebook/counts",
      "codebook/perplexity",
      "codebook/usage",
    }
    if mode == "ema":
      expected.add("codebook_state")
    assert set(aux) == expected
    if mode == "ema":
      chex.assert_trees_all_equal_shapes_and_dtypes(
        aux["codebook_state"], params["head"]["codebook"]
      )
  else:
    assert set(aux) == {"aux_loss"}


@pytest.mark.parametrize("backbone,head,generator,mode", GRAD_GRID)
def test_loss_and_every_learnable_parameter_gets_a_gradient(backbone, head, generator, mode):
  # A wide clip: with t = 0.01 and the fmod(randn, 2) projections, most generated item-branch
  # entries lie outside [-t, t] where the clip has zero derivative by design (for DIN's one-entry
  # output bias, all of them in a small batch). This test checks that every parameter is wired to
  # the loss.
  # Eager (op by op): cheaper than compiling 28 gradient programs; jit is covered below.
  b = built(config(backbone, head, generator, mode, clip_t=100.0))
  batch = make_batch(2)
  (loss, (logits, aux)), grads = jax.value_and_grad(loss_fn(b.model), has_aux=True)(b.params, batch)
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(logits)))
  if head == "solid":
    assert float(aux["aux_loss"]) > 0
    assert 0 < float(aux["codebook/usage"]) <= 1
    assert float(aux["codebook/perplexity"]) >= 1
  else:
    assert float(aux["aux_loss"]) == 0.0
  grads = _paths(grads)
  for name, g in grads.items():
    assert np.all(np.isfinite(np.asarray(g))), name
  zero = {name for name, g in grads.items() if not np.any(np.asarray(g) != 0)}
  assert zero == (NO_GRAD[mode] if head == "solid" else set())
  trainable = _paths(b.model.trainable(b.params))
  frozen = {name for name, t in trainable.items() if not t}
  assert frozen == (NO_GRAD[mode] if head == "solid" else set())


JIT_CASES = [
  ("sasrec", "solid", "duet", "straight_through"),
  ("gru4rec", "solid", "apg", "ema"),
  ("din", "duet", "duet", "straight_through"),
  ("din", "solid", "apg", "frozen"),
  ("bert4rec", "apg", "duet", "straight_through"),
  ("gru4rec", "static", "duet", "straight_through"),
]
JIT_EXACT = JIT_CASES[:3]


@pytest.mark.parametrize("backbone,head,generator,mode", JIT_CASES)
def test_jit_equals_eager_and_score_of_generate_equals_apply(backbone, head, generator, mode):
  b = built(config(backbone, head, generator, mode))
  batch = make_batch(3)
  jit_logits, jit_aux = b.apply(b.params, batch)
  eager_logits, eager_aux = b.model.apply(b.params, batch)
  np.testing.assert_allclose(jit_logits, eager_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jit_aux["aux_loss"], eager_aux["aux_loss"], rtol=1e-5, atol=1e-6)
  # Generate once, score: exactly apply's logits (eager and under jit).
  weights = b.model.generate(b.params, batch)
  np.testing.assert_array_equal(b.model.score(b.params, weights, batch), eager_logits)
  if (backbone, head, generator, mode) in JIT_EXACT:
    jit_weights = jax.jit(b.model.generate)(b.params, batch)
    np.testing.assert_array_equal(jax.jit(b.model.score)(b.params, jit_weights, batch), jit_logits)

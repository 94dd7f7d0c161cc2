"""Parity of the PyTorch reference (``reference/``) with solid_jax, weights copied across.

Every backbone x head (static, duet, apg, solid with either generator and codebook mode) gives the
same logits and auxiliary loss in float32; the per-user weights of ``generate`` and ``score`` agree
too; and the gradients of the training loss of SASRec+SOLID agree for every parameter.

The forward matrix runs the solid_jax functions op by op (``jax.disable_jit``): the same code,
without one XLA compilation per configuration (that would cost minutes on 2 cores). One test checks
the jitted functions as well.

Parameters are random draws in the structure of ``model.init`` (``make_params``), nonzero everywhere
(so that biases, padding rows and layer-norm parameters are exercised), scaled so that the logits
have a typical magnitude (|logit| of order 1).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

import solid_jax as sj  # noqa: E402
from reference import convert  # noqa: E402
from reference import torch_models  # noqa: E402

pytestmark = pytest.mark.torch

B, L = 8, 10
NUM_ITEMS, NUM_SEMANTICS = 40, 6
LENGTHS = np.array([1, 10, 3, 7, 2, 10, 5, 9])  # n = 1 and n = L included.
# Logits: |Δ| <= LOGIT_TOL · max(1, max_b |logit_b|): 5e-6 absolute when the logits are of order 1.
# The rounding error of an element scales with the magnitude of the batch's intermediates, not with
# that element (a logit of 0.3 can come from a difference of terms of order 8): float32 runs of
# both libraries differ from a float64 run by about 1e-6 · max |logit|.
LOGIT_TOL = 5e-6
BACKBONES = ("sasrec", "gru4rec", "din", "bert4rec")
# (head, generator, codebook mode, extra config).
HEADS = (
  ("static", "duet", "straight_through", {}),
  ("duet", "duet", "straight_through", {}),
  ("apg", "apg", "straight_through", {}),
  ("solid", "duet", "straight_through", {}),
  ("solid", "duet", "frozen", {}),
  ("solid", "apg", "straight_through", {}),
  ("solid", "apg", "frozen", {"num_codes": 9}),
)
EMA_CASES = (("sasrec", "duet"), ("din", "apg"))


def make_batch(seed: int = 0, weight: bool = False) -> dict[str, np.ndarray]:
  """A padded batch: rows of lengths ``LENGTHS``, semantics from a random item -> class table."""
  rng = np.random.default_rng(seed)
  valid = np.arange(L)[None, :] < LENGTHS[:, None]
  items = np.where(valid, rng.integers(1, NUM_ITEMS, (B, L)), 0).astype(np.int32)
  item_semantic = np.concatenate([[0], rng.integers(1, NUM_SEMANTICS, NUM_ITEMS - 1)])
  item_semantic = item_semantic.astype(np.int32)
  target = rng.integers(1, NUM_ITEMS, B).astype(np.int32)
  batch = {
    "items": items,
    "semantics": item_semantic[items],
    "target": target,
    "target_semantic": item_semantic[target],
  }
  if weight:
    batch["weight"] = np.array([1, 1, 0, 1, 1, 1, 0, 1], np.float32)
  return batch


def make_params(model, seed: int = 1):
  """Random parameters with the structure and shapes of ``model.init`` (drawn with NumPy: cheap).

  Matrices Xavier-uniform (padding rows included), vectors N(0, 0.05²) (layer-norm scales 1 + that),
  so that what solid_jax initialises to zero is exercised too; generator projections
  ``fmod(normal, 2)`` as solid_jax's init, scaled by 0.1 (DUET) or 0.3 (APG) so that the logits are
  of order 1. EMA statistics get their init values (they do not enter the logits).
  """
  rng = np.random.default_rng(seed)
  cfg = model.config
  family = cfg.generator if cfg.head == "solid" else cfg.head
  proj_scale = 0.1 if family == "duet" else 0.3
  shapes = jax.eval_shape(model.init, jax.random.key(seed))

  def draw(path, leaf):
    names = [getattr(p, "key", None) for p in path]
    shape = leaf.shape
    if "ema" in names:
      return np.zeros(shape, np.float32)
    if "proj" in names:
      x = proj_scale * np.fmod(rng.standard_normal(shape), 2.0)
    elif len(shape) == 2:
      limit = np.sqrt(6.0 / sum(shape))
      x = rng.uniform(-limit, limit, shape)
    elif len(shape) == 3:  # Flax attention kernels, [d, H, d/H] or [H, d/H, d]: a d x d matrix
      limit = np.sqrt(6.0 / (2.0 * np.sqrt(np.prod(shape))))
      x = rng.uniform(-limit, limit, shape)
    else:
      x = 0.05 * rng.standard_normal(shape) + (names[-1] == "scale")
    return x.astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  codebook = params.get("head", {}).get("codebook", {})
  if "ema" in codebook:
    codebook["ema"]["count"] = np.ones_like(codebook["ema"]["count"])
    codebook["ema"]["sum"] = codebook["codes"].copy()
  return params


def torch_twin(cfg, params):
  """The reference model of ``cfg`` with ``params`` loaded."""
  model = torch_models.build_torch_model(cfg)
  convert.load_jax_params(model, params)
  return model


def cases():
  for backbone in BACKBONES:
    for head, generator, mode, extra in HEADS:
      name = f"{backbone}-{head}" + (f"-{generator}-{mode}" if head == "solid" else "")
      yield pytest.param(backbone, head, generator, mode, extra, id=name)
  for backbone, generator in EMA_CASES:
    yield pytest.param(
      backbone, "solid", generator, "ema", {}, id=f"{backbone}-solid-{generator}-ema"
    )


def assert_logits_close(actual, expected):
  scale = max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(actual, expected, rtol=0.0, atol=LOGIT_TOL * scale)


@pytest.mark.parametrize("backbone,head,generator,mode,extra", list(cases()))
def test_forward_generate_score_parity(backbone, head, generator, mode, extra):
  cfg = sj.ModelConfig(
    backbone=backbone,
    head=head,
    generator=generator,
    codebook=mode,
    num_items=NUM_ITEMS,
    num_semantics=NUM_SEMANTICS,
    **extra,
  )
  model = sj.make_model(cfg)
  batch = make_batch(weight=head == "solid")
  params = make_params(model)
  with jax.disable_jit():
    logits, aux = model.apply(params, batch)
    weights = model.generate(params, batch)
  logits = np.asarray(logits)
  assert np.all(np.isfinite(logits))
  assert 0.1 < np.max(np.abs(logits)) < 50.0  # a typical magnitude, not a degenerate 0.

  net = torch_twin(cfg, params)
  tbatch = convert.to_torch_batch(batch)
  # Training mode with autograd (the path of a training step) and eval mode without it (PyTorch's
  # fused inference kernels for the transformer layers) must both agree.
  t_logits, t_aux = net(tbatch)
  assert_logits_close(t_logits.detach().numpy(), logits)
  np.testing.assert_allclose(float(t_aux.detach()), float(aux["aux_loss"]), rtol=1e-5, atol=1e-7)
  net.eval()
  with torch.no_grad():
    e_logits, _ = net(tbatch)
    t_weights = net.generate(tbatch)
    t_scored = net.score(t_weights, tbatch)
  assert_logits_close(e_logits.numpy(), logits)
  assert_logits_close(t_scored.numpy(), logits)

  assert len(t_weights) == len(weights)
  for j, t_w in enumerate(t_weights):
    w = weights[f"layer_{j}"]
    assert set(t_w) == set(w)
    for name, value in t_w.items():
      np.testing.assert_allclose(
        value.numpy(), np.asarray(w[name]), rtol=1e-5, atol=1e-6, err_msg=f"layer_{j}/{name}"
      )
  if head == "solid":
    assert float(aux["aux_loss"]) > 0.0


def test_jitted_solid_forward_parity():
  cfg = sj.ModelConfig(
    backbone="sasrec",
    head="solid",
    generator="apg",
    num_items=NUM_ITEMS,
    num_semantics=NUM_SEMANTICS,
  )
  model = sj.make_model(cfg)
  batch = make_batch(seed=3)
  params = make_params(model, seed=4)
  logits, aux = jax.jit(model.apply)(params, batch)
  t_logits, t_aux = torch_twin(cfg, params)(convert.to_torch_batch(batch))
  assert_logits_close(t_logits.detach().numpy(), np.asarray(logits))
  np.testing.assert_allclose(float(t_aux.detach()), float(aux["aux_loss"]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("generator,mode", [("duet", "straight_through"), ("apg", "frozen")])
def test_sasrec_solid_gradient_parity(generator, mode):
  cfg = sj.ModelConfig(
    backbone="sasrec",
    head="solid",
    generator=generator,
    codebook=mode,
    num_items=NUM_ITEMS,
    num_semantics=NUM_SEMANTICS,
  )
  model = sj.make_model(cfg)
  batch = make_batch(seed=5, weight=True)
  labels = np.array([1, 0, 0, 1, 0, 1, 1, 0], np.float32)
  params = make_params(model, seed=6)

  def loss_fn(p):
    logits, aux = model.apply(p, batch)
    bce = jax.numpy.mean(jax.numpy.logaddexp(0.0, logits) - labels * logits)
    return bce + aux["aux_loss"]

  with jax.disable_jit():
    loss, grads = jax.value_and_grad(loss_fn)(params)
  expected = convert.torch_state(grads)

  net = torch_twin(cfg, params)
  logits, aux = net(convert.to_torch_batch(batch))
  bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels))
  t_loss = bce + aux
  t_loss.backward()
  np.testing.assert_allclose(float(t_loss.detach()), float(loss), rtol=1e-5)

  checked = 0
  for name, p in net.named_parameters():
    g = expected[name]
    scale = max(float(np.max(np.abs(g))), 1e-3)
    assert p.grad is not None, name
    np.testing.assert_allclose(p.grad.numpy(), g, rtol=0, atol=1e-4 * scale, err_msg=name)
    checked += 1
  assert checked == len(expected) - (mode != "straight_through")  # frozen codes: a buffer.
  # The gradients are not trivially zero where they must not be.
  codebook_grad = expected["codebook.codes"]
  if mode == "straight_through":
    assert np.max(np.abs(codebook_grad)) > 0.0
  assert np.max(np.abs(expected["item_generator.gru.weight_ih_l0"])) > 0.0
  assert np.max(np.abs(expected["semantic_embedding.weight"])) > 0.0

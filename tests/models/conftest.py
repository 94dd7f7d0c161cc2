"""Shared helpers of the model tests.

Tiny configurations, random batches, and compiled functions cached per configuration (each is
compiled once for the whole session). Models are built with ``scan_unroll=1`` (a rolled GRU loop):
the same function as the default fully unrolled scan
(``models_properties_test.test_unrolled_default_equals_rolled_scan``) at a third of the compile
time.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import solid_jax as sj

B = 6
NUM_ITEMS = 30
NUM_SEMANTICS = 6
BACKBONES = ("sasrec", "gru4rec", "din", "bert4rec")
# (head, generator) pairs: the five heads of the zoo.
HEADS = (("static", "duet"), ("duet", "duet"), ("apg", "duet"), ("solid", "duet"), ("solid", "apg"))
MODES = ("straight_through", "frozen", "ema")
ROLLED = 1


def config(backbone="sasrec", head="solid", generator="duet", codebook="straight_through", **kw):
  return sj.ModelConfig(
    backbone=backbone,
    head=head,
    generator=generator,
    codebook=codebook,
    num_items=NUM_ITEMS,
    num_semantics=NUM_SEMANTICS,
    **kw,
  )


def item_semantic():
  """A fixed item -> semantic id map (0 for padding)."""
  ids = np.arange(NUM_ITEMS)
  return np.where(ids > 0, ids % (NUM_SEMANTICS - 1) + 1, 0).astype(np.int32)


def make_batch(seed, lengths=None, batch_size=B, seq_len=10):
  """A random batch following the sequence convention (items[b, :n] real, the rest 0)."""
  rng = np.random.default_rng(seed)
  if lengths is None:
    lengths = rng.integers(1, seq_len + 1, size=batch_size)
    lengths[0], lengths[1] = seq_len, 1
  lengths = np.asarray(lengths)
  items = rng.integers(1, NUM_ITEMS, size=(len(lengths), seq_len)).astype(np.int32)
  items[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0
  target = rng.integers(1, NUM_ITEMS, size=len(lengths)).astype(np.int32)
  sem = item_semantic()
  return {
    "items": items,
    "semantics": sem[items],
    "target": target,
    "target_semantic": sem[target],
    "label": (rng.random(len(lengths)) < 0.5).astype(np.float32),
  }


def loss_fn(model):
  def loss(params, batch):
    logits, aux = model.apply(params, batch, train=True)
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["label"]))
    return bce + aux["aux_loss"], (logits, aux)

  return loss


class Built:
  """A model, its parameters and its compiled apply / loss-gradient functions."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.model = sj.make_model(cfg, scan_unroll=ROLLED)
    self.params = self.model.init(jax.random.key(0))
    self.apply = jax.jit(self.model.apply)


@functools.lru_cache(maxsize=None)
def built(cfg) -> Built:
  return Built(cfg)


@pytest.fixture
def batch():
  return make_batch(0)

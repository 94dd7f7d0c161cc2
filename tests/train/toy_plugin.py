"""A plugin from outside the package: a mean-pooling backbone, a scaled static head, a method.

Loaded by module path (``--plugins=tests.train.toy_plugin``) or file path; each class is one
registration, as a user's own would be.
"""

import flax.linen as nn
import jax.numpy as jnp

from solid_jax.models import BACKBONES, EmbeddingBackbone, HEADS, Head, METHODS


@BACKBONES.register("toy_mean", replace=True)
class MeanPool(EmbeddingBackbone):
  """The state is the mean of the real positions' sequence embeddings."""

  def encode(
    self, seq_emb, items, target_vec=None, *, all_positions=False, segments=None, train=False
  ):
    valid = (items != 0)[..., None].astype(seq_emb.dtype)
    return jnp.sum(seq_emb * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)


@HEADS.register("toy_scale", replace=True)
class ScaleHead(Head):
  """One learned scale per feature, the same for every user."""

  dynamic = False

  @nn.compact
  def __call__(self, weights, x):
    return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))


METHODS.register("toy", replace=True)({"head": "toy_scale"})

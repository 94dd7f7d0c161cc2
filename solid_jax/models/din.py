"""DIN (Zhou et al., 2018): target attention over the history. The head sees the target:
its input is ``concat(t, pooled)`` and its single output is the logit, so DIN is not factorised
(full-catalogue ranking scores it pairwise in tiles)."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from solid_jax.models.base import EmbeddingBackbone
from solid_jax.models.registry import BACKBONES
from solid_jax.nn import layers


@BACKBONES.register("din")
class DIN(EmbeddingBackbone):
  """DIN: ``q = t Wq, k = seq_emb Wk, v = seq_emb Wv`` (no biases), ``p = softmax(q.k / sqrt(d))``
  over real positions (Flax's ``dot_product_attention``), head input ``concat(t, sum p v)``; the
  target tower is one tanh layer. The head is ``[(2d, h1, tanh), (h1, h2, tanh), (h2, 1, -)]``
  with ``(h1, h2) = cfg.din_hidden`` (``cfg.head_layers`` is ignored)."""

  tower_activations: ClassVar[tuple[str | None, ...]] = ("tanh",)

  @classmethod
  def factorised(cls, cfg):
    return False

  @classmethod
  def head_specs(cls, cfg):
    sizes = [2 * cfg.dim, *cfg.din_hidden, 1]
    acts = ["tanh"] * len(cfg.din_hidden) + [None]
    return [(a, b, act) for a, b, act in zip(sizes[:-1], sizes[1:], acts)]

  def setup(self):
    super().setup()
    self.attention = _Projections(self.cfg.dim, layers.kernel_init(self.cfg.init_std))

  def encode(
    self, seq_emb, items, target_vec=None, *, all_positions=False, segments=None, train=False
  ):
    del train
    if all_positions or segments is not None:
      raise ValueError("DIN's state depends on the target: it cannot be trained on every position")
    valid = items != 0
    q, k, v = self.attention(target_vec, seq_emb)
    pooled = nn.dot_product_attention(
      q[:, None, None, :], k[:, :, None, :], v[:, :, None, :], mask=valid[:, None, None, :]
    )[:, 0, 0]
    # A row without history pools to zero (the attention would average its padding).
    pooled = pooled * jnp.any(valid, axis=-1, keepdims=True).astype(pooled.dtype)
    return jnp.concatenate([target_vec, pooled], axis=-1)


class _Projections(nn.Module):
  """DIN's ``{"query", "key", "value"}``: Flax ``Dense`` d -> d without bias."""

  dim: int
  kernel_init: layers.Initializer

  @nn.compact
  def __call__(self, target_vec, seq_emb):
    dense = lambda name: nn.Dense(
      self.dim,
      use_bias=False,
      kernel_init=self.kernel_init,  # noqa: E731
      name=name,
    )
    return dense("query")(target_vec), dense("key")(seq_emb), dense("value")(seq_emb)

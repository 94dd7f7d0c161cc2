"""SASRec (Kang & McAuley, 2018), and ``TransformerBackbone``, the encoder it shares with
BERT4Rec: item + position embeddings, post-norm transformer layers (Flax attention), the state
read at position n-1."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from solid_jax.model_config import ModelConfig
from solid_jax.models.base import EmbeddingBackbone, last_index, lengths_of
from solid_jax.models.registry import BACKBONES
from solid_jax.nn import layers


class TransformerStack(nn.Module):
  """``num_layers`` ``layers.TransformerLayer`` named ``layer_0, layer_1, ...``; the last one
  computes only the row ``query_index`` when that is given."""

  num_layers: int
  dim: int
  ff_dim: int
  num_heads: int
  ff_activation: str
  eps: float
  dropout_hidden: float = 0.0
  dropout_attention: float = 0.0
  kernel_init: layers.Initializer = layers.xavier_uniform()

  @nn.compact
  def __call__(self, x, key_mask, *, query_index=None, causal=False, segments=None, train=False):
    """float[B, L, d] -> float[B, L, d] (float[B, d] with ``query_index`` int[B])."""
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = layers.TransformerLayer(
        self.dim,
        self.ff_dim,
        self.num_heads,
        self.ff_activation,
        self.eps,
        self.dropout_hidden,
        self.dropout_attention,
        self.kernel_init,
        name=f"layer_{i}",
      )(
        x,
        key_mask,
        query_index=query_index if last else None,
        causal=causal,
        segments=segments,
        train=train,
      )
    return x


class TransformerBackbone(EmbeddingBackbone):
  """Item + position embeddings and a transformer stack; the state is row n-1 of the last layer
  (with ``all_positions``, every row)."""

  uses_positions: ClassVar[bool] = True
  default_activation: ClassVar[str] = "relu"

  @classmethod
  def num_layers(cls, cfg: ModelConfig) -> int:
    raise NotImplementedError

  @classmethod
  def causal(cls, cfg: ModelConfig) -> bool:
    return False

  def setup(self):
    super().setup()
    cfg = self.cfg
    self.transformer = TransformerStack(
      self.num_layers(cfg),
      cfg.dim,
      cfg.ff_dim,
      cfg.num_heads,
      cfg.ff_activation or self.default_activation,
      cfg.layer_norm_eps,
      cfg.dropout_hidden,
      cfg.dropout_attention,
      layers.kernel_init(cfg.init_std),
    )

  def encode(
    self, seq_emb, items, target_vec=None, *, all_positions=False, segments=None, train=False
  ):
    del target_vec
    query = None if all_positions else last_index(lengths_of(items))
    return self.transformer(
      seq_emb,
      items != 0,
      query_index=query,
      causal=self.causal(self.cfg),
      segments=segments,
      train=train,
    )


@BACKBONES.register("sasrec")
class SASRec(TransformerBackbone):
  """SASRec: ``cfg.sasrec_layers`` layers, ReLU; causal attention with ``cfg.causal`` (then
  trainable on every position)."""

  @classmethod
  def num_layers(cls, cfg):
    return cfg.sasrec_layers

  @classmethod
  def causal(cls, cfg):
    return cfg.causal

  @classmethod
  def positionwise(cls, cfg):
    return cfg.causal


__all__ = ["SASRec", "TransformerBackbone", "TransformerStack"]

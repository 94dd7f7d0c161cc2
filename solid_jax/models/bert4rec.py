"""BERT4Rec (Sun et al., 2019): bidirectional transformer layers (``cfg.bert_layers``, GELU).
With ``cfg.cloze`` it is trained as its paper does, on masked items, and reads a user's state at
a ``[MASK]`` appended after the newest item."""

from __future__ import annotations

from typing import ClassVar

from solid_jax.models.registry import BACKBONES
from solid_jax.models.sasrec import TransformerBackbone


@BACKBONES.register("bert4rec")
class BERT4Rec(TransformerBackbone):
  """BERT4Rec: non-causal; positionwise only as a cloze model (every masked position is scored
  from the whole row)."""

  default_activation: ClassVar[str] = "gelu"
  supports_cloze: ClassVar[bool] = True

  @classmethod
  def num_layers(cls, cfg):
    return cfg.bert_layers

  @classmethod
  def positionwise(cls, cfg):
    return cfg.cloze

"""Configuration dataclasses: pure data, no absl, no JAX."""

from __future__ import annotations

import dataclasses

BACKBONES = ("sasrec", "gru4rec", "din", "bert4rec")
HEADS = ("static", "duet", "apg", "solid")
GENERATORS = ("duet", "apg")
CODEBOOK_MODES = ("straight_through", "frozen", "ema")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's architecture.

  The defaults are the SOLID authors' settings (SPEC section 2).

  Attributes:
    backbone: static sequence encoder, one of ``BACKBONES``.
    head: ``"static"`` (ordinary last layers), ``"duet"`` (full-rank generator),
      ``"apg"`` (low-rank generator) or ``"solid"`` (dual item/semantic
      generators with a codebook on the item branch).
    generator: for ``head="solid"``, the generator family of both branches.
    num_items: item vocabulary size including the padding id 0.
    num_semantics: semantic-id vocabulary size including the padding id 0.
    seq_len: history length L.
    dim: embedding width d.
    codebook: for ``head="solid"``: ``"straight_through"`` (trainable codebook,
      straight-through gradient, commitment loss), ``"frozen"`` (the authors'
      behaviour) or ``"ema"`` (EMA codebook updates with dead-code revival).
    num_codes: codebook size; ``None`` means ``num_semantics`` (the metacode
      table, padding row included).
    codebook_hidden: width of the decoder after the codebook (d -> hidden -> d).
    apg_rank: K of the APG low-rank factorisation.
    clip_t: t, the item-branch weights are clipped to [-t, t].
    consistency_weight: lambda of the stage-2 consistency loss.
    commitment_weight: beta of the straight-through commitment loss.
    ema_decay: decay of the EMA codebook statistics.
    ema_dead_steps: in ``ema`` mode, a code selected by no query for this many
      consecutive training steps is re-seeded from a random current query.
    paper_compat: freeze the generators' final projections at their
      ``fmod(randn, 2)`` init, as the authors' code does by accident.
    num_heads, ff_dim: transformer settings of SASRec and BERT4Rec.
    bert_layers: number of bidirectional transformer layers of BERT4Rec.
    din_hidden: widths of DIN's dynamic classifier before the final logit.
  """

  backbone: str = "sasrec"
  head: str = "solid"
  generator: str = "duet"
  num_items: int = 1683
  num_semantics: int = 20
  seq_len: int = 10
  dim: int = 32
  codebook: str = "straight_through"
  num_codes: int | None = None
  codebook_hidden: int = 64
  apg_rank: int = 16
  clip_t: float = 0.01
  consistency_weight: float = 0.1
  commitment_weight: float = 0.25
  ema_decay: float = 0.99
  ema_dead_steps: int = 100
  paper_compat: bool = False
  num_heads: int = 4
  ff_dim: int = 128
  bert_layers: int = 2
  din_hidden: tuple[int, ...] = (128, 64)

  def __post_init__(self):
    def check(name, value, allowed):
      if value not in allowed:
        raise ValueError(f"ModelConfig.{name}={value!r}; expected one of {allowed}")

    check("backbone", self.backbone, BACKBONES)
    check("head", self.head, HEADS)
    check("generator", self.generator, GENERATORS)
    check("codebook", self.codebook, CODEBOOK_MODES)
    if self.num_items < 2:
      raise ValueError(f"ModelConfig.num_items={self.num_items}: needs padding 0 and >= 1 item")
    if self.head == "solid" and self.num_semantics < 2:
      raise ValueError(
          f"ModelConfig.num_semantics={self.num_semantics}: head='solid' needs >= 1 semantic id"
      )
    if self.dim % self.num_heads:
      raise ValueError(f"ModelConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")

  @property
  def codebook_size(self) -> int:
    return self.num_semantics if self.num_codes is None else self.num_codes

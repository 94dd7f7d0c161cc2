"""``ModelConfig``: the architecture of a model (pure data, no absl).

Backbone and head names are those registered in ``solid_jax.models.BACKBONES`` / ``HEADS``; what
a backbone or head supports (positionwise training, cloze, head layers) is asked of the
registered class, so a plugin's settings are checked the same way as the built-in ones.
"""

from __future__ import annotations

import dataclasses

GENERATORS = ("duet", "apg")
CODEBOOK_MODES = ("straight_through", "frozen", "ema", "none")
CLIPS = ("hard", "soft")
QUANTIZE_SPACES = ("sequence", "embedding")
SOLID_BRANCHES = ("both", "item", "semantic")
EMBEDDINGS = ("tanh_dense", "layer_norm")
TARGET_TOWERS = ("mlp", "embedding")
ACTIVATIONS = ("", "relu", "gelu")
# Fields that ``Model.apply(..., hyper={name: value})`` may override at run time with float32
# scalars, traced (so one vmapped step can train population members that differ in them): they
# change no parameter's shape and no compiled structure.
RUNTIME_FIELDS = ("clip_t", "consistency_weight")


def _registries():
  """``(BACKBONES, HEADS)``, imported on use (the model zoo imports this module)."""
  from solid_jax.models import registry  # pylint: disable=import-outside-toplevel
  import solid_jax.models  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  return registry.BACKBONES, registry.HEADS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's architecture.

  The defaults are the SOLID authors' settings (SPEC section 2).

  Attributes:
    backbone: static sequence encoder, a name registered in ``solid_jax.models.BACKBONES``
      (built in: sasrec, gru4rec, din, bert4rec).
    head: a name registered in ``solid_jax.models.HEADS``: ``"static"`` (ordinary last layers), ``"duet"`` (full-rank generator),
      ``"apg"`` (low-rank generator) or ``"solid"`` (dual item/semantic
      generators with a codebook on the item branch).
    generator: for ``head="solid"``, the generator family of both branches.
    num_items: item vocabulary size including the padding id 0.
    num_semantics: semantic-id vocabulary size including the padding id 0.
    seq_len: history length L.
    dim: embedding width d.
    codebook: for ``head="solid"``: ``"straight_through"`` (trainable codebook,
      straight-through gradient, commitment loss), ``"frozen"`` (the authors'
      behaviour), ``"ema"`` (EMA codebook updates with dead-code revival, anchored to the
      metacode by ``ema_prior``) or ``"none"`` (the ablation without a codebook: the item branch
      reads its query unquantised, and the consistency loss pulls the semantic branch towards it).
    num_codes: codebook size; ``None`` means ``num_semantics`` (the metacode
      table, padding row included).
    codebook_hidden: width of the decoder after the codebook (d -> hidden -> d).
    apg_rank: K of the APG low-rank factorisation.
    generator_init_scale: the generators' projections (DUET, APG, both SOLID branches) start at
      ``generator_init_scale * fmod(normal, 2)``. 1 is the authors' init, under which the
      generated weights of a d = 32 head have a standard deviation of about 1.3 at init (measured;
      Xavier's for a 32 -> 32 layer is 0.18, and under 1% of them lie inside t = 0.01); the
      generated weights scale linearly with it (0.1: about 0.13).
    clip_t: t, the item-branch weights are bounded by t (a run-time field, see
      ``RUNTIME_FIELDS``).
    clip: how: ``"hard"`` (the paper's ``clip(x, -t, t)``; zero gradient outside the band) or
      ``"soft"`` (``t * tanh(x / t)``: the same bound, a gradient everywhere).
    quantize_space: what the codebook quantises: ``"sequence"`` (the authors': the item branch's
      sequence embedding ``tanh((E[items] + P) Ws + bs)``) or ``"embedding"`` (the item table's
      rows ``E[items]`` themselves, the space the stage-1 metacode, a semantic item table, lives
      in).
    solid_branches: ``"both"`` (SOLID), or one branch alone for the ablations: ``"item"`` (W =
      the bounded item-branch weights) or ``"semantic"`` (W = the semantic-branch weights).
    consistency_weight: lambda of the stage-2 consistency loss (a run-time field).
    commitment_weight: beta of the straight-through commitment loss.
    ema_decay: decay of the EMA codebook statistics.
    ema_dead_steps: in ``ema`` mode, a code selected by no query for this many
      consecutive training steps is re-seeded from a random current query.
    ema_prior: in ``ema`` mode, the pseudo-count that anchors every code to its initial value (the
      metacode), in units of a code's uniform share of the assignments
      (``nn.codebook.ema_update``); 0: no anchor.
    paper_compat: freeze the generators' final projections at their
      ``fmod(randn, 2)`` init, as the authors' code does by accident.
    num_heads, ff_dim: transformer settings of SASRec and BERT4Rec.
    bert_layers: number of bidirectional transformer layers of BERT4Rec.
    din_hidden: widths of DIN's dynamic classifier before the final logit.
    sasrec_layers: number of transformer blocks of SASRec.
    causal: SASRec's attention is causal (position i sees positions <= i); needed to train on
      every position of a sequence. The state read at n-1 is the same either way.
    ff_activation: feed-forward activation of the transformer ("" = the backbone's default: ReLU
      for SASRec, GELU for BERT4Rec).
    embedding: how SASRec/BERT4Rec/GRU4Rec/DIN embed the sequence: ``"tanh_dense"`` (the SOLID
      authors': ``tanh((E[items] + P) Ws + bs)``) or ``"layer_norm"`` (SASRec/BERT's:
      ``dropout(LN(E[items] + P))``, no ``seq_trans``).
    position_alignment: which end of the history position 0 of SASRec/BERT4Rec's position table
      is counted from: ``"start"`` (the oldest item is position 0, the authors') or ``"end"`` (the
      newest item is always position L-1, as a left-padded SASRec / S3-Rec input).
    target_tower: ``"mlp"`` (the authors': ``tanh(e T0 + t0) T1 + t1``) or ``"embedding"`` (the
      item embedding itself, shared with the input, as SASRec).
    head_layers: layers of the head (static MLP or dynamic), ``d -> d``, tanh between them; 0 (the
      static head only) scores the backbone's state directly, as SASRec. DIN ignores it.
    init_std: > 0: the backbone's dense kernels and embeddings (and a static head's) are drawn
      from N(0, init_std), biases 0 (BERT / S3-Rec's init); 0: the per-layer defaults.
    layer_norm_eps: epsilon of every layer norm of the backbone.
    dropout_embedding: dropout after the sequence embedding (training only).
    dropout_hidden: dropout of the transformer's attention and feed-forward outputs.
    dropout_attention: dropout of the attention probabilities.
    cloze: BERT4Rec trained as a cloze model (its paper's objective): the item table gains a
      ``[MASK]`` row ``num_items`` (``mask_id``), training inputs have masked items
      (`solid_jax.data.cloze_rows`) whose candidates are scored at their positions by
      ``apply_positions``, and a user's state is read at a ``[MASK]`` appended after the newest
      item (the oldest is dropped when the history fills ``seq_len``). Static head only.
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
  generator_init_scale: float = 1.0
  clip_t: float = 0.01
  clip: str = "hard"
  quantize_space: str = "sequence"
  solid_branches: str = "both"
  consistency_weight: float = 0.1
  commitment_weight: float = 0.25
  ema_decay: float = 0.99
  ema_dead_steps: int = 100
  ema_prior: float = 1.0
  paper_compat: bool = False
  num_heads: int = 4
  ff_dim: int = 128
  bert_layers: int = 2
  din_hidden: tuple[int, ...] = (128, 64)
  sasrec_layers: int = 1
  causal: bool = False
  ff_activation: str = ""
  embedding: str = "tanh_dense"
  position_alignment: str = "start"
  target_tower: str = "mlp"
  head_layers: int = 2
  init_std: float = 0.0
  layer_norm_eps: float = 1e-5
  dropout_embedding: float = 0.0
  dropout_hidden: float = 0.0
  dropout_attention: float = 0.0
  cloze: bool = False

  def __post_init__(self):
    def check(name, value, allowed):
      if value not in allowed:
        raise ValueError(f"ModelConfig.{name}={value!r}; expected one of {allowed}")

    backbones, heads = _registries()
    check("backbone", self.backbone, backbones.names())
    check("head", self.head, heads.names())
    check("generator", self.generator, GENERATORS)
    check("codebook", self.codebook, CODEBOOK_MODES)
    check("clip", self.clip, CLIPS)
    check("quantize_space", self.quantize_space, QUANTIZE_SPACES)
    check("solid_branches", self.solid_branches, SOLID_BRANCHES)
    if not self.generator_init_scale > 0:
      raise ValueError(f"ModelConfig.generator_init_scale={self.generator_init_scale} must be > 0")
    if not self.clip_t > 0:
      raise ValueError(f"ModelConfig.clip_t={self.clip_t} must be > 0")
    if self.ema_prior < 0 or not 0.0 <= self.ema_decay < 1.0 or self.ema_dead_steps < 1:
      raise ValueError(
        f"ModelConfig: ema_prior={self.ema_prior} must be >= 0, ema_decay={self.ema_decay} in "
        f"[0, 1), ema_dead_steps={self.ema_dead_steps} >= 1"
      )
    if self.num_codes is not None and self.num_codes < 2:
      raise ValueError(f"ModelConfig.num_codes={self.num_codes}: needs padding 0 and >= 1 code")
    if self.num_items < 2:
      raise ValueError(f"ModelConfig.num_items={self.num_items}: needs padding 0 and >= 1 item")
    check("embedding", self.embedding, EMBEDDINGS)
    check("target_tower", self.target_tower, TARGET_TOWERS)
    check("position_alignment", self.position_alignment, ("start", "end"))
    check("ff_activation", self.ff_activation, ACTIVATIONS)
    backbone, head = backbones[self.backbone], heads[self.head]
    if self.head_layers < 0 or (head.dynamic and not backbone.head_specs(self)):
      raise ValueError(
        f"ModelConfig.head_layers={self.head_layers}: the {self.head!r} head "
        "needs at least one layer (0 is for the static head only)"
      )
    if self.sasrec_layers < 1:
      raise ValueError(f"ModelConfig.sasrec_layers={self.sasrec_layers} must be >= 1")
    for name in ("dropout_embedding", "dropout_hidden", "dropout_attention"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be in [0, 1)")
    if self.init_std < 0:
      raise ValueError(f"ModelConfig.init_std={self.init_std} must be >= 0")
    if self.cloze and (not backbone.supports_cloze or head.dynamic):
      raise ValueError(
        f"ModelConfig.cloze=True is BERT4Rec's objective with the static head, not "
        f"backbone={self.backbone!r} head={self.head!r}"
      )
    if self.dim % self.num_heads:
      raise ValueError(f"ModelConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")
    backbone.validate(self)
    head.validate(self)

  @property
  def dropout(self) -> bool:
    """Whether any dropout rate is non-zero (training then needs a PRNG key)."""
    return max(self.dropout_embedding, self.dropout_hidden, self.dropout_attention) > 0

  @property
  def positionwise(self) -> bool:
    """Whether the model can be trained on every position of a sequence (``apply_positions``):
    the backbone says so (``Backbone.positionwise``: GRU4Rec, causal SASRec, cloze BERT4Rec)."""
    return _registries()[0][self.backbone].positionwise(self)

  @property
  def mask_id(self) -> int:
    """The ``[MASK]`` item id of a cloze model (one past the catalogue)."""
    return self.num_items

  @property
  def packable(self) -> bool:
    """Whether ``apply_positions`` takes packed rows (``solid_jax.data.pack_rows``): a
    positionwise backbone with a head that allows it (``Head.packable``: the static head, and
    the DUET, APG and SOLID heads, whose generators' GRU states are reset at segment starts)."""
    return self.positionwise and _registries()[1][self.head].packable

  @property
  def codebook_size(self) -> int:
    return self.num_semantics if self.num_codes is None else self.num_codes

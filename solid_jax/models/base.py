"""The two interfaces of the model zoo, ``Backbone`` and ``Head`` (``flax.linen`` modules), and
the sequence helpers every backbone shares.

A model is a backbone (the static part, Θ_s) and a head (the last layers, static or generated per
user) composed by ``solid_jax.models.Recommender``:

  seq_emb = backbone.embed(items)                       # float[B, L, d]
  weights, aux = head.generate(seq_emb, batch)          # per-user weights ({} for static heads)
  x = backbone.encode(backbone.embed(items), items, t)  # the head input: state at n-1 (or DIN's)
  logit = <head(weights, x), backbone.tower(target)>    # factorised backbones
  logit = head(weights, x)[:, 0]                        # DIN (``factorised = False``)

A subclass registers itself in ``BACKBONES`` / ``HEADS`` (``solid_jax.models.registry``) and
states what it can do through class methods of the ``ModelConfig`` (``positionwise``,
``head_specs``, ``validate`` ...), which ``ModelConfig`` and ``make_model`` consult.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from solid_jax.model_config import ModelConfig
from solid_jax.nn import layers

Array = jax.Array
Params = dict
Batch = Mapping[str, Any]
LayerSpec = tuple[int, int, "str | None"]
# The Flax collection that carries ``Model.apply``'s run-time overrides (``hyper``) to the head.
HYPER_COLLECTION = "hyper"


def lengths_of(items: Array) -> Array:
  """n, the number of real (non-zero) items of every row: int[B, L] -> int32[B]."""
  return jnp.sum(items != 0, axis=-1).astype(jnp.int32)


def segment_starts(segments: Array | None) -> Array | None:
  """bool[B, L], True at the first slot of every segment of packed rows (where a GRU state is
  reset: ``solid_jax.data.pack_rows`` lays each user's slots out contiguously); None for None."""
  if segments is None:
    return None
  segments = jnp.asarray(segments)
  return segments != jnp.pad(segments[:, :-1], ((0, 0), (1, 0)))


def last_index(lengths: Array) -> Array:
  """The index ``max(n - 1, 0)`` where the user state is read: int[B] -> int32[B]."""
  return jnp.maximum(lengths - 1, 0).astype(jnp.int32)


def positions(items: Array, cfg: ModelConfig, layout: Mapping[str, Array] | None = None) -> Array:
  """int32[B, L] index into the position table of every history slot.

  ``position_alignment="start"``: slot t is position t. ``"end"``: the newest real item is
  position ``seq_len - 1`` and older ones count down (what a left-padded input of ``seq_len``
  slots sees), also for a row cut to fewer slots; padding slots get 0. With ``layout`` (packed
  rows, ``solid_jax.data.pack_rows``: int ``slot`` and ``span`` [B, L]), every slot gets the
  position it has in its user's unpacked row.
  """
  if layout is None:
    t = jnp.broadcast_to(jnp.arange(items.shape[-1], dtype=jnp.int32), items.shape)
    span = lengths_of(items)[..., None]
  else:
    t, span = jnp.asarray(layout["slot"], jnp.int32), jnp.asarray(layout["span"], jnp.int32)
  if cfg.position_alignment == "start":
    return t
  return jnp.where(items != 0, t + cfg.seq_len - span, 0)


def append_mask(items: Array, cfg: ModelConfig) -> Array:
  """A cloze model's readout input: ``[MASK]`` after the newest item of every right-padded row.

  int[B, W] -> int[B, min(W + 1, seq_len)]: a row cut to ``W < seq_len`` slots gains one; a row of
  ``seq_len`` real items drops its oldest. The state is then read at the ``[MASK]`` (index n).
  """
  b, width = items.shape
  if width < cfg.seq_len:
    items = jnp.pad(items, ((0, 0), (0, 1)))
    width += 1
  n = lengths_of(items)
  full = n == width
  items = jnp.where(full[:, None], jnp.roll(items, -1, axis=1), items)
  return items.at[jnp.arange(b), jnp.minimum(n, width - 1)].set(cfg.mask_id)


def dense_head_specs(cfg: ModelConfig) -> list[LayerSpec]:
  """``cfg.head_layers`` layers d -> d with tanh between them (2: ``[(d, d, "tanh"), (d, d,
  None)]``; 0: none), the head of every factorised backbone."""
  n = cfg.head_layers
  return [(cfg.dim, cfg.dim, "tanh")] * max(n - 1, 0) + [(cfg.dim, cfg.dim, None)] * min(n, 1)


class Backbone(nn.Module):
  """A static sequence encoder. Subclasses implement ``embed``, ``tower`` and ``encode``.

  Attributes:
    cfg: the model configuration.
    scan_unroll: unroll factor of recurrent scans (``lax.scan(unroll=...)``).
  """

  cfg: ModelConfig
  scan_unroll: int | bool = True

  # Whether a cloze model (``ModelConfig.cloze``: a ``[MASK]`` row, the state read at an appended
  # ``[MASK]``) is supported.
  supports_cloze: ClassVar[bool] = False

  @classmethod
  def factorised(cls, cfg: ModelConfig) -> bool:
    """True when ``logit = <head(x), tower(target)>`` with ``x`` independent of the target (so
    the whole catalogue ranks with one matmul); False when the head input sees the target and
    the head's single output is the logit (DIN)."""
    return True

  @classmethod
  def positionwise(cls, cfg: ModelConfig) -> bool:
    """Whether the state after position t depends on items 0..t only when run over a whole row,
    so that a model can be trained on every position at once (``Model.apply_positions``)."""
    return False

  @classmethod
  def head_specs(cls, cfg: ModelConfig) -> list[LayerSpec]:
    """``(N_in, N_out, activation)`` of every head layer."""
    return dense_head_specs(cfg)

  @classmethod
  def validate(cls, cfg: ModelConfig) -> None:
    """Raises ``ValueError`` for settings this backbone does not support."""

  def embed(
    self, items: Array, *, layout: Mapping[str, Array] | None = None, train: bool = False
  ) -> Array:
    """The sequence embeddings every generator and ``encode`` consume: int[B, L] ->
    float[B, L, d]. ``layout``: the ``slot``/``span`` of packed rows."""
    raise NotImplementedError

  def tower(self, target: Array) -> Array:
    """The target tower: int[...] -> float[..., d]."""
    raise NotImplementedError

  def lookup(self, items: Array) -> Array:
    """The item table's rows themselves: int[...] -> float[..., d] (what SOLID's codebook
    quantises with ``quantize_space="embedding"``)."""
    raise NotImplementedError(f"{type(self).__name__} has no item table to look up")

  def encode(
    self,
    seq_emb: Array,
    items: Array,
    target_vec: Array | None = None,
    *,
    all_positions: bool = False,
    segments: Array | None = None,
    train: bool = False,
  ) -> Array:
    """The head input.

    Args:
      seq_emb: float[B, L, d] from ``embed``.
      items: int[B, L] item ids (padding 0), for the mask and n.
      target_vec: float[B, d] from ``tower`` (non-factorised backbones only).
      all_positions: return the state after every position, float[B, L, d] (``positionwise``
        backbones only) instead of the state at n-1.
      segments: int[B, L] segment ids of packed rows (with ``all_positions``): no state mixes
        two segments.
      train: dropout on.

    Returns:
      float[B, N_in] (``head_specs(cfg)[0][0]`` wide), or float[B, L, d] with ``all_positions``.
    """
    raise NotImplementedError


class EmbeddingBackbone(Backbone):
  """The embedding and target tower shared by the built-in backbones.

  ``embed``: ``embedding="tanh_dense"``: ``tanh((E[items] (+ P)) @ seq_trans)``; ``"layer_norm"``:
  ``dropout(LN(E[items] (+ P)))``, P a learned position table when ``uses_positions``.
  ``tower``: the item embedding itself (``target_tower="embedding"``) or ``target_trans``, an MLP
  of ``tower_activations`` (d wide). Kernels and tables are Xavier uniform, or ``N(0,
  init_std)``; row 0 of the item table (padding) starts at zero.
  """

  uses_positions: ClassVar[bool] = False
  tower_activations: ClassVar[tuple[str | None, ...]] = ("tanh", None)

  def setup(self):
    cfg = self.cfg
    init = layers.kernel_init(cfg.init_std)
    rows = cfg.num_items + (1 if cfg.cloze else 0)  # + the [MASK] row of a cloze model
    self.item_embedding = nn.Embed(rows, cfg.dim, embedding_init=layers.padded(init))
    if self.uses_positions:
      self.position_embedding = nn.Embed(cfg.seq_len, cfg.dim, embedding_init=init)
    if cfg.embedding == "tanh_dense":
      self.seq_trans = nn.Dense(cfg.dim, kernel_init=init)
    else:
      self.embedding_norm = nn.LayerNorm(cfg.layer_norm_eps, use_fast_variance=False)
    if cfg.target_tower == "mlp":
      acts = self.tower_activations
      self.target_trans = layers.MLP((cfg.dim,) * len(acts), acts, kernel_init=init)
    self.embedding_dropout = nn.Dropout(cfg.dropout_embedding)

  def embed(self, items, *, layout=None, train=False):
    x = self.item_embedding(items)
    if self.uses_positions:
      x = x + self.position_embedding(positions(items, self.cfg, layout))
    if self.cfg.embedding == "tanh_dense":
      x = jnp.tanh(self.seq_trans(x))
    else:
      x = self.embedding_norm(x)
    return self.embedding_dropout(x, deterministic=not train)

  def lookup(self, items):
    return self.item_embedding(items)

  def tower(self, target):
    e = self.item_embedding(target)
    return e if self.cfg.target_tower == "embedding" else self.target_trans(e)


class Head(nn.Module):
  """The last layers: ``generate`` the per-user weights, then ``__call__(weights, x)``.

  Attributes:
    cfg: the model configuration.
    specs: ``(N_in, N_out, activation)`` of every layer; None: the backbone's
      (``BACKBONES[cfg.backbone].head_specs(cfg)``).
    scan_unroll: unroll factor of the generators' GRU scans.
  """

  cfg: ModelConfig
  specs: tuple[LayerSpec, ...] | None = None
  scan_unroll: int | bool = True

  # Whether ``generate`` reads the sequence (False: static weights, ``generate`` returns {}).
  dynamic: ClassVar[bool] = True
  # Whether packed rows (several users per row, ``batch["segment"]``) may be trained: the head's
  # ``generate(..., all_positions=True)`` then keeps every user's prefixes to its own segment.
  packable: ClassVar[bool] = False

  @classmethod
  def reads_item_rows(cls, cfg: ModelConfig) -> bool:
    """Whether ``generate`` takes the item table's rows (``Backbone.lookup``) instead of the
    backbone's sequence embeddings (``Backbone.embed``) as ``seq_emb``."""
    return False

  def runtime(self, name: str):
    """``cfg.<name>`` of a run-time field (`solid_jax.model_config.RUNTIME_FIELDS`), or the value
    passed for it by ``Model.apply(..., hyper={name: value})`` (a float32 scalar, possibly
    traced: the members of a vmapped population each see their own)."""
    return self.get_variable(HYPER_COLLECTION, name, getattr(self.cfg, name))

  @classmethod
  def validate(cls, cfg: ModelConfig) -> None:
    """Raises ``ValueError`` for settings this head does not support."""

  @classmethod
  def frozen(cls, cfg: ModelConfig, path: tuple[str, ...]) -> bool:
    """Whether the parameter at ``path`` (inside this head's subtree) is not trained by the
    optimiser (``Model.trainable``)."""
    return False

  @classmethod
  def update_state(cls, cfg: ModelConfig, params: Params, aux: Mapping[str, Any]) -> Params:
    """This head's subtree after a training step that returned ``aux`` (state that is not
    learned by gradient, e.g. an EMA codebook); the identity by default."""
    return params

  def layer_specs(self) -> tuple[LayerSpec, ...]:
    if self.specs is not None:
      return tuple(self.specs)
    from solid_jax.models.registry import BACKBONES  # pylint: disable=import-outside-toplevel

    return tuple(BACKBONES[self.cfg.backbone].head_specs(self.cfg))

  def generate(
    self,
    seq_emb: Array,
    batch: Batch,
    *,
    all_positions: bool = False,
    key: Array | None = None,
    train: bool = False,
  ) -> tuple[Params, dict]:
    """The per-user weights and the auxiliary losses.

    Args:
      seq_emb: float[B, L, d], the backbone's sequence embeddings.
      batch: ``"items"`` int[B, L] (for the mask and n) and whatever else the head reads
        (SOLID: ``"semantics"`` int[B, L]; an optional ``"weight"`` float[B], or float[B, L]
        per slot in packed rows); packed rows also carry ``"segment"``/``"slot"``/``"span"``
        int[B, L] (``solid_jax.data.pack_rows``).
      all_positions: weights for every prefix (leading axis B * L, user-major).
      key: PRNG key of state updates (SOLID's EMA dead-code revival); None derives one.
      train: dropout on.

    Returns:
      ``(weights, aux)``: a pytree with leading axis B (``{}`` for static heads); ``aux`` holds
      ``"aux_loss"`` (a float32 scalar, 0.0 where none) and the head's diagnostics.
    """
    del seq_emb, batch, all_positions, key, train
    return {}, {"aux_loss": jnp.zeros((), jnp.float32)}

  def __call__(self, weights: Params, x: Array) -> Array:
    """float[B, N_in] -> float[B, N_out of the last layer] (the identity with no layers)."""
    raise NotImplementedError

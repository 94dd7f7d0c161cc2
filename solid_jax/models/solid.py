"""SOLID's head: an item branch and a semantic branch, each a ``Generator``, combined as
``W = clip(W_item, -t, t) + W_sem``, with a vector-quantisation codebook on the item branch.

  quant = codebook(seq_emb)                          (nearest code among rows 1..C-1; 0 at padding;
                                                      seq_emb = E[items] with quantize_space=
                                                      "embedding"; unquantised with codebook="none")
  dec   = leaky_relu(quant D0 + d0, 0.1) D1 + d1     (``decoder``)
  sem   = tanh((E_sem[semantics] + P_sem) Wss + bss) (``semantic_embedding``, ``_position_``,
                                                      ``semantic_seq_trans``)
  W_item = item_generator(dec); W_sem = semantic_generator(sem)   (one fused GRU scan)
  aux_loss = λ mse_m(sem, sg(code)) + codebook_loss + β commitment_loss   (non-padding positions)

Parameters: ``item_generator``, ``semantic_generator``, ``semantic_embedding`` (Embed, row 0 zero
at init), ``semantic_position_embedding`` (Embed [L, d]), ``semantic_seq_trans`` (Dense),
``codebook`` (``nn.codebook.Codebook``), ``decoder`` (MLP d -> codebook_hidden -> d) and, with
APG generators, ``shared``.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from solid_jax.models.base import Head, lengths_of
from solid_jax.models.hyper import DynamicLayers, Generator, generate_weights, generator_frozen
from solid_jax.models.registry import HEADS
from solid_jax.nn import codebook as codebook_lib
from solid_jax.nn import layers

Array = jax.Array


def bound(x: Array, t: float, clip: str = "hard") -> Array:
  """The item branch's bound: ``clip(x, -t, t)`` ("hard", the paper's) or ``t * tanh(x / t)``
  ("soft": the same range, a non-zero gradient everywhere, about x near 0)."""
  if clip == "soft":
    return t * jnp.tanh(x / t)
  return jnp.clip(x, -t, t)


def combine(item_weights, semantic_weights, t: float, clip: str = "hard", branches: str = "both"):
  """SOLID's ``bound(item, t) + semantic``, leaf by leaf (weights, biases, APG cores); with
  ``branches="item"`` / ``"semantic"`` one term alone (the ablations)."""
  if branches == "semantic":
    return semantic_weights
  if branches == "item":
    return jax.tree.map(lambda a: bound(a, t, clip), item_weights)
  return jax.tree.map(lambda a, b: bound(a, t, clip) + b, item_weights, semantic_weights)


def unquantised(q: Array) -> dict:
  """The codebook's ``info`` without a codebook (``codebook="none"``): the query stands for its
  code (``selected = sg(q)``, the consistency target) and there are no codebook losses."""
  zero = jnp.zeros((), jnp.float32)
  return {"selected": jax.lax.stop_gradient(q), "codebook_loss": zero, "commitment_loss": zero}


def masked_mse(a: Array, b: Array, mask: Array) -> Array:
  """``sum(mask * (a - b)^2) / max(sum(mask) * D, 1)``: a, b float[B, L, D], mask float[B, L]."""
  denom = jnp.maximum(jnp.sum(mask) * a.shape[-1], 1.0)
  return jnp.sum(jnp.square(a - b) * mask[..., None]) / denom


@HEADS.register("solid")
class SolidHead(Head):
  """SOLID (``cfg.generator``: "duet" or "apg" for both branches; ``cfg.codebook``: the mode).

  ``generate(seq_emb, batch)`` reads ``batch["items"]``, ``batch["semantics"]`` int[B, L] and an
  optional ``batch["weight"]`` float[B] (row weights of the losses; float[B, L] per slot in packed
  rows, where ``batch["slot"]`` gives the semantic branch its positions and every GRU state is
  reset at a segment start). ``aux`` holds
  ``"aux_loss"``, the unweighted ``"consistency_loss"``, ``"codebook_loss"``,
  ``"commitment_loss"``, ``"codebook/counts"`` float32[C] (this batch's selections),
  ``"codebook/perplexity"``, ``"codebook/usage"`` (none of the three with ``codebook="none"``)
  and, in ``ema`` mode, ``"codebook_state"`` (the new ``codebook`` subtree, for
  ``update_state``). The options of the ablations (``clip``, ``quantize_space``,
  ``solid_branches``, ``codebook="none"``) are described in `solid_jax.ModelConfig`.
  """

  # Every loss and codebook statistic is a weighted sum over real positions, and every prefix's
  # weights come from GRU states reset at segment starts: packed rows train as unpacked ones.
  packable: ClassVar[bool] = True

  @classmethod
  def validate(cls, cfg):
    if cfg.num_semantics < 2:
      raise ValueError(
        f"ModelConfig.num_semantics={cfg.num_semantics}: head='solid' needs >= 1 semantic id"
      )

  @classmethod
  def reads_item_rows(cls, cfg):
    return cfg.quantize_space == "embedding"

  @classmethod
  def frozen(cls, cfg, path):
    return (path[0] == "codebook" and cfg.codebook in ("frozen", "ema")) or generator_frozen(
      cfg, path
    )

  @classmethod
  def update_state(cls, cfg, params, aux):
    if cfg.codebook == "ema" and "codebook_state" in aux:
      return {**params, "codebook": aux["codebook_state"]}
    return params

  def setup(self):
    cfg = self.cfg
    d, kind, specs = cfg.dim, cfg.generator, self.layer_specs()
    scale = cfg.generator_init_scale
    self.item_generator = Generator(d, specs, kind, cfg.apg_rank, scale)
    self.semantic_generator = Generator(d, specs, kind, cfg.apg_rank, scale)
    self.semantic_embedding = nn.Embed(
      cfg.num_semantics, d, embedding_init=layers.padded(layers.xavier_uniform())
    )
    self.semantic_position_embedding = nn.Embed(
      cfg.seq_len, d, embedding_init=layers.xavier_uniform()
    )
    self.semantic_seq_trans = nn.Dense(d, kernel_init=layers.xavier_uniform())
    if cfg.codebook != "none":
      self.codebook = codebook_lib.Codebook(
        cfg.codebook_size, d, cfg.codebook, cfg.ema_decay, cfg.ema_dead_steps, cfg.ema_prior
      )
    self.decoder = layers.MLP((cfg.codebook_hidden, d), ("leaky_relu", None))
    self.shared = DynamicLayers(specs, kind, cfg.apg_rank)

  def generate(self, seq_emb, batch, *, all_positions=False, key=None, train=False):
    del train
    cfg = self.cfg
    items = jnp.asarray(batch["items"])
    mask = (items != 0).astype(jnp.float32)
    if "weight" in batch:
      weight = jnp.asarray(batch["weight"], jnp.float32)
      mask = mask * (weight if weight.ndim == 2 else weight[:, None])
    with jax.named_scope("codebook"):
      if cfg.codebook == "none":
        quant, info = seq_emb, unquantised(seq_emb)
      else:
        quant, info = self.codebook(seq_emb, mask, key=key)
    with jax.named_scope("decoder"):
      decoded = self.decoder(quant)
    with jax.named_scope("semantic_embedding"):
      semantics = jnp.asarray(batch["semantics"])
      sem = self.semantic_embedding(semantics)
      slots = batch["slot"] if "segment" in batch else jnp.arange(semantics.shape[-1])
      sem = sem + self.semantic_position_embedding(jnp.asarray(slots, jnp.int32))
      sem = jnp.tanh(self.semantic_seq_trans(sem))
    w_item, w_sem = generate_weights(
      [self.item_generator, self.semantic_generator],
      [decoded, sem],
      lengths_of(items),
      unroll=self.scan_unroll,
      all_positions=all_positions,
      segments=batch.get("segment"),
    )
    with jax.named_scope("combine"):
      weights = combine(w_item, w_sem, self.runtime("clip_t"), cfg.clip, cfg.solid_branches)
    consistency = masked_mse(sem, info["selected"], mask)
    aux = {
      "aux_loss": self.runtime("consistency_weight") * consistency
      + info["codebook_loss"]
      + cfg.commitment_weight * info["commitment_loss"],
      "consistency_loss": consistency,
      "codebook_loss": info["codebook_loss"],
      "commitment_loss": info["commitment_loss"],
    }
    if cfg.codebook != "none":
      # This batch's selection counts ("codebook/counts" float32[C]; summed over a whole split
      # by `solid_jax.train.evaluator.codebook_usage`) and their per-batch summaries.
      aux["codebook/counts"] = info["counts"]
      aux["codebook/perplexity"] = info["perplexity"]
      aux["codebook/usage"] = info["usage"]
    if cfg.codebook == "ema":
      aux["codebook_state"] = info["state"]
    return weights, aux

  def __call__(self, weights, x):
    return self.shared(weights, x)

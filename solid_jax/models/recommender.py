"""``Recommender``: a registered backbone and head composed into one Flax module.

Its methods are what ``make_model`` turns into pure functions over plain dict parameters
(``params = {"backbone": ..., "head": ...}``); a Flax user can also call them with
``Recommender(cfg).apply({"params": params}, batch, method=...)``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from solid_jax.model_config import ModelConfig
from solid_jax.models.base import append_mask
from solid_jax.models.registry import BACKBONES, HEADS

Array = jax.Array
Params = dict
Batch = dict

# The layout of packed rows (``solid_jax.data.pack_rows``) that ``positions`` reads.
PACKING_KEYS = ("segment", "slot", "span")


class Recommender(nn.Module):
  """``BACKBONES[cfg.backbone]`` (named ``backbone``) and ``HEADS[cfg.head]`` (``head``).

  Methods (``train`` turns dropout on and then needs a ``"dropout"`` PRNG stream; ``key`` seeds
  the head's state updates):

  - ``__call__(batch, *, train, key) -> (logits float[B], aux)``;
  - ``generate(batch, *, train, key, all_positions) -> (weights, aux)``;
  - ``score(weights, batch, *, train) -> logits float[B]``;
  - ``positions(batch, *, train, key) -> (logits float[B, L, C], aux)``: every position of a
    row scored (``batch["target"]`` int[B, L, C]);
  - ``users(batch) -> float[B, d]`` and ``items(ids int[...]) -> float[..., d]`` (factorised
    backbones: ``logit = <users, items(target)>``).
  """

  cfg: ModelConfig
  scan_unroll: int | bool = True

  def setup(self):
    cfg = self.cfg
    backbone = BACKBONES[cfg.backbone]
    self.backbone = backbone(cfg, scan_unroll=self.scan_unroll)
    self.head = HEADS[cfg.head](
      cfg, specs=tuple(backbone.head_specs(cfg)), scan_unroll=self.scan_unroll
    )

  @property
  def factorised(self) -> bool:
    return BACKBONES[self.cfg.backbone].factorised(self.cfg)

  def generate(
    self,
    batch: Batch,
    *,
    train: bool = False,
    key: Array | None = None,
    all_positions: bool = False,
  ) -> tuple[Params, dict]:
    if not HEADS[self.cfg.head].dynamic:
      return self.head.generate(None, batch)
    with jax.named_scope("backbone"):
      items = jnp.asarray(batch["items"])
      if HEADS[self.cfg.head].reads_item_rows(self.cfg):
        seq_emb = self.backbone.lookup(items)
      else:
        seq_emb = self.backbone.embed(items, layout=_layout(batch), train=train)
    return self.head.generate(seq_emb, batch, all_positions=all_positions, key=key, train=train)

  def head_input(
    self,
    batch: Batch,
    target_vec: Array | None,
    *,
    train: bool = False,
    all_positions: bool = False,
  ) -> Array:
    items = jnp.asarray(batch["items"])
    if self.cfg.cloze and not all_positions:  # the state is read at an appended [MASK]
      items = append_mask(items, self.cfg)
    layout = _layout(batch)
    with jax.named_scope("backbone"):
      seq_emb = self.backbone.embed(items, layout=layout, train=train)
      return self.backbone.encode(
        seq_emb,
        items,
        target_vec,
        all_positions=all_positions,
        segments=None if layout is None else layout["segment"],
        train=train,
      )

  def user_vectors(
    self, weights: Params, batch: Batch, *, train: bool = False, all_positions: bool = False
  ) -> Array:
    x = self.head_input(batch, None, train=train, all_positions=all_positions)
    with jax.named_scope("head"):
      if not all_positions:
        return self.head(weights, x)
      b, length, d = x.shape
      return self.head(weights, x.reshape(b * length, d)).reshape(b, length, -1)

  def score(self, weights: Params, batch: Batch, *, train: bool = False) -> Array:
    with jax.named_scope("backbone"):
      target_vec = self.backbone.tower(jnp.asarray(batch["target"]))
    if not self.factorised:  # the head sees the target
      x = self.head_input(batch, target_vec, train=train)
      with jax.named_scope("head"):
        return self.head(weights, x)[:, 0]
    return jnp.sum(self.user_vectors(weights, batch, train=train) * target_vec, axis=-1)

  def __call__(
    self, batch: Batch, *, train: bool = False, key: Array | None = None
  ) -> tuple[Array, dict]:
    weights, aux = self.generate(batch, train=train, key=key)
    return self.score(weights, batch, train=train), aux

  def positions(
    self, batch: Batch, *, train: bool = False, key: Array | None = None
  ) -> tuple[Array, dict]:
    if "segment" in batch and not self.cfg.packable:
      raise ValueError(
        f"packed rows need a positionwise backbone with a head that keeps every user to its "
        f"own segment (Head.packable), not backbone={self.cfg.backbone!r} "
        f"head={self.cfg.head!r}"
      )
    weights, aux = self.generate(batch, train=train, key=key, all_positions=True)
    users = self.user_vectors(weights, batch, train=train, all_positions=True)  # [B, L, d]
    with jax.named_scope("backbone"):
      target_vec = self.backbone.tower(jnp.asarray(batch["target"]))
    return jnp.einsum("bld,blcd->blc", users, target_vec), aux

  def users(self, batch: Batch) -> Array:
    return self.user_vectors(self.generate(batch)[0], batch)

  def items(self, ids: Array) -> Array:
    return self.backbone.tower(jnp.asarray(ids))


def _layout(batch: Batch) -> dict[str, Any] | None:
  """The ``segment``/``slot``/``span`` of packed rows, None for unpacked ones."""
  return {k: batch[k] for k in PACKING_KEYS} if "segment" in batch else None


def example_batch(cfg: ModelConfig) -> dict[str, Any]:
  """A one-row batch of the shapes a model of ``cfg`` reads (what ``init`` traces)."""
  items = jnp.ones((1, cfg.seq_len), jnp.int32)
  return {
    "items": items,
    "semantics": items,
    "target": jnp.ones((1,), jnp.int32),
    "target_semantic": jnp.ones((1,), jnp.int32),
  }

"""``make_model(cfg) -> Model``: the model zoo behind pure functions over plain dict parameters.

See the docstring of ``solid_jax.models`` and ``docs/MODELS.md`` for the parameter tree and
equations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from solid_jax.configs import ModelConfig
from solid_jax.nn import codebook as codebook_lib
from solid_jax.nn import dynamic
from solid_jax.nn import encoders
from solid_jax.nn import hypernet
from solid_jax.nn import layers

Array = jax.Array
Params = dict
Batch = dict

GENERATOR_KEYS = ("generator", "item_generator", "semantic_generator")
# The layout of packed rows (``solid_jax.data.pack_rows``) that ``apply_positions`` reads.
PACKING_KEYS = ("segment", "slot", "span")


class Model(NamedTuple):
  """A model as a tuple of pure functions: jittable, differentiable, vmappable, stateless.

  Attributes:
    init: ``init(key, *, codebook_init=None) -> params``, a nested dict of float32 arrays.
      ``codebook_init``: float[codebook_size, d] initial codes (``head="solid"`` only), e.g. the
      stage-1 metacode.
    apply: ``apply(params, batch, *, train=False, key=None) -> (logits float32[B], aux)``.
      ``aux["aux_loss"]`` is the weighted sum of the auxiliary losses (0.0 for non-SOLID heads);
      SOLID adds ``"consistency_loss"``, ``"codebook_loss"``, ``"commitment_loss"`` (unweighted),
      ``"codebook/perplexity"``, ``"codebook/usage"`` and, in ``ema`` mode, ``"codebook_state"``
      (the new codebook subtree). ``train`` has no effect (no dropout); ``key`` seeds the EMA
      dead-code revival (None: derived from the state's seed and step).
    generate: ``generate(params, batch) -> weights``, the per-user dynamic weights, leading axis B
      (``{}`` for ``head="static"``).
    score: ``score(params, weights, batch) -> logits float32[B]``; recomputes the backbone and the
      target tower and applies the head with ``weights``.
    trainable: ``trainable(params) -> pytree of bool`` with the structure of ``params``; False for
      the frozen codebook, the EMA codebook and statistics and, with ``paper_compat``, the
      generators' projections A, a, B, c.
    update_state: ``update_state(params, aux) -> params``: writes the EMA codebook state of ``aux``;
      identity for every other model.
    config: the ``ModelConfig``.
    apply_positions: ``apply_positions(params, batch, *, train=False, key=None) -> (logits
      float32[B, L, C], aux)`` for models that can be trained on every position of a sequence
      (``config.positionwise``; None otherwise): ``batch["items"]`` int32[B, L] is a sequence
      (right-padded), ``batch["target"]`` int32[B, L, C] the C candidates scored at every
      position from the state after items ``0..t`` (the next item and its negatives). With
      ``config.packable``, the batch may be packed rows (``solid_jax.data.pack_rows``: several
      users per row, told apart by int32 ``segment``/``slot``/``span`` [B, L]); each position then
      scores as it does in its user's unpacked row.
    encode_users: ``encode_users(params, batch) -> float32[B, d]``, the user vector ``u`` with
      ``logit = <u, encode_items(params, target)>`` (None for DIN, whose head sees the target).
    encode_items: ``encode_items(params, items int[...]) -> float32[..., d]``, the target tower.
  """

  init: Callable[..., Params]
  apply: Callable[..., tuple[Array, dict]]
  generate: Callable[[Params, Batch], Params]
  score: Callable[[Params, Params, Batch], Array]
  trainable: Callable[[Params], Any]
  update_state: Callable[[Params, dict], Params]
  config: ModelConfig
  apply_positions: Callable[..., tuple[Array, dict]] | None = None
  encode_users: Callable[[Params, Batch], Array] | None = None
  encode_items: Callable[[Params, Array], Array] | None = None


def _masked_mse(a: Array, b: Array, mask: Array) -> Array:
  """``sum(mask * (a - b)^2) / max(sum(mask) * D, 1)``: a, b float[B, L, D], mask float[B, L]."""
  denom = jnp.maximum(jnp.sum(mask) * a.shape[-1], 1.0)
  return jnp.sum(jnp.square(a - b) * mask[..., None]) / denom


def make_model(cfg: ModelConfig, *, scan_unroll: int | bool = True) -> Model:
  """Builds the model described by ``cfg``.

  Args:
    cfg: the architecture (backbone, head, generator, codebook mode, sizes).
    scan_unroll: unroll factor of the GRU scans (``lax.scan(unroll=...)``). The default, True,
      unrolls fully: about 4x faster GRUs on CPU for L = 10 (a while loop costs per step), at a
      longer compile.

  Returns:
    A ``Model`` of pure functions.
  """
  specs = hypernet.layer_specs(cfg)
  kind = cfg.generator if cfg.head == "solid" else cfg.head
  unroll = scan_unroll

  def init(key: Array, *, codebook_init: Array | None = None) -> Params:
    if codebook_init is not None and cfg.head != "solid":
      raise ValueError("codebook_init is only meaningful for head='solid'")
    keys = jax.random.split(key, 10)
    params = encoders.init(keys[0], cfg)
    if cfg.head == "static":
      if specs:
        sizes = [specs[0][0]] + [n_out for _, n_out, _ in specs]
        params["head"] = layers.mlp_init(keys[1], sizes)
        if cfg.init_std > 0:
          params["head"] = encoders._normal_init(keys[1], params["head"], cfg.init_std)  # pylint: disable=protected-access
      return params
    if kind == "apg":
      params["head"] = hypernet.apg_shared_init(keys[1], cfg)
    if cfg.head in ("duet", "apg"):
      params["generator"] = hypernet.init(keys[2], cfg, kind)
      return params
    d = cfg.dim
    params["item_generator"] = hypernet.init(keys[3], cfg, kind)
    params["semantic_generator"] = hypernet.init(keys[4], cfg, kind)
    params["semantic_embedding"] = layers.embedding_init(keys[5], cfg.num_semantics, d)
    params["semantic_position_embedding"] = layers.xavier_uniform(keys[6], (cfg.seq_len, d))
    params["semantic_seq_trans"] = layers.dense_init(keys[7], d, d)
    params["codebook"] = codebook_lib.init(
        keys[8], cfg.codebook_size, d, mode=cfg.codebook, table=codebook_init
    )
    params["decoder"] = layers.mlp_init(keys[9], (d, cfg.codebook_hidden, d))
    return params

  def _keys(train: bool, key: Array | None) -> tuple[Array | None, Array | None]:
    """(dropout key or None, codebook key): dropout draws from its own stream fold_in(key, 1)."""
    if not (train and cfg.dropout):
      return None, key
    if key is None:
      raise ValueError("this model has dropout: apply(..., train=True) needs a PRNG key")
    return jax.random.fold_in(key, 1), key

  def _generate(params: Params, batch: Batch, key: Array | None = None,
                drop: Array | None = None, all_positions: bool = False
                ) -> tuple[Params, dict]:
    zero = jnp.zeros((), jnp.float32)
    if cfg.head == "static":
      return {}, {"aux_loss": zero}
    items = jnp.asarray(batch["items"])
    lengths = encoders.lengths_of(items)
    with jax.named_scope("backbone"):
      seq_emb = encoders.sequence_embedding(params, items, cfg, layers.fold(drop, 0))
    if cfg.head in ("duet", "apg"):
      (weights,) = hypernet.generate([params["generator"]], [seq_emb], lengths, cfg, kind,
                                     unroll=unroll, all_positions=all_positions)
      return weights, {"aux_loss": zero}

    mask = (items != 0).astype(jnp.float32)
    if "weight" in batch:
      mask = mask * jnp.asarray(batch["weight"], jnp.float32)[:, None]
    with jax.named_scope("codebook"):
      quant, info = codebook_lib.quantize(
          params["codebook"], seq_emb, mask, mode=cfg.codebook, decay=cfg.ema_decay,
          dead_steps=cfg.ema_dead_steps, key=key,
      )
    with jax.named_scope("decoder"):
      decoded = layers.mlp(params["decoder"], quant, ("leaky_relu", None))
    with jax.named_scope("semantic_embedding"):
      semantics = jnp.asarray(batch["semantics"])
      sem = layers.embed(params["semantic_embedding"], semantics)
      sem = sem + params["semantic_position_embedding"][: semantics.shape[-1]]
      sem = jnp.tanh(layers.dense(params["semantic_seq_trans"], sem))
    w_item, w_sem = hypernet.generate(
        [params["item_generator"], params["semantic_generator"]], [decoded, sem], lengths, cfg,
        kind, unroll=unroll, all_positions=all_positions,
    )
    with jax.named_scope("combine"):
      weights = hypernet.combine(w_item, w_sem, cfg.clip_t)
    consistency = _masked_mse(sem, info["selected"], mask)
    aux = {
        "aux_loss": cfg.consistency_weight * consistency + info["codebook_loss"]
        + cfg.commitment_weight * info["commitment_loss"],
        "consistency_loss": consistency,
        "codebook_loss": info["codebook_loss"],
        "commitment_loss": info["commitment_loss"],
        "codebook/perplexity": info["perplexity"],
        "codebook/usage": info["usage"],
    }
    if cfg.codebook == "ema":
      aux["codebook_state"] = info["state"]
    return weights, aux

  def generate(params: Params, batch: Batch) -> Params:
    return _generate(params, batch)[0]

  def _head(params: Params, weights: Params, x: Array) -> Array:
    with jax.named_scope("head"):
      if cfg.head == "static":
        return layers.mlp(params.get("head", {}), x, [act for _, _, act in specs])
      return dynamic.head(weights, params.get("head") if kind == "apg" else None, x, specs)

  def _head_input(params: Params, batch: Batch, drop: Array | None, target_vec: Array | None,
                  all_positions: bool = False) -> Array:
    items = jnp.asarray(batch["items"])
    if cfg.cloze and not all_positions:   # the state is read at an appended [MASK]
      items = encoders.append_mask(items, cfg)
    layout = ({k: batch[k] for k in PACKING_KEYS} if "segment" in batch else None)
    with jax.named_scope("backbone"):
      seq_emb = encoders.sequence_embedding(params, items, cfg, layers.fold(drop, 0), layout)
      return encoders.head_input(params, seq_emb, items, target_vec, cfg, unroll=unroll,
                                 key=layers.fold(drop, 1), all_positions=all_positions,
                                 segments=None if layout is None else layout["segment"])

  def _user_vectors(params: Params, weights: Params, batch: Batch, drop: Array | None = None,
                    all_positions: bool = False) -> Array:
    x = _head_input(params, batch, drop, None, all_positions)
    if not all_positions:
      return _head(params, weights, x)
    b, length, d = x.shape
    return _head(params, weights, x.reshape(b * length, d)).reshape(b, length, -1)

  def _score(params: Params, weights: Params, batch: Batch, drop: Array | None = None) -> Array:
    with jax.named_scope("backbone"):
      target_vec = encoders.target_embedding(params, jnp.asarray(batch["target"]), cfg)
    if cfg.backbone == "din":  # the head sees the target
      return _head(params, weights, _head_input(params, batch, drop, target_vec))[:, 0]
    return jnp.sum(_user_vectors(params, weights, batch, drop) * target_vec, axis=-1)

  def score(params: Params, weights: Params, batch: Batch) -> Array:
    return _score(params, weights, batch)

  def apply(
      params: Params, batch: Batch, *, train: bool = False, key: Array | None = None
  ) -> tuple[Array, dict]:
    drop, key = _keys(train, key)
    weights, aux = _generate(params, batch, key, drop)
    return _score(params, weights, batch, drop), aux

  def apply_positions(
      params: Params, batch: Batch, *, train: bool = False, key: Array | None = None
  ) -> tuple[Array, dict]:
    drop, key = _keys(train, key)
    if "segment" in batch and not cfg.packable:
      raise ValueError(f"packed rows need a causal SASRec or a GRU4Rec with the static head (the "
                       f"dynamic heads pool over the whole row), not backbone={cfg.backbone!r} "
                       f"head={cfg.head!r}")
    weights, aux = _generate(params, batch, key, drop, all_positions=True)
    users = _user_vectors(params, weights, batch, drop, all_positions=True)   # [B, L, d]
    with jax.named_scope("backbone"):
      target_vec = encoders.target_embedding(params, jnp.asarray(batch["target"]), cfg)
    return jnp.einsum("bld,blcd->blc", users, target_vec), aux

  def encode_users(params: Params, batch: Batch) -> Array:
    return _user_vectors(params, generate(params, batch), batch)

  def encode_items(params: Params, items: Array) -> Array:
    return encoders.target_embedding(params, jnp.asarray(items), cfg)

  def trainable(params: Params) -> Any:
    def mark(path, _):
      names = [getattr(p, "key", None) for p in path]
      if names[0] == "codebook" and cfg.codebook in ("frozen", "ema"):
        return False
      if (cfg.paper_compat and names[0] in GENERATOR_KEYS and len(names) > 1
          and names[1] == "proj"):
        return False
      return True

    return jax.tree_util.tree_map_with_path(mark, params)

  def update_state(params: Params, aux: dict) -> Params:
    if cfg.head == "solid" and cfg.codebook == "ema" and "codebook_state" in aux:
      return {**params, "codebook": aux["codebook_state"]}
    return params

  factorised = cfg.backbone != "din"
  return Model(init, apply, generate, score, trainable, update_state, cfg,
               apply_positions if cfg.positionwise else None,
               encode_users if factorised else None,
               encode_items if factorised else None)

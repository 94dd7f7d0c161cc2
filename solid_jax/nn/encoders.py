"""Static backbones (Θ_s): SASRec, GRU4Rec, DIN target attention, BERT4Rec.

Each backbone contributes top-level entries to the model's parameter dict (``init``) and provides
three pure functions over a batch:

- ``sequence_embedding(params, items, cfg) -> float[B, L, d]``: the sequence embeddings every
  generator consumes (item embedding, + position embedding for SASRec/BERT4Rec, then ``seq_trans`` =
  dense + tanh);
- ``target_embedding(params, target, cfg) -> float[B, d]``: the target tower;
- ``head_input(params, seq_emb, items, target_vec, cfg) -> float[B, N_in]``: the input of the head
  (the user state at position n-1, or DIN's ``concat(target, pooled)``).

The exact equations and parameter names are in ``docs/MODELS.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from solid_jax.configs import ModelConfig
from solid_jax.nn import layers

Array = jax.Array
Params = dict


def lengths_of(items: Array) -> Array:
  """n, the number of real (non-zero) items of every row: int[B, L] -> int32[B]."""
  return jnp.sum(items != 0, axis=-1).astype(jnp.int32)


def last_index(lengths: Array) -> Array:
  """The index ``max(n - 1, 0)`` where the user state is read: int[B] -> int32[B]."""
  return jnp.maximum(lengths - 1, 0).astype(jnp.int32)


def head_in_dim(cfg: ModelConfig) -> int:
  """Width of the head input: 2d for DIN (target and pooled history), d otherwise."""
  return 2 * cfg.dim if cfg.backbone == "din" else cfg.dim


def _normal_init(key: Array, params: Params, std: float) -> Params:
  """Dense kernels and embedding tables ~ N(0, std), biases 0, layer norms and GRUs unchanged."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, (path, leaf) in zip(keys, leaves):
    names = [getattr(p, "key", None) for p in path]
    if "gru" in names or names[-2:-1] in (["norm_1"], ["norm_2"], ["embedding_norm"]):
      out.append(leaf)
    elif names[-1] == "bias":
      out.append(jnp.zeros_like(leaf))
    elif names[-1] == "item_embedding":
      out.append((std * jax.random.normal(k, leaf.shape, leaf.dtype)).at[0].set(0.0))
    else:
      out.append(std * jax.random.normal(k, leaf.shape, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def init(key: Array, cfg: ModelConfig) -> Params:
  """The backbone's parameters (top-level entries of the model's parameter dict).

  Args:
    key: PRNG key.
    cfg: model configuration.

  Returns:
    ``{"item_embedding": [num_items, d], "seq_trans", "target_trans", ...}``, see
    ``docs/MODELS.md``.
  """
  d = cfg.dim
  keys = jax.random.split(key, 9)
  rows = cfg.num_items + (1 if cfg.cloze else 0)   # + the [MASK] row of a cloze model
  params = {"item_embedding": layers.embedding_init(keys[0], rows, d)}
  if cfg.embedding == "tanh_dense":
    params["seq_trans"] = layers.dense_init(keys[1], d, d)
  else:
    params["embedding_norm"] = layers.layer_norm_init(d)
  if cfg.target_tower == "embedding":
    pass  # the target tower is the item embedding itself
  elif cfg.backbone == "din":
    params["target_trans"] = layers.mlp_init(keys[2], (d, d))
  else:
    params["target_trans"] = layers.mlp_init(keys[2], (d, d, d))
  if cfg.backbone == "din":
    ka, kk, kv = jax.random.split(keys[3], 3)
    params["attention"] = {
        "query": layers.dense_init(ka, d, d, bias=False),
        "key": layers.dense_init(kk, d, d, bias=False),
        "value": layers.dense_init(kv, d, d, bias=False),
    }
  if cfg.backbone in ("sasrec", "bert4rec"):
    params["position_embedding"] = layers.xavier_uniform(keys[4], (cfg.seq_len, d))
    num_layers = cfg.sasrec_layers if cfg.backbone == "sasrec" else cfg.bert_layers
    layer_keys = jax.random.split(keys[5], num_layers)
    params["transformer"] = {
        f"layer_{i}": layers.transformer_layer_init(k, d, cfg.ff_dim)
        for i, k in enumerate(layer_keys)
    }
  if cfg.backbone == "gru4rec":
    params["gru"] = layers.gru_init(keys[6], d, d)
  if cfg.init_std > 0:
    params = _normal_init(keys[8], params, cfg.init_std)
  return params


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


def positions(items: Array, cfg: ModelConfig, layout: Mapping[str, Array] | None = None
              ) -> Array:
  """int32[B, L] index into the position table of every history slot.

  ``position_alignment="start"``: slot t is position t. ``"end"``: the newest real item is
  position ``seq_len - 1`` and older ones count down (what a left-padded input of ``seq_len``
  slots sees), also for a row cut to fewer slots; padding slots get 0. With ``layout`` (packed rows, ``solid_jax.data.pack_rows``: int ``slot`` and ``span`` [B, L]),
  every slot gets the position it has in its user's unpacked row.
  """
  if layout is None:
    t = jnp.broadcast_to(jnp.arange(items.shape[-1], dtype=jnp.int32), items.shape)
    span = lengths_of(items)[..., None]
  else:
    t, span = jnp.asarray(layout["slot"], jnp.int32), jnp.asarray(layout["span"], jnp.int32)
  if cfg.position_alignment == "start":
    return t
  return jnp.where(items != 0, t + cfg.seq_len - span, 0)


def sequence_embedding(params: Params, items: Array, cfg: ModelConfig,
                       key: Array | None = None, layout: Mapping[str, Array] | None = None
                       ) -> Array:
  """The sequence embeddings: int[B, L] -> float32[B, L, d].

  ``embedding="tanh_dense"``: ``tanh((E[items] (+ P)) @ seq_trans)``; ``"layer_norm"``:
  ``dropout(LN(E[items] (+ P)))`` (P for SASRec / BERT4Rec). ``key`` (training) draws the
  embedding dropout mask. ``layout``: the ``slot``/``span`` of packed rows (``positions``).
  """
  x = layers.embed(params["item_embedding"], items)
  if cfg.backbone in ("sasrec", "bert4rec"):
    x = x + layers.embed(params["position_embedding"], positions(items, cfg, layout))
  if cfg.embedding == "tanh_dense":
    x = jnp.tanh(layers.dense(params["seq_trans"], x))
  else:
    x = layers.layer_norm(params["embedding_norm"], x, cfg.layer_norm_eps)
  return layers.dropout(x, cfg.dropout_embedding, key)


def target_embedding(params: Params, target: Array, cfg: ModelConfig) -> Array:
  """Target tower int[...] -> float32[..., d]: the item embedding itself
  (``target_tower="embedding"``), DIN one tanh layer, the others a tanh layer then a linear one."""
  if cfg.target_tower == "embedding":
    return layers.embed(params["item_embedding"], target)
  acts = ("tanh",) if cfg.backbone == "din" else ("tanh", None)
  return layers.mlp(params["target_trans"], layers.embed(params["item_embedding"], target), acts)


def din_pool(params: Params, seq_emb: Array, valid: Array, target_vec: Array) -> Array:
  """DIN target attention (single head, no projection bias, scaled dot product, masked softmax).

  Args:
    params: the model parameters (uses ``params["attention"]``).
    seq_emb: float[B, L, d] history.
    valid: bool[B, L] real positions.
    target_vec: float[B, d] target tower output.

  Returns:
    float[B, d] attention-pooled history.
  """
  att = params["attention"]
  q = layers.dense(att["query"], target_vec)
  k = layers.dense(att["key"], seq_emb)
  v = layers.dense(att["value"], seq_emb)
  scores = jnp.einsum("bd,bld->bl", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
  probs = layers.masked_softmax(scores, valid)
  return jnp.einsum("bl,bld->bd", probs, v)


def head_input(
    params: Params,
    seq_emb: Array,
    items: Array,
    target_vec: Array,
    cfg: ModelConfig,
    *,
    unroll: int = 1,
    key: Array | None = None,
    all_positions: bool = False,
    segments: Array | None = None,
) -> Array:
  """The head's input.

  Args:
    params: model parameters.
    seq_emb: float[B, L, d] from ``sequence_embedding``.
    items: int[B, L] item ids (padding 0), for the mask and n.
    target_vec: float[B, d] from ``target_embedding`` (used by DIN only).
    cfg: model configuration.
    unroll: unroll factor of the GRU scan.
    key: PRNG key of the transformer's dropout (training; None: no dropout).
    all_positions: return the state after every position, float[B, L, d] (causal SASRec and
      GRU4Rec only: ``cfg.positionwise``), instead of the state at n-1.
    segments: int[B, L] segment ids of packed rows (``solid_jax.data.pack_rows``; with
      ``all_positions``, ``cfg.packable`` only): attention stays within a user's segment.

  Returns:
    float[B, d] user state at position n-1 (SASRec, BERT4Rec, GRU4Rec) or float[B, 2d]
    ``concat(target_vec, pooled)`` (DIN); float[B, L, d] with ``all_positions``.
  """
  if all_positions and not cfg.positionwise:
    raise ValueError(f"backbone {cfg.backbone!r} (causal={cfg.causal}) cannot be trained on every "
                     "position at once: its state at t would see later items")
  if segments is not None and not (all_positions and cfg.packable):
    raise ValueError(f"packed rows (segments) need every position and a causal SASRec or a "
                     f"GRU4Rec with the static head, not backbone={cfg.backbone!r} head={cfg.head!r} "
                     f"all_positions={all_positions}")
  valid = items != 0
  lengths = lengths_of(items)
  if cfg.backbone == "gru4rec":
    if all_positions:
      # In packed rows a user's segment starts where the previous one's slots end.
      resets = None if segments is None else segments != jnp.pad(
          segments[:, :-1], ((0, 0), (1, 0)))
      return layers.gru_all_states([params["gru"]], [seq_emb], unroll=unroll, resets=resets)[0]
    return layers.gru_last_state(params["gru"], seq_emb, lengths, unroll=unroll)
  if cfg.backbone == "din":
    return jnp.concatenate([target_vec, din_pool(params, seq_emb, valid, target_vec)], axis=-1)
  ff_act = cfg.ff_activation or ("relu" if cfg.backbone == "sasrec" else "gelu")
  blocks = params["transformer"]
  x = seq_emb
  for i in range(len(blocks)):
    last = i == len(blocks) - 1 and not all_positions
    x = layers.transformer_layer(
        blocks[f"layer_{i}"],
        x,
        valid,
        num_heads=cfg.num_heads,
        ff_activation=ff_act,
        query_index=last_index(lengths) if last else None,
        causal=cfg.causal and cfg.backbone == "sasrec",
        eps=cfg.layer_norm_eps,
        dropout_hidden=cfg.dropout_hidden,
        dropout_attention=cfg.dropout_attention,
        key=layers.fold(key, i),
        segments=segments,
    )
  return x

"""``make_model(cfg) -> Model``: the model zoo behind pure functions over plain dict parameters.

The functions are ``Recommender(cfg)``'s Flax ``init`` / ``apply`` with the ``{"params": ...}``
wrapper taken off. See the docstring of ``solid_jax.models`` and ``docs/MODELS.md`` for the
parameter tree and equations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from solid_jax.model_config import RUNTIME_FIELDS, ModelConfig
from solid_jax.models.base import HYPER_COLLECTION
from solid_jax.models.recommender import PACKING_KEYS, Recommender, example_batch
from solid_jax.models.registry import BACKBONES, HEADS
from solid_jax.nn import codebook as codebook_lib

Array = jax.Array
Params = dict
Batch = dict

__all__ = ["Model", "make_model", "PACKING_KEYS", "item_table"]


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
      (the new codebook subtree). ``train`` turns dropout on (it then needs ``key``; the masks
      come from ``fold_in(key, 1)``); ``key`` also seeds the EMA
      dead-code revival (None: derived from the state's seed and step). ``hyper`` (optional)
      maps run-time fields (``RUNTIME_FIELDS``: ``clip_t``, ``consistency_weight``) to float32
      scalars that replace the config's values, traced (a vmapped population's members each
      train with their own); heads that do not read a field ignore it.
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


def item_table(params: Params) -> Array:
  """The item embedding table float[num_items(+1), d] of a model's parameters (the semantic
  metacode of a stage-1 model, whose items are semantic ids)."""
  return params["backbone"]["item_embedding"]["embedding"]


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
  module = Recommender(cfg, scan_unroll=scan_unroll)
  head_cls = HEADS[cfg.head]

  def init(key: Array, *, codebook_init: Array | None = None) -> Params:
    if codebook_init is not None and cfg.head != "solid":
      raise ValueError("codebook_init is only meaningful for head='solid'")
    params = module.init({"params": key}, example_batch(cfg))["params"]
    params = jax.tree.map(jnp.asarray, dict(params))
    if codebook_init is not None and cfg.codebook != "none":  # "none": no codebook to set
      codes = jnp.asarray(codebook_init, jnp.float32)
      want = params["head"]["codebook"]["codes"].shape
      if codes.shape != want:
        raise ValueError(f"codebook table has shape {codes.shape}; expected {want}")
      table = {"codes": codes}
      if cfg.codebook == "ema":
        table["ema"] = {
          **params["head"]["codebook"]["ema"],
          **codebook_lib.ema_statistics(codes),
        }
      params["head"] = {**params["head"], "codebook": table}
    return params

  def _call(
    params: Params,
    method,
    *args,
    train: bool = False,
    key: Array | None = None,
    hyper: Mapping[str, Any] | None = None,
    **kwargs,
  ):
    """``module.apply`` with dropout drawn from ``fold_in(key, 1)`` when training and the
    run-time overrides ``hyper`` in the head's ``"hyper"`` collection."""
    train = bool(train and cfg.dropout)
    rngs = None
    if train:
      if key is None:
        raise ValueError("this model has dropout: apply(..., train=True) needs a PRNG key")
      rngs = {"dropout": jax.random.fold_in(key, 1)}
    variables = {"params": params}
    if hyper:
      unknown = sorted(set(hyper) - set(RUNTIME_FIELDS))
      if unknown:
        raise ValueError(
          f"apply(..., hyper=...) overrides only the run-time fields {RUNTIME_FIELDS}, "
          f"not {unknown}"
        )
      variables[HYPER_COLLECTION] = {
        "head": {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}
      }
    return module.apply(variables, *args, method=method, rngs=rngs, train=train, key=key, **kwargs)

  def apply(
    params: Params,
    batch: Batch,
    *,
    train: bool = False,
    key: Array | None = None,
    hyper: Mapping[str, Any] | None = None,
  ) -> tuple[Array, dict]:
    return _call(params, Recommender.__call__, batch, train=train, key=key, hyper=hyper)

  def apply_positions(
    params: Params,
    batch: Batch,
    *,
    train: bool = False,
    key: Array | None = None,
    hyper: Mapping[str, Any] | None = None,
  ) -> tuple[Array, dict]:
    return _call(params, Recommender.positions, batch, train=train, key=key, hyper=hyper)

  def generate(params: Params, batch: Batch) -> Params:
    return module.apply({"params": params}, batch, method=Recommender.generate)[0]

  def score(params: Params, weights: Params, batch: Batch) -> Array:
    return module.apply({"params": params}, weights, batch, method=Recommender.score)

  def encode_users(params: Params, batch: Batch) -> Array:
    return module.apply({"params": params}, batch, method=Recommender.users)

  def encode_items(params: Params, items: Array) -> Array:
    return module.apply({"params": params}, items, method=Recommender.items)

  def trainable(params: Params) -> Any:
    def mark(path, _):
      names = tuple(str(getattr(p, "key", p)) for p in path)
      return not (names[0] == "head" and head_cls.frozen(cfg, names[1:]))

    return jax.tree_util.tree_map_with_path(mark, params)

  def update_state(params: Params, aux: dict) -> Params:
    if "head" not in params:
      return params
    head = head_cls.update_state(cfg, params["head"], aux)
    return params if head is params["head"] else {**params, "head": head}

  factorised = BACKBONES[cfg.backbone].factorised(cfg)
  return Model(
    init,
    apply,
    generate,
    score,
    trainable,
    update_state,
    cfg,
    apply_positions if cfg.positionwise else None,
    encode_users if factorised else None,
    encode_items if factorised else None,
  )

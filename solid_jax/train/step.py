"""The jit-compiled training step: ``make_train_step(model, tx)`` -> ``(params, opt_state, batch,
step) -> (params, opt_state, scalars)``, compiled once with the parameter and optimizer buffers
donated; over single rows, candidate groups (``rows.to_groups``) or every position of a sequence.

Training loss everywhere (DESIGN.md): ``sum(weight * BCE(logits, label)) / sum(weight) +
aux["aux_loss"]``; padding rows of the last batch have weight 0.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib
from solid_jax.train.rows import Batch, BatchTransform


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted mean sigmoid binary cross-entropy.

  Args:
    logits: float32[B].
    labels: float32[B] in {0, 1}.
    weights: float32[B], 0 for padding rows.

  Returns:
    float32 scalar ``sum(w * bce) / max(sum(w), 1e-12)``.
  """
  losses = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels)
  return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-12)


def _accepts(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def scalar_aux(aux: dict[str, Any]) -> dict[str, jax.Array]:
  """The scalar floating-point entries of a model's ``aux`` dict (losses, codebook statistics)."""
  out = {}
  for key, value in aux.items():
    if (
      isinstance(value, (jax.Array, np.ndarray, float))
      and jnp.ndim(value) == 0
      and jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating)
    ):
      out[key] = jnp.asarray(value, jnp.float32)
  return out


def _position_weights(batch: Batch) -> jax.Array:
  """float32[B, L] weight of every position: the row weight where a position has candidates (a
  real item; a masked one for the cloze objective), 0 elsewhere; per slot for packed rows
  (``solid_jax.data.pack_rows``)."""
  live = (batch["target"][..., 0] != 0).astype(jnp.float32)
  weight = jnp.asarray(batch["weight"], jnp.float32)
  return live * (weight if weight.ndim == 2 else weight[:, None])


def make_train_step(
  model,
  tx: optax.GradientTransformation,
  *,
  seed: int = 0,
  key: jax.Array | None = None,
  transform: BatchTransform | None = None,
  grouped: bool = False,
):
  """Builds the jit-compiled training step.

  Args:
    model: a ``solid_jax`` Model (``apply``, ``update_state``).
    tx: the optimizer (from ``make_optimizer``).
    seed: root of the per-step keys ``fold_in(key(seed), step)`` (passed to ``apply`` as ``key``
      when the model takes one), unless ``key`` is given.
    key: the root key itself (the training loop passes its stage's ``"dropout"`` stream,
      `solid_jax.train.streams`).
    transform: optional batch rewrite applied inside the step (``semantic_view`` for stage 1).
    grouped: batches are candidate groups (``to_groups``): ``target``, ``target_semantic`` and
      ``label`` are [B, G] and one history serves G candidates. ``apply`` is vmapped over the
      candidate axis, so everything that depends on the history alone (backbone state, generated
      weights, codebook, auxiliary losses) is computed once per group.

  Returns:
    ``step_fn(params, opt_state, batch, step) -> (params, opt_state, scalars)`` where ``batch``
    holds int32 items/semantics [B, L], target/target_semantic [B] (or [B, G]), float32 label
    [B] (or [B, G]) and weight [B], ``step`` is the int32 global step, and ``scalars`` a dict of
    float32 scalars: "loss" (the optimised loss), "bce", "weight" (the number of scored
    candidates) and the model's scalar aux entries. ``params`` and ``opt_state`` are donated.
    Position batches (``target``/``label`` [B, L, C], `solid_jax.data.position_rows`) go through
    ``model.apply_positions``: every real position scores its C candidates.
  """
  pure = train_step_fn(model, tx, transform=transform, grouped=grouped)

  root = jax.random.key(seed) if key is None else key

  def step_fn(params, opt_state, batch, step):
    return pure(params, opt_state, batch, step, root)

  return jax.jit(step_fn, donate_argnums=(0, 1))


def train_step_fn(
  model,
  tx: optax.GradientTransformation,
  *,
  transform: BatchTransform | None = None,
  grouped: bool = False,
):
  """The pure (not compiled) training step that `make_train_step` compiles.

  Returns:
    ``step_fn(params, opt_state, batch, step, key, lr=None, hyper=None) -> (params, opt_state,
    scalars)``: as `make_train_step`'s, with the root key ``key`` (the per-step key is
    ``fold_in(key, step)``), when ``lr`` (a float32 scalar) is given, the optimizer's updates
    multiplied by it (``tx`` then built with learning rate 1), and ``hyper`` (a dict of float32
    scalars) passed to ``model.apply`` as its run-time overrides (``clip_t``,
    ``consistency_weight``). Written for one model; the population step
    (`solid_jax.train.population`) vmaps it over stacked members.
  """
  if isinstance(tx, optim_lib.RowWiseOptimizer):
    return _rowwise_step_fn(model, tx, transform=transform, grouped=grouped)
  loss_fn = _loss_fn(model, transform, grouped)

  def step_fn(params, opt_state, batch, step, key, lr=None, hyper=None):
    (loss, (bce, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch, step, key, hyper
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    if lr is not None:
      updates = jax.tree.map(lambda u: u * jnp.asarray(lr, u.dtype), updates)
    params = optax.apply_updates(params, updates)
    params = model.update_state(params, aux)
    return params, opt_state, _scalars(batch, grouped, loss, bce, aux)

  return step_fn


def _scalars(batch, grouped, loss, bce, aux):
  if batch["label"].ndim == 3:  # candidates scored at real positions
    rows = jnp.sum(_position_weights(batch)) * batch["label"].shape[2]
  else:
    rows = jnp.sum(batch["weight"]) * (batch["label"].shape[1] if grouped else 1)
  return {**scalar_aux(aux), "loss": loss, "bce": bce, "weight": rows.astype(jnp.float32)}


def _rowwise_step_fn(model, tx, *, transform, grouped):
  """The step with the item table updated row-wise (``optim.RowWiseOptimizer``).

  The batch's table ids (``items`` and ``target``, after ``transform``, plus the padding id 0)
  are made unique, ``uniq`` int32[K] with K = 1 + the number of ids (unused slots hold the
  out-of-range id N); the loss is that of a copy of the model whose item table has K rows,
  ``table[uniq]``, on the batch with every id replaced by its index in ``uniq`` (0 stays 0).
  Its gradient is float[K, d]: only those rows of the table and of its moments are read and
  written, and the cost of the table's update scales with K, not with N.
  """
  from solid_jax import models as models_lib  # pylint: disable=import-outside-toplevel

  if model.config.cloze:
    raise ValueError("embedding_optimizer='rowwise_adam' does not take cloze models")
  path = tx.table_path
  row_models: dict[int, Any] = {}

  def step_fn(params, opt_state, batch, step, key, lr=None, hyper=None):
    view = transform(batch) if transform is not None else batch
    ids = jnp.concatenate(
      [jnp.zeros((1,), jnp.int32)]
      + [jnp.asarray(view[k], jnp.int32).reshape(-1) for k in ("items", "target")]
    )
    rest, table = optim_lib.split_path(params, path)
    n = table.shape[0]
    uniq = jnp.unique(ids, size=ids.size, fill_value=n)
    remapped = {
      **view,
      **{
        k: jnp.searchsorted(uniq, jnp.asarray(view[k], jnp.int32)).astype(jnp.int32)
        for k in ("items", "target")
      },
    }
    k = int(ids.size)
    if k not in row_models:
      row_models[k] = models_lib.make_model(dataclasses.replace(model.config, num_items=k))
    loss_fn = _loss_fn(row_models[k], None, grouped)

    def loss_rows(rest, rows):
      return loss_fn(optim_lib.merge_path(rest, path, rows), remapped, step, key, hyper)

    rows = table.at[uniq].get(mode="fill", fill_value=0)
    (loss, (bce, aux)), (g_rest, g_rows) = jax.value_and_grad(
      loss_rows, argnums=(0, 1), has_aux=True
    )(rest, rows)
    updates, opt_state = tx.update(g_rest, opt_state, rest)
    if lr is not None:
      updates = jax.tree.map(lambda u: u * jnp.asarray(lr, u.dtype), updates)
    rest = optax.apply_updates(rest, updates)
    table, rows_state = tx.update_rows(table, opt_state["rows"], uniq, g_rows, lr)
    params = model.update_state(optim_lib.merge_path(rest, path, table), aux)
    return params, {**opt_state, "rows": rows_state}, _scalars(batch, grouped, loss, bce, aux)

  return step_fn


def _loss_fn(model, transform, grouped):
  """``loss_fn(params, batch, step, key, hyper=None) -> (loss, (bce, aux))`` of one training
  batch (``hyper``: the model's run-time overrides, passed to ``apply`` when given)."""
  takes_key = _accepts(model.apply, "key")
  takes_train = _accepts(model.apply, "train")

  def loss_fn(params, batch, step, key, hyper=None):
    kwargs = {}
    if hyper:
      kwargs["hyper"] = hyper
    if takes_train:
      kwargs["train"] = True
    if takes_key:
      kwargs["key"] = jax.random.fold_in(key, step)
    # The row weights go in too: models mask padding rows out of their auxiliary losses.
    if grouped:
      history = {k: batch[k] for k in ("items", "semantics", "weight") if k in batch}
      candidates = {k: batch[k] for k in ("target", "target_semantic") if k in batch}

      def per_candidate(c):
        return model.apply(
          params, rows_lib.model_batch({**history, **c}, transform, with_weight=True), **kwargs
        )

      # The aux entries depend on the history only, so they stay unbatched (out_axes None).
      logits, aux = jax.vmap(per_candidate, in_axes=1, out_axes=(1, None))(candidates)
      weights = jnp.broadcast_to(batch["weight"][:, None], logits.shape)
      bce = weighted_bce(logits.reshape(-1), batch["label"].reshape(-1), weights.reshape(-1))
    elif batch["label"].ndim == 3:
      # Every position of a sequence (``solid_jax.data.position_rows``): C candidates per
      # position, padding positions weigh 0.
      logits, aux = model.apply_positions(
        params, rows_lib.model_batch(batch, transform, with_weight=True), **kwargs
      )
      weights = jnp.broadcast_to(_position_weights(batch)[:, :, None], logits.shape)
      bce = weighted_bce(logits.reshape(-1), batch["label"].reshape(-1), weights.reshape(-1))
    else:
      logits, aux = model.apply(
        params, rows_lib.model_batch(batch, transform, with_weight=True), **kwargs
      )
      bce = weighted_bce(logits, batch["label"], batch["weight"])
    aux_loss = jnp.asarray(aux.get("aux_loss", 0.0), jnp.float32)
    return bce + aux_loss, (bce, aux)

  return loss_fn

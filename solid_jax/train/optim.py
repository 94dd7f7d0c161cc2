"""The optimiser: Adam / AdamW with optional global-norm clipping on the trainable leaves, exactly
zero updates (and no state) on the frozen ones (``model.trainable``), and a choice of update for
the item embedding table (``embedding_optimizer``):

- ``"adam"``: the table is one more Adam leaf (dense: every step reads and writes all its rows
  and both moments, whatever the batch touched);
- ``"adagrad"`` / ``"sgd"``: optax's Adagrad / SGD on the table through ``optax.multi_transform``
  (one accumulator or none; still dense);
- ``"rowwise_adam"``: a row-wise sparse Adam (``RowWiseOptimizer``): the training step
  differentiates the rows the batch looks up instead of the table, and only those rows of the
  table and of its two moments are read and written ("lazy" Adam: a row's moments and value move
  only on steps whose batch holds it; the bias correction uses the global step count). Its cost
  scales with the rows a batch touches, not with the catalogue.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

EMBEDDING_OPTIMIZERS = ("adam", "adagrad", "sgd", "rowwise_adam")
# Where the item table sits in a model's parameters (``solid_jax.models.item_table``).
ITEM_TABLE_PATH = ("backbone", "item_embedding", "embedding")


def trainable_labels(model, params) -> Any:
  """'train' / 'frozen' label of every parameter leaf, from ``model.trainable(params)``."""
  mask = model.trainable(params)
  return jax.tree.map(lambda m: "train" if bool(m) else "frozen", mask)


def make_optimizer(
  model,
  params,
  lr: float,
  *,
  weight_decay: float = 0.0,
  clip_norm: float = 0.0,
  embedding_optimizer: str = "adam",
  embedding_lr: float = 0.0,
) -> optax.GradientTransformation:
  """Adam (AdamW when ``weight_decay > 0``) on the trainable leaves, zero updates elsewhere.

  Args:
    model: the Model (``trainable`` marks the leaves that learn).
    params: a parameter pytree of the model.
    lr: learning rate.
    weight_decay: decoupled weight decay of AdamW (``p -= lr * wd * p`` every step, on every
      trainable leaf); 0 is plain Adam.
    clip_norm: > 0: the gradients of the trainable leaves are scaled down to this global L2 norm
      first (``optax.clip_by_global_norm``); 0: no clipping.
    embedding_optimizer: the update of the item table (``EMBEDDING_OPTIMIZERS``, module doc).
    embedding_lr: learning rate of the item table (0: ``lr``); not with ``"adam"``.

  Returns:
    An ``optax.GradientTransformation``; a ``RowWiseOptimizer`` for ``"rowwise_adam"`` (whose
    ``init``/``update`` cover every leaf but the table; the training step updates the table).

  Frozen leaves get exactly zero updates and no optimizer state.
  """
  if embedding_optimizer not in EMBEDDING_OPTIMIZERS:
    raise ValueError(
      f"embedding_optimizer={embedding_optimizer!r}; expected one of {EMBEDDING_OPTIMIZERS}"
    )
  if embedding_optimizer == "adam" and embedding_lr:
    raise ValueError("embedding_lr applies to embedding_optimizer adagrad, sgd or rowwise_adam")
  inner = optax.adamw(lr, weight_decay=weight_decay) if weight_decay > 0 else optax.adam(lr)
  if clip_norm > 0:
    inner = optax.chain(optax.clip_by_global_norm(clip_norm), inner)
  labels = trainable_labels(model, params)
  table_lr = embedding_lr or lr
  if embedding_optimizer == "adam":
    return _standard_promotion(
      optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)
    )
  if get_path(labels, ITEM_TABLE_PATH) != "train":
    raise ValueError(f"embedding_optimizer={embedding_optimizer!r} needs a trainable item table")
  if embedding_optimizer == "rowwise_adam":
    if weight_decay > 0 or clip_norm > 0:
      raise ValueError(
        "embedding_optimizer='rowwise_adam' takes neither weight decay nor gradient clipping "
        "(both need every row of the table every step)"
      )
    rest_labels, _ = split_path(labels, ITEM_TABLE_PATH)
    dense = _standard_promotion(
      optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, rest_labels)
    )
    return RowWiseOptimizer.build(dense, ITEM_TABLE_PATH, table_lr)
  labels = set_path(labels, ITEM_TABLE_PATH, "embedding")
  table_tx = optax.adagrad(table_lr) if embedding_optimizer == "adagrad" else optax.sgd(table_lr)
  return _standard_promotion(
    optax.multi_transform(
      {"train": inner, "frozen": optax.set_to_zero(), "embedding": table_tx}, labels
    )
  )


# ------------------------------------------------------------------------ the row-wise sparse Adam


def get_path(tree, path: tuple[str, ...]):
  for name in path:
    tree = tree[name]
  return tree


def set_path(tree, path: tuple[str, ...], value):
  """A copy of nested dicts ``tree`` with the leaf at ``path`` replaced by ``value``."""
  if not path:
    return value
  return {**tree, path[0]: set_path(tree[path[0]], path[1:], value)}


def split_path(tree, path: tuple[str, ...]):
  """(``tree`` without the leaf at ``path`` (emptied dicts dropped), that leaf)."""
  head = path[0]
  if len(path) == 1:
    return {k: v for k, v in tree.items() if k != head}, tree[head]
  rest, leaf = split_path(tree[head], path[1:])
  out = {k: v for k, v in tree.items() if k != head}
  if rest:
    out[head] = rest
  return out, leaf


def merge_path(rest, path: tuple[str, ...], leaf):
  """The inverse of `split_path`."""
  if len(path) == 1:
    return {**rest, path[0]: leaf}
  return {**rest, path[0]: merge_path(rest.get(path[0], {}), path[1:], leaf)}


class RowWiseOptimizer(NamedTuple):
  """Dense optimizer for every leaf but the table at ``table_path``, row-wise Adam for the table.

  ``init(params)`` -> ``{"dense": state of the other leaves, "rows": {"mu", "nu": float[N, d],
  "count": int32}}``; ``update(grads, state, params)`` is the dense optimizer on the other leaves
  (``grads``/``params`` without the table, as `split_path` gives them); ``update_rows`` moves the
  table. The training step (`solid_jax.train.step`) calls both.
  """

  init: Callable
  update: Callable
  update_rows: Callable
  table_path: tuple[str, ...]
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  @classmethod
  def build(cls, dense: optax.GradientTransformation, path: tuple[str, ...], lr: float):
    b1, b2, eps = 0.9, 0.999, 1e-8

    def init(params):
      rest, table = split_path(params, path)
      return {
        "dense": dense.init(rest),
        "rows": {
          "mu": jnp.zeros_like(table),
          "nu": jnp.zeros_like(table),
          "count": jnp.zeros((), jnp.int32),
        },
      }

    def update(grads, state, params=None):
      updates, new = dense.update(grads, state["dense"], params)
      return updates, {**state, "dense": new}

    def update_rows(table, rows_state, ids, grad_rows, scale=None):
      """Adam on the rows ``ids`` int32[K] (sorted; ids >= N are padding, dropped) of ``table``
      float[N, d], whose gradient is ``grad_rows`` float[K, d]; ``scale`` multiplies the update
      (a population member's learning rate)."""
      count = rows_state["count"] + 1
      mu = b1 * rows_state["mu"].at[ids].get(mode="fill", fill_value=0) + (1 - b1) * grad_rows
      nu = b2 * rows_state["nu"].at[ids].get(mode="fill", fill_value=0) + (1 - b2) * (
        grad_rows * grad_rows
      )
      t = count.astype(table.dtype)
      mu_hat = mu / (1 - jnp.asarray(b1, table.dtype) ** t)
      nu_hat = nu / (1 - jnp.asarray(b2, table.dtype) ** t)
      step = -jnp.asarray(lr, table.dtype) * mu_hat / (jnp.sqrt(nu_hat) + eps)
      if scale is not None:
        step = step * jnp.asarray(scale, table.dtype)
      new_state = {
        "mu": rows_state["mu"].at[ids].set(mu, mode="drop"),
        "nu": rows_state["nu"].at[ids].set(nu, mode="drop"),
        "count": count,
      }
      return table.at[ids].add(step, mode="drop"), new_state

    return cls(init, update, update_rows, path, b1, b2, eps)


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` with JAX's standard dtype promotion inside, whatever the caller's setting.

  optax's Adam computes ``decay ** count`` with an int32 ``count`` (optax 0.2.8), which
  ``jax_numpy_dtype_promotion="strict"`` rejects; the library's own code runs under strict
  promotion in the tests, so the optimiser is the one scope that opts out.
  """

  def init(params):
    with jax.numpy_dtype_promotion("standard"):
      return tx.init(params)

  def update(updates, state, params=None):
    with jax.numpy_dtype_promotion("standard"):
      return tx.update(updates, state, params)

  return optax.GradientTransformation(init, update)

"""The optimiser: Adam / AdamW with optional global-norm clipping on the trainable leaves, exactly
zero updates (and no state) on the frozen ones (``model.trainable``)."""

from __future__ import annotations

from typing import Any

import jax
import optax


def trainable_labels(model, params) -> Any:
  """'train' / 'frozen' label of every parameter leaf, from ``model.trainable(params)``."""
  mask = model.trainable(params)
  return jax.tree.map(lambda m: "train" if bool(m) else "frozen", mask)


def make_optimizer(
  model, params, lr: float, *, weight_decay: float = 0.0, clip_norm: float = 0.0
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

  Frozen leaves get exactly zero updates and no optimizer state.
  """
  inner = optax.adamw(lr, weight_decay=weight_decay) if weight_decay > 0 else optax.adam(lr)
  if clip_norm > 0:
    inner = optax.chain(optax.clip_by_global_norm(clip_norm), inner)
  return _standard_promotion(
    optax.multi_transform(
      {"train": inner, "frozen": optax.set_to_zero()}, trainable_labels(model, params)
    )
  )


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

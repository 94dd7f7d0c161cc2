"""The jit-compiled pure functions of training and evaluation.

- ``make_optimizer``: Adam on the trainable leaves (``model.trainable(params)``), zero updates elsewhere.
- ``make_train_step``: one optimizer step ``(params, opt_state, batch, step) -> (params, opt_state,
  scalars)``, jit-compiled once with the parameter and optimizer buffers donated.
- ``make_evaluator``: scores a whole split on the device in fixed-size batches (one compiled
  ``lax.map`` over the batches), then ``solid_jax.metrics.evaluate``.

Training loss everywhere (DESIGN.md): ``sum(weight * BCE(logits, label)) / sum(weight) +
aux["aux_loss"]``; padding rows of the last batch have weight 0.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Batch = dict[str, Any]
BatchTransform = Callable[[Batch], Batch]

# Batch columns a model reads; the rest ("user", "label", "weight") stay with the loop.
MODEL_KEYS = ("items", "semantics", "target", "target_semantic")


def semantic_view(batch: Batch) -> Batch:
  """Stage-1 input: the semantic sequence and target take the place of the item ones.

  Args:
    batch: a batch with int32 ``items``/``semantics`` [B, L] and ``target``/``target_semantic`` [B].

  Returns:
    The same batch with ``items <- semantics`` and ``target <- target_semantic``.
  """
  return {**batch, "items": batch["semantics"], "target": batch["target_semantic"]}


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


def trainable_labels(model, params) -> Any:
  """'train' / 'frozen' label of every parameter leaf, from ``model.trainable(params)``."""
  mask = model.trainable(params)
  return jax.tree.map(lambda m: "train" if bool(m) else "frozen", mask)


def make_optimizer(model, params, lr: float) -> optax.GradientTransformation:
  """Adam on the trainable leaves; frozen leaves get exactly zero updates and no Adam state."""
  return optax.multi_transform({"train": optax.adam(lr), "frozen": optax.set_to_zero()},
                               trainable_labels(model, params))


def _accepts(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _model_batch(batch: Batch, transform: BatchTransform | None) -> Batch:
  out = {k: batch[k] for k in MODEL_KEYS if k in batch}
  return transform(out) if transform is not None else out


def scalar_aux(aux: dict[str, Any]) -> dict[str, jax.Array]:
  """The scalar floating-point entries of a model's ``aux`` dict (losses, codebook statistics)."""
  out = {}
  for key, value in aux.items():
    if isinstance(value, (jax.Array, np.ndarray, float)) and jnp.ndim(value) == 0 and \
        jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating):
      out[key] = jnp.asarray(value, jnp.float32)
  return out


def make_train_step(model, tx: optax.GradientTransformation, *, seed: int = 0,
                    transform: BatchTransform | None = None):
  """Builds the jit-compiled training step.

  Args:
    model: a ``solid_jax`` Model (``apply``, ``update_state``).
    tx: the optimizer (from ``make_optimizer``).
    seed: root of the per-step keys ``fold_in(key(seed), step)`` (passed to ``apply`` as ``key``
      when the model takes one).
    transform: optional batch rewrite applied inside the step (``semantic_view`` for stage 1).

  Returns:
    ``step_fn(params, opt_state, batch, step) -> (params, opt_state, scalars)`` where ``batch``
    holds int32 items/semantics [B, L], target/target_semantic [B], float32 label/weight [B],
    ``step`` is the int32 global step, and ``scalars`` a dict of float32 scalars: "loss" (the
    optimised loss), "bce", "weight" (sum of row weights) and the model's scalar aux entries.
    ``params`` and ``opt_state`` are donated.
  """
  takes_key = _accepts(model.apply, "key")
  takes_train = _accepts(model.apply, "train")

  def loss_fn(params, batch, step):
    kwargs = {}
    if takes_train:
      kwargs["train"] = True
    if takes_key:
      kwargs["key"] = jax.random.fold_in(jax.random.key(seed), step)
    logits, aux = model.apply(params, _model_batch(batch, transform), **kwargs)
    bce = weighted_bce(logits, batch["label"], batch["weight"])
    aux_loss = jnp.asarray(aux.get("aux_loss", 0.0), jnp.float32)
    return bce + aux_loss, (bce, aux)

  def step_fn(params, opt_state, batch, step):
    (loss, (bce, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, step)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = model.update_state(params, aux)
    scalars = {**scalar_aux(aux), "loss": loss, "bce": bce,
               "weight": jnp.sum(batch["weight"]).astype(jnp.float32)}
    return params, opt_state, scalars

  return jax.jit(step_fn, donate_argnums=(0, 1))


def pad_rows(split: dict[str, np.ndarray], batch_size: int) -> tuple[dict[str, np.ndarray], int]:
  """Pads every column of a split to a multiple of ``batch_size`` rows (repeating row 0).

  Args:
    split: dict of numpy arrays with N rows each.
    batch_size: rows per batch.

  Returns:
    (padded split with ``ceil(N / batch_size) * batch_size`` rows, N).
  """
  n = len(next(iter(split.values())))
  total = max(1, -(-n // batch_size)) * batch_size
  pad = total - n
  out = {}
  for key, col in split.items():
    col = np.asarray(col)
    if pad:
      col = np.concatenate([col, np.repeat(col[:1], pad, axis=0)], axis=0)
    out[key] = col
  return out, n


def make_scorer(model, *, transform: BatchTransform | None = None):
  """Builds ``score_all(params, split_batches) -> logits float32[num_batches * B]``.

  ``split_batches`` holds the model columns reshaped to [num_batches, B, ...]; one compiled
  ``lax.map`` runs the model over all batches.
  """
  def score_all(params, split_batches):
    def one(batch):
      logits, _ = model.apply(params, _model_batch(batch, transform))
      return logits.astype(jnp.float32)
    return jax.lax.map(one, split_batches).reshape(-1)

  return jax.jit(score_all)


class Evaluator:
  """Scores a fixed split on the device and computes ``solid_jax.metrics.evaluate``.

  The split is padded and transferred once; each call runs one compiled function.

  Args:
    model: the Model.
    split: dict of numpy arrays (``user``, ``items``, ``semantics``, ``target``,
      ``target_semantic``, ``label``), N rows.
    batch_size: rows per device batch.
    transform: optional batch rewrite (``semantic_view`` for stage 1).
    scorer: a scorer from ``make_scorer`` to share its compilation between splits.
  """

  def __init__(self, model, split: dict[str, np.ndarray], batch_size: int, *,
               transform: BatchTransform | None = None, scorer=None):
    batch_size = int(min(batch_size, len(split["label"])))
    padded, self.num_rows = pad_rows({k: split[k] for k in MODEL_KEYS if k in split}, batch_size)
    self._batches = jax.device_put({
        k: v.reshape((-1, batch_size) + v.shape[1:]) for k, v in padded.items()})
    self.labels = np.asarray(split["label"], np.float32)
    self.users = np.asarray(split["user"], np.int32)
    self._score = scorer if scorer is not None else make_scorer(model, transform=transform)

  def scores(self, params) -> jax.Array:
    """float32[N] logits of every row, in the split's order."""
    return self._score(params, self._batches)[: self.num_rows]

  def __call__(self, params) -> dict[str, float]:
    from solid_jax import metrics as sj_metrics  # pylint: disable=import-outside-toplevel
    out = sj_metrics.evaluate(self.scores(params), self.labels, self.users)
    return {k: float(v) for k, v in out.items()}

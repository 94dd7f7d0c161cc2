"""The jit-compiled pure functions of training and evaluation.

- ``make_optimizer``: Adam on the trainable leaves (``model.trainable(params)``), zero updates
  elsewhere.
- ``make_train_step``: one optimizer step ``(params, opt_state, batch, step) -> (params, opt_state,
  scalars)``, jit-compiled once with the parameter and optimizer buffers donated; over single rows
  or over candidate groups (one history, G candidates: ``candidate_groups``, ``to_groups``).
- ``Evaluator``: scores a whole split on the device in fixed-size batches (one compiled ``lax.map``
  over the batches; grouped splits generate the per-user weights once per history), then
  ``solid_jax.metrics.evaluate``; with a mesh, every batch is split over the mesh's devices.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solid_jax import parallel

Batch = dict[str, Any]
BatchTransform = Callable[[Batch], Batch]

# Batch columns a model reads; the rest ("user", "label", "weight") stay with the loop.
MODEL_KEYS = ("items", "semantics", "target", "target_semantic")
# The layout columns of packed position rows (``solid_jax.data.pack_rows``), passed on when there.
PACKING_KEYS = ("segment", "slot", "span")


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


def make_optimizer(model, params, lr: float, *, weight_decay: float = 0.0,
                   clip_norm: float = 0.0) -> optax.GradientTransformation:
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
  return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()},
                               trainable_labels(model, params))


def _accepts(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _model_batch(batch: Batch, transform: BatchTransform | None, *,
                 with_weight: bool = False) -> Batch:
  keys = MODEL_KEYS + PACKING_KEYS + (("weight",) if with_weight else ())
  out = {k: batch[k] for k in keys if k in batch}
  return transform(out) if transform is not None else out


def scalar_aux(aux: dict[str, Any]) -> dict[str, jax.Array]:
  """The scalar floating-point entries of a model's ``aux`` dict (losses, codebook statistics)."""
  out = {}
  for key, value in aux.items():
    if isinstance(value, (jax.Array, np.ndarray, float)) and jnp.ndim(value) == 0 and \
        jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating):
      out[key] = jnp.asarray(value, jnp.float32)
  return out


def to_groups(rows: dict[str, np.ndarray], group: int) -> dict[str, np.ndarray]:
  """The group view of grouped rows: one entry per history, its G candidates side by side.

  Args:
    rows: N = P * G rows where each run of G consecutive rows shares user and history
      (``candidate_groups(rows) == G``).
    group: G.

  Returns:
    ``user`` int32[P], ``items``/``semantics`` int32[P, L] (the shared history) and
    ``target``/``target_semantic`` int32[P, G], ``label`` float32[P, G].
  """
  out = {}
  for key, value in rows.items():
    value = np.asarray(value)
    if key in ("target", "target_semantic", "label"):
      out[key] = value.reshape((-1, group))
    else:
      out[key] = value[::group]
  return out


def _position_weights(batch: Batch) -> jax.Array:
  """float32[B, L] weight of every position: the row weight where a position has candidates (a
  real item; a masked one for the cloze objective), 0 elsewhere; per slot for packed rows
  (``solid_jax.data.pack_rows``)."""
  live = (batch["target"][..., 0] != 0).astype(jnp.float32)
  weight = jnp.asarray(batch["weight"], jnp.float32)
  return live * (weight if weight.ndim == 2 else weight[:, None])


def make_train_step(model, tx: optax.GradientTransformation, *, seed: int = 0,
                    transform: BatchTransform | None = None, grouped: bool = False):
  """Builds the jit-compiled training step.

  Args:
    model: a ``solid_jax`` Model (``apply``, ``update_state``).
    tx: the optimizer (from ``make_optimizer``).
    seed: root of the per-step keys ``fold_in(key(seed), step)`` (passed to ``apply`` as ``key``
      when the model takes one).
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
  takes_key = _accepts(model.apply, "key")
  takes_train = _accepts(model.apply, "train")

  def loss_fn(params, batch, step):
    kwargs = {}
    if takes_train:
      kwargs["train"] = True
    if takes_key:
      kwargs["key"] = jax.random.fold_in(jax.random.key(seed), step)
    # The row weights go in too: models mask padding rows out of their auxiliary losses.
    if grouped:
      history = {k: batch[k] for k in ("items", "semantics", "weight") if k in batch}
      candidates = {k: batch[k] for k in ("target", "target_semantic") if k in batch}

      def per_candidate(c):
        return model.apply(params, _model_batch({**history, **c}, transform, with_weight=True),
                           **kwargs)

      # The aux entries depend on the history only, so they stay unbatched (out_axes None).
      logits, aux = jax.vmap(per_candidate, in_axes=1, out_axes=(1, None))(candidates)
      weights = jnp.broadcast_to(batch["weight"][:, None], logits.shape)
      bce = weighted_bce(logits.reshape(-1), batch["label"].reshape(-1), weights.reshape(-1))
    elif batch["label"].ndim == 3:
      # Every position of a sequence (``solid_jax.data.position_rows``): C candidates per
      # position, padding positions weigh 0.
      logits, aux = model.apply_positions(
          params, _model_batch(batch, transform, with_weight=True), **kwargs)
      weights = jnp.broadcast_to(_position_weights(batch)[:, :, None], logits.shape)
      bce = weighted_bce(logits.reshape(-1), batch["label"].reshape(-1), weights.reshape(-1))
    else:
      logits, aux = model.apply(params, _model_batch(batch, transform, with_weight=True),
                                **kwargs)
      bce = weighted_bce(logits, batch["label"], batch["weight"])
    aux_loss = jnp.asarray(aux.get("aux_loss", 0.0), jnp.float32)
    return bce + aux_loss, (bce, aux)

  def step_fn(params, opt_state, batch, step):
    (loss, (bce, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, step)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = model.update_state(params, aux)
    if batch["label"].ndim == 3:  # candidates scored at real positions
      rows = jnp.sum(_position_weights(batch)) * batch["label"].shape[2]
    else:
      rows = jnp.sum(batch["weight"]) * (batch["label"].shape[1] if grouped else 1)
    scalars = {**scalar_aux(aux), "loss": loss, "bce": bce, "weight": rows.astype(jnp.float32)}
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


def candidate_groups(split: dict[str, np.ndarray]) -> int | None:
  """The number of candidates per history when a split is laid out in groups, else None.

  Evaluation splits list, per user, one positive and its negatives with the same history in
  consecutive rows. When every run of consecutive rows with the same user and history has the
  same length G > 1, the split is "grouped" with G candidates per history.

  Args:
    split: dict with ``user`` int[N] and ``items`` int[N, L] (and ``semantics``).

  Returns:
    G, or None when the rows are not in equal groups.
  """
  users, items = np.asarray(split["user"]), np.asarray(split["items"])
  n = users.shape[0]
  if n < 2:
    return None
  change = (users[1:] != users[:-1]) | np.any(items[1:] != items[:-1], axis=1)
  if "semantics" in split:
    sem = np.asarray(split["semantics"])
    change |= np.any(sem[1:] != sem[:-1], axis=1)
  starts = np.flatnonzero(np.concatenate([[True], change]))
  sizes = np.diff(np.concatenate([starts, [n]]))
  g = int(sizes[0])
  return g if g > 1 and np.all(sizes == g) else None


def eval_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of ``[num_batches, B, ...]`` evaluation arrays: axis B split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(None, parallel.DATA_AXIS))


def _jit_scorer(fn, mesh: Mesh | None, num_arrays: int):
  if mesh is None:
    return jax.jit(fn)
  replicated = parallel.replicated_sharding(mesh)
  # Parameters replicated (copied there if they live elsewhere), batches split along B, logits
  # gathered on every device.
  return jax.jit(fn, in_shardings=(replicated,) + (eval_sharding(mesh),) * num_arrays,
                 out_shardings=replicated)


def make_scorer(model, *, transform: BatchTransform | None = None, mesh: Mesh | None = None):
  """Builds ``score_all(params, split_batches) -> logits float32[num_batches * B]``.

  ``split_batches`` holds the model columns reshaped to [num_batches, B, ...]; one compiled
  ``lax.map`` runs the model over all batches. With a ``mesh`` the batches are expected with
  `eval_sharding` (B a multiple of the mesh size), the parameters are replicated and the logits come
  back replicated.
  """
  def score_all(params, split_batches):
    def one(batch):
      logits, _ = model.apply(params, _model_batch(batch, transform))
      return logits.astype(jnp.float32)
    return jax.lax.map(one, split_batches).reshape(-1)

  return _jit_scorer(score_all, mesh, 1)


def make_group_scorer(model, *, transform: BatchTransform | None = None,
                      mesh: Mesh | None = None):
  """Builds ``score_groups(params, histories, candidates) -> logits float32[num_batches * U * G]``.

  For grouped splits (``candidate_groups``): the per-user weights are generated once per history
  (``model.generate``) and every candidate is scored with them (``model.score``, vmapped over the
  candidate axis, so the target-independent backbone runs once per history).

  ``histories``: ``items``/``semantics`` int32[num_batches, U, L]; ``candidates``:
  ``target``/``target_semantic`` int32[num_batches, U, G]. Logits come back in row order
  (history-major, candidates in their order). With a ``mesh``: as `make_scorer` (U split over the
  mesh, parameters and logits replicated).
  """
  def score_groups(params, histories, candidates):
    def one(args):
      hist, cand = args
      first = {**hist, **{k: v[:, 0] for k, v in cand.items()}}
      weights = model.generate(params, _model_batch(first, transform))

      def per_candidate(c):
        return model.score(params, weights, _model_batch({**hist, **c}, transform))

      return jax.vmap(per_candidate, in_axes=1, out_axes=1)(cand).astype(jnp.float32)

    return jax.lax.map(one, (histories, candidates)).reshape(-1)

  return _jit_scorer(score_groups, mesh, 2)


def _place(tree, mesh: Mesh | None):
  """Host arrays [num_batches, B, ...] to the default device, or split along B over ``mesh``.

  With a mesh every process holds the whole split and keeps the blocks of its own devices
  (``jax.make_array_from_callback``), so this works with one process or several.
  """
  if mesh is None:
    return jax.device_put(tree)
  sharding = eval_sharding(mesh)
  return jax.tree.map(
      lambda v: jax.make_array_from_callback(v.shape, sharding, lambda index: v[index]), tree)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class Evaluator:
  """Scores a fixed split on the device and computes ``solid_jax.metrics.evaluate``.

  The split is padded and transferred once; each call runs one compiled function. Grouped splits
  (one history, G candidates: the validation and test splits) are scored with ``generate`` once per
  history and ``score`` per candidate; other splits row by row with ``apply``.

  With a ``mesh`` (data parallelism, `solid_jax.parallel.make_mesh`), the per-batch size (histories
  for grouped splits, rows otherwise) is rounded up to a multiple of the mesh size, every batch is
  split over the mesh (`eval_sharding`), the parameters are replicated and the scores come back
  replicated: the metrics equal those of the evaluator without a mesh (every row is scored on its
  own; the padding rows are dropped).

  Args:
    model: the Model.
    split: dict of numpy arrays (``user``, ``items``, ``semantics``, ``target``,
      ``target_semantic``, ``label``), N rows.
    batch_size: rows per device batch (grouped: ``batch_size // G`` histories per batch).
    transform: optional batch rewrite (``semantic_view`` for stage 1).
    grouped: use the grouped path when the split allows it.
    scorers: a dict shared between Evaluators of the same model (and transform), so that splits of
      the same shape (validation and test) share one compiled scorer; scorers for different meshes
      (or none) are kept apart.
    mesh: split every batch over this mesh's devices (None: the default device).
    by_length: grouped splits only: score the histories in groups of similar length, each cut to
      its width (`solid_jax.data.packing.length_buckets`; the scores are the same).
  """

  def __init__(self, model, split: dict[str, np.ndarray], batch_size: int, *,
               transform: BatchTransform | None = None, grouped: bool = True,
               scorers: dict | None = None, mesh: Mesh | None = None, by_length: bool = True):
    from solid_jax.data import packing  # pylint: disable=import-outside-toplevel
    scorers = {} if scorers is None else scorers
    self.mesh = mesh
    devices = 1 if mesh is None else mesh.size
    self.num_rows = len(split["label"])
    self.labels = np.asarray(split["label"], np.float32)
    self.users = np.asarray(split["user"], np.int32)
    self.targets = np.asarray(split["target"], np.int32)
    self.group = candidate_groups(split) if grouped else None
    if self.group is not None:
      g = self.group
      num_users = self.num_rows // g
      hist_all = {k: np.asarray(split[k])[::g] for k in ("items", "semantics") if k in split}
      cand_all = {k: np.asarray(split[k]).reshape(num_users, g)
                  for k in ("target", "target_semantic") if k in split}
      parts = (packing.length_buckets(hist_all["items"]) if by_length
               else [(np.arange(num_users), hist_all["items"].shape[1])])
      # Per length group: (histories [batches, U_b, width], candidates [batches, U_b, G], users).
      self._parts = []
      for rows, width in parts:
        per_batch = _round_up(int(max(1, min(batch_size // g, rows.size))), devices)
        hist, _ = pad_rows({k: v[rows, :width] for k, v in hist_all.items()}, per_batch)
        cand, _ = pad_rows({k: v[rows] for k, v in cand_all.items()}, per_batch)
        shape = lambda v, b=per_batch: v.reshape((-1, b) + v.shape[1:])
        self._parts.append((*_place(({k: shape(v) for k, v in hist.items()},
                                     {k: shape(v) for k, v in cand.items()}), mesh), rows.size))
      # Row order of the split from the concatenated groups' scores.
      order = np.concatenate([rows for rows, _ in parts])
      self._unsort = jnp.asarray(np.argsort(order, kind="stable").astype(np.int32))
      key = "groups" if mesh is None else ("groups", mesh)
      if key not in scorers:
        scorers[key] = make_group_scorer(model, transform=transform, mesh=mesh)
      self._score = scorers[key]
    else:
      batch_size = _round_up(int(max(1, min(batch_size, self.num_rows))), devices)
      padded, _ = pad_rows({k: split[k] for k in MODEL_KEYS if k in split}, batch_size)
      self._args = (_place({k: v.reshape((-1, batch_size) + v.shape[1:])
                            for k, v in padded.items()}, mesh),)
      key = "rows" if mesh is None else ("rows", mesh)
      if key not in scorers:
        scorers[key] = make_scorer(model, transform=transform, mesh=mesh)
      self._score = scorers[key]

  def scores(self, params) -> jax.Array:
    """float32[N] logits of every row, in the split's order (replicated over the mesh if any)."""
    if self.group is None:
      return self._score(params, *self._args)[: self.num_rows]
    g = self.group
    parts = [self._score(params, hist, cand)[: n * g].reshape(n, g)
             for hist, cand, n in self._parts]
    return jnp.concatenate(parts)[self._unsort].reshape(-1)

  def host_scores(self, params) -> np.ndarray:
    """`scores` as a host array (with a mesh, every process reads one of its own devices)."""
    scores = self.scores(params)
    if self.mesh is not None:
      scores = scores.addressable_data(0)  # replicated: the full vector on every device
    return np.asarray(jax.device_get(scores))

  def metrics_of(self, scores) -> dict[str, float]:
    """``solid_jax.metrics.evaluate`` of this split's rows with the given scores [N]."""
    from solid_jax import metrics as sj_metrics  # pylint: disable=import-outside-toplevel
    out = sj_metrics.evaluate(scores, self.labels, self.users)
    return {k: float(v) for k, v in out.items()}

  def __call__(self, params) -> dict[str, float]:
    return self.metrics_of(self.host_scores(params))

"""The sampled-protocol evaluator: ``Evaluator`` scores a whole split on the device in fixed-size
batches (one compiled ``lax.map`` over the batches; grouped splits generate the per-user weights
once per history), then ``solid_jax.metrics.evaluate``; with a mesh, every batch is split over the
mesh's devices. The full-catalogue evaluator is ``full_eval.FullEvaluator``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solid_jax import parallel
from solid_jax.train import rows as rows_lib
from solid_jax.train.rows import BatchTransform


def eval_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of ``[num_batches, B, ...]`` evaluation arrays: axis B split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(None, parallel.DATA_AXIS))


def _jit_scorer(fn, mesh: Mesh | None, num_arrays: int):
  if mesh is None:
    return jax.jit(fn)
  replicated = parallel.replicated_sharding(mesh)
  # Parameters replicated (copied there if they live elsewhere), batches split along B, logits
  # gathered on every device.
  return jax.jit(
    fn, in_shardings=(replicated,) + (eval_sharding(mesh),) * num_arrays, out_shardings=replicated
  )


def make_scorer(model, *, transform: BatchTransform | None = None, mesh: Mesh | None = None):
  """Builds ``score_all(params, split_batches) -> logits float32[num_batches * B]``.

  ``split_batches`` holds the model columns reshaped to [num_batches, B, ...]; one compiled
  ``lax.map`` runs the model over all batches. With a ``mesh`` the batches are expected with
  `eval_sharding` (B a multiple of the mesh size), the parameters are replicated and the logits come
  back replicated.
  """

  def score_all(params, split_batches):
    def one(batch):
      logits, _ = model.apply(params, rows_lib.model_batch(batch, transform))
      return logits.astype(jnp.float32)

    return jax.lax.map(one, split_batches).reshape(-1)

  return _jit_scorer(score_all, mesh, 1)


def make_group_scorer(model, *, transform: BatchTransform | None = None, mesh: Mesh | None = None):
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
      weights = model.generate(params, rows_lib.model_batch(first, transform))

      def per_candidate(c):
        return model.score(params, weights, rows_lib.model_batch({**hist, **c}, transform))

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
    lambda v: jax.make_array_from_callback(v.shape, sharding, lambda index: v[index]), tree
  )


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

  def __init__(
    self,
    model,
    split: dict[str, np.ndarray],
    batch_size: int,
    *,
    transform: BatchTransform | None = None,
    grouped: bool = True,
    scorers: dict | None = None,
    mesh: Mesh | None = None,
    by_length: bool = True,
  ):
    from solid_jax.data import packing  # pylint: disable=import-outside-toplevel

    scorers = {} if scorers is None else scorers
    self.mesh = mesh
    devices = 1 if mesh is None else mesh.size
    self.num_rows = len(split["label"])
    self.labels = np.asarray(split["label"], np.float32)
    self.users = np.asarray(split["user"], np.int32)
    self.targets = np.asarray(split["target"], np.int32)
    self.group = rows_lib.candidate_groups(split) if grouped else None
    if self.group is not None:
      g = self.group
      num_users = self.num_rows // g
      hist_all = {k: np.asarray(split[k])[::g] for k in ("items", "semantics") if k in split}
      cand_all = {
        k: np.asarray(split[k]).reshape(num_users, g)
        for k in ("target", "target_semantic")
        if k in split
      }
      parts = (
        packing.length_buckets(hist_all["items"])
        if by_length
        else [(np.arange(num_users), hist_all["items"].shape[1])]
      )
      # Per length group: (histories [batches, U_b, width], candidates [batches, U_b, G], users).
      self._parts = []
      for rows, width in parts:
        per_batch = _round_up(int(max(1, min(batch_size // g, rows.size))), devices)
        hist, _ = rows_lib.pad_rows({k: v[rows, :width] for k, v in hist_all.items()}, per_batch)
        cand, _ = rows_lib.pad_rows({k: v[rows] for k, v in cand_all.items()}, per_batch)
        shape = lambda v, b=per_batch: v.reshape((-1, b) + v.shape[1:])
        self._parts.append(
          (
            *_place(
              ({k: shape(v) for k, v in hist.items()}, {k: shape(v) for k, v in cand.items()}), mesh
            ),
            rows.size,
          )
        )
      # Row order of the split from the concatenated groups' scores.
      order = np.concatenate([rows for rows, _ in parts])
      self._unsort = jnp.asarray(np.argsort(order, kind="stable").astype(np.int32))
      key = "groups" if mesh is None else ("groups", mesh)
      if key not in scorers:
        scorers[key] = make_group_scorer(model, transform=transform, mesh=mesh)
      self._score = scorers[key]
    else:
      batch_size = _round_up(int(max(1, min(batch_size, self.num_rows))), devices)
      padded, _ = rows_lib.pad_rows(
        {k: split[k] for k in rows_lib.MODEL_KEYS if k in split}, batch_size
      )
      self._args = (
        _place({k: v.reshape((-1, batch_size) + v.shape[1:]) for k, v in padded.items()}, mesh),
      )
      key = "rows" if mesh is None else ("rows", mesh)
      if key not in scorers:
        scorers[key] = make_scorer(model, transform=transform, mesh=mesh)
      self._score = scorers[key]

  def scores(self, params) -> jax.Array:
    """float32[N] logits of every row, in the split's order (replicated over the mesh if any)."""
    if self.group is None:
      return self._score(params, *self._args)[: self.num_rows]
    g = self.group
    parts = [
      self._score(params, hist, cand)[: n * g].reshape(n, g) for hist, cand, n in self._parts
    ]
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


class CodebookUsage:
  """The codebook's selections over a whole split: ``usage(params) -> {"perplexity", "usage",
  "codes_used", "positions"}``.

  Every distinct history of the split (one per candidate group) is run through ``model.apply``
  once and its ``aux["codebook/counts"]`` summed (padding positions and padding rows weigh 0);
  ``nn.codebook.summarize_counts`` of the sums gives the split's perplexity and usage, which per
  batch are far noisier (a batch of a few hundred histories may miss most codes, or see one).

  Args:
    model: a Model whose ``apply`` returns ``"codebook/counts"`` (SOLID with a codebook).
    split: the split's rows (``items``, ``semantics``, ``target``, ``target_semantic``, ...).
    batch_size: histories per batch.
    transform: optional batch rewrite (as the evaluators').
    mesh: the data-parallel mesh the parameters are replicated over, if any (the batches are
      then replicated over it too).
  """

  def __init__(
    self,
    model,
    split,
    batch_size: int,
    *,
    transform: BatchTransform | None = None,
    mesh: Mesh | None = None,
  ):
    g = rows_lib.candidate_groups(split) or 1
    rows = {k: np.asarray(split[k])[::g] for k in rows_lib.MODEL_KEYS if k in split}
    n = len(rows["items"])
    rows["weight"] = np.ones(n, np.float32)
    size = int(max(1, min(batch_size, n)))
    padded, _ = rows_lib.pad_rows(rows, size)
    padded["weight"][n:] = 0.0
    batches = {k: v.reshape((-1, size) + v.shape[1:]) for k, v in padded.items()}
    self._batches = jax.device_put(batches) if mesh is None else parallel.replicate(batches, mesh)

    def counts(params, batches):
      def one(batch):
        _, aux = model.apply(params, rows_lib.model_batch(batch, transform, with_weight=True))
        return aux["codebook/counts"]

      return jnp.sum(jax.lax.map(one, batches), axis=0)

    self._counts = jax.jit(counts)

  def __call__(self, params) -> dict[str, float]:
    from solid_jax.nn import codebook as codebook_lib  # pylint: disable=import-outside-toplevel

    counts = self._counts(params, self._batches)
    perplexity, usage = codebook_lib.summarize_counts(counts)
    return {
      "perplexity": float(perplexity),
      "usage": float(usage),
      "codes_used": int(np.sum(np.asarray(counts)[1:] > 0)),
      "positions": float(np.sum(np.asarray(counts)[1:])),
    }

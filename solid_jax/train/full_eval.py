"""FullEvaluator: full-catalogue ranking of a model on the device, tiled over users and items.

For the factorised models (SASRec, GRU4Rec, BERT4Rec with any head: ``logit = <u, t(item)>``), the
target tower of every item is computed once per evaluation (``model.encode_items``), every batch of
users gets its user vectors (``model.encode_users``, which generates the per-user weights once), and
the scores of one item tile are one matmul ``[U_b, d] @ [d, T]``. DIN's head sees the target, so
its scores are computed pair by pair: the per-user weights once per user batch
(``model.generate``), then ``model.score`` vmapped over the items of a tile. Either way the
metrics come from `solid_jax.ranking.rank_counts`, which never holds more than one ``[U_b, T]``
tile of scores; one compiled program scans over the user batches.

Users are grouped by history length (`solid_jax.data.packing.length_buckets`) and each group's
histories are cut to its width, so short histories are not encoded over L padded slots (on the
Amazon data most users have a handful of items); the group's scan compiles once per width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from solid_jax import parallel
from solid_jax import ranking
from solid_jax.data import packing
from solid_jax.train import evaluator as evaluator_lib
from solid_jax.train import rows as rows_lib

# (users per batch, items per tile): factorised scores are a matmul; DIN runs its whole head per
# (user, item) pair, so its tiles are smaller.
FACTORISED_TILES = (1024, 4096)
PAIRWISE_TILES = (128, 128)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class FullEvaluator:
  """Full-catalogue HR@k / NDCG@k / MRR / Coverage@10 of one split (SPEC section 3b).

  Args:
    model: the Model (its ``config.num_items`` is the catalogue).
    users: `solid_jax.data.full_ranking_users` of the split: ``items``, ``semantics`` [U, L],
      ``target`` [U], ``seen`` [U, S] (and ``user`` [U]).
    user_batch: users per batch (default: 1024 factorised, 128 DIN); rounded up to the mesh size.
    item_tile: items per tile (default: 4096 factorised, 128 DIN).
    mesh: split every user batch over this mesh (data parallelism); parameters replicated.
    by_length: encode the users in groups of similar history length, each cut to its width
      (False: every history over all L slots; the metrics are the same).
    compiled: a dict shared between FullEvaluators of the same model, which then share their
      compiled function (the model must be the same: the key is the tiling only).
  """

  def __init__(
    self,
    model,
    users: dict[str, np.ndarray],
    *,
    user_batch: int | None = None,
    item_tile: int | None = None,
    mesh: Mesh | None = None,
    by_length: bool = True,
    compiled: dict | None = None,
  ):
    self.model = model
    self.num_items = int(model.config.num_items)
    self.factorised = model.encode_users is not None
    default_batch, default_tile = FACTORISED_TILES if self.factorised else PAIRWISE_TILES
    self.num_users = int(len(users["target"]))
    self.users = np.asarray(users.get("user", np.arange(self.num_users)), np.int32)
    devices = 1 if mesh is None else mesh.size
    self.tile = int(max(1, min(item_tile or default_tile, self.num_items)))
    self.num_tiles = -(-self.num_items // self.tile)
    self.mesh = mesh
    items = np.asarray(users["items"])
    groups = (
      packing.length_buckets(items) if by_length else [(np.arange(self.num_users), items.shape[1])]
    )
    # (rows of the split, device arrays [batches, batch, ...]) per length group.
    self._parts = []
    for rows, width in groups:
      batch = _round_up(max(1, min(user_batch or default_batch, rows.size)), devices)
      cols = {
        k: np.asarray(users[k])[rows]
        for k in ("items", "semantics", "target", "seen")
        if k in users
      }
      for k in ("items", "semantics"):
        if k in cols:
          cols[k] = cols[k][:, :width]
      cols["mask"] = np.ones(rows.size, bool)
      padded, _ = rows_lib.pad_rows(cols, batch)
      padded["mask"][rows.size :] = False
      shaped = {k: v.reshape((-1, batch) + v.shape[1:]) for k, v in padded.items()}
      self._parts.append((rows, evaluator_lib._place(shaped, mesh)))  # pylint: disable=protected-access
    # Evaluators of the same model and tiling (validation and test, a population's members)
    # share one compiled function through ``compiled``.
    key = ("full", self.tile, self.num_tiles, self.num_items, self.factorised, mesh)
    cache = {} if compiled is None else compiled
    if key not in cache:
      cache[key] = self._build()
    self._fn = cache[key]

  def _build(self):
    model, tile, num_tiles, num_items = self.model, self.tile, self.num_tiles, self.num_items
    factorised = self.factorised

    def run(params, arrays):
      ids = jnp.minimum(jnp.arange(num_tiles * tile, dtype=jnp.int32), num_items - 1)
      if factorised:
        table = model.encode_items(params, ids).reshape(num_tiles, tile, -1)

      def per_batch(lognot, b):
        history = {k: b[k] for k in ("items", "semantics") if k in b}
        if factorised:
          u = model.encode_users(params, {**history, "target": b["target"]})

          def tile_scores(i):
            return u @ table[i].T
        else:
          weights = model.generate(params, {**history, "target": b["target"]})

          def tile_scores(i):
            tile_ids = jax.lax.dynamic_slice_in_dim(ids, i * tile, tile)

            def one(item):
              target = jnp.full(b["target"].shape, item, jnp.int32)
              return model.score(params, weights, {**history, "target": target})

            return jax.vmap(one, out_axes=1)(tile_ids)

        counts = ranking.rank_counts(
          tile_scores, num_tiles, tile, b["target"], b["seen"], num_items, b["mask"]
        )
        return lognot + counts["not_covered_log"], (counts["above"], counts["ties"])

      lognot = jnp.zeros((num_tiles * tile,), ranking._float_dtype())  # pylint: disable=protected-access
      lognot, (above, ties) = jax.lax.scan(per_batch, lognot, arrays)
      return above.reshape(-1), ties.reshape(-1), lognot

    if self.mesh is None:
      return jax.jit(run)
    replicated = parallel.replicated_sharding(self.mesh)
    return jax.jit(
      run,
      in_shardings=(replicated, evaluator_lib.eval_sharding(self.mesh)),
      out_shardings=replicated,
    )

  def counts(self, params) -> dict[str, np.ndarray]:
    """``above`` / ``ties`` int32[U] per user and the coverage accumulator, on the host."""
    outputs = [self._fn(params, arrays) for _, arrays in self._parts]  # dispatched together
    above = np.zeros(self.num_users, np.int32)
    ties = np.zeros(self.num_users, np.int32)
    lognot = None
    for (rows, _), out in zip(self._parts, outputs):
      if self.mesh is not None:
        out = tuple(np.asarray(x.addressable_data(0)) for x in out)
      a, t, log = (np.asarray(x) for x in jax.device_get(out))
      above[rows], ties[rows] = a[: rows.size], t[: rows.size]
      lognot = log if lognot is None else lognot + log
    return {"above": above, "ties": ties, "not_covered_log": lognot}

  def evaluate(self, params, *, per_user: bool = False) -> Any:
    """The metrics of `solid_jax.ranking.full_metric_names` (and the per-user ones if asked).

    Returns:
      A dict of floats; with ``per_user``, ``(metrics, per_user)`` where ``per_user`` holds
      ``user``, ``above``, ``ties`` and ``hr@k`` / ``ndcg@k`` / ``rr`` arrays [U].
    """
    c = self.counts(params)
    metrics = ranking.summarize(c["above"], c["ties"], c["not_covered_log"], self.num_items)
    if not per_user:
      return metrics
    rows = {
      k: np.asarray(v)
      for k, v in jax.device_get(ranking.per_user_metrics(c["above"], c["ties"])).items()
    }
    rows.update(user=self.users, above=c["above"], ties=c["ties"])
    return metrics, rows

  def __call__(self, params) -> dict[str, float]:
    return self.evaluate(params)

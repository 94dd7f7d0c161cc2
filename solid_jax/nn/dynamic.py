"""The dynamic layers, written for ONE user and batched with ``jax.vmap``.

A DUET layer is ``y = x @ W + b`` with the user's ``W: [N_in, N_out]``, ``b: [N_out]``. An APG
layer is ``y = ((x @ V + v) @ S) @ U + u`` with shared factors ``V: [N_in, K]``, ``U: [K, N_out]``
(Flax ``Dense`` layers of the head, applied to all users at once) and the user's core ``S: [K,
K]``; ``V S U`` is never formed. Only the user-dependent product is here: hand-written because it
is a different matrix for every row, which no Flax layer is; ``duet_layers`` / ``apg_cores`` vmap
the one-user functions over the leading (user) axis, so XLA sees batched matmuls.
"""

from __future__ import annotations

import jax

Array = jax.Array
Params = dict


def duet_layer(weights: Params, x: Array) -> Array:
  """One user's full-rank layer ``x @ w + b``: x [N_in], w [N_in, N_out], b [N_out] -> [N_out]."""
  return x @ weights["w"] + weights["b"]


def apg_core(core: Array, x: Array) -> Array:
  """One user's low-rank core ``x @ S``: x [K], core [K, K] -> [K]."""
  return x @ core


duet_layers = jax.vmap(duet_layer)
"""``duet_layer`` over users: weights with leading axis B, x [B, N_in] -> [B, N_out]."""

apg_cores = jax.vmap(apg_core)
"""``apg_core`` over users: core [B, K, K], x [B, K] -> [B, K]."""

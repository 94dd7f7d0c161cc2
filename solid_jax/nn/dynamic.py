"""The dynamic head, written for ONE user and batched with ``jax.vmap``.

A DUET layer is ``y = act(x @ W + b)`` with the user's ``W: [N_in, N_out]``, ``b: [N_out]``. An APG
layer is ``y = act(((x @ V + v) @ S) @ U + u)`` with the shared factors ``V: [N_in, K]``, ``U: [K,
N_out]`` (and their biases) and the user's core ``S: [K, K]``; ``V S U`` is never formed. ``head``
vmaps ``head_one`` over the leading axis of the weights and inputs (the shared APG factors are
broadcast), so XLA sees batched matmuls.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from solid_jax.nn import layers

Array = jax.Array
Params = dict


def duet_layer(weights: Params, x: Array) -> Array:
  """One user's full-rank layer ``x @ w + b``: x [N_in], w [N_in, N_out], b [N_out]."""
  return x @ weights["w"] + weights["b"]


def apg_layer(shared: Params, core: Array, x: Array) -> Array:
  """One user's low-rank layer ``U(S(V x))``: ``x: [N_in]``, ``core: [K, K]`` -> ``[N_out]``."""
  return layers.dense(shared["U"], layers.dense(shared["V"], x) @ core)


def head_one(
    weights: Params, shared: Params | None, x: Array, specs: Sequence[tuple[int, int, str | None]]
) -> Array:
  """One user's dynamic head.

  Args:
    weights: ``{"layer_j": {"w", "b"}}`` (DUET) or ``{"layer_j": {"core"}}`` (APG), no batch axis.
    shared: APG's ``{"layer_j": {"V", "U"}}``; None for DUET.
    x: float[N_in] the head input.
    specs: ``(N_in, N_out, activation)`` of every layer (``hypernet.layer_specs``).

  Returns:
    float[N_out of the last layer].
  """
  for j, (_, _, act) in enumerate(specs):
    w = weights[f"layer_{j}"]
    if "core" in w:
      x = apg_layer(shared[f"layer_{j}"], w["core"], x)
    else:
      x = duet_layer(w, x)
    x = layers.activation(act)(x)
  return x


def head(
    weights: Params, shared: Params | None, x: Array, specs: Sequence[tuple[int, int, str | None]]
) -> Array:
  """``head_one`` vmapped over users: weights with leading axis B, x [B, N_in] -> [B, N_out]."""
  return jax.vmap(lambda w, xi: head_one(w, shared, xi, specs))(weights, x)

"""Parameter generators of the dynamic head: DUET (full rank) and APG (low rank).

A generator encodes the user's sequence embeddings into a condition ``z`` (a GRU, state at position
n-1, then an MLP d -> d tanh -> d) and projects it to the per-user weights of every dynamic layer j:

- DUET: ``W_j = reshape(z @ A_j + a_j, [N_in, N_out])`` (row-major), ``b_j = z @ B_j + c_j``;
  weights ``{"layer_j": {"w": [B, N_in, N_out], "b": [B, N_out]}}``.
- APG: the K x K core ``S_j = reshape(z @ A_j + a_j, [K, K])``; weights ``{"layer_j": {"core": [B,
  K, K]}}``. The shared factors ``V_j: N_in -> K`` and ``U_j: K -> N_out`` live in the model's
  ``"head"`` (``apg_shared_init``).

The projections ``A, a, B, c`` are initialised ``fmod(normal, 2)`` (the authors' init). See
``docs/MODELS.md`` for the parameter tree.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from solid_jax.configs import ModelConfig
from solid_jax.nn import encoders
from solid_jax.nn import layers

Array = jax.Array
Params = dict
LayerSpec = tuple[int, int, "str | None"]

KINDS = ("duet", "apg")
PROJECTION_NAMES = ("A", "a", "B", "c")


def layer_specs(cfg: ModelConfig) -> list[LayerSpec]:
  """``(N_in, N_out, activation)`` of every head layer.

  SASRec/GRU4Rec/BERT4Rec: ``cfg.head_layers`` layers d -> d, tanh between them (the default 2:
  ``[(d, d, "tanh"), (d, d, None)]``; 0: no layer); DIN: ``[(2d, h1, "tanh"), (h1, h2,
  "tanh"), (h2, 1, None)]`` with ``(h1, h2) = cfg.din_hidden``.
  """
  if cfg.backbone != "din":
    n = cfg.head_layers
    return [(cfg.dim, cfg.dim, "tanh")] * max(n - 1, 0) + [(cfg.dim, cfg.dim, None)] * min(n, 1)
  sizes = [encoders.head_in_dim(cfg), *cfg.din_hidden, 1]
  acts = ["tanh"] * len(cfg.din_hidden) + [None]
  return [(a, b, act) for a, b, act in zip(sizes[:-1], sizes[1:], acts)]


def init(key: Array, cfg: ModelConfig, kind: str) -> Params:
  """A generator's parameters: ``{"gru", "mlp": {"dense_0", "dense_1"}, "proj": {"layer_j": ...}}``.

  Args:
    key: PRNG key.
    cfg: model configuration (d, head layer shapes, APG rank).
    kind: "duet" (``proj.layer_j = {"A": [d, N_in*N_out], "a": [N_in*N_out], "B": [d, N_out],
      "c": [N_out]}``) or "apg" (``proj.layer_j = {"A": [d, K*K], "a": [K*K]}``).

  Returns:
    The parameter dict.
  """
  if kind not in KINDS:
    raise ValueError(f"generator kind {kind!r}; expected one of {KINDS}")
  d = cfg.dim
  k_gru, k_mlp, k_proj = jax.random.split(key, 3)
  specs = layer_specs(cfg)
  proj = {}
  for j, (k, (n_in, n_out, _)) in enumerate(zip(jax.random.split(k_proj, len(specs)), specs)):
    ka, kb, kc, kd = jax.random.split(k, 4)
    if kind == "duet":
      proj[f"layer_{j}"] = {
          "A": layers.fmod_normal(ka, (d, n_in * n_out)),
          "a": layers.fmod_normal(kb, (n_in * n_out,)),
          "B": layers.fmod_normal(kc, (d, n_out)),
          "c": layers.fmod_normal(kd, (n_out,)),
      }
    else:
      r = cfg.apg_rank
      proj[f"layer_{j}"] = {
          "A": layers.fmod_normal(ka, (d, r * r)),
          "a": layers.fmod_normal(kb, (r * r,)),
      }
  return {
      "gru": layers.gru_init(k_gru, d, d),
      "mlp": layers.mlp_init(k_mlp, (d, d, d)),
      "proj": proj,
  }


def apg_shared_init(key: Array, cfg: ModelConfig) -> Params:
  """APG's shared factors ``{"layer_j": {"V": dense N_in->K, "U": dense K->N_out}}``, with bias."""
  specs = layer_specs(cfg)
  out = {}
  for j, (k, (n_in, n_out, _)) in enumerate(zip(jax.random.split(key, len(specs)), specs)):
    kv, ku = jax.random.split(k)
    out[f"layer_{j}"] = {
        "V": layers.dense_init(kv, n_in, cfg.apg_rank),
        "U": layers.dense_init(ku, cfg.apg_rank, n_out),
    }
  return out


def condition(params: Params, state: Array) -> Array:
  """``z = tanh(state @ M0 + m0) @ M1 + m1``: float[B, d] -> float[B, d]."""
  return layers.mlp(params["mlp"], state, ("tanh", None))


def project(params: Params, z: Array, cfg: ModelConfig, kind: str) -> Params:
  """The per-user weights of every dynamic layer from the condition ``z: float[B, d]``.

  Returns:
    duet: ``{"layer_j": {"w": [B, N_in, N_out], "b": [B, N_out]}}``;
    apg: ``{"layer_j": {"core": [B, K, K]}}``.
  """
  out = {}
  b = z.shape[0]
  for j, (n_in, n_out, _) in enumerate(layer_specs(cfg)):
    p = params["proj"][f"layer_{j}"]
    if kind == "duet":
      out[f"layer_{j}"] = {
          "w": (z @ p["A"] + p["a"]).reshape(b, n_in, n_out),
          "b": z @ p["B"] + p["c"],
      }
    else:
      r = cfg.apg_rank
      out[f"layer_{j}"] = {"core": (z @ p["A"] + p["a"]).reshape(b, r, r)}
  return out


def generate(
    params_list: Sequence[Params],
    seq_list: Sequence[Array],
    lengths: Array,
    cfg: ModelConfig,
    kind: str,
    *,
    unroll: int = 1,
    all_positions: bool = False,
) -> list[Params]:
  """Runs one or more generators (their GRUs fused in a single scan) and returns their weights.

  Args:
    params_list: generator parameter dicts (``init``).
    seq_list: float[B, L, d] input sequence of each generator.
    lengths: int[B] number of real items n (the state is read at n-1).
    cfg: model configuration.
    kind: "duet" or "apg".
    unroll: unroll factor of the GRU scan.
    all_positions: generate weights for every prefix of the sequence (the GRU state after each
      position): the weights then have leading axis B * L (row-major: user, then position).

  Returns:
    One weight pytree (``project``) per generator.
  """
  with jax.named_scope("generator_gru"):
    if all_positions:
      states = layers.gru_all_states([p["gru"] for p in params_list], seq_list, unroll=unroll)
      states = [h.reshape(-1, h.shape[-1]) for h in states]
    else:
      states = layers.gru_last_states([p["gru"] for p in params_list], seq_list, lengths,
                                      unroll=unroll)
  with jax.named_scope("generator_project"):
    return [project(p, condition(p, h), cfg, kind) for p, h in zip(params_list, states)]


def combine(item_weights: Params, semantic_weights: Params, t: float) -> Params:
  """SOLID's ``clip(item, -t, t) + semantic``, leaf by leaf (weights, biases, APG cores)."""
  return jax.tree.map(lambda a, b: jnp.clip(a, -t, t) + b, item_weights, semantic_weights)

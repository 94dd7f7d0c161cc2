"""Copies a solid_jax parameter tree into the PyTorch reference (``reference.torch_models``).

``torch_state(params)`` rearranges the nested dict of arrays (numpy, or anything ``np.asarray``
accepts) into a flat ``{torch state_dict name: np.ndarray}``; ``load_jax_params(model, params)``
loads it. The mapping is a pure re-layout (transposes and one concatenation), hence linear: the same
function maps a solid_jax *gradient* tree onto the PyTorch ``.grad`` of every parameter, which the
parity tests use.

The table of names is in ``reference/README.md``. Imports numpy and torch only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

Tree = Mapping[str, Any]

def _a(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float32)


def _dense(prefix: str, p: Tree, out: dict) -> None:
  """``{"kernel": [in, out], "bias": [out]}`` -> ``nn.Linear`` (``weight = kernel.T``)."""
  out[f"{prefix}.weight"] = _a(p["kernel"]).T
  if "bias" in p:
    out[f"{prefix}.bias"] = _a(p["bias"])


def _mlp(prefix: str, p: Tree, out: dict) -> None:
  """``{"dense_j": dense}`` -> ``Mlp.layers.dense_j``."""
  for name, sub in p.items():
    _dense(f"{prefix}.layers.{name}", sub, out)


def _gru(prefix: str, p: Tree, out: dict) -> None:
  """``{"w_ih": [in, 3h], "w_hh", "b_ih", "b_hh"}`` (gates r, z, n) -> ``nn.GRU`` layer 0."""
  out[f"{prefix}.weight_ih_l0"] = _a(p["w_ih"]).T
  out[f"{prefix}.weight_hh_l0"] = _a(p["w_hh"]).T
  out[f"{prefix}.bias_ih_l0"] = _a(p["b_ih"])
  out[f"{prefix}.bias_hh_l0"] = _a(p["b_hh"])


def _norm(prefix: str, p: Tree, out: dict) -> None:
  out[f"{prefix}.weight"] = _a(p["scale"])
  out[f"{prefix}.bias"] = _a(p["bias"])


def _transformer_layer(prefix: str, p: Tree, out: dict) -> None:
  """A post-norm layer -> ``nn.TransformerEncoderLayer`` (q, k, v stacked in ``in_proj``)."""
  att = p["attention"]
  out[f"{prefix}.self_attn.in_proj_weight"] = np.concatenate(
      [_a(att[n]["kernel"]).T for n in ("query", "key", "value")], axis=0
  )
  out[f"{prefix}.self_attn.in_proj_bias"] = np.concatenate(
      [_a(att[n]["bias"]) for n in ("query", "key", "value")], axis=0
  )
  _dense(f"{prefix}.self_attn.out_proj", att["out"], out)
  _norm(f"{prefix}.norm1", p["norm_1"], out)
  _dense(f"{prefix}.linear1", p["ff_1"], out)
  _dense(f"{prefix}.linear2", p["ff_2"], out)
  _norm(f"{prefix}.norm2", p["norm_2"], out)


def _generator(prefix: str, p: Tree, out: dict) -> None:
  """``{"gru", "mlp", "proj": {"layer_j": {"A", "a"(, "B", "c")}}}`` -> ``Generator``."""
  _gru(f"{prefix}.gru", p["gru"], out)
  _mlp(f"{prefix}.mlp", p["mlp"], out)
  for name, proj in p["proj"].items():
    if "B" in proj:  # DUET: W from (A, a), b from (B, c).
      out[f"{prefix}.proj.{name}.w.weight"] = _a(proj["A"]).T
      out[f"{prefix}.proj.{name}.w.bias"] = _a(proj["a"])
      out[f"{prefix}.proj.{name}.b.weight"] = _a(proj["B"]).T
      out[f"{prefix}.proj.{name}.b.bias"] = _a(proj["c"])
    else:  # APG: the K x K core from (A, a).
      out[f"{prefix}.proj.{name}.core.weight"] = _a(proj["A"]).T
      out[f"{prefix}.proj.{name}.core.bias"] = _a(proj["a"])


def _head(p: Tree, out: dict) -> None:
  """Static ``{"dense_j"}`` -> ``head.layers.dense_j``; APG ``{"layer_j": {"V", "U"}}`` likewise."""
  for name, sub in p.items():
    if name.startswith("dense_"):
      _dense(f"head.layers.{name}", sub, out)
    else:
      _dense(f"head.{name}.V", sub["V"], out)
      _dense(f"head.{name}.U", sub["U"], out)


def torch_state(params: Tree) -> dict[str, np.ndarray]:
  """The solid_jax parameter tree as ``{state_dict name: float32 array}`` of ``RecModel``.

  Args:
    params: ``model.init(...)`` of solid_jax (or a gradient tree of the same structure), leaves
      numpy or jax arrays.

  Returns:
    A flat dict keyed by the names of ``RecModel.state_dict()``.

  Raises:
    KeyError: a top-level entry this converter does not know.
  """
  out: dict[str, np.ndarray] = {}
  for key, value in params.items():
    if key in ("item_embedding", "semantic_embedding"):
      out[f"{key}.weight"] = _a(value)
    elif key in ("position_embedding", "semantic_position_embedding"):
      out[key] = _a(value)
    elif key in ("seq_trans", "semantic_seq_trans"):
      _dense(key, value, out)
    elif key in ("target_trans", "decoder"):
      _mlp(key, value, out)
    elif key == "attention":  # DIN target attention (no biases).
      for name, sub in value.items():
        _dense(f"attention.{name}", sub, out)
    elif key == "transformer":
      for name, sub in value.items():
        _transformer_layer(f"transformer.{name}", sub, out)
    elif key == "gru":
      _gru("gru", value, out)
    elif key == "head":
      _head(value, out)
    elif key in ("generator", "item_generator", "semantic_generator"):
      _generator(key, value, out)
    elif key == "codebook":  # EMA statistics have no counterpart (the update is not reproduced).
      out["codebook.codes"] = _a(value["codes"])
    else:
      raise KeyError(f"unknown solid_jax parameter entry {key!r}")
  return out


def load_jax_params(model: torch.nn.Module, params: Tree) -> torch.nn.Module:
  """Copies a solid_jax parameter tree into ``model`` in place (strict: every tensor must match).

  Args:
    model: a ``reference.torch_models.RecModel`` built from the same ``ModelConfig``.
    params: the solid_jax parameter tree (numpy or jax leaves).

  Returns:
    ``model``.

  Raises:
    ValueError: names or shapes that do not match.
  """
  state = torch_state(params)
  own = model.state_dict()
  missing = sorted(set(own) - set(state))
  extra = sorted(set(state) - set(own))
  if missing or extra:
    raise ValueError(f"parameter names differ: torch only {missing}, solid_jax only {extra}")
  for name, value in state.items():
    if tuple(own[name].shape) != value.shape:
      raise ValueError(f"{name}: torch shape {tuple(own[name].shape)}, solid_jax {value.shape}")
  model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
  return model


def to_torch_batch(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """A solid_jax batch (numpy or jax arrays) as torch tensors: ids int64, floats float32."""
  out = {}
  for key, value in batch.items():
    arr = np.asarray(value)
    dtype = np.float32 if np.issubdtype(arr.dtype, np.floating) else np.int64
    out[key] = torch.tensor(arr.astype(dtype))
  return out

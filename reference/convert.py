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
  """A post-norm layer -> ``nn.TransformerEncoderLayer`` (q, k, v stacked in ``in_proj``).

  Flax's attention kernels are ``[d, H, d/H]`` (q, k, v; bias ``[H, d/H]``) and ``[H, d/H, d]``
  (out): reshaped to the ``d x d`` matrices they stand for.
  """
  att = p["attention"]
  qkv = [_a(att[n]["kernel"]) for n in ("query", "key", "value")]
  out[f"{prefix}.self_attn.in_proj_weight"] = np.concatenate(
    [k.reshape(k.shape[0], -1).T for k in qkv], axis=0
  )
  out[f"{prefix}.self_attn.in_proj_bias"] = np.concatenate(
    [_a(att[n]["bias"]).reshape(-1) for n in ("query", "key", "value")], axis=0
  )
  kernel = _a(att["out"]["kernel"])
  _dense(
    f"{prefix}.self_attn.out_proj",
    {"kernel": kernel.reshape(-1, kernel.shape[-1]), "bias": att["out"]["bias"]},
    out,
  )
  _norm(f"{prefix}.norm1", p["norm_1"], out)
  _dense(f"{prefix}.linear1", p["ff_1"], out)
  _dense(f"{prefix}.linear2", p["ff_2"], out)
  _norm(f"{prefix}.norm2", p["norm_2"], out)


def _generator(prefix: str, p: Tree, out: dict) -> None:
  """``{"gru", "mlp", "proj": {"layer_j": {"w", "b"} | {"core"}}}`` -> ``Generator``."""
  _gru(f"{prefix}.gru", p["gru"], out)
  _mlp(f"{prefix}.mlp", p["mlp"], out)
  for name, proj in p["proj"].items():
    for part, dense in proj.items():  # DUET: w (A, a) and b (B, c); APG: core (A, a)
      _dense(f"{prefix}.proj.{name}.{part}", dense, out)


def _backbone(p: Tree, out: dict) -> None:
  for key, value in p.items():
    if key == "item_embedding":
      out["item_embedding.weight"] = _a(value["embedding"])
    elif key == "position_embedding":
      out[key] = _a(value["embedding"])
    elif key == "seq_trans":
      _dense(key, value, out)
    elif key == "target_trans":
      _mlp(key, value, out)
    elif key == "attention":  # DIN target attention (no biases).
      for name, sub in value.items():
        _dense(f"attention.{name}", sub, out)
    elif key == "transformer":
      for name, sub in value.items():
        _transformer_layer(f"transformer.{name}", sub, out)
    elif key == "gru":
      _gru("gru", value, out)
    else:
      raise KeyError(f"unknown solid_jax backbone parameter entry {key!r}")


def _head(p: Tree, out: dict) -> None:
  for key, value in p.items():
    if key.startswith("dense_"):  # the static head
      _dense(f"head.layers.{key}", value, out)
    elif key == "shared":  # APG's shared factors
      for name, sub in value.items():
        _dense(f"head.{name}.V", sub["V"], out)
        _dense(f"head.{name}.U", sub["U"], out)
    elif key in ("generator", "item_generator", "semantic_generator"):
      _generator(key, value, out)
    elif key == "semantic_embedding":
      out["semantic_embedding.weight"] = _a(value["embedding"])
    elif key == "semantic_position_embedding":
      out[key] = _a(value["embedding"])
    elif key == "semantic_seq_trans":
      _dense(key, value, out)
    elif key == "decoder":
      _mlp(key, value, out)
    elif key == "codebook":  # EMA statistics have no counterpart (the update is not reproduced).
      out["codebook.codes"] = _a(value["codes"])
    else:
      raise KeyError(f"unknown solid_jax head parameter entry {key!r}")


def torch_state(params: Tree) -> dict[str, np.ndarray]:
  """The solid_jax parameter tree as ``{state_dict name: float32 array}`` of ``RecModel``.

  Args:
    params: ``model.init(...)`` of solid_jax (``{"backbone": ..., "head": ...}``) or a gradient
      tree of the same structure, leaves numpy or jax arrays.

  Returns:
    A flat dict keyed by the names of ``RecModel.state_dict()``.

  Raises:
    KeyError: an entry this converter does not know.
  """
  out: dict[str, np.ndarray] = {}
  unknown = set(params) - {"backbone", "head"}
  if unknown:
    raise KeyError(f"unknown solid_jax parameter entries {sorted(unknown)}")
  _backbone(params["backbone"], out)
  _head(params.get("head", {}), out)
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

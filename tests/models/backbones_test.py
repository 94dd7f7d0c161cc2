"""The registered backbones against NumPy float64: sequence embeddings, target tower, the state at
n-1 (transformer, GRU) and DIN's target attention."""

from math import erf

import chex
import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.models import BACKBONES
from solid_jax.models import base
from tests.nn.nn_layers_test import _np, _numpy_gru, _numpy_transformer_layer

B, L, D, ITEMS = 4, 6, 8, 20


def _cfg(backbone, **kw):
  return sj.ModelConfig(
    backbone=backbone,
    head="static",
    num_items=ITEMS,
    num_semantics=3,
    seq_len=L,
    dim=D,
    num_heads=2,
    ff_dim=12,
    **kw,
  )


def _items(seed):
  rng = np.random.default_rng(seed)
  lengths = np.array([L, 1, 3, 5])
  items = rng.integers(1, ITEMS, size=(B, L)).astype(np.int32)
  items[np.arange(L)[None, :] >= lengths[:, None]] = 0
  return items, lengths


def _gelu(x):
  return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def _run(module, items, target):
  seq = module.embed(items)
  t = module.tower(target)
  return seq, t, module.encode(seq, items, t)


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec", "din"])
def test_head_input_matches_numpy(backbone):
  cfg = _cfg(backbone)
  module = BACKBONES[backbone](cfg)
  items, lengths = _items(1)
  target = np.array([3, 7, 1, 19], np.int32)
  params = module.init(jax.random.key(0), items, target, method=_run)["params"]
  params = jax.tree.map(lambda a: a + 0.03, params)  # non-zero biases, non-trivial norms
  p = _np(params)
  seq, t, x = jax.jit(lambda p: module.apply({"params": p}, items, target, method=_run))(params)
  table = p["item_embedding"]["embedding"]
  e = table[items]
  if backbone in ("sasrec", "bert4rec"):
    e = e + p["position_embedding"]["embedding"][None]
  want_seq = np.tanh(e @ p["seq_trans"]["kernel"] + p["seq_trans"]["bias"])
  tt = p["target_trans"]
  want_t = np.tanh(table[target] @ tt["dense_0"]["kernel"] + tt["dense_0"]["bias"])
  if backbone != "din":
    want_t = want_t @ tt["dense_1"]["kernel"] + tt["dense_1"]["bias"]
  np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t, want_t, rtol=1e-5, atol=1e-5)
  mask = items != 0
  if backbone in ("sasrec", "bert4rec"):
    h = want_seq
    act = (lambda v: np.maximum(v, 0)) if backbone == "sasrec" else _gelu
    for i in range(len(p["transformer"])):
      h = _numpy_transformer_layer(p["transformer"][f"layer_{i}"], h, mask, 2, act)
    assert len(p["transformer"]) == (1 if backbone == "sasrec" else cfg.bert_layers)
    want = h[np.arange(B), lengths - 1]
  elif backbone == "gru4rec":
    want = _numpy_gru(params["gru"], want_seq, lengths)
  else:
    att = p["attention"]
    assert set(att["query"]) == {"kernel"}  # no biases
    q = want_t @ att["query"]["kernel"]
    k = want_seq @ att["key"]["kernel"]
    v = want_seq @ att["value"]["kernel"]
    s = np.einsum("bd,bld->bl", q, k) / np.sqrt(D)
    s = np.where(mask, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    want = np.concatenate([want_t, np.einsum("bl,bld->bd", w, v)], -1)
  chex.assert_shape(x, want.shape)
  np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-5)


def test_din_pools_an_empty_history_to_zero():
  cfg = _cfg("din")
  module = BACKBONES["din"](cfg)
  items = np.zeros((2, L), np.int32)
  items[1, :2] = [4, 5]
  target = np.array([3, 7], np.int32)
  params = module.init(jax.random.key(0), items, target, method=_run)["params"]
  _, _, x = module.apply({"params": params}, items, target, method=_run)
  np.testing.assert_array_equal(x[0, D:], 0.0)
  assert float(np.abs(np.asarray(x[1, D:])).sum()) > 0


def test_capabilities_are_asked_of_the_registered_class():
  assert BACKBONES["sasrec"].head_specs(_cfg("sasrec")) == [(D, D, "tanh"), (D, D, None)]
  assert BACKBONES["din"].head_specs(_cfg("din", din_hidden=(12, 6))) == [
    (2 * D, 12, "tanh"),
    (12, 6, "tanh"),
    (6, 1, None),
  ]
  assert not BACKBONES["din"].factorised(_cfg("din"))
  assert [b for b in BACKBONES if _cfg(b).positionwise] == ["gru4rec"]
  assert _cfg("sasrec", causal=True).positionwise
  with pytest.raises(KeyError, match="registered"):
    BACKBONES["transformer-xl"]  # noqa: B018
  with pytest.raises(ValueError, match="backbone"):
    _cfg("transformer-xl")


def test_lengths_and_last_index():
  items = np.array([[3, 4, 0], [0, 0, 0], [1, 2, 5]], np.int32)
  np.testing.assert_array_equal(base.lengths_of(items), [2, 0, 3])
  np.testing.assert_array_equal(base.last_index(base.lengths_of(items)), [1, 0, 2])

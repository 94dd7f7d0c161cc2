"""Backbones against NumPy float64: sequence embeddings, state at n-1, DIN target attention."""

import chex
import jax
import numpy as np
import pytest
from math import erf

from solid_jax.configs import ModelConfig
from solid_jax.nn import encoders
from tests.nn.nn_layers_test import _np
from tests.nn.nn_layers_test import _numpy_gru
from tests.nn.nn_layers_test import _numpy_layer_norm
from tests.nn.nn_layers_test import _numpy_mha

B, L, D, ITEMS = 4, 6, 8, 20


def _cfg(backbone):
  return ModelConfig(backbone=backbone, head="static", num_items=ITEMS, num_semantics=3, seq_len=L,
                     dim=D, num_heads=2, ff_dim=12)


def _items(seed):
  rng = np.random.default_rng(seed)
  lengths = np.array([L, 1, 3, 5])
  items = rng.integers(1, ITEMS, size=(B, L)).astype(np.int32)
  items[np.arange(L)[None, :] >= lengths[:, None]] = 0
  return items, lengths


def _gelu(x):
  return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def _numpy_seq_emb(p, items, positions):
  x = p["item_embedding"][items]
  if positions:
    x = x + p["position_embedding"][None]
  return np.tanh(x @ p["seq_trans"]["kernel"] + p["seq_trans"]["bias"])


def _numpy_target(p, target, din):
  t = np.tanh(p["item_embedding"][target] @ p["target_trans"]["dense_0"]["kernel"]
              + p["target_trans"]["dense_0"]["bias"])
  if not din:
    t = t @ p["target_trans"]["dense_1"]["kernel"] + p["target_trans"]["dense_1"]["bias"]
  return t


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec", "din"])
def test_head_input_matches_numpy(backbone):
  cfg = _cfg(backbone)
  params = encoders.init(jax.random.key(0), cfg)
  params = jax.tree.map(lambda a: a + 0.03, params)  # non-zero biases, non-trivial norms
  items, lengths = _items(1)
  target = np.array([3, 7, 1, 19], np.int32)
  p = _np(params)

  @jax.jit
  def run(params):
    seq = encoders.sequence_embedding(params, items, cfg)
    t = encoders.target_embedding(params, target, cfg)
    return seq, t, encoders.head_input(params, seq, items, t, cfg)

  seq, t, x = run(params)
  want_seq = _numpy_seq_emb(p, items, backbone in ("sasrec", "bert4rec"))
  want_t = _numpy_target(p, target, backbone == "din")
  np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t, want_t, rtol=1e-5, atol=1e-5)
  mask = items != 0
  if backbone in ("sasrec", "bert4rec"):
    h = want_seq
    act = (lambda v: np.maximum(v, 0)) if backbone == "sasrec" else _gelu
    for i in range(len(p["transformer"])):
      q = p["transformer"][f"layer_{i}"]
      y = _numpy_layer_norm(h + _numpy_mha(q["attention"], h, h, mask, 2), **q["norm_1"])
      ff = act(y @ q["ff_1"]["kernel"] + q["ff_1"]["bias"])
      ff = ff @ q["ff_2"]["kernel"] + q["ff_2"]["bias"]
      h = _numpy_layer_norm(y + ff, **q["norm_2"])
    want = h[np.arange(B), lengths - 1]
  elif backbone == "gru4rec":
    want = _numpy_gru(params["gru"], want_seq, lengths)
  else:
    att = p["attention"]
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


def test_lengths_and_last_index():
  items = np.array([[3, 4, 0], [0, 0, 0], [1, 2, 5]], np.int32)
  np.testing.assert_array_equal(encoders.lengths_of(items), [2, 0, 3])
  np.testing.assert_array_equal(encoders.last_index(encoders.lengths_of(items)), [1, 0, 2])

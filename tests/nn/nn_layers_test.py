"""The Flax building blocks and the GRU against independent NumPy float64 references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solid_jax.nn import gru
from solid_jax.nn import layers

D = 8


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_gru(p, xs, lengths):
  """A Python-loop GRU (PyTorch equations, gates r, z, n): state after step n-1 of every row."""
  p = _np(p)
  b, steps, _ = xs.shape
  h_dim = p["w_hh"].shape[0]
  out = np.zeros((b, h_dim))
  for i in range(b):
    h = np.zeros(h_dim)
    for t in range(lengths[i]):
      gi = xs[i, t] @ p["w_ih"] + p["b_ih"]
      gh = h @ p["w_hh"] + p["b_hh"]
      r = _sigmoid(gi[:h_dim] + gh[:h_dim])
      z = _sigmoid(gi[h_dim : 2 * h_dim] + gh[h_dim : 2 * h_dim])
      n = np.tanh(gi[2 * h_dim :] + r * gh[2 * h_dim :])
      h = (1 - z) * n + z * h
    out[i] = h
  return out


def _numpy_layer_norm(x, scale, bias, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _matrix(dense):
  """A Flax (DenseGeneral) kernel and bias as the d x d matrix and d vector they stand for."""
  k, b = np.asarray(dense["kernel"], np.float64), np.asarray(dense["bias"], np.float64)
  if k.ndim == 3 and b.ndim == 2:  # query/key/value: [d, H, d/H], bias [H, d/H]
    return k.reshape(k.shape[0], -1), b.reshape(-1)
  if k.ndim == 3:  # out: [H, d/H, d]
    return k.reshape(-1, k.shape[-1]), b
  return k, b


def _numpy_mha(p, xq, xkv, mask, heads):
  """Multi-head attention; ``mask`` bool[B, Q, K] (or [B, K]: the same keys for every query)."""
  b, nq, d = xq.shape
  mask = np.broadcast_to(mask[:, None, :] if mask.ndim == 2 else mask, (b, nq, xkv.shape[1]))
  dh = d // heads
  (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_matrix(p[n]) for n in ("query", "key", "value", "out"))
  q, k, v = xq @ wq + bq, xkv @ wk + bk, xkv @ wv + bv
  out = np.zeros((b, nq, d))
  for i in range(b):
    for h in range(heads):
      sl = slice(h * dh, (h + 1) * dh)
      s = q[i, :, sl] @ k[i, :, sl].T / np.sqrt(dh)
      s = np.where(mask[i], s, -np.inf)
      s = np.exp(s - s.max(-1, keepdims=True))
      s = s / s.sum(-1, keepdims=True)
      out[i, :, sl] = s @ v[i, :, sl]
  return out @ wo + bo


def _numpy_transformer_layer(q, x, mask, heads, act=lambda v: np.maximum(v, 0), eps=1e-5):
  y = _numpy_layer_norm(x + _numpy_mha(q["attention"], x, x, mask, heads), eps=eps, **q["norm_1"])
  ff = act(y @ q["ff_1"]["kernel"] + q["ff_1"]["bias"]) @ q["ff_2"]["kernel"] + q["ff_2"]["bias"]
  return _numpy_layer_norm(y + ff, eps=eps, **q["norm_2"])


def _lengths_and_mask(rng, b, steps):
  lengths = rng.integers(1, steps + 1, size=b)
  lengths[0] = steps
  lengths[1] = 1
  mask = np.arange(steps)[None, :] < lengths[:, None]
  return lengths.astype(np.int32), mask


def _shift(params, delta):
  """Every leaf + delta: non-zero biases and non-trivial layer norms."""
  return jax.tree.map(lambda a: a + delta, params)


def test_mlp_matches_numpy_and_names_its_layers():
  rng = np.random.default_rng(0)
  mlp = layers.MLP((5, 3), ("tanh", None))
  x = rng.normal(size=(4, D)).astype(np.float32)
  p = _shift(mlp.init(jax.random.key(0), x)["params"], 0.1)
  assert set(p) == {"dense_0", "dense_1"}
  chex.assert_shape(p["dense_0"]["kernel"], (D, 5))
  got = mlp.apply({"params": p}, x)
  q = _np(p)
  want = np.tanh(x @ q["dense_0"]["kernel"] + q["dense_0"]["bias"]) @ q["dense_1"]["kernel"]
  want = want + q["dense_1"]["bias"]
  chex.assert_shape(got, (4, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_initialisers():
  key = jax.random.key(1)
  table = layers.padded(layers.xavier_uniform())(key, (600, 40))
  np.testing.assert_array_equal(table[0], 0.0)
  limit = np.sqrt(6.0 / 640)
  assert float(jnp.max(jnp.abs(table))) <= limit and float(jnp.max(jnp.abs(table))) > 0.9 * limit
  # A DenseGeneral kernel drawn as the d x d matrix it stands for: the same bound as d x d.
  att = layers.as_matrix(layers.xavier_uniform(), 1)(key, (64, 4, 16))
  assert float(jnp.max(jnp.abs(att))) <= np.sqrt(6.0 / 128) < float(jnp.max(jnp.abs(att))) * 1.1
  normal = layers.kernel_init(0.02)(key, (300, 300))
  assert 0.019 < float(jnp.std(normal)) < 0.021
  v = layers.fmod_normal()(jax.random.key(7), (10000,))
  assert float(jnp.max(jnp.abs(v))) < 2.0
  assert 0.8 < float(jnp.std(v)) < 1.0  # a folded normal has a slightly smaller spread


def test_gelu_is_the_exact_erf_form():
  x = np.linspace(-4, 4, 17)
  from math import erf

  want = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x])
  got = layers.activation("gelu")(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_masked_softmax_zero_weight_and_all_masked_row():
  s = jnp.asarray([[1.0, 2.0, 3.0], [1e30, -1e30, 0.0], [5.0, 1.0, 2.0]])
  mask = jnp.asarray([[True, False, True], [False, True, True], [False, False, False]])
  p = layers.masked_softmax(s, mask)
  np.testing.assert_array_equal(np.asarray(p)[~np.asarray(mask)], 0.0)
  e2 = np.exp(2.0)
  np.testing.assert_allclose(p[0], [1 / (1 + e2), 0, e2 / (1 + e2)], rtol=1e-6)
  np.testing.assert_allclose(p.sum(-1), [1, 1, 0], rtol=1e-6)
  g = jax.grad(lambda s: jnp.sum(layers.masked_softmax(s, mask) * jnp.arange(3.0)))(s)
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(np.asarray(g)[~np.asarray(mask)], 0.0)


def _layer(heads=2, ff=16, **kw):
  return layers.TransformerLayer(D, ff, heads, **kw)


@pytest.mark.parametrize("broadcast", [False, True])
def test_masked_attention_is_flax_attention_with_zero_weights_for_empty_queries(broadcast):
  kq, kk, kv, km, kd = jax.random.split(jax.random.key(3), 5)
  b, q, k, h, d = 3, 4, 6, 2, 5
  query, key, value = (jax.random.normal(x, (b, n, h, d)) for x, n in ((kq, q), (kk, k), (kv, k)))
  mask = jax.random.bernoulli(km, 0.6, (b, 1, q, k)).at[..., 0].set(True)
  want = flax_attention(query, key, value, mask)
  got = layers.masked_attention(query, key, value, mask)
  chex.assert_shape(got, (b, q, h, d))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Dropout on the weights: the same Bernoulli draws as Flax's.
  kwargs = dict(dropout_rng=kd, dropout_rate=0.3, broadcast_dropout=broadcast, deterministic=False)
  np.testing.assert_allclose(
    layers.masked_attention(query, key, value, mask, **kwargs),
    flax_attention(query, key, value, mask, **kwargs),
    rtol=1e-5,
    atol=1e-6,
  )
  # A query with no key: zero weights, output 0, finite gradients.
  empty = mask.at[0, :, 1, :].set(False)
  out = layers.masked_attention(query, key, value, empty)
  np.testing.assert_array_equal(out[0, 1], 0.0)
  grads = jax.grad(lambda qq: layers.masked_attention(qq, key, value, empty).sum())(query)
  assert np.isfinite(np.asarray(grads)).all()


def flax_attention(query, key, value, mask, **kwargs):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  return nn.dot_product_attention(query, key, value, mask=mask, **kwargs)


def test_transformer_layer_matches_numpy_post_norm():
  rng = np.random.default_rng(3)
  b, steps, heads = 3, 5, 2
  layer = _layer(heads, eps=1e-6)
  x = rng.normal(size=(b, steps, D)).astype(np.float32)
  lengths, mask = _lengths_and_mask(rng, b, steps)
  p = _shift(layer.init(jax.random.key(3), x, jnp.asarray(mask))["params"], 0.05)
  assert set(p) == {"attention", "norm_1", "ff_1", "ff_2", "norm_2"}
  chex.assert_shape(p["attention"]["query"]["kernel"], (D, heads, D // heads))
  want = _numpy_transformer_layer(_np(p), x, mask, heads, eps=1e-6)
  got = layer.apply({"params": p}, x, jnp.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  last = jnp.asarray(lengths - 1)
  row = layer.apply({"params": p}, x, jnp.asarray(mask), query_index=last)
  chex.assert_shape(row, (b, D))
  np.testing.assert_allclose(row, want[np.arange(b), lengths - 1], rtol=1e-4, atol=1e-5)
  # Padding keys are ignored: noise there changes no real position.
  noisy = np.where(mask[..., None], x, rng.normal(size=x.shape) * 100).astype(np.float32)
  got2 = layer.apply({"params": p}, noisy, jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got2)[mask], np.asarray(got)[mask], rtol=1e-5, atol=1e-5)


def test_transformer_layer_causal_and_segment_masks():
  rng = np.random.default_rng(4)
  b, steps, heads = 2, 6, 2
  layer = _layer(heads)
  x = rng.normal(size=(b, steps, D)).astype(np.float32)
  valid = np.ones((b, steps), bool)
  p = _shift(layer.init(jax.random.key(4), x, jnp.asarray(valid))["params"], 0.05)
  causal = np.tril(np.ones((steps, steps), bool))[None].repeat(b, 0)
  got = layer.apply({"params": p}, x, jnp.asarray(valid), causal=True)
  np.testing.assert_allclose(
    got, _numpy_transformer_layer(_np(p), x, causal, heads), rtol=1e-4, atol=1e-5
  )
  segments = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 2, 3]])
  same = segments[:, :, None] == segments[:, None, :]
  got = layer.apply(
    {"params": p}, x, jnp.asarray(valid), causal=True, segments=jnp.asarray(segments)
  )
  np.testing.assert_allclose(
    got, _numpy_transformer_layer(_np(p), x, causal & same, heads), rtol=1e-4, atol=1e-5
  )
  with pytest.raises(ValueError, match="segments"):
    layer.apply(
      {"params": p},
      x,
      jnp.asarray(valid),
      segments=jnp.asarray(segments),
      query_index=jnp.zeros((b,), jnp.int32),
    )


def test_transformer_dropout_is_train_only_and_keyed():
  rng = np.random.default_rng(5)
  layer = _layer(dropout_hidden=0.5, dropout_attention=0.5)
  x = rng.normal(size=(2, 4, D)).astype(np.float32)
  valid = jnp.ones((2, 4), bool)
  p = layer.init(jax.random.key(5), x, valid)["params"]
  plain = layer.apply({"params": p}, x, valid)
  a = layer.apply({"params": p}, x, valid, train=True, rngs={"dropout": jax.random.key(1)})
  b = layer.apply({"params": p}, x, valid, train=True, rngs={"dropout": jax.random.key(1)})
  c = layer.apply({"params": p}, x, valid, train=True, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, plain) and not np.allclose(a, c)


@pytest.mark.parametrize("unroll", [1, True])
def test_gru_scan_matches_python_loop(unroll):
  rng = np.random.default_rng(4)
  b, steps, n_in = 5, 7, 6
  p = gru.gru_init(jax.random.key(4), n_in, D)
  assert float(jnp.max(jnp.abs(p["w_hh"]))) <= D**-0.5
  xs = rng.normal(size=(b, steps, n_in)).astype(np.float32)
  lengths, _ = _lengths_and_mask(rng, b, steps)
  lengths[2] = 0  # an empty row keeps h0 = 0
  got = gru.gru_last_state(p, xs, jnp.asarray(lengths), unroll=unroll)
  chex.assert_shape(got, (b, D))
  np.testing.assert_allclose(got, _numpy_gru(p, xs.astype(np.float64), lengths), atol=1e-5)
  np.testing.assert_array_equal(got[2], 0.0)


def test_fused_grus_equal_separate_grus():
  rng = np.random.default_rng(5)
  b, steps = 4, 6
  p1 = gru.gru_init(jax.random.key(5), D, D)
  p2 = gru.gru_init(jax.random.key(6), 3, D)
  x1 = rng.normal(size=(b, steps, D)).astype(np.float32)
  x2 = rng.normal(size=(b, steps, 3)).astype(np.float32)
  lengths = jnp.asarray(_lengths_and_mask(rng, b, steps)[0])
  h1, h2 = gru.gru_last_states([p1, p2], [x1, x2], lengths)
  np.testing.assert_allclose(h1, gru.gru_last_state(p1, x1, lengths), atol=1e-6)
  np.testing.assert_allclose(h2, gru.gru_last_state(p2, x2, lengths), atol=1e-6)


def test_gather_rows():
  x = jnp.arange(2 * 3 * 2.0).reshape(2, 3, 2)
  np.testing.assert_array_equal(layers.gather_rows(x, jnp.asarray([2, 0])), [[4, 5], [6, 7]])

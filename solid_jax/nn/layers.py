"""Flax building blocks shared by the backbones and heads: initialisers, activations, an MLP and
the post-norm transformer layer.

Everything here is ``flax.linen``: Flax's own ``Dense``, ``LayerNorm``, ``Dropout`` and
``MultiHeadDotProductAttention`` composed, with the initialisers of the SOLID authors' code
(Xavier-uniform kernels, zero biases) or BERT's ``N(0, std)`` (``init_std``). Row vectors
throughout, so a dense kernel is ``[in, out]`` (a PyTorch ``nn.Linear`` stores its transpose). The
exact equations are in ``docs/MODELS.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]

LAYER_NORM_EPS = 1e-5
LEAKY_SLOPE = 0.1

ACTIVATIONS: dict[str | None, Callable[[Array], Array]] = {
  None: lambda x: x,
  "tanh": jnp.tanh,
  "relu": jax.nn.relu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "leaky_relu": lambda x: jax.nn.leaky_relu(x, LEAKY_SLOPE),
}


def activation(name: str | None) -> Callable[[Array], Array]:
  """The activation function called ``name`` (``None``: identity)."""
  return ACTIVATIONS[name]


# ------------------------------------------------------------------------------------ initialisers


def xavier_uniform() -> Initializer:
  """Xavier/Glorot uniform over a 2-D ``[fan_in, fan_out]`` shape: ``U(-a, a)``,
  ``a = sqrt(6 / (fan_in + fan_out))`` (PyTorch's ``xavier_uniform_``)."""
  return nn.initializers.xavier_uniform()


def kernel_init(init_std: float = 0.0) -> Initializer:
  """``N(0, init_std)`` when ``init_std > 0`` (BERT / S3-Rec), else Xavier uniform (SOLID)."""
  return nn.initializers.normal(init_std) if init_std > 0 else xavier_uniform()


def padded(init: Initializer) -> Initializer:
  """``init`` with row 0 (the padding id) set to zero."""

  def apply(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype).at[0].set(0.0)

  return apply


def as_matrix(init: Initializer, fan_in_dims: int) -> Initializer:
  """``init`` drawn as a ``[prod(shape[:fan_in_dims]), prod(rest)]`` matrix, then reshaped: the
  fans of a ``DenseGeneral`` kernel (attention's ``[d, H, d/H]`` and ``[H, d/H, d]``) are those of
  the ``d x d`` matrix it stands for."""

  def apply(key, shape, dtype=jnp.float32):
    rows = math.prod(shape[:fan_in_dims])
    return init(key, (rows, math.prod(shape[fan_in_dims:])), dtype).reshape(shape)

  return apply


def fmod_normal(scale: float = 1.0) -> Initializer:
  """``scale * fmod(normal(0, 1), 2)``: a standard normal folded into (-2, 2), the DUET projection
  init (``scale = 1``, the authors')."""

  def apply(key, shape, dtype=jnp.float32):
    out = jnp.fmod(jax.random.normal(key, shape, dtype), 2.0)
    return out if scale == 1.0 else out * jnp.asarray(scale, dtype)

  return apply


# ------------------------------------------------------------------------------------------- blocks


class MLP(nn.Module):
  """Dense layers ``dense_0, dense_1, ...`` (Flax ``Dense``), ``activations[j]`` after layer j.

  Attributes:
    features: output width of every layer.
    activations: one name of ``ACTIVATIONS`` (or None) per layer.
    kernel_init: initialiser of the kernels (biases start at 0).
  """

  features: Sequence[int]
  activations: Sequence[str | None]
  kernel_init: Initializer = xavier_uniform()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """float[..., N_in] -> float[..., features[-1]]."""
    for j, (width, act) in enumerate(zip(self.features, self.activations, strict=True)):
      x = activation(act)(nn.Dense(width, kernel_init=self.kernel_init, name=f"dense_{j}")(x))
    return x


class TransformerLayer(nn.Module):
  """A post-norm transformer encoder layer, as PyTorch's ``TransformerEncoderLayer``.

  ``y = norm_1(x + drop(attention(x)))``; ``out = norm_2(y + drop(ff_2(act(ff_1(y)))))``.
  Attention is Flax's ``MultiHeadDotProductAttention`` (``query``/``key``/``value`` kernels
  ``[d, H, d/H]``, ``out`` ``[H, d/H, d]``, with biases); dropout (on the attention probabilities
  and on both residual branches) only when ``train``, from the ``"dropout"`` PRNG stream.

  Attributes:
    dim: d. ff_dim: F. num_heads: H. ff_activation: "relu" or "gelu" (exact erf form).
    eps: layer-norm epsilon (biased variance). dropout_hidden, dropout_attention: rates.
    kernel_init: initialiser of every kernel, drawn as the d x d (or d x F) matrix.
  """

  dim: int
  ff_dim: int
  num_heads: int
  ff_activation: str = "relu"
  eps: float = LAYER_NORM_EPS
  dropout_hidden: float = 0.0
  dropout_attention: float = 0.0
  kernel_init: Initializer = xavier_uniform()

  @nn.compact
  def __call__(
    self,
    x: Array,
    key_mask: Array,
    *,
    query_index: Array | None = None,
    causal: bool = False,
    segments: Array | None = None,
    train: bool = False,
  ) -> Array:
    """One layer.

    Args:
      x: float[B, L, d].
      key_mask: bool[B, L], True for real (non-padding) positions.
      query_index: optional int[B]; when given only that row is computed, for every user.
      causal: position i attends only to positions <= i.
      segments: optional int[B, L] segment ids of packed rows (``solid_jax.data.pack_rows``):
        attention stays within a segment (every position is a query; not with ``query_index``).
      train: apply dropout.

    Returns:
      float[B, L, d], or float[B, d] when ``query_index`` is given. A query with no key to
      attend to (an empty row) gets zero attention weights: finite, and read by no
      loss.
    """
    if segments is not None and query_index is not None:
      raise ValueError("segments (packed rows) need every position as a query, not query_index")
    b, length = x.shape[:2]
    if query_index is None:
      x_q = x
      positions = jnp.broadcast_to(jnp.arange(length)[None, :], (b, length))
    else:
      x_q = jnp.take_along_axis(x, query_index[:, None, None], axis=1)
      positions = query_index[:, None]
    mask = key_mask[:, None, None, :]
    if causal:
      mask = mask & (jnp.arange(length)[None, None, None, :] <= positions[:, None, :, None])
    if segments is not None:
      mask = mask & (segments[:, None, None, :] == segments[:, None, :, None])
    attention = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      kernel_init=as_matrix(self.kernel_init, 1),
      out_kernel_init=as_matrix(self.kernel_init, 2),
      dropout_rate=self.dropout_attention,
      broadcast_dropout=False,
      attention_fn=masked_attention,
      name="attention",
    )
    att = attention(x_q, x, mask=mask, deterministic=not train)
    drop = nn.Dropout(self.dropout_hidden, deterministic=not train)
    norm = lambda name: nn.LayerNorm(self.eps, use_fast_variance=False, name=name)  # noqa: E731
    y = norm("norm_1")(x_q + drop(att))
    ff = nn.Dense(self.ff_dim, kernel_init=self.kernel_init, name="ff_1")(y)
    ff = nn.Dense(self.dim, kernel_init=self.kernel_init, name="ff_2")(
      activation(self.ff_activation)(ff)
    )
    out = norm("norm_2")(y + drop(ff))
    return out if query_index is None else out[:, 0]


def masked_attention(
  query: Array,
  key: Array,
  value: Array,
  mask: Array | None = None,
  *,
  dropout_rng: Array | None = None,
  dropout_rate: float = 0.0,
  broadcast_dropout: bool = True,
  deterministic: bool = True,
  **unused,
) -> Array:
  """Scaled dot-product attention with ``masked_softmax``: the ``attention_fn`` of the
  transformer layer's ``nn.MultiHeadDotProductAttention``.

  Same result as Flax's ``dot_product_attention`` where a query has a key to attend to, and the
  same dropout draws (one Bernoulli mask over float[B, H, Q, K], or broadcast over the batch and
  head axes with ``broadcast_dropout``); a query with no key gets zero weights (output 0). It is
  also faster on the CPU: Flax's version, which fills masked scores with the most negative float
  and calls ``jax.nn.softmax``, made SASRec + SOLID inference 3-7% slower
  (``benchmarks/commit_compare.py``).

  Args:
    query: float[B, Q, H, D]. key, value: float[B, K, H, D].
    mask: bool, broadcastable to [B, H, Q, K], True where a query may attend to a key.
    dropout_rng, dropout_rate, broadcast_dropout, deterministic: dropout on the weights, as Flax's.
    **unused: the other arguments Flax passes (dtype, precision, module, ...).

  Returns:
    float[B, Q, H, D].
  """
  del unused
  scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(
    jnp.asarray(query.shape[-1], query.dtype)
  )
  probs = masked_softmax(scores, True if mask is None else mask)
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    shape = (1, 1, *probs.shape[-2:]) if broadcast_dropout else probs.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    probs = probs * (keep.astype(probs.dtype) / jnp.asarray(keep_prob, probs.dtype))
  return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


def gather_rows(x: Array, index: Array) -> Array:
  """``x[b, index[b]]`` for every b: float[B, L, d], int[B] -> float[B, d]."""
  return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def masked_softmax(scores: Array, mask: Array, axis: int = -1) -> Array:
  """Softmax of ``scores`` over ``axis`` where ``mask`` is True; masked entries weigh exactly 0.

  A slice with no True entry gets all-zero weights (never NaN), and gradients stay finite.
  float[...] and a broadcastable bool mask -> float[...].
  """
  masked = jnp.where(mask, scores, -jnp.inf)
  top = jax.lax.stop_gradient(jnp.max(masked, axis=axis, keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  e = jnp.exp(masked - top)
  total = jnp.sum(e, axis=axis, keepdims=True)
  return e / jnp.where(total > 0, total, 1.0)

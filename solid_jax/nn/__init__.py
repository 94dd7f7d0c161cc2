"""Building blocks of the model zoo.

- ``layers``: Flax blocks (initialisers, activations, ``MLP``, the post-norm
  ``TransformerLayer`` on Flax attention).
- ``gru``: the GRU with its hand-written gradient, several GRUs fused in one scan
  (``GRUWeights`` is its Flax module).
- ``dynamic``: the per-user dynamic layers, written for one user and vmapped.
- ``codebook``: nearest-code lookup (frozen / straight-through / EMA), usage statistics, k-means,
  and its Flax module ``Codebook``.
"""

from solid_jax.nn import codebook
from solid_jax.nn import dynamic
from solid_jax.nn import gru
from solid_jax.nn import layers

__all__ = ["codebook", "dynamic", "gru", "layers"]

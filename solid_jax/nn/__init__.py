"""Neural-network building blocks as pure functions over plain dict parameters.

- ``layers``: dense, MLP, embedding, layer norm, multi-head attention, transformer layer, GRU
  (lax.scan).
- ``encoders``: the static backbones (SASRec, GRU4Rec, DIN, BERT4Rec).
- ``hypernet``: the DUET (full-rank) and APG (low-rank) parameter generators.
- ``dynamic``: the dynamic head for one user, vmapped over the batch.
- ``codebook``: nearest-code lookup (frozen / straight-through / EMA), usage statistics, k-means.
"""

from solid_jax.nn import codebook
from solid_jax.nn import dynamic
from solid_jax.nn import encoders
from solid_jax.nn import hypernet
from solid_jax.nn import layers

__all__ = ["codebook", "dynamic", "encoders", "hypernet", "layers"]

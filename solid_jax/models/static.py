"""The static head: ordinary last layers, the same weights for every user (Flax ``Dense``)."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from solid_jax.models.base import Head
from solid_jax.models.registry import HEADS
from solid_jax.nn import layers


@HEADS.register("static")
class StaticHead(Head):
  """``{dense_0, dense_1, ...}`` per the layer specs (kernels Xavier uniform or ``N(0,
  init_std)``, biases 0); no layers (``head_layers=0``) scores the backbone's state directly."""

  dynamic: ClassVar[bool] = False
  packable: ClassVar[bool] = True

  @nn.compact
  def __call__(self, weights, x):
    del weights
    init = layers.kernel_init(self.cfg.init_std)
    for j, (_, n_out, act) in enumerate(self.layer_specs()):
      x = layers.activation(act)(nn.Dense(n_out, kernel_init=init, name=f"dense_{j}")(x))
    return x

"""The registries of the model zoo: ``BACKBONES`` (``Backbone`` subclasses), ``HEADS``
(``Head`` subclasses) and ``METHODS`` (a training method's head and generator).

A new backbone or head is one file with a class and one decorator::

  from solid_jax.models import BACKBONES, Backbone

  @BACKBONES.register("mine")
  class Mine(Backbone): ...

after which ``ModelConfig(backbone="mine")``, ``make_model`` and the training launcher
(``--plugins=my_package.mine --backbone=mine``) accept it.
"""

from __future__ import annotations

from typing import Any

from solid_jax.registry import Registry

BACKBONES: Registry[Any] = Registry("backbone")
HEADS: Registry[Any] = Registry("head")
# method name -> the ModelConfig fields it sets. SOLID methods train in stages
# (``solid_jax.train.stages``); the others in one.
METHODS: Registry[dict[str, str]] = Registry("method")

METHODS.register("static")({"head": "static"})
METHODS.register("duet")({"head": "duet", "generator": "duet"})
METHODS.register("apg")({"head": "apg", "generator": "apg"})
METHODS.register("solid")({"head": "solid", "generator": "duet"})
METHODS.register("solid_apg")({"head": "solid", "generator": "apg"})

"""Loading plugins: modules outside the package that register backbones, heads or methods.

``load("my_package.my_backbone,/path/to/head.py")`` imports each entry, a dotted module name or a
path to a ``.py`` file, once; importing it runs its ``@BACKBONES.register(...)`` /
``@HEADS.register(...)`` decorators (``solid_jax.models.registry``). The launcher's ``--plugins``
flag (a ``TrainConfig`` field, so that a resumed run imports the same plugins) calls it before the
config is checked.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType


def parse(spec: str) -> list[str]:
  """``"a.b, c.py"`` -> ``["a.b", "c.py"]`` (empty entries dropped)."""
  return [s.strip() for s in spec.split(",") if s.strip()]


def load(spec: str) -> list[ModuleType]:
  """Imports every plugin of a comma-separated ``spec``; returns the modules.

  Raises:
    ValueError: a plugin cannot be found or fails on import (the message names it).
  """
  modules = []
  for name in parse(spec):
    try:
      modules.append(_load_file(name) if name.endswith(".py") else importlib.import_module(name))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"plugin {name!r} could not be loaded: {type(e).__name__}: {e}") from e
  return modules


def _load_file(path: str) -> ModuleType:
  path = os.path.abspath(path)
  name = "solid_jax_plugin_" + os.path.splitext(os.path.basename(path))[0]
  if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
    return sys.modules[name]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such file: {path}")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module

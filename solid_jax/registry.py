"""``Registry``: a named table of implementations (backbones, heads, data formats).

A registry maps a name to an object (usually a class) and is filled by decorators at import time::

  BACKBONES = Registry("backbone")

  @BACKBONES.register("sasrec")
  class SASRec(Backbone): ...

  BACKBONES["sasrec"]            # the class; an unknown name raises a KeyError naming the choices
  "sasrec" in BACKBONES, list(BACKBONES)

Names are case-sensitive; registering a taken name is an error unless ``replace=True``. Plugins
outside the package register the same way (``solid_jax.plugins.load`` imports them by module
path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """An ordered ``name -> object`` table with a decorator to fill it."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
    """Decorator: ``@registry.register("name")`` adds the decorated object under ``name``."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.kind} name must be a non-empty string, not {name!r}")

    def add(obj: T) -> T:
      if name in self._entries and not replace and self._entries[name] is not obj:
        raise ValueError(
          f"{self.kind} {name!r} is already registered "
          f"({self._entries[name]!r}); pass replace=True to override it"
        )
      self._entries[name] = obj
      return obj

    return add

  def unregister(self, name: str) -> None:
    """Removes ``name`` (tests; plugins that are reloaded)."""
    self._entries.pop(name, None)

  def __getitem__(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

  def get(self, name: str, default: T | None = None) -> T | None:
    return self._entries.get(name, default)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def names(self) -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {list(self._entries)})"

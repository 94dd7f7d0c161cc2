"""``Format``: how one on-disk layout is recognised and read, and the ``FORMATS`` registry."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from solid_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class FolderSpec:
  """A detected dataset folder.

  Attributes:
    format: the registered format name.
    folder: the folder.
    prefix: the common file-name prefix (e.g. "Beauty"; "" for layouts without one).
    files: role -> path of every file the reader will read (only files that exist).
  """

  format: str
  folder: pathlib.Path
  prefix: str
  files: Mapping[str, pathlib.Path]


@dataclasses.dataclass(frozen=True)
class Format:
  """One on-disk layout.

  Attributes:
    name: the registered name.
    detect: ``detect(names) -> prefixes``: the data sets of this format among the file names of a
      folder (``names``: sorted, relative paths of the files in it and its direct sub-folders).
    roles: role -> file pattern relative to the folder, ``{prefix}`` standing for the prefix and
      ``*`` for any one sub-folder name; the files that exist are handed to ``read``.
    read: ``read(spec, name, source) -> Dataset`` (semantics: one placeholder class, fingerprint
      "").
    expects: the files it needs, for error messages (e.g. "X.txt + X_item2attributes.json").
  """

  name: str
  detect: Callable[[Sequence[str]], list[str]]
  roles: Mapping[str, str]
  read: Callable[[FolderSpec, str, str], Any]
  expects: str


FORMATS: Registry[Format] = Registry("data format")


def register(fmt: Format) -> Format:
  """Adds ``fmt`` to ``FORMATS`` under its name; detection tries formats in registration order."""
  return FORMATS.register(fmt.name)(fmt)


def with_suffix(names: Sequence[str], suffix: str, *, exclude: Sequence[str] = ()) -> list[str]:
  """Prefixes ``p`` of the top-level names ``p + suffix`` (names ending in ``exclude`` skipped)."""
  return [
    n[: -len(suffix)]
    for n in names
    if "/" not in n and n.endswith(suffix) and not n.endswith(tuple(exclude))
  ]

"""One module per on-disk format, each registered in ``FORMATS`` as a ``Format(detect, roles,
read)``; ``inspect_folder`` detects a folder's format, ``parse_folder`` reads it into a ``Dataset``.

Formats, tried in this order (``FORMATS.names()``):

- "unisrec" (``unisrec.py``): ``X.{train,valid,test}.inter`` and optional text, CLIP features and
  categories. Example: scientific_mm_subset.
- "lcrec" (``lcrec.py``): ``X.inter.json`` and optional item metadata and 4-level codes. Examples:
  scientific, office, instruments.
- "s3rec" (``s3rec.py``): ``X.txt`` and ``X_item2attributes.json``. Examples: beauty, sports,
  lastfm.
- "recbole_atomic" (``recbole.py``): ``X.inter`` (+ ``X.item``, ``X.user``). Example: ml-100k.
- "solid_authors" (``authors.py``): the SOLID authors' ``train.txt`` / ``test.txt`` sample files
  with line-aligned semantic copies in a sub-folder (what ``write_authors_file`` writes).

The readers return a Dataset whose semantics are a single placeholder class; ``default_semantics``
(``labels.py``) derives the semantic table from side information. A new format is one module with
one ``base.register(Format(...))``, imported below.
"""

from __future__ import annotations

import pathlib
from typing import Any

from solid_jax.data.errors import DataError
from solid_jax.data.formats.base import FORMATS, FolderSpec, Format, register

# The built-in formats register themselves on import, in detection order.
from solid_jax.data.formats import unisrec  # noqa: F401
from solid_jax.data.formats import lcrec  # noqa: F401
from solid_jax.data.formats import s3rec  # noqa: F401
from solid_jax.data.formats import recbole  # noqa: F401
from solid_jax.data.formats import authors  # noqa: F401
from solid_jax.data.formats.authors import read_authors_file, write_authors_file
from solid_jax.data.formats.common import split_category_path
from solid_jax.data.formats.labels import MISSING, SEMANTIC_KINDS, default_semantics

# Kept for ``_parse_authors_*`` users (tests compare the fast and the checked readers).
_parse_authors_fast = authors._parse_authors_fast  # pylint: disable=protected-access
_parse_authors_checked = authors._parse_authors_checked  # pylint: disable=protected-access


def _names(folder: pathlib.Path) -> list[str]:
  """Sorted relative paths of the files in ``folder`` and in its direct sub-folders."""
  out = []
  for p in folder.iterdir():
    if p.is_file():
      out.append(p.name)
    elif p.is_dir():
      out.extend(f"{p.name}/{q.name}" for q in p.iterdir() if q.is_file())
  return sorted(out)


def _files(folder: pathlib.Path, prefix: str, roles: dict[str, str]) -> dict[str, pathlib.Path]:
  found = {}
  for role, pattern in roles.items():
    matches = sorted(p for p in folder.glob(pattern.format(prefix=prefix)) if p.is_file())
    if matches:
      found[role] = matches[0]
  return found


def inspect_folder(folder: Any, format: str | None = None) -> FolderSpec:  # pylint: disable=redefined-builtin
  """Detects the format of a dataset folder and lists the files to read.

  Args:
    folder: path of the folder.
    format: force one of ``FORMATS`` instead of detecting it.

  Returns:
    FolderSpec.

  Raises:
    DataError: not a folder, no recognised files, or several candidate data sets.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError("not a folder (pass a registered name or a dataset folder)", path=folder)
  if format is not None and format not in FORMATS:
    raise DataError(f"unknown format {format!r}; supported: {', '.join(FORMATS.names())}")
  names = _names(folder)
  order = [format] if format is not None else list(FORMATS.names())
  for name in order:
    fmt = FORMATS[name]
    prefixes = fmt.detect(names)
    if not prefixes:
      continue
    if len(prefixes) > 1:
      raise DataError(
        f"several {name} data sets ({', '.join(prefixes)}); keep one data set per folder",
        path=folder,
      )
    return FolderSpec(
      format=name,
      folder=folder,
      prefix=prefixes[0],
      files=_files(folder, prefixes[0], dict(fmt.roles)),
    )
  expected = "; ".join(f"{k}: {FORMATS[k].expects}" for k in order)
  raise DataError(f"no supported data set found in the folder (expected {expected})", path=folder)


def parse_folder(spec: FolderSpec, name: str, source: str):
  """Reads the files of a detected folder into a Dataset (semantics: one placeholder class).

  Args:
    spec: from ``inspect_folder``.
    name: dataset name.
    source: provenance string stored in the Dataset.

  Returns:
    Dataset with ``fingerprint`` "" (the caller fills it in).
  """
  return FORMATS[spec.format].read(spec, name, source)


__all__ = [
  "FORMATS",
  "FolderSpec",
  "Format",
  "MISSING",
  "SEMANTIC_KINDS",
  "default_semantics",
  "inspect_folder",
  "parse_folder",
  "read_authors_file",
  "register",
  "split_category_path",
  "write_authors_file",
]

"""Registered data-set names and `load_dataset`, the one entry point that dispatches on them.

- "ml-100k" is embedded: it is read from the files `ml-100k.inter/.item/.user` that the PyPI wheel
  `recbole==1.2.1` ships under `recbole/dataset_example/ml-100k/`. The folder is found with
  `importlib.util.find_spec("recbole")`, which does not import recbole (importing it would pull in
  torch). Install it with `pip install --no-deps recbole==1.2.1`.
- "beauty", "sports", "lastfm", "scientific", "office", "instruments" and "scientific_mm_subset"
  name the folders of the shared data directory when it exists: `$SOLID_JAX_SHARED_DATA`, else
  `../shared/data` beside the repository.
- Any other argument is a path to a dataset folder in a supported format (see `formats`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
from typing import Any

from solid_jax.data import formats
from solid_jax.data import hf
from solid_jax.data.dataset import Dataset
from solid_jax.data.errors import DataError

EMBEDDED = "embedded"
SHARED_ENV = "SOLID_JAX_SHARED_DATA"
SHARED_NAMES = (
  "beauty",
  "sports",
  "lastfm",
  "scientific",
  "office",
  "instruments",
  "scientific_mm_subset",
)
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
_RECBOLE_HINT = (
  "the embedded data set 'ml-100k' is read from the recbole wheel; install it with "
  "`pip install --no-deps recbole==1.2.1` (the project set-up script does this)"
)


def shared_data_root() -> pathlib.Path | None:
  """The shared data folder ($SOLID_JAX_SHARED_DATA, else ../shared/data), or None if absent."""
  env = os.environ.get(SHARED_ENV)
  root = (
    pathlib.Path(env).expanduser()
    if env
    else pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
  )
  return root if root.is_dir() else None


def embedded_ml100k_folder() -> pathlib.Path:
  """Folder of the ml-100k atomic files inside the installed recbole wheel (not imported).

  Raises:
    DataError: recbole is not installed, or its ml-100k files are missing.
  """
  spec = importlib.util.find_spec("recbole")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"recbole is not installed: {_RECBOLE_HINT}")
  folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
  missing = [n for n in _ML100K_FILES if not (folder / n).is_file()]
  if missing:
    raise DataError(
      f"recbole is installed but lacks {', '.join(missing)}: {_RECBOLE_HINT}", path=folder
    )
  return folder


def registered_datasets() -> dict[str, str]:
  """Registered names -> "embedded" (ml-100k) or the folder path of a shared data set."""
  names = {"ml-100k": EMBEDDED}
  root = shared_data_root()
  if root is not None:
    for name in SHARED_NAMES:
      if (root / name).is_dir():
        names[name] = str(root / name)
  return names


def _resolve(path_or_name: Any) -> tuple[pathlib.Path, str, str, formats.FolderSpec | None]:
  """-> (folder, name, source, spec restricted to the embedded files or None)."""
  if isinstance(path_or_name, str) and path_or_name == "ml-100k":
    folder = embedded_ml100k_folder()
    try:
      version = importlib.metadata.version("recbole")
    except importlib.metadata.PackageNotFoundError:
      version = "unknown"
    spec = formats.FolderSpec(
      format="recbole_atomic",
      folder=folder,
      prefix="ml-100k",
      files={
        "inter": folder / "ml-100k.inter",
        "item": folder / "ml-100k.item",
        "user": folder / "ml-100k.user",
      },
    )
    return folder, "ml-100k", f"recbole=={version} wheel", spec
  registered = registered_datasets()
  if isinstance(path_or_name, str) and path_or_name in registered:
    folder = pathlib.Path(registered[path_or_name])
    return folder, path_or_name, str(folder), None
  folder = pathlib.Path(path_or_name).expanduser()
  if not folder.is_dir():
    known = ", ".join(sorted(registered))
    hint = (
      ""
      if shared_data_root()
      else (f" (the shared names {', '.join(SHARED_NAMES)} need ${SHARED_ENV} or ../shared/data)")
    )
    raise DataError(
      f"{str(path_or_name)!r} is neither a registered name ({known}) nor a folder" + hint
    )
  return folder, folder.resolve().name, str(folder.resolve()), None


def load_dataset(
  path_or_name: Any = "ml-100k",
  *,
  format: str | None = None,  # pylint: disable=redefined-builtin
  cache_dir: Any = None,
  use_cache: bool = True,
  semantics: str | None = None,
  category_depth: int = 2,
  category_split: str = "auto",
  codes: str = "text",
  code_levels: int = 1,
) -> Dataset:
  """Loads a registered data set or a dataset folder (any supported format, detected).

  The raw files are parsed once and cached as Arrow tables (see `hf`); later loads of unchanged
  files read the cache. Semantic ids are then derived from side information (see
  `formats.default_semantics`); defaults: ml-100k -> first genre (19 classes), S3-Rec -> first
  attribute id, LC-Rec with item text -> category path at depth 2 ("<missing>", numbered last, for an empty path),
  instruments -> first level of the text codes, scientific_mm_subset -> derived category path at
  depth 2.

  Args:
    path_or_name: "ml-100k" (embedded), a shared name (see `registered_datasets`) or a folder.
    format: force a format (one of `formats.FORMATS`) instead of detecting it.
    cache_dir: cache folder; default $SOLID_JAX_CACHE or ~/.cache/solid_jax.
    use_cache: False parses the raw files and writes no cache.
    semantics: "genre" | "attribute" | "category" | "codes" | "none"; default by data.
    category_depth: category-path levels forming a class (>= 1).
    category_split: "auto" | "comma" (split at ",(?! )") | "comma_space" (split at ", ").
    codes: "text" | "image": which codes form classes for semantics="codes".
    code_levels: number of leading code levels forming a class.

  Returns:
    Dataset (num_items / num_users / num_semantics include the padding id 0).

  Raises:
    DataError: unknown name, missing recbole for ml-100k, or invalid data (file, line, field).
  """
  folder, name, source, spec = _resolve(path_or_name)
  if spec is None:
    spec = formats.inspect_folder(folder, format)
  elif format is not None and format != spec.format:
    raise DataError(f"{name} is in format {spec.format!r}, not {format!r}")
  ds, _ = hf.cached_parse(
    spec.files.values(),
    (spec.format, spec.prefix),
    name,
    source,
    lambda: formats.parse_folder(spec, name, source),
    cache_dir=cache_dir,
    use_cache=use_cache,
  )
  return formats.default_semantics(
    ds,
    semantics=semantics,
    category_depth=category_depth,
    category_split=category_split,
    codes=codes,
    code_levels=code_levels,
  )

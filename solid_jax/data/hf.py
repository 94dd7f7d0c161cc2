"""Ingestion and caching through Hugging Face `datasets` (Arrow storage).

A parsed data set is stored as a `datasets.DatasetDict` with three Arrow tables, written with
`save_to_disk` and read back (memory-mapped) with `load_from_disk`:

- "events": one row per interaction, in CSR order: user int32, item int32 (internal ids) and,
  where the source has them, timestamp float64;
- "items": one row per internal item id (row 0 = padding): raw_id string, semantic int32 and one
  column per side-information entry (strings, lists, or fixed-size float/int lists for matrices);
- "users": one row per internal user id: raw_id string and the user side information;

plus a `meta.json` (name, format, vocabularies of semantics, column kinds). Nothing here touches
the network: `Dataset.from_dict`/`save_to_disk`/`load_from_disk` are local operations, so
`HF_DATASETS_OFFLINE=1` changes nothing.

Cache location: the `cache_dir` argument, else the environment variable `SOLID_JAX_CACHE`, else
`~/.cache/solid_jax`. An entry is keyed by a fingerprint of the raw files (sha256 of each file's
name and bytes) and the reader version, so a second load skips parsing and a changed file is
noticed (it gets a new key and is parsed again). Semantic options (category depth, code source)
are applied after loading, so changing them never re-parses.

Data from the Hugging Face Hub (needs a network; nothing in the library downloads anything). The
Amazon Reviews 2023 benchmark files (`McAuley-Lab/Amazon-Reviews-2023`) hold one interaction per
row with columns user_id, parent_asin, rating, timestamp (milliseconds). Load one category and hand
the columns to `from_interactions`, which sorts each user's events by timestamp::

  import datasets, solid_jax as sj
  # datasets < 4 (the repository has a loading script; configs "{0core,5core}_{rating_only,
  # last_out,timestamp,...}_{Category}", e.g. "5core_timestamp_All_Beauty"):
  hub = datasets.load_dataset("McAuley-Lab/Amazon-Reviews-2023", "5core_timestamp_All_Beauty",
                              trust_remote_code=True)
  rows = datasets.concatenate_datasets([hub[s] for s in hub])   # train/valid/test -> one table
  # datasets >= 4 (no loading scripts): read the CSV file of the repository directly:
  rows = datasets.load_dataset(
      "csv", data_files="hf://datasets/McAuley-Lab/Amazon-Reviews-2023/benchmark/5core/"
      "rating_only/All_Beauty.csv", split="train")
  ds = sj.data.from_interactions(rows["user_id"], rows["parent_asin"], rows["timestamp"],
                                 name="amazon23-all-beauty")
  splits = sj.data.make_splits(ds, seq_len=10, seed=0)

Item categories (the "raw_meta_<Category>" config: parent_asin, main_category, categories) can be
passed as `item_labels={asin: " > ".join(path[:2]) ...}`; otherwise semantics come from k-means
(`solid_jax.semantics`) through `Dataset.with_semantics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from absl import logging
import numpy as np

from solid_jax.data.dataset import Dataset
from solid_jax.data.errors import DataError

CACHE_VERSION = 1  # Bump whenever a reader's output changes: old entries are then ignored.
CACHE_ENV = "SOLID_JAX_CACHE"


def cache_root(cache_dir: Any = None) -> pathlib.Path:
  """The cache folder: `cache_dir`, else $SOLID_JAX_CACHE, else ~/.cache/solid_jax."""
  if cache_dir is not None:
    return pathlib.Path(cache_dir).expanduser()
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
  return pathlib.Path("~/.cache/solid_jax").expanduser()


def fingerprint_files(paths: Iterable[Any]) -> str:
  """sha256 hex digest over the names and bytes of `paths` (order-independent)."""
  digest = hashlib.sha256()
  for path in sorted(pathlib.Path(p) for p in paths):
    content = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        content.update(block)
    digest.update(f"{path.name}\0{path.stat().st_size}\0{content.hexdigest()}\n".encode())
  return digest.hexdigest()


@contextlib.contextmanager
def _quiet():
  """Silences the progress bars of `datasets` for the duration (and restores them)."""
  import datasets  # pylint: disable=import-outside-toplevel

  was_disabled = datasets.utils.are_progress_bars_disabled()
  datasets.utils.disable_progress_bars()
  try:
    yield
  finally:
    if not was_disabled:
      datasets.utils.enable_progress_bars()


def _encode(value: Any, rows: int, where: str):
  """One side entry -> (pyarrow array, kind spec)."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel

  if isinstance(value, np.ndarray):
    if value.ndim == 1:
      return pa.array(value), {"kind": "array", "dtype": value.dtype.str, "shape": [rows]}
    flat = np.ascontiguousarray(value.reshape(rows, -1))
    array = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return array, {"kind": "array", "dtype": value.dtype.str, "shape": list(value.shape)}
  value = list(value)
  sample = next(
    (v for v in value if v not in ("", None) and not (isinstance(v, list) and not v)), None
  )
  if sample is None or isinstance(sample, str):
    if all(isinstance(v, str) for v in value):
      return pa.array(value, pa.string()), {"kind": "strings"}
  if all(isinstance(v, list) for v in value):
    inner = next((x for v in value for x in v), "")
    kind = (
      pa.string()
      if isinstance(inner, str)
      else pa.int64()
      if isinstance(inner, int)
      else pa.float64()
    )
    return pa.array(value, pa.list_(kind)), {"kind": "lists"}
  raise DataError(
    f"{where}: cannot store side information of this type in Arrow "
    f"(expected an array, a list of str or a list of lists)"
  )


def _decode(column, spec: dict) -> Any:
  if spec["kind"] == "array":
    shape = tuple(spec["shape"])
    if len(shape) == 1:
      return column.to_numpy().astype(spec["dtype"])
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.astype(spec["dtype"]).reshape(shape)
  return column.to_pylist()


def to_arrow(ds: Dataset):
  """Converts a Dataset into Arrow tables.

  Args:
    ds: the Dataset.

  Returns:
    (datasets.DatasetDict with "events", "items", "users"; meta dict, JSON-serialisable).
  """
  import datasets  # pylint: disable=import-outside-toplevel
  import pyarrow as pa  # pylint: disable=import-outside-toplevel

  events = {
    "user": pa.array(np.repeat(np.arange(ds.num_users, dtype=np.int32), ds.seq_lengths)),
    "item": pa.array(ds.seq_items.astype(np.int32)),
  }
  if ds.seq_timestamps is not None:
    events["timestamp"] = pa.array(ds.seq_timestamps)
  items = {
    "raw_id": pa.array(ds.item_vocab, pa.string()),
    "semantic": pa.array(ds.item_semantic.astype(np.int32)),
  }
  users = {"raw_id": pa.array(ds.user_vocab, pa.string())}
  specs: dict[str, list[dict]] = {"side": [], "user_side": []}
  for table, columns, rows, label in (
    (ds.side, items, ds.num_items, "side"),
    (ds.user_side, users, ds.num_users, "user_side"),
  ):
    for k, (key, value) in enumerate(sorted(table.items())):
      array, spec = _encode(value, rows, f"{label}[{key!r}]")
      column = f"{label}_{k}"
      columns[column] = array
      specs[label].append({"key": key, "column": column, **spec})
  tables = datasets.DatasetDict(
    {
      name: datasets.Dataset(pa.table(columns))
      for name, columns in (("events", events), ("items", items), ("users", users))
    }
  )
  meta = {
    "cache_version": CACHE_VERSION,
    "name": ds.name,
    "source": ds.source,
    "fingerprint": ds.fingerprint,
    "format": ds.format,
    "semantic_source": ds.semantic_source,
    "semantic_vocab": ds.semantic_vocab,
    "has_timestamps": ds.seq_timestamps is not None,
    **specs,
  }
  return tables, meta


def from_arrow(tables, meta: dict) -> Dataset:
  """Inverse of `to_arrow`."""
  events, items, users = (tables[k].data for k in ("events", "items", "users"))
  user_vocab = users.column("raw_id").to_pylist()
  event_users = events.column("user").to_numpy()
  counts = np.bincount(event_users, minlength=len(user_vocab))
  side = {s["key"]: _decode(items.column(s["column"]), s) for s in meta["side"]}
  user_side = {s["key"]: _decode(users.column(s["column"]), s) for s in meta["user_side"]}
  return Dataset(
    name=meta["name"],
    source=meta["source"],
    fingerprint=meta["fingerprint"],
    user_vocab=user_vocab,
    item_vocab=items.column("raw_id").to_pylist(),
    seq_offsets=np.concatenate([[0], np.cumsum(counts)]),
    seq_items=events.column("item").to_numpy(),
    item_semantic=items.column("semantic").to_numpy(),
    semantic_source=meta["semantic_source"],
    semantic_vocab=meta["semantic_vocab"],
    side=side,
    user_side=user_side,
    seq_timestamps=events.column("timestamp").to_numpy() if meta["has_timestamps"] else None,
    format=meta["format"],
  )


def save(ds: Dataset, directory: Any) -> None:
  """Writes `ds` to `directory` (created atomically: written beside it, then renamed)."""
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tables, meta = to_arrow(ds)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
  try:
    with _quiet():
      tables.save_to_disk(str(tmp / "arrow"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
      os.replace(tmp, directory)
    except OSError:  # Another process wrote the same entry first; theirs is as good.
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def load(directory: Any) -> Dataset:
  """Reads a Dataset written by `save`."""
  import datasets  # pylint: disable=import-outside-toplevel

  directory = pathlib.Path(directory)
  meta = json.loads((directory / "meta.json").read_text())
  if meta.get("cache_version") != CACHE_VERSION:
    raise DataError(
      f"cache entry has version {meta.get('cache_version')}, expected {CACHE_VERSION}",
      path=directory,
    )
  with _quiet():
    tables = datasets.load_from_disk(str(directory / "arrow"))
  return from_arrow(tables, meta)


def cached_parse(
  files: Iterable[Any],
  key_parts: Iterable[str],
  name: str,
  source: str,
  parse: Callable[[], Dataset],
  *,
  cache_dir: Any = None,
  use_cache: bool = True,
) -> tuple[Dataset, bool]:
  """Returns the parsed data set from the cache, parsing (and caching) it when absent.

  Args:
    files: the raw files; their bytes make the fingerprint.
    key_parts: further strings of the cache key (e.g. the format).
    name: dataset name (part of the entry's folder name; also set on the result).
    source: provenance (set on the result, so a moved copy reports its own path).
    parse: () -> Dataset, called only on a cache miss.
    cache_dir: see `cache_root`.
    use_cache: False parses every time and writes nothing.

  Returns:
    (Dataset with `fingerprint` set, True when it came from the cache).
  """
  fingerprint = fingerprint_files(files)
  if use_cache:
    key = hashlib.sha256("|".join([str(CACHE_VERSION), *key_parts, fingerprint]).encode())
    entry = cache_root(cache_dir) / f"{name}-{key.hexdigest()[:24]}"
    if (entry / "meta.json").is_file():
      try:
        ds = load(entry)
        return dataclasses.replace(ds, name=name, source=source), True
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("unreadable cache entry %s (%s); parsing the raw files again", entry, e)
        shutil.rmtree(entry, ignore_errors=True)
  ds = dataclasses.replace(parse(), name=name, source=source, fingerprint=fingerprint)
  if use_cache:
    try:
      save(ds, entry)
    except OSError as e:
      logging.warning("could not write the cache entry %s: %s", entry, e)
  return ds, False

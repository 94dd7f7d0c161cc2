"""UniSRec / MISSRec: ``X.{train,valid,test}.inter``; the full sequence of a user is the test
history followed by the test target (the train/valid files are prefixes of the test rows and are
not read). Optional ``X.item2index``, ``X.user2index``, ``X.text`` (side "text"), ``X.feat1CLS`` /
``X.feat3CLS`` (raw float32, 512 columns, row k = item index k, i.e. internal id k+1 -> side
"features/clip_text" / "features/clip_image", float32[num_items, 512], zero row at padding),
``X.categories.derived.tsv`` (side "categories"). Example: scientific_mm_subset."""

from __future__ import annotations

import html
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from solid_jax.data.dataset import Dataset, make_vocab, sequences_from_events
from solid_jax.data.errors import DataError
from solid_jax.data.formats import base
from solid_jax.data.formats.base import FolderSpec

from solid_jax.data.formats.common import (
  _read_reviewer_ids,
  _lines,
  _to_int,
  _read_atomic,
  _read_pairs,
  _index_of,
  _check_unique,
  _assemble,
  _map_items,
  _LazyFields,
)


def _parse_unisrec(spec: FolderSpec, name: str, source: str) -> Dataset:
  test = spec.files.get("test")
  fields, rows, numbers = _read_atomic(test, ("user_id", "item_id_list", "item_id"))
  names = [f[0] for f in fields]
  cu, ch, ct = (names.index(k) for k in ("user_id", "item_id_list", "item_id"))
  users = [r[cu] for r in rows]
  _check_unique(users, test, numbers, "user_id")
  tokens, counts, token_lines = [], [], []
  for r, number in zip(rows, numbers):
    seq = r[ch].split() + [r[ct]]
    tokens.extend(seq)
    counts.append(len(seq))
    token_lines.extend([number] * len(seq))
  counts = np.asarray(counts, np.int64)
  if counts.max() - 1 >= 50:
    logging.warning(
      "%s: a test history has %d items; UniSRec files usually cap histories at 50, "
      "so the earliest events may be missing",
      test,
      counts.max() - 1,
    )
  position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
  raw_items = _to_int(
    tokens, test, token_lines, _LazyFields("item_id_list/item_id token ", position)
  )
  catalogue, asins = None, None
  if "item2index" in spec.files:
    asins, asin_index, asin_lines = _read_pairs(spec.files["item2index"])
    catalogue = _to_int(
      asin_index, spec.files["item2index"], asin_lines, ["index"] * len(asin_lines)
    )
    _check_unique(asins, spec.files["item2index"], asin_lines, "ASIN")
  user_vocab, user_codes = make_vocab(users)
  item_vocab, item_codes = _map_items(raw_items, catalogue, test)
  order, offsets = sequences_from_events(np.repeat(user_codes, counts), len(user_vocab))
  index = _index_of(item_vocab)
  size = len(item_vocab)
  side: dict[str, Any] = {}
  asin_to_item = {}
  if asins is not None:
    side["asin"] = [""] * size
    for asin, idx in zip(asins, catalogue.tolist()):
      side["asin"][index[str(idx)]] = asin
      asin_to_item[asin] = index[str(idx)]
  if "text" in spec.files:
    if not asin_to_item:
      raise DataError(
        "an item text file needs the item2index file to map ASINs to items", path=spec.files["text"]
      )
    text_fields, text_rows, text_numbers = _read_atomic(spec.files["text"], ("item_id",))
    tnames = [f[0] for f in text_fields]
    key_col = tnames.index("item_id")
    text_col = [c for c in range(len(tnames)) if c != key_col][0]
    texts = [""] * size
    for r, number in zip(text_rows, text_numbers):
      if r[key_col] not in asin_to_item:
        raise DataError(
          f"item {r[key_col]!r} is not in the item2index file",
          path=spec.files["text"],
          line=number,
          field="item_id",
        )
      texts[asin_to_item[r[key_col]]] = html.unescape(r[text_col])
    side["text"] = texts
  if "categories" in spec.files:
    cat_path = spec.files["categories"]
    paths = [""] * size
    lines = _lines(cat_path)
    for number, line in lines[1:]:
      parts = line.split("\t")
      if len(parts) not in (2, 3):
        raise DataError(
          f"expected 3 tab-separated fields (item_index, asin, categories), found {len(parts)}",
          path=cat_path,
          line=number,
        )
      idx = _to_int([parts[0]], cat_path, [number], ["item_index"])[0]
      if str(idx) not in index:
        raise DataError(
          f"item index {idx} is out of range", path=cat_path, line=number, field="item_index"
        )
      paths[index[str(idx)]] = html.unescape(parts[2] if len(parts) == 3 else "")
    side["category_path"] = paths
  for role, key in (("feat_text", "features/clip_text"), ("feat_image", "features/clip_image")):
    if role in spec.files:
      side[key] = _read_features(spec.files[role], item_vocab, catalogue)
  user_side = {}
  if "user2index" in spec.files:
    user_side["reviewer_id"] = _read_reviewer_ids(spec.files["user2index"], user_vocab)
  return _assemble(
    spec, name, source, user_vocab, item_vocab, offsets, item_codes[order], side, user_side
  )


def _read_features(
  path: pathlib.Path, item_vocab: Sequence[str], catalogue: np.ndarray | None, dim: int = 512
) -> np.ndarray:
  """Raw float32 matrix (row k = item index k) -> float32[num_items, dim], zero row 0."""
  size = os.path.getsize(path)
  if size == 0:
    raise DataError("empty file", path=path)
  if size % (4 * dim):
    raise DataError(
      f"file size {size} bytes is not a whole number of float32 rows of {dim} columns", path=path
    )
  matrix = np.fromfile(path, dtype="<f4").reshape(-1, dim)
  expected = catalogue.size if catalogue is not None else len(item_vocab) - 1
  if matrix.shape[0] != expected:
    raise DataError(
      f"mismatched feature-matrix rows: the file has {matrix.shape[0]} rows, the "
      f"data set has {expected} items",
      path=path,
    )
  bad = np.flatnonzero(~np.all(np.isfinite(matrix), axis=1))
  if bad.size:
    raise DataError(
      f"row {int(bad[0])} (of {bad.size} such rows) holds NaN or inf values",
      path=path,
      line=int(bad[0]) + 1,
      field="feature",
    )
  raw = np.asarray(item_vocab[1:], dtype=np.int64)
  if raw.size and (raw.min() < 0 or raw.max() >= matrix.shape[0]):
    raise DataError(
      f"item index {raw.max()} has no row in a matrix of {matrix.shape[0]} rows", path=path
    )
  out = np.zeros((len(item_vocab), dim), np.float32)
  out[1:] = matrix[raw]
  return out


FORMAT = base.register(
  base.Format(
    name="unisrec",
    detect=lambda names: base.with_suffix(names, ".test.inter"),
    roles={
      "test": "{prefix}.test.inter",
      "item2index": "{prefix}.item2index",
      "user2index": "{prefix}.user2index",
      "text": "{prefix}.text",
      "feat_text": "{prefix}.feat1CLS",
      "feat_image": "{prefix}.feat3CLS",
      "categories": "{prefix}.categories.derived.tsv",
    },
    read=_parse_unisrec,
    expects="X.test.inter (+ X.train.inter, X.valid.inter)",
  )
)

"""RecBole atomic files: ``X.inter`` (typed TSV header; needs ``user_id``, ``item_id``, optionally
``timestamp``), optional ``X.item`` and ``X.user``. Each user's events are sorted by timestamp, ties
kept in file order. Item fields become side information (``class`` -> "genres", ``movie_title`` ->
"title", ``release_year`` -> "year"; other fields keep their names); user fields become
``user_side``; ``token_seq`` fields are lists of tokens, except titles and texts, which stay
strings. Example: ml-100k."""

from __future__ import annotations


import numpy as np

from solid_jax.data.dataset import Dataset, make_vocab, sequences_from_events
from solid_jax.data.formats import base
from solid_jax.data.formats.base import FolderSpec

from solid_jax.data.formats.common import (
  _to_float,
  _read_atomic,
  _index_of,
  _check_unique,
  _assemble,
)

_RENAMED_RECBOLE_FIELDS = {"class": "genres", "movie_title": "title", "release_year": "year"}
_TEXT_FIELDS = ("movie_title", "title", "text")  # token_seq fields kept as one string.


def _parse_recbole(spec: FolderSpec, name: str, source: str) -> Dataset:
  inter = spec.files["inter"]
  fields, rows, numbers = _read_atomic(inter, ("user_id", "item_id"))
  columns = dict(zip((f[0] for f in fields), zip(*rows)))
  timestamps = None
  if "timestamp" in columns:
    timestamps = _to_float(columns["timestamp"], inter, numbers, "timestamp")
  user_vocab, user_codes = make_vocab(columns["user_id"])
  side, user_side = {}, {}
  item_rows = None
  if "item" in spec.files:
    item_fields, item_rows, item_numbers = _read_atomic(spec.files["item"], ("item_id",))
    item_ids = [r[[f[0] for f in item_fields].index("item_id")] for r in item_rows]
    _check_unique(item_ids, spec.files["item"], item_numbers, "item_id")
    item_vocab, codes = make_vocab(list(columns["item_id"]) + item_ids)
  else:
    item_vocab, codes = make_vocab(columns["item_id"])
  item_codes = codes[: len(rows)]
  order, offsets = sequences_from_events(user_codes, len(user_vocab), timestamps)
  if item_rows is not None:
    side = _atomic_side(
      item_fields,
      item_rows,
      item_numbers,
      "item_id",
      _index_of(item_vocab),
      len(item_vocab),
      spec.files["item"],
      _RENAMED_RECBOLE_FIELDS,
    )
  if "user" in spec.files:
    user_fields, user_rows, user_numbers = _read_atomic(spec.files["user"], ("user_id",))
    user_side = _atomic_side(
      user_fields,
      user_rows,
      user_numbers,
      "user_id",
      _index_of(user_vocab),
      len(user_vocab),
      spec.files["user"],
      {},
    )
  return _assemble(
    spec,
    name,
    source,
    user_vocab,
    item_vocab,
    offsets,
    item_codes[order],
    side,
    user_side,
    None if timestamps is None else timestamps[order],
  )


def _atomic_side(fields, rows, numbers, key, index, size, path, rename) -> dict:
  """Columns of a RecBole .item/.user file, aligned to internal ids (unknown ids skipped)."""
  names = [f[0] for f in fields]
  key_col = names.index(key)
  targets = np.array([index.get(r[key_col], 0) for r in rows], np.int64)
  keep = targets > 0
  side = {}
  for col, (field, kind) in enumerate(fields):
    if col == key_col:
      continue
    cells = [r[col] for r in rows]
    out_name = rename.get(field, field)
    if kind == "float":
      values = np.full(size, np.nan)
      values[targets[keep]] = _to_float(cells, path, numbers, field)[keep]
      side[out_name] = values
    elif kind == "token" or (kind == "token_seq" and field in _TEXT_FIELDS):
      values = [""] * size
      for t, cell in zip(targets[keep].tolist(), np.asarray(cells, dtype=object)[keep].tolist()):
        values[t] = cell
      side[out_name] = values
    else:
      values = [[] for _ in range(size)]
      for t, cell, number in zip(targets.tolist(), cells, numbers):
        if t:
          tokens = cell.split()
          values[t] = (
            tokens
            if kind == "token_seq"
            else _to_float(tokens, path, [number] * len(tokens), field).tolist()
          )
      side[out_name] = values
  return side


FORMAT = base.register(
  base.Format(
    name="recbole_atomic",
    detect=lambda names: base.with_suffix(
      names, ".inter", exclude=(".train.inter", ".valid.inter", ".test.inter")
    ),
    roles={"inter": "{prefix}.inter", "item": "{prefix}.item", "user": "{prefix}.user"},
    read=_parse_recbole,
    expects="X.inter (+ X.item, X.user)",
  )
)

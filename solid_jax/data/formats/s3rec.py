"""S3-Rec: ``X.txt`` (one user per line: ``user item item ...``, chronological) and
``X_item2attributes.json`` (``{"item": [attribute ids]}``) -> side "attributes". Examples: beauty,
sports, lastfm."""

from __future__ import annotations


import numpy as np

from solid_jax.data.dataset import Dataset, make_vocab, sequences_from_events
from solid_jax.data.errors import DataError, read_json
from solid_jax.data.formats import base
from solid_jax.data.formats.base import FolderSpec

from solid_jax.data.formats.common import (
  _lines,
  _to_int,
  _index_of,
  _check_unique,
  _assemble,
  _json_int,
  _LazyFields,
)


def _parse_s3rec(spec: FolderSpec, name: str, source: str) -> Dataset:
  path = spec.files["sequences"]
  user_tokens, item_tokens, counts, user_lines = [], [], [], []
  for number, line in _lines(path):
    parts = line.split()
    if len(parts) < 2:
      raise DataError(
        "expected a user id followed by at least one item id",
        path=path,
        line=number,
        field="item_id_1",
      )
    user_tokens.append(parts[0])
    item_tokens.extend(parts[1:])
    counts.append(len(parts) - 1)
    user_lines.append(number)
  counts = np.asarray(counts, np.int64)
  users = _to_int(user_tokens, path, user_lines, ["user_id"] * len(user_lines))
  token_lines = np.repeat(user_lines, counts)
  position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
  items = _to_int(item_tokens, path, token_lines.tolist(), _LazyFields("item_id_", position))
  _check_unique([str(u) for u in users.tolist()], path, user_lines, "user_id")
  attr_path = spec.files["attributes"]
  attributes = read_json(attr_path)
  if not isinstance(attributes, dict):
    raise DataError("expected a JSON object {item: [attribute ids]}", path=attr_path)
  attr_items = np.array([_json_int(k, attr_path, f'key "{k}"') for k in attributes], np.int64)
  user_vocab, user_codes = make_vocab(users)
  item_vocab, item_codes = make_vocab(np.concatenate([items, attr_items]))
  item_codes = item_codes[: items.size]
  order, offsets = sequences_from_events(np.repeat(user_codes, counts), len(user_vocab))
  index = _index_of(item_vocab)
  side_attrs: list[list[int]] = [[] for _ in item_vocab]
  for key, values in attributes.items():
    if not isinstance(values, list):
      raise DataError("expected a list of attribute ids", path=attr_path, field=f'key "{key}"')
    side_attrs[index[str(int(key))]] = [
      _json_int(v, attr_path, f'key "{key}", position {j}') for j, v in enumerate(values)
    ]
  return _assemble(
    spec,
    name,
    source,
    user_vocab,
    item_vocab,
    offsets,
    item_codes[order],
    {"attributes": side_attrs},
    {},
  )


FORMAT = base.register(
  base.Format(
    name="s3rec",
    detect=lambda names: [
      p for p in base.with_suffix(names, "_item2attributes.json") if p + ".txt" in names
    ],
    roles={"sequences": "{prefix}.txt", "attributes": "{prefix}_item2attributes.json"},
    read=_parse_s3rec,
    expects="X.txt + X_item2attributes.json",
  )
)

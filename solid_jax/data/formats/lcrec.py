"""LC-Rec: ``X.inter.json`` (``{"user": [items, chronological]}``), optional ``X.item.json``
(title/description/brand/categories -> side "title", "description", "brand" and "categories" as a
list of path levels; HTML entities unescaped), optional ``X.index_lemb.json`` /
``X.index_vitemb.json`` (4-level codes ``"<a_12>"`` -> side "codes/text" / "codes/image",
int32[num_items, 4], -1 at padding), optional ``X.item2id`` / ``X.user2id`` (``raw<TAB>index`` ->
side "asin", user_side "reviewer_id"). Examples: scientific, office, instruments."""

from __future__ import annotations

import html
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from solid_jax.data.dataset import Dataset, sequences_from_events
from solid_jax.data.errors import DataError, read_json
from solid_jax.data.formats import base
from solid_jax.data.formats.base import FolderSpec

from solid_jax.data.formats.common import (
  _read_reviewer_ids,
  _to_int,
  _read_pairs,
  _index_of,
  _assemble,
  _json_int,
  _sequences_json,
  _events_from_lists,
  _map_items,
)

_CODE_TOKEN = re.compile(r"<([A-Za-z]+)_(\d+)>")


def _parse_lcrec(spec: FolderSpec, name: str, source: str) -> Dataset:
  inter = spec.files["inter"]
  users, sequences = _sequences_json(inter)
  user_vocab, event_users, raw_items, counts = _events_from_lists(users, sequences)
  catalogue = None
  item_info = None
  if "item" in spec.files:
    item_info = read_json(spec.files["item"])
    if not isinstance(item_info, dict) or not item_info:
      raise DataError(
        "expected a non-empty JSON object {item: {title, ...}}", path=spec.files["item"]
      )
    catalogue = np.array(
      [_json_int(k, spec.files["item"], f'key "{k}"') for k in item_info], np.int64
    )
  asin_keys = None
  if "item2id" in spec.files:
    asin_keys, asin_index, asin_lines = _read_pairs(spec.files["item2id"])
    indices = _to_int(asin_index, spec.files["item2id"], asin_lines, ["index"] * len(asin_lines))
    catalogue = indices if catalogue is None else catalogue
  where = _LazyUserPositions(users, counts)
  item_vocab, item_codes = _map_items(raw_items, catalogue, inter, where)
  order, offsets = sequences_from_events(event_users, len(user_vocab))
  index = _index_of(item_vocab)
  size = len(item_vocab)
  side: dict[str, Any] = {}
  if item_info is not None:
    fields = {"title": [""] * size, "description": [""] * size, "brand": [""] * size}
    raw_paths = [""] * size
    for key, info in item_info.items():
      if not isinstance(info, dict):
        raise DataError(
          "expected an object with title/description/brand/categories",
          path=spec.files["item"],
          field=f'key "{key}"',
        )
      i = index[str(int(key))]
      for field in fields:
        value = info.get(field, "")
        fields[field][i] = html.unescape(value if isinstance(value, str) else str(value or ""))
      cats = info.get("categories", "")
      raw_paths[i] = html.unescape(", ".join(cats) if isinstance(cats, list) else str(cats or ""))
    side.update(fields)
    side["category_path"] = raw_paths
  if asin_keys is not None:
    asins = [""] * size
    for asin, idx, line in zip(asin_keys, indices.tolist(), asin_lines):
      if str(idx) not in index:
        raise DataError(
          f"item index {idx} is out of range (not in the interactions or the item file)",
          path=spec.files["item2id"],
          line=line,
          field="index",
        )
      asins[index[str(idx)]] = asin
    side["asin"] = asins
  for role, key in (("codes_text", "codes/text"), ("codes_image", "codes/image")):
    if role in spec.files:
      side[key] = _read_codes(spec.files[role], index, size)
  user_side = {}
  if "user2id" in spec.files:
    user_side["reviewer_id"] = _read_reviewer_ids(spec.files["user2id"], user_vocab)
  return _assemble(
    spec, name, source, user_vocab, item_vocab, offsets, item_codes[order], side, user_side
  )


class _LazyUserPositions(Sequence):
  """Field name 'user "<key>", position <j>' of every event, built only on error."""

  def __init__(self, users: Sequence[str], counts: np.ndarray):
    self._users, self._counts = users, counts
    self._starts = np.cumsum(counts) - counts

  def __len__(self):
    return int(self._counts.sum())

  def __getitem__(self, k):
    u = int(np.searchsorted(self._starts, k, side="right") - 1)
    return f'user "{self._users[u]}", position {k - int(self._starts[u])}'


def _read_codes(path: pathlib.Path, index: Mapping[str, int], size: int) -> np.ndarray:
  """`{"item": ["<a_1>", "<b_2>", ...]}` -> int32[size, levels], -1 where absent (padding)."""
  data = read_json(path)
  if not isinstance(data, dict) or not data:
    raise DataError("expected a non-empty JSON object {item: [code tokens]}", path=path)
  levels = len(next(iter(data.values())))
  out = np.full((size, levels), -1, np.int32)
  for key, tokens in data.items():
    field = f'key "{key}"'
    if str(key) not in index:
      raise DataError(
        f"item {key} is out of range (not in the interactions or the item catalogue)",
        path=path,
        field=field,
      )
    if not isinstance(tokens, list) or len(tokens) != levels:
      raise DataError(f"expected a list of {levels} code tokens", path=path, field=field)
    for level, token in enumerate(tokens):
      match = _CODE_TOKEN.fullmatch(str(token))
      if match is None:
        raise DataError(
          f"{token!r} is not a code token like '<a_12>'",
          path=path,
          field=f"{field}, level {level + 1}",
        )
      out[index[str(key)], level] = int(match.group(2))
  missing = np.flatnonzero((out[1:] < 0).any(axis=1))
  if missing.size:
    raise DataError(f"{missing.size} items have no code, e.g. item {missing[0]}", path=path)
  return out


FORMAT = base.register(
  base.Format(
    name="lcrec",
    detect=lambda names: base.with_suffix(names, ".inter.json"),
    roles={
      "inter": "{prefix}.inter.json",
      "item": "{prefix}.item.json",
      "codes_text": "{prefix}.index_lemb.json",
      "codes_image": "{prefix}.index_vitemb.json",
      "item2id": "{prefix}.item2id",
      "user2id": "{prefix}.user2id",
    },
    read=_parse_lcrec,
    expects="X.inter.json",
  )
)

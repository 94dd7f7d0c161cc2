"""One reader per on-disk format; each turns a folder into a `Dataset`.

Formats (detected from the file names in a folder by `inspect_folder`):

- "recbole_atomic": RecBole atomic files `X.inter` (typed TSV header; needs `user_id`, `item_id`,
  optionally `timestamp`), optional `X.item` and `X.user`. Each user's events are sorted by
  timestamp, ties kept in file order. Item fields become side information (`class` -> "genres",
  `movie_title` -> "title", `release_year` -> "year"; other fields keep their names); user fields
  become `user_side`; `token_seq` fields are lists of tokens, except titles and texts, which stay
  strings. Example: ml-100k.
- "s3rec": `X.txt` (one user per line: `user item item ...`, chronological) and
  `X_item2attributes.json` (`{"item": [attribute ids]}`) -> side "attributes". Example: beauty,
  sports, lastfm.
- "lcrec": `X.inter.json` (`{"user": [items, chronological]}`), optional `X.item.json`
  (title/description/brand/categories -> side "title", "description", "brand" and "categories" as
  a list of path levels; HTML entities unescaped), optional `X.index_lemb.json` /
  `X.index_vitemb.json` (4-level codes `"<a_12>"` -> side "codes/text" / "codes/image",
  int32[num_items, 4], -1 at padding), optional `X.item2id` / `X.user2id` (`raw<TAB>index` ->
  side "asin", user_side "reviewer_id"). Examples: scientific, office, instruments.
- "unisrec": UniSRec/MISSRec layout `X.{train,valid,test}.inter`; the full sequence of a user is
  the test history followed by the test target. Optional `X.item2index`, `X.user2index`, `X.text`
  (side "text"), `X.feat1CLS` / `X.feat3CLS` (raw float32, 512 columns, row k = item index k, i.e.
  internal id k+1 -> side "features/clip_text" / "features/clip_image", float32[num_items, 512],
  zero row at padding), `X.categories.derived.tsv` (side "categories"). Example:
  scientific_mm_subset.

The readers return a Dataset whose semantics are a single placeholder class; `default_semantics`
derives the semantic table from side information, with options (see its docstring). The authors'
line format `user;target;trigger_seq;click_seq;label` is read and written by `read_authors_file` /
`write_authors_file` (it holds samples, not raw sequences).
"""

from __future__ import annotations

import dataclasses
import html
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np

from solid_jax.data.dataset import Dataset, labels_to_ids, make_vocab, sequences_from_events
from solid_jax.data.errors import DataError, read_json, read_text

FORMATS = ("recbole_atomic", "s3rec", "lcrec", "unisrec")
SEMANTIC_KINDS = ("genre", "attribute", "category", "codes", "none")
_RENAMED_RECBOLE_FIELDS = {"class": "genres", "movie_title": "title", "release_year": "year"}
_TEXT_FIELDS = ("movie_title", "title", "text")  # token_seq fields kept as one string.
_CODE_TOKEN = re.compile(r"<([A-Za-z]+)_(\d+)>")
_CATEGORY_NO_SPACE = re.compile(r",(?! )")


@dataclasses.dataclass(frozen=True)
class FolderSpec:
  """A detected dataset folder.

  Attributes:
    format: one of FORMATS.
    folder: the folder.
    prefix: the common file-name prefix (e.g. "Beauty").
    files: role -> path of every file the reader will read (only files that exist).
  """

  format: str
  folder: pathlib.Path
  prefix: str
  files: Mapping[str, pathlib.Path]


def _single(candidates: list[str], what: str, folder: pathlib.Path) -> str:
  if len(candidates) > 1:
    raise DataError(f"several {what} files ({', '.join(candidates)}); keep one data set per folder",
                    path=folder)
  return candidates[0]


def inspect_folder(folder: Any,
                   format: str | None = None) -> FolderSpec:  # pylint: disable=redefined-builtin
  """Detects the format of a dataset folder and lists the files to read.

  Args:
    folder: path of the folder.
    format: force one of FORMATS instead of detecting it.

  Returns:
    FolderSpec.

  Raises:
    DataError: not a folder, no recognised files, or several candidate data sets.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError("not a folder (pass a registered name or a dataset folder)", path=folder)
  if format is not None and format not in FORMATS:
    raise DataError(f"unknown format {format!r}; supported: {', '.join(FORMATS)}")
  names = sorted(p.name for p in folder.iterdir() if p.is_file())

  def files(prefix: str, roles: Mapping[str, str]) -> dict[str, pathlib.Path]:
    return {role: folder / (prefix + suffix) for role, suffix in roles.items()
            if (folder / (prefix + suffix)).is_file()}

  tests = [n[:-len(".test.inter")] for n in names if n.endswith(".test.inter")]
  inter_json = [n[:-len(".inter.json")] for n in names if n.endswith(".inter.json")]
  attributes = [n[:-len("_item2attributes.json")] for n in names
                if n.endswith("_item2attributes.json")]
  atomic = [n[:-len(".inter")] for n in names if n.endswith(".inter")
            and not n.endswith((".train.inter", ".valid.inter", ".test.inter"))]
  candidates = {"unisrec": tests, "lcrec": inter_json,
                "s3rec": [p for p in attributes if p + ".txt" in names], "recbole_atomic": atomic}
  order = [format] if format is not None else list(candidates)
  for fmt in order:
    if not candidates[fmt]:
      continue
    prefix = _single(candidates[fmt], fmt, folder)
    if fmt == "unisrec":
      roles = {"test": ".test.inter", "train": ".train.inter", "valid": ".valid.inter",
               "item2index": ".item2index", "user2index": ".user2index", "text": ".text",
               "feat_text": ".feat1CLS", "feat_image": ".feat3CLS",
               "categories": ".categories.derived.tsv"}
      # The train/valid files are prefixes of the test rows and are not read.
      found = {k: v for k, v in files(prefix, roles).items() if k not in ("train", "valid")}
    elif fmt == "lcrec":
      roles = {"inter": ".inter.json", "item": ".item.json", "codes_text": ".index_lemb.json",
               "codes_image": ".index_vitemb.json", "item2id": ".item2id", "user2id": ".user2id"}
      found = files(prefix, roles)
    elif fmt == "s3rec":
      found = files(prefix, {"sequences": ".txt", "attributes": "_item2attributes.json"})
    else:
      found = files(prefix, {"inter": ".inter", "item": ".item", "user": ".user"})
    return FolderSpec(format=fmt, folder=folder, prefix=prefix, files=found)
  wanted = {
      "unisrec": "X.test.inter (+ X.train.inter, X.valid.inter)", "lcrec": "X.inter.json",
      "s3rec": "X.txt + X_item2attributes.json", "recbole_atomic": "X.inter (+ X.item, X.user)"}
  expected = "; ".join(f"{k}: {wanted[k]}" for k in order)
  raise DataError(f"no supported data set found in the folder (expected {expected})", path=folder)


def parse_folder(spec: FolderSpec, name: str, source: str) -> Dataset:
  """Reads the files of a detected folder into a Dataset (semantics: one placeholder class).

  Args:
    spec: from `inspect_folder`.
    name: dataset name.
    source: provenance string stored in the Dataset.

  Returns:
    Dataset with `fingerprint` "" (the caller fills it in).
  """
  reader = {"recbole_atomic": _parse_recbole, "s3rec": _parse_s3rec, "lcrec": _parse_lcrec,
            "unisrec": _parse_unisrec}[spec.format]
  return reader(spec, name, source)


# ----------------------------------------------------------------------------------------------
# Low-level helpers.


def _lines(path: pathlib.Path) -> list[tuple[int, str]]:
  """(1-based line number, line) of every non-blank line."""
  return [(k, line.rstrip("\r")) for k, line in enumerate(read_text(path).split("\n"), start=1)
          if line.strip()]


def _to_int(tokens: Sequence[str], path: Any, lines: Sequence[int], fields: Sequence[str]
            ) -> np.ndarray:
  """int64 array of decimal tokens; the first bad token is reported with its line and field."""
  try:
    return np.asarray(tokens, dtype=str).astype(np.int64) if len(tokens) else np.zeros(0, np.int64)
  except (ValueError, OverflowError):
    pass
  for token, line, field in zip(tokens, lines, fields):
    try:
      int(token)
    except (ValueError, OverflowError):
      raise DataError(f"{token!r} is not an integer id", path=path, line=line,
                      field=field) from None
  raise DataError("integer conversion failed", path=path)  # Unreachable in practice.


def _to_float(tokens: Sequence[str], path: Any, lines: Sequence[int], field: str) -> np.ndarray:
  try:
    return np.asarray(tokens, dtype=str).astype(np.float64)
  except ValueError:
    pass
  for token, line in zip(tokens, lines):
    try:
      float(token)
    except ValueError:
      raise DataError(f"{token!r} is not a number", path=path, line=line, field=field) from None
  raise DataError("float conversion failed", path=path)


def _missing(names: Sequence[str], found: int) -> str:
  """The field at fault when a line has `found` fields instead of len(names)."""
  return names[found] if found < len(names) else f"after {names[-1]}"


def _read_atomic(path: pathlib.Path, required: Sequence[str]
                 ) -> tuple[list[tuple[str, str]], list[list[str]], list[int]]:
  """RecBole atomic TSV -> (fields [(name, type)], rows [[str]], line numbers)."""
  lines = _lines(path)
  head_no, head = lines[0]
  fields = []
  for col, cell in enumerate(head.split("\t")):
    name, _, kind = cell.partition(":")
    if not name or kind not in ("token", "token_seq", "float", "float_seq"):
      raise DataError(f"header cell {cell!r} is not 'name:type' with type token, token_seq, "
                      "float or float_seq", path=path, line=head_no, field=f"column {col + 1}")
    fields.append((name, kind))
  names = [f[0] for f in fields]
  for need in required:
    if need not in names:
      raise DataError(f"header has no {need!r} column (columns: {', '.join(names)})", path=path,
                      line=head_no, field=need)
  rows, numbers = [], []
  for number, line in lines[1:]:
    parts = line.split("\t")
    if len(parts) != len(fields):
      raise DataError(f"expected {len(fields)} tab-separated fields ({', '.join(names)}), found "
                      f"{len(parts)}", path=path, line=number, field=_missing(names, len(parts)))
    rows.append(parts)
    numbers.append(number)
  if not rows:
    raise DataError("no data rows after the header", path=path)
  return fields, rows, numbers


def _read_pairs(path: pathlib.Path) -> tuple[list[str], list[str], list[int]]:
  """Headerless `key<TAB>value` TSV -> (keys, values, line numbers)."""
  keys, values, numbers = [], [], []
  for number, line in _lines(path):
    parts = line.split("\t")
    if len(parts) != 2:
      raise DataError(f"expected 2 tab-separated fields, found {len(parts)}", path=path,
                      line=number)
    keys.append(parts[0])
    values.append(parts[1])
    numbers.append(number)
  return keys, values, numbers


def _index_of(vocab: Sequence[str]) -> dict[str, int]:
  return {raw: i for i, raw in enumerate(vocab) if i}


def _check_unique(raw: Sequence[str], path: Any, lines: Sequence[int], what: str) -> None:
  seen: dict[str, int] = {}
  for token, line in zip(raw, lines):
    if token in seen:
      raise DataError(f"duplicate {what} {token!r} (first on line {seen[token]})", path=path,
                      line=line, field=what)
    seen[token] = line


def _placeholder_semantics(num_items: int) -> tuple[np.ndarray, list[str]]:
  return labels_to_ids([""] + ["unknown"] * (num_items - 1))


def _assemble(spec: FolderSpec, name: str, source: str, user_vocab: list[str],
              item_vocab: list[str], offsets: np.ndarray, items: np.ndarray,
              side: dict, user_side: dict, timestamps: np.ndarray | None = None) -> Dataset:
  table, vocab = _placeholder_semantics(len(item_vocab))
  return Dataset(name=name, source=source, fingerprint="", user_vocab=user_vocab,
                 item_vocab=item_vocab, seq_offsets=offsets, seq_items=items, item_semantic=table,
                 semantic_source="none (one class)", semantic_vocab=vocab, side=side,
                 user_side=user_side, seq_timestamps=timestamps, format=spec.format)


def _json_int(value: Any, path: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise DataError(f"{value!r} is not an integer id", path=path, field=field)
  try:
    return int(value)
  except ValueError:
    raise DataError(f"{value!r} is not an integer id", path=path, field=field) from None


def _sequences_json(path: pathlib.Path) -> tuple[list[str], list[list[int]]]:
  """`{"user": [item, ...]}` -> (user keys, item lists), validated."""
  data = read_json(path)
  if not isinstance(data, dict) or not data:
    raise DataError("expected a non-empty JSON object {user: [item, ...]}", path=path)
  users, sequences = [], []
  for user, seq in data.items():
    if not isinstance(seq, list):
      raise DataError(f"expected a list of item ids, got {type(seq).__name__}", path=path,
                      field=f'user "{user}"')
    sequences.append([_json_int(v, path, f'user "{user}", position {j}') for j, v in
                      enumerate(seq)])
    users.append(str(user))
  return users, sequences


def _events_from_lists(users: list[str], sequences: list[list[int]]
                       ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
  """Per-user item lists -> (user_vocab, event user codes, event raw items, offsets/order)."""
  user_vocab, user_codes = make_vocab(users)
  counts = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
  event_users = np.repeat(user_codes, counts)
  raw_items = np.fromiter((v for s in sequences for v in s), np.int64, int(counts.sum()))
  return user_vocab, event_users, raw_items, counts


def _map_items(raw_items: np.ndarray, catalogue: np.ndarray | None, path: Any,
               where: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
  """Item vocabulary over catalogue ∪ raw_items; items outside a given catalogue are errors."""
  if catalogue is not None:
    known = np.isin(raw_items, catalogue)
    if not known.all():
      bad = int(np.flatnonzero(~known)[0])
      field = where[bad] if where is not None else None
      raise DataError(f"item id {int(raw_items[bad])} is out of range: it is not in the item "
                      "catalogue of this folder", path=path, field=field)
    vocab, codes = make_vocab(np.concatenate([raw_items, catalogue]))
    return vocab, codes[:raw_items.size]
  return make_vocab(raw_items)


def split_category_path(path: str, rule: str) -> list[str]:
  """Splits a category path into levels.

  Args:
    path: levels joined by commas.
    rule: "comma_space" (levels joined by ", ", e.g. office) or "comma" (joined by "," with no
      space, while level names may contain ", ", e.g. scientific: split at `,(?! )`).

  Returns:
    list[str] of non-empty, stripped levels ([] for an empty path).
  """
  if not path.strip():
    return []
  parts = path.split(", ") if rule == "comma_space" else _CATEGORY_NO_SPACE.split(path)
  return [p.strip() for p in parts if p.strip()]


def _category_rule(paths: Sequence[str], rule: str) -> str:
  if rule != "auto":
    if rule not in ("comma", "comma_space"):
      raise DataError(f"category_split must be 'auto', 'comma' or 'comma_space', got {rule!r}")
    return rule
  return "comma" if any(_CATEGORY_NO_SPACE.search(p) for p in paths) else "comma_space"


# ----------------------------------------------------------------------------------------------
# Readers.


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
  item_codes = codes[:len(rows)]
  order, offsets = sequences_from_events(user_codes, len(user_vocab), timestamps)
  if item_rows is not None:
    side = _atomic_side(item_fields, item_rows, item_numbers, "item_id", _index_of(item_vocab),
                        len(item_vocab), spec.files["item"], _RENAMED_RECBOLE_FIELDS)
  if "user" in spec.files:
    user_fields, user_rows, user_numbers = _read_atomic(spec.files["user"], ("user_id",))
    user_side = _atomic_side(user_fields, user_rows, user_numbers, "user_id",
                             _index_of(user_vocab), len(user_vocab), spec.files["user"], {})
  return _assemble(spec, name, source, user_vocab, item_vocab, offsets, item_codes[order], side,
                   user_side, None if timestamps is None else timestamps[order])


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
          values[t] = (tokens if kind == "token_seq"
                       else _to_float(tokens, path, [number] * len(tokens), field).tolist())
      side[out_name] = values
  return side


def _parse_s3rec(spec: FolderSpec, name: str, source: str) -> Dataset:
  path = spec.files["sequences"]
  user_tokens, item_tokens, counts, user_lines = [], [], [], []
  for number, line in _lines(path):
    parts = line.split()
    if len(parts) < 2:
      raise DataError("expected a user id followed by at least one item id", path=path,
                      line=number, field="item_id_1")
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
  item_codes = item_codes[:items.size]
  order, offsets = sequences_from_events(np.repeat(user_codes, counts), len(user_vocab))
  index = _index_of(item_vocab)
  side_attrs: list[list[int]] = [[] for _ in item_vocab]
  for key, values in attributes.items():
    if not isinstance(values, list):
      raise DataError("expected a list of attribute ids", path=attr_path, field=f'key "{key}"')
    side_attrs[index[str(int(key))]] = [
        _json_int(v, attr_path, f'key "{key}", position {j}') for j, v in enumerate(values)]
  return _assemble(spec, name, source, user_vocab, item_vocab, offsets, item_codes[order],
                   {"attributes": side_attrs}, {})


class _LazyFields(Sequence):
  """Field names "item_id_<k>" built only when an error needs one."""

  def __init__(self, prefix: str, positions: np.ndarray):
    self._prefix, self._positions = prefix, positions

  def __len__(self):
    return len(self._positions)

  def __getitem__(self, k):
    return f"{self._prefix}{int(self._positions[k])}"


def _parse_lcrec(spec: FolderSpec, name: str, source: str) -> Dataset:
  inter = spec.files["inter"]
  users, sequences = _sequences_json(inter)
  user_vocab, event_users, raw_items, counts = _events_from_lists(users, sequences)
  catalogue = None
  item_info = None
  if "item" in spec.files:
    item_info = read_json(spec.files["item"])
    if not isinstance(item_info, dict) or not item_info:
      raise DataError("expected a non-empty JSON object {item: {title, ...}}",
                      path=spec.files["item"])
    catalogue = np.array([_json_int(k, spec.files["item"], f'key "{k}"') for k in item_info],
                         np.int64)
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
        raise DataError("expected an object with title/description/brand/categories",
                        path=spec.files["item"], field=f'key "{key}"')
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
        raise DataError(f"item index {idx} is out of range (not in the interactions or the item "
                        "file)", path=spec.files["item2id"], line=line, field="index")
      asins[index[str(idx)]] = asin
    side["asin"] = asins
  for role, key in (("codes_text", "codes/text"), ("codes_image", "codes/image")):
    if role in spec.files:
      side[key] = _read_codes(spec.files[role], index, size)
  user_side = {}
  if "user2id" in spec.files:
    user_side["reviewer_id"] = _read_reviewer_ids(spec.files["user2id"], user_vocab)
  return _assemble(spec, name, source, user_vocab, item_vocab, offsets, item_codes[order], side,
                   user_side)


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
      raise DataError(f"item {key} is out of range (not in the interactions or the item "
                      "catalogue)", path=path, field=field)
    if not isinstance(tokens, list) or len(tokens) != levels:
      raise DataError(f"expected a list of {levels} code tokens", path=path, field=field)
    for level, token in enumerate(tokens):
      match = _CODE_TOKEN.fullmatch(str(token))
      if match is None:
        raise DataError(f"{token!r} is not a code token like '<a_12>'", path=path,
                        field=f"{field}, level {level + 1}")
      out[index[str(key)], level] = int(match.group(2))
  missing = np.flatnonzero((out[1:] < 0).any(axis=1))
  if missing.size:
    raise DataError(f"{missing.size} items have no code, e.g. item {missing[0]}", path=path)
  return out


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
    logging.warning("%s: a test history has %d items; UniSRec files usually cap histories at 50, "
                    "so the earliest events may be missing", test, counts.max() - 1)
  position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
  raw_items = _to_int(tokens, test, token_lines, _LazyFields("item_id_list/item_id token ",
                                                             position))
  catalogue, asins = None, None
  if "item2index" in spec.files:
    asins, asin_index, asin_lines = _read_pairs(spec.files["item2index"])
    catalogue = _to_int(asin_index, spec.files["item2index"], asin_lines,
                        ["index"] * len(asin_lines))
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
      raise DataError("an item text file needs the item2index file to map ASINs to items",
                      path=spec.files["text"])
    text_fields, text_rows, text_numbers = _read_atomic(spec.files["text"], ("item_id",))
    tnames = [f[0] for f in text_fields]
    key_col = tnames.index("item_id")
    text_col = [c for c in range(len(tnames)) if c != key_col][0]
    texts = [""] * size
    for r, number in zip(text_rows, text_numbers):
      if r[key_col] not in asin_to_item:
        raise DataError(f"item {r[key_col]!r} is not in the item2index file",
                        path=spec.files["text"], line=number, field="item_id")
      texts[asin_to_item[r[key_col]]] = html.unescape(r[text_col])
    side["text"] = texts
  if "categories" in spec.files:
    cat_path = spec.files["categories"]
    paths = [""] * size
    lines = _lines(cat_path)
    for number, line in lines[1:]:
      parts = line.split("\t")
      if len(parts) not in (2, 3):
        raise DataError(f"expected 3 tab-separated fields (item_index, asin, categories), found "
                        f"{len(parts)}", path=cat_path, line=number)
      idx = _to_int([parts[0]], cat_path, [number], ["item_index"])[0]
      if str(idx) not in index:
        raise DataError(f"item index {idx} is out of range", path=cat_path, line=number,
                        field="item_index")
      paths[index[str(idx)]] = html.unescape(parts[2] if len(parts) == 3 else "")
    side["category_path"] = paths
  for role, key in (("feat_text", "features/clip_text"), ("feat_image", "features/clip_image")):
    if role in spec.files:
      side[key] = _read_features(spec.files[role], item_vocab, catalogue)
  user_side = {}
  if "user2index" in spec.files:
    user_side["reviewer_id"] = _read_reviewer_ids(spec.files["user2index"], user_vocab)
  return _assemble(spec, name, source, user_vocab, item_vocab, offsets, item_codes[order], side,
                   user_side)


def _read_reviewer_ids(path: pathlib.Path, user_vocab: Sequence[str]) -> list[str]:
  """``reviewerID<TAB>user_index`` pairs -> the raw reviewer id of every internal user ("" if none)."""
  names, user_index, user_lines = _read_pairs(path)
  uidx = _to_int(user_index, path, user_lines, ["index"] * len(user_lines))
  uindex = _index_of(user_vocab)
  reviewer = [""] * len(user_vocab)
  for raw, idx in zip(names, uidx.tolist()):
    if str(idx) in uindex:
      reviewer[uindex[str(idx)]] = raw
  return reviewer


def _read_features(path: pathlib.Path, item_vocab: Sequence[str], catalogue: np.ndarray | None,
                   dim: int = 512) -> np.ndarray:
  """Raw float32 matrix (row k = item index k) -> float32[num_items, dim], zero row 0."""
  size = os.path.getsize(path)
  if size == 0:
    raise DataError("empty file", path=path)
  if size % (4 * dim):
    raise DataError(f"file size {size} bytes is not a whole number of float32 rows of {dim} "
                    "columns", path=path)
  matrix = np.fromfile(path, dtype="<f4").reshape(-1, dim)
  expected = catalogue.size if catalogue is not None else len(item_vocab) - 1
  if matrix.shape[0] != expected:
    raise DataError(f"mismatched feature-matrix rows: the file has {matrix.shape[0]} rows, the "
                    f"data set has {expected} items", path=path)
  bad = np.flatnonzero(~np.all(np.isfinite(matrix), axis=1))
  if bad.size:
    raise DataError(f"row {int(bad[0])} (of {bad.size} such rows) holds NaN or inf values",
                    path=path, line=int(bad[0]) + 1, field="feature")
  raw = np.asarray(item_vocab[1:], dtype=np.int64)
  if raw.size and (raw.min() < 0 or raw.max() >= matrix.shape[0]):
    raise DataError(f"item index {raw.max()} has no row in a matrix of {matrix.shape[0]} rows",
                    path=path)
  out = np.zeros((len(item_vocab), dim), np.float32)
  out[1:] = matrix[raw]
  return out


# ----------------------------------------------------------------------------------------------
# Semantics from side information.


def default_semantics(ds: Dataset, *, semantics: str | None = None, category_depth: int = 2,
                      category_split: str = "auto", codes: str = "text",
                      code_levels: int = 1) -> Dataset:
  """Derives the semantic table of a freshly read Dataset from its side information.

  Semantic ids are numbered 1..C by first appearance of their label over internal item ids.

  Args:
    ds: a Dataset from `parse_folder`.
    semantics: which label; default by what the data has: "genre" (RecBole `class`: the FIRST genre
      token in file order, e.g. ml-100k: 19 classes), "attribute" (S3-Rec: the first attribute id
      of the item's list), "category" (category path truncated to `category_depth` levels; an empty
      path is the class "unknown"), "codes" (the first `code_levels` levels of the
      text or image codes), "none" (one class). Items lacking the field get "unknown".
    category_depth: levels of the category path kept (>= 1).
    category_split: how paths split into levels: "auto" (by ",(?! )" when some path has a comma
      without a following space, else by ", "), "comma" or "comma_space".
    codes: "text" or "image" (which 4-level codes, for "codes").
    code_levels: number of code levels forming the class (1..4).

  Returns:
    Dataset with item_semantic, semantic_vocab and semantic_source set, and side["categories"]
    (list of path levels) where a category path exists.
  """
  side = dict(ds.side)
  if "category_path" in side:
    rule = _category_rule(side["category_path"], category_split)
    side["categories"] = [split_category_path(p, rule) for p in side.pop("category_path")]
    ds = dataclasses.replace(ds, side=side)
  if semantics is None:
    if "genres" in side:
      semantics = "genre"
    elif "attributes" in side:
      semantics = "attribute"
    elif "categories" in side:
      semantics = "category"
    elif f"codes/{codes}" in side:
      semantics = "codes"
    else:
      semantics = "none"
  if semantics not in SEMANTIC_KINDS:
    raise DataError(f"semantics must be one of {', '.join(SEMANTIC_KINDS)}, got {semantics!r}")
  n = ds.num_items
  if semantics == "none":
    labels, source = [""] + ["unknown"] * (n - 1), "none (one class)"
  elif semantics == "genre":
    genres = _need(side, "genres", ds)
    labels = [""] + [g[0] if g else "unknown" for g in genres[1:]]
    source = "first genre token (RecBole `class` field, file order)"
  elif semantics == "attribute":
    attrs = _need(side, "attributes", ds)
    labels = [""] + [str(a[0]) if a else "unknown" for a in attrs[1:]]
    source = "first attribute id (S3-Rec item2attributes)"
  elif semantics == "category":
    if category_depth < 1:
      raise DataError(f"category_depth must be >= 1, got {category_depth}")
    cats = _need(side, "categories", ds)
    labels = [""] + [" > ".join(c[:category_depth]) if c else "unknown" for c in cats[1:]]
    source = f"category path truncated at depth {category_depth}"
  else:
    if codes not in ("text", "image"):
      raise DataError(f"codes must be 'text' or 'image', got {codes!r}")
    table = _need(side, f"codes/{codes}", ds)
    if not 1 <= code_levels <= table.shape[1]:
      raise DataError(f"code_levels must be in 1..{table.shape[1]}, got {code_levels}")
    labels = [""] + ["/".join(map(str, row)) for row in table[1:, :code_levels].tolist()]
    source = f"{codes} codes, first {code_levels} level(s)"
  item_semantic, vocab = labels_to_ids(labels)
  return ds.with_semantics(item_semantic, source, vocab=vocab)


def _need(side: Mapping[str, Any], key: str, ds: Dataset) -> Any:
  if key not in side:
    raise DataError(f"data set {ds.name!r} has no side information {key!r} (it has: "
                    f"{', '.join(sorted(side)) or 'none'})")
  return side[key]


# ----------------------------------------------------------------------------------------------
# The authors' line format: user;target;trigger_seq;click_seq;label.

_AUTHORS_FIELDS = ("user", "target", "trigger_seq", "click_seq", "label")


def _csv_ints(cells: Sequence[str], path: Any, numbers: Sequence[int], field: str
              ) -> tuple[np.ndarray, np.ndarray]:
  """Comma-separated int cells -> (flat int64[T], counts int64[N])."""
  counts = np.array([c.count(",") + 1 if c.strip() else 0 for c in cells], np.int64)
  tokens = [t for c in cells if c.strip() for t in c.split(",")]
  position = np.arange(len(tokens)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
  flat = _to_int(tokens, path, np.repeat(np.asarray(numbers, np.int64), counts).tolist(),
                 _LazyFields(f"{field} position ", position))
  return flat, counts


def _parse_authors_fast(path: Any) -> dict[str, Any] | None:
  """Arrow CSV reading of a well-formed file; None (use the checked reader) on any irregularity."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
  from pyarrow import csv  # pylint: disable=import-outside-toplevel
  text = read_text(path)
  lines = text.count("\n") + (0 if text.endswith("\n") else 1)
  try:
    table = csv.read_csv(
        pa.py_buffer(text.encode("utf-8")),
        read_options=csv.ReadOptions(column_names=list(_AUTHORS_FIELDS)),
        parse_options=csv.ParseOptions(delimiter=";", quote_char=False, ignore_empty_lines=False),
        convert_options=csv.ConvertOptions(
            column_types={k: pa.string() for k in _AUTHORS_FIELDS}))
    if table.num_rows != lines:
      return None
    columns = {k: table.column(k).combine_chunks() for k in _AUTHORS_FIELDS}
    if any(pc.any(pc.equal(columns[k], "")).as_py() for k in _AUTHORS_FIELDS):
      return None
    user = pc.cast(columns["user"], pa.int64()).to_numpy()
    target = pc.cast(columns["target"], pa.int64()).to_numpy()
    label = pc.cast(columns["label"], pa.float64()).to_numpy()
    pc.cast(pc.list_flatten(pc.split_pattern(columns["trigger_seq"], ",")), pa.int64())
    click = pc.split_pattern(columns["click_seq"], ",")
    counts = pc.list_value_length(click).to_numpy().astype(np.int64)
    flat = pc.cast(pc.list_flatten(click), pa.int64()).to_numpy()
  except (pa.ArrowException, ValueError):
    return None
  if not np.all((label == 0) | (label == 1)):
    return None
  return {"user": user, "target": target, "label": label, "counts": counts, "flat": flat,
          "lines": list(range(1, lines + 1))}


def _parse_authors_lines(path: Any) -> dict[str, Any]:
  """Parses a file of the authors' format; the checked reader runs when the fast one declines."""
  parsed = _parse_authors_fast(path)
  if parsed is None:
    parsed = _parse_authors_checked(path)
  counts, flat, n = parsed["counts"], parsed["flat"], parsed["user"].size
  width = int(counts.max()) if n else 0
  if n and counts.min() == width:  # Fixed-length click_seq: the usual case.
    parsed["dense"] = flat.reshape(n, width)
    return parsed
  rows = np.repeat(np.arange(n), counts)
  cols = np.arange(flat.size) - np.repeat(np.cumsum(counts) - counts, counts)
  dense = np.zeros((n, width), np.int64)
  dense[rows, cols] = flat
  parsed["dense"] = dense
  return parsed


def _parse_authors_checked(path: Any) -> dict[str, Any]:
  """Line-by-line reading that names the line and field of the first error."""
  lines = _lines(pathlib.Path(path))
  columns: list[list[str]] = [[] for _ in _AUTHORS_FIELDS]
  numbers = []
  for number, line in lines:
    parts = line.split(";")
    if len(parts) != 5:
      raise DataError(f"expected 5 ';'-separated fields ({';'.join(_AUTHORS_FIELDS)}), found "
                      f"{len(parts)}", path=path, line=number,
                      field=_missing(_AUTHORS_FIELDS, len(parts)))
    for column, part in zip(columns, parts):
      column.append(part)
    numbers.append(number)
  n = len(numbers)
  user = _to_int(columns[0], path, numbers, ["user"] * n)
  target = _to_int(columns[1], path, numbers, ["target"] * n)
  _csv_ints(columns[2], path, numbers, "trigger_seq")  # Validated, not used.
  flat, counts = _csv_ints(columns[3], path, numbers, "click_seq")
  label = _to_float(columns[4], path, numbers, "label")
  bad = np.flatnonzero((label != 0) & (label != 1))
  if bad.size:
    raise DataError(f"label must be 0 or 1, got {columns[4][bad[0]]!r}", path=path,
                    line=numbers[bad[0]], field="label")
  return {"user": user, "target": target, "label": label, "counts": counts, "flat": flat,
          "lines": numbers}


def _left_align(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Moves the entries where mask is True to the front of each row, keeping their order."""
  order = np.argsort(~mask, axis=1, kind="stable")
  return np.where(np.take_along_axis(mask, order, axis=1),
                  np.take_along_axis(values, order, axis=1), 0)


def _newest(aligned: np.ndarray, n_real: np.ndarray, width: int) -> np.ndarray:
  """[N, W] left-aligned rows with n_real items -> [N, width] holding the newest <= width items."""
  padded = np.concatenate([aligned, np.zeros((aligned.shape[0], width), aligned.dtype)], axis=1)
  cols = np.maximum(n_real - width, 0)[:, None] + np.arange(width)[None, :]
  return np.where(cols < n_real[:, None], np.take_along_axis(padded, cols, axis=1), 0)


def read_authors_file(path: Any, semantics_path: Any = None, *, seq_len: int | None = None
                      ) -> dict[str, np.ndarray]:
  """Reads the authors' sample file `user;target;trigger_seq;click_seq;label`.

  Sequences are comma-separated ints, 0 = padding. trigger_seq is validated and ignored (the
  authors use it only for an analysis figure). Zero padding may sit on either side; the real items
  of click_seq are moved to the front, oldest to newest, as the sequence contract asks.

  Args:
    path: the item file.
    semantics_path: optional line-aligned semantic file in the same format (target -> the target's
      semantic id, click_seq -> the history's semantic ids). Without it, semantics are 0.
    seq_len: L; default the longest click_seq field in the file. Longer histories keep their
      newest L items.

  Returns:
    dict with user int32[N], items int32[N, L], semantics int32[N, L], target int32[N],
    target_semantic int32[N], label float32[N].

  Raises:
    DataError: a line without 5 fields, a non-integer id, a label other than 0/1, or a semantic
      file that is not line-aligned (different length, user, label or padding positions).
  """
  main = _parse_authors_lines(path)
  dense = main["dense"]
  width = dense.shape[1] if seq_len is None else int(seq_len)
  mask = dense != 0
  n_real = mask.sum(axis=1)
  right_padded = dense.shape[1] == width and np.array_equal(
      mask, np.arange(width)[None, :] < n_real[:, None])
  items = dense if right_padded else _newest(_left_align(dense, mask), n_real, width)
  semantics = np.zeros_like(items)
  target_semantic = np.zeros_like(main["target"])
  if semantics_path is not None:
    sem = _parse_authors_lines(semantics_path)
    if sem["user"].size != main["user"].size:
      raise DataError(f"semantic file has {sem['user'].size} lines, the item file "
                      f"{main['user'].size}: they must be line-aligned", path=semantics_path)
    for field in ("user", "label"):
      bad = np.flatnonzero(sem[field] != main[field])
      if bad.size:
        raise DataError(f"{field} differs from line {main['lines'][bad[0]]} of {path}: the files "
                        "must be line-aligned", path=semantics_path, line=sem["lines"][bad[0]],
                        field=field)
    sem_dense = sem["dense"]
    if sem_dense.shape != dense.shape or not np.array_equal(sem["counts"], main["counts"]):
      bad = int(np.flatnonzero(sem["counts"] != main["counts"])[0]) if (
          sem["counts"].shape == main["counts"].shape) else 0
      raise DataError("click_seq length differs from the item file", path=semantics_path,
                      line=sem["lines"][bad], field="click_seq")
    stray = (sem_dense != 0) & ~mask
    if stray.any():
      bad = int(np.flatnonzero(stray.any(axis=1))[0])
      raise DataError("semantic id at a padding position of the item file", path=semantics_path,
                      line=sem["lines"][bad], field="click_seq")
    semantics = sem_dense if right_padded else _newest(_left_align(sem_dense, mask), n_real,
                                                       width)
    target_semantic = sem["target"]
  return {"user": main["user"].astype(np.int32), "items": items.astype(np.int32),
          "semantics": semantics.astype(np.int32), "target": main["target"].astype(np.int32),
          "target_semantic": target_semantic.astype(np.int32),
          "label": main["label"].astype(np.float32)}


def _joined(matrix: np.ndarray, sep: str):
  """int[N, W] -> pyarrow string array of N rows, the W decimal values joined by `sep`."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
  columns = [pc.cast(pa.array(np.ascontiguousarray(matrix[:, j])), pa.string())
             for j in range(matrix.shape[1])]
  if len(columns) == 1:
    return columns[0]
  return pc.binary_join_element_wise(*columns, sep)


def write_authors_file(split: Mapping[str, np.ndarray], path: Any, semantics_path: Any = None, *,
                       trigger: str = "previous") -> None:
  """Writes a split in the authors' format, so their code can run on identical samples.

  Each row becomes `user;target;trigger_seq;click_seq;label` with click_seq the L history items
  (real items first, then zeros). trigger_seq (used by the authors only for an analysis figure) is,
  with trigger="previous", the window the user had one step earlier as far as the row knows it:
  the history without its newest item, zero-padded to L (when the history is full, the previous
  window's oldest item is not in the row and is left out); with trigger="zeros" it is all zeros.

  Args:
    split: dict with user int[N], items int[N, L], target int[N], label float[N]; semantics
      int[N, L] and target_semantic int[N] for the semantic file.
    path: output item file.
    semantics_path: optional output semantic file, line-aligned (ids replaced by semantic ids).
    trigger: "previous" or "zeros".
  """
  import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
  if trigger not in ("previous", "zeros"):
    raise DataError(f"trigger must be 'previous' or 'zeros', got {trigger!r}")
  items = np.asarray(split["items"], np.int64)
  n, width = items.shape
  lengths = (items != 0).sum(axis=1)
  label = np.asarray(split["label"])
  if not np.all((label == 0) | (label == 1)):
    raise DataError("labels must be 0 or 1 to be written in the authors' format", field="label")
  user = np.asarray(split["user"], np.int64)

  def write(seq: np.ndarray, target: np.ndarray, out: Any) -> None:
    if trigger == "previous":
      prev = np.where(np.arange(width)[None, :] < (lengths - 1)[:, None], seq, 0)
    else:
      prev = np.zeros_like(seq)
    fields = [_joined(user[:, None], ","), _joined(np.asarray(target, np.int64)[:, None], ","),
              _joined(prev, ","), _joined(seq, ","), _joined(label.astype(np.int64)[:, None], ",")]
    lines = pc.binary_join_element_wise(*fields, ";")
    with open(out, "w", encoding="utf-8") as f:
      f.write("\n".join(lines.to_pylist()))
      f.write("\n")

  write(items, split["target"], path)
  if semantics_path is not None:
    write(np.asarray(split["semantics"], np.int64), split["target_semantic"], semantics_path)

"""Helpers shared by the format readers: line and number parsing that names the file, line and
field of the first bad value, vocabularies, category paths."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from solid_jax.data.dataset import Dataset, labels_to_ids, make_vocab
from solid_jax.data.errors import DataError, read_json, read_text
from solid_jax.data.formats.base import FolderSpec

_CATEGORY_NO_SPACE = re.compile(r",(?! )")


def _lines(path: pathlib.Path) -> list[tuple[int, str]]:
  """(1-based line number, line) of every non-blank line."""
  return [
    (k, line.rstrip("\r"))
    for k, line in enumerate(read_text(path).split("\n"), start=1)
    if line.strip()
  ]


def _to_int(
  tokens: Sequence[str], path: Any, lines: Sequence[int], fields: Sequence[str]
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
      raise DataError(
        f"{token!r} is not an integer id", path=path, line=line, field=field
      ) from None
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


def _read_atomic(
  path: pathlib.Path, required: Sequence[str]
) -> tuple[list[tuple[str, str]], list[list[str]], list[int]]:
  """RecBole atomic TSV -> (fields [(name, type)], rows [[str]], line numbers)."""
  lines = _lines(path)
  head_no, head = lines[0]
  fields = []
  for col, cell in enumerate(head.split("\t")):
    name, _, kind = cell.partition(":")
    if not name or kind not in ("token", "token_seq", "float", "float_seq"):
      raise DataError(
        f"header cell {cell!r} is not 'name:type' with type token, token_seq, float or float_seq",
        path=path,
        line=head_no,
        field=f"column {col + 1}",
      )
    fields.append((name, kind))
  names = [f[0] for f in fields]
  for need in required:
    if need not in names:
      raise DataError(
        f"header has no {need!r} column (columns: {', '.join(names)})",
        path=path,
        line=head_no,
        field=need,
      )
  rows, numbers = [], []
  for number, line in lines[1:]:
    parts = line.split("\t")
    if len(parts) != len(fields):
      raise DataError(
        f"expected {len(fields)} tab-separated fields ({', '.join(names)}), found {len(parts)}",
        path=path,
        line=number,
        field=_missing(names, len(parts)),
      )
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
      raise DataError(
        f"expected 2 tab-separated fields, found {len(parts)}", path=path, line=number
      )
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
      raise DataError(
        f"duplicate {what} {token!r} (first on line {seen[token]})",
        path=path,
        line=line,
        field=what,
      )
    seen[token] = line


def _placeholder_semantics(num_items: int) -> tuple[np.ndarray, list[str]]:
  return labels_to_ids([""] + ["unknown"] * (num_items - 1))


def _assemble(
  spec: FolderSpec,
  name: str,
  source: str,
  user_vocab: list[str],
  item_vocab: list[str],
  offsets: np.ndarray,
  items: np.ndarray,
  side: dict,
  user_side: dict,
  timestamps: np.ndarray | None = None,
) -> Dataset:
  table, vocab = _placeholder_semantics(len(item_vocab))
  return Dataset(
    name=name,
    source=source,
    fingerprint="",
    user_vocab=user_vocab,
    item_vocab=item_vocab,
    seq_offsets=offsets,
    seq_items=items,
    item_semantic=table,
    semantic_source="none (one class)",
    semantic_vocab=vocab,
    side=side,
    user_side=user_side,
    seq_timestamps=timestamps,
    format=spec.format,
  )


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
      raise DataError(
        f"expected a list of item ids, got {type(seq).__name__}", path=path, field=f'user "{user}"'
      )
    sequences.append(
      [_json_int(v, path, f'user "{user}", position {j}') for j, v in enumerate(seq)]
    )
    users.append(str(user))
  return users, sequences


def _events_from_lists(
  users: list[str], sequences: list[list[int]]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
  """Per-user item lists -> (user_vocab, event user codes, event raw items, offsets/order)."""
  user_vocab, user_codes = make_vocab(users)
  counts = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
  event_users = np.repeat(user_codes, counts)
  raw_items = np.fromiter((v for s in sequences for v in s), np.int64, int(counts.sum()))
  return user_vocab, event_users, raw_items, counts


def _map_items(
  raw_items: np.ndarray, catalogue: np.ndarray | None, path: Any, where: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
  """Item vocabulary over catalogue ∪ raw_items; items outside a given catalogue are errors."""
  if catalogue is not None:
    known = np.isin(raw_items, catalogue)
    if not known.all():
      bad = int(np.flatnonzero(~known)[0])
      field = where[bad] if where is not None else None
      raise DataError(
        f"item id {int(raw_items[bad])} is out of range: it is not in the item "
        "catalogue of this folder",
        path=path,
        field=field,
      )
    vocab, codes = make_vocab(np.concatenate([raw_items, catalogue]))
    return vocab, codes[: raw_items.size]
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


class _LazyFields(Sequence):
  """Field names "item_id_<k>" built only when an error needs one."""

  def __init__(self, prefix: str, positions: np.ndarray):
    self._prefix, self._positions = prefix, positions

  def __len__(self):
    return len(self._positions)

  def __getitem__(self, k):
    return f"{self._prefix}{int(self._positions[k])}"


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

"""The SOLID authors' line format, ``user;target;trigger_seq;click_seq;label``, and their folder
layout as a data set.

``read_authors_file`` / ``write_authors_file`` read and write one file of samples (histories,
candidates and labels), so that the authors' code can run on identical samples.

The folder layout (format ``"solid_authors"``, what their code reads): ``train.txt`` and
``test.txt`` of item samples and, in a sub-folder (``<model>/train.txt``, ``<model>/test.txt``),
line-aligned copies with every item replaced by its semantic id. As a data set, each user's
sequence is rebuilt from the positive samples (label 1) in file order, train then test: every
positive's window ``click_seq + [target]`` continues the sequence where it overlaps the sequence's
end; negatives are left out (``make_splits`` draws its own). The item -> semantic map comes from the
aligned copies (side "authors_semantic", int32[num_items], 0 where none; with several sub-folders,
the first in name order, and the others under "authors_semantic/<name>"); every item must keep one
semantic id. ``default_semantics`` then uses it (kind "authors").
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np

from solid_jax.data.dataset import make_vocab, sequences_from_events
from solid_jax.data.errors import DataError, read_text
from solid_jax.data.formats import base
from solid_jax.data.formats.base import FolderSpec
from solid_jax.data.formats.common import (
  _LazyFields,
  _assemble,
  _lines,
  _missing,
  _to_float,
  _to_int,
)

_AUTHORS_FIELDS = ("user", "target", "trigger_seq", "click_seq", "label")


def _csv_ints(
  cells: Sequence[str], path: Any, numbers: Sequence[int], field: str
) -> tuple[np.ndarray, np.ndarray]:
  """Comma-separated int cells -> (flat int64[T], counts int64[N])."""
  counts = np.array([c.count(",") + 1 if c.strip() else 0 for c in cells], np.int64)
  tokens = [t for c in cells if c.strip() for t in c.split(",")]
  position = np.arange(len(tokens)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
  flat = _to_int(
    tokens,
    path,
    np.repeat(np.asarray(numbers, np.int64), counts).tolist(),
    _LazyFields(f"{field} position ", position),
  )
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
      convert_options=csv.ConvertOptions(column_types={k: pa.string() for k in _AUTHORS_FIELDS}),
    )
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
  return {
    "user": user,
    "target": target,
    "label": label,
    "counts": counts,
    "flat": flat,
    "lines": list(range(1, lines + 1)),
  }


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
      raise DataError(
        f"expected 5 ';'-separated fields ({';'.join(_AUTHORS_FIELDS)}), found {len(parts)}",
        path=path,
        line=number,
        field=_missing(_AUTHORS_FIELDS, len(parts)),
      )
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
    raise DataError(
      f"label must be 0 or 1, got {columns[4][bad[0]]!r}",
      path=path,
      line=numbers[bad[0]],
      field="label",
    )
  return {
    "user": user,
    "target": target,
    "label": label,
    "counts": counts,
    "flat": flat,
    "lines": numbers,
  }


def _left_align(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Moves the entries where mask is True to the front of each row, keeping their order."""
  order = np.argsort(~mask, axis=1, kind="stable")
  return np.where(
    np.take_along_axis(mask, order, axis=1), np.take_along_axis(values, order, axis=1), 0
  )


def _newest(aligned: np.ndarray, n_real: np.ndarray, width: int) -> np.ndarray:
  """[N, W] left-aligned rows with n_real items -> [N, width] holding the newest <= width items."""
  padded = np.concatenate([aligned, np.zeros((aligned.shape[0], width), aligned.dtype)], axis=1)
  cols = np.maximum(n_real - width, 0)[:, None] + np.arange(width)[None, :]
  return np.where(cols < n_real[:, None], np.take_along_axis(padded, cols, axis=1), 0)


def read_authors_file(
  path: Any, semantics_path: Any = None, *, seq_len: int | None = None
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
    mask, np.arange(width)[None, :] < n_real[:, None]
  )
  items = dense if right_padded else _newest(_left_align(dense, mask), n_real, width)
  semantics = np.zeros_like(items)
  target_semantic = np.zeros_like(main["target"])
  if semantics_path is not None:
    sem = _parse_authors_lines(semantics_path)
    if sem["user"].size != main["user"].size:
      raise DataError(
        f"semantic file has {sem['user'].size} lines, the item file "
        f"{main['user'].size}: they must be line-aligned",
        path=semantics_path,
      )
    for field in ("user", "label"):
      bad = np.flatnonzero(sem[field] != main[field])
      if bad.size:
        raise DataError(
          f"{field} differs from line {main['lines'][bad[0]]} of {path}: the files "
          "must be line-aligned",
          path=semantics_path,
          line=sem["lines"][bad[0]],
          field=field,
        )
    sem_dense = sem["dense"]
    if sem_dense.shape != dense.shape or not np.array_equal(sem["counts"], main["counts"]):
      bad = (
        int(np.flatnonzero(sem["counts"] != main["counts"])[0])
        if (sem["counts"].shape == main["counts"].shape)
        else 0
      )
      raise DataError(
        "click_seq length differs from the item file",
        path=semantics_path,
        line=sem["lines"][bad],
        field="click_seq",
      )
    stray = (sem_dense != 0) & ~mask
    if stray.any():
      bad = int(np.flatnonzero(stray.any(axis=1))[0])
      raise DataError(
        "semantic id at a padding position of the item file",
        path=semantics_path,
        line=sem["lines"][bad],
        field="click_seq",
      )
    semantics = sem_dense if right_padded else _newest(_left_align(sem_dense, mask), n_real, width)
    target_semantic = sem["target"]
  return {
    "user": main["user"].astype(np.int32),
    "items": items.astype(np.int32),
    "semantics": semantics.astype(np.int32),
    "target": main["target"].astype(np.int32),
    "target_semantic": target_semantic.astype(np.int32),
    "label": main["label"].astype(np.float32),
  }


def _joined(matrix: np.ndarray, sep: str):
  """int[N, W] -> pyarrow string array of N rows, the W decimal values joined by `sep`."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel

  columns = [
    pc.cast(pa.array(np.ascontiguousarray(matrix[:, j])), pa.string())
    for j in range(matrix.shape[1])
  ]
  if len(columns) == 1:
    return columns[0]
  return pc.binary_join_element_wise(*columns, sep)


def write_authors_file(
  split: Mapping[str, np.ndarray],
  path: Any,
  semantics_path: Any = None,
  *,
  trigger: str = "previous",
) -> None:
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
    fields = [
      _joined(user[:, None], ","),
      _joined(np.asarray(target, np.int64)[:, None], ","),
      _joined(prev, ","),
      _joined(seq, ","),
      _joined(label.astype(np.int64)[:, None], ","),
    ]
    lines = pc.binary_join_element_wise(*fields, ";")
    with open(out, "w", encoding="utf-8") as f:
      f.write("\n".join(lines.to_pylist()))
      f.write("\n")

  write(items, split["target"], path)
  if semantics_path is not None:
    write(np.asarray(split["semantics"], np.int64), split["target_semantic"], semantics_path)


# ------------------------------------------------------------------------------------------ folder


def _window(parsed: Mapping[str, Any], row: int) -> list[int]:
  """The positive row's ``click_seq`` real items (oldest first) followed by its target."""
  history = parsed["dense"][row]
  return [int(x) for x in history[history != 0]] + [int(parsed["target"][row])]


def _extend(seq: list[int], window: list[int]) -> bool:
  """Appends the part of ``window`` that follows its largest overlap with the end of ``seq``.

  Returns False when the window neither overlaps nor starts a sequence (its history is not the
  end of the sequence so far).
  """
  for k in range(min(len(seq), len(window)), 0, -1):
    if seq[-k:] == window[:k]:
      seq.extend(window[k:])
      return True
  if not seq or len(window) == 1:  # a first window, or a target without history
    seq.extend(window)
    return True
  return False


def _semantic_map(
  parsed_items: list[dict], parsed_sem: list[dict], paths: list[Any]
) -> dict[int, int]:
  """raw item id -> semantic id from line-aligned files; an item with two ids is an error."""
  out: dict[int, int] = {}
  for items, sem, path in zip(parsed_items, parsed_sem, paths):
    if sem["user"].size != items["user"].size or sem["dense"].shape != items["dense"].shape:
      raise DataError(
        f"the semantic copy has {sem['user'].size} lines of {sem['dense'].shape[1]} "
        f"history slots, the item file {items['user'].size} of "
        f"{items['dense'].shape[1]}: they must be line-aligned",
        path=path,
      )
    pairs = [
      (items["target"], sem["target"], "target"),
      (items["dense"], sem["dense"], "click_seq"),
    ]
    for raw, ids, field in pairs:
      raw, ids = raw.reshape(-1), ids.reshape(-1)
      for j in np.flatnonzero(raw != 0):
        item, s = int(raw[j]), int(ids[j])
        if out.setdefault(item, s) != s:
          line = sem["lines"][j if field == "target" else j // items["dense"].shape[1]]
          raise DataError(
            f"item {item} has semantic id {s} here and {out[item]} earlier: an item "
            "keeps one semantic id",
            path=path,
            line=line,
            field=field,
          )
  return out


def _parse_folder(spec: FolderSpec, name: str, source: str):
  files = spec.files
  parsed = [_parse_authors_lines(files[k]) for k in ("train", "test")]
  sequences: dict[int, list[int]] = {}
  for part, path in zip(parsed, (files["train"], files["test"])):
    for row in np.flatnonzero(part["label"] == 1):
      user = int(part["user"][row])
      seq = sequences.setdefault(user, [])
      if not _extend(seq, _window(part, row)):
        raise DataError(
          f"the history of this positive sample does not continue user {user}'s "
          "sequence of the earlier lines (samples must be in chronological order)",
          path=path,
          line=part["lines"][row],
          field="click_seq",
        )
  if not sequences:
    raise DataError("no positive sample (label 1) in train.txt / test.txt", path=spec.folder)
  users = sorted(sequences)
  lengths = [len(sequences[u]) for u in users]
  user_vocab, user_codes = make_vocab(np.repeat(np.asarray(users, np.int64), lengths))
  item_vocab, item_codes = make_vocab(
    np.asarray([i for u in users for i in sequences[u]], np.int64)
  )
  order, offsets = sequences_from_events(user_codes, len(user_vocab))
  side: dict[str, Any] = {}
  copies = sorted({p.parent.name for k, p in files.items() if k.startswith("semantic_")})
  for j, sub in enumerate(copies):
    sem_paths = [spec.folder / sub / "train.txt", spec.folder / sub / "test.txt"]
    if not all(p.is_file() for p in sem_paths):
      continue
    mapping = _semantic_map(parsed, [_parse_authors_lines(p) for p in sem_paths], sem_paths)
    column = np.asarray([0] + [mapping.get(int(v), 0) for v in item_vocab[1:]], np.int32)
    side["authors_semantic" if j == 0 else f"authors_semantic/{sub}"] = column
    if j == 0 and len(copies) > 1:
      logging.info(
        "%s: semantic ids from %s/ (also read: %s)", spec.folder, sub, ", ".join(copies[1:])
      )
  return _assemble(spec, name, source, user_vocab, item_vocab, offsets, item_codes[order], side, {})


def _detect(names: Sequence[str]) -> list[str]:
  return [""] if "train.txt" in names and "test.txt" in names else []


FORMAT = base.register(
  base.Format(
    name="solid_authors",
    detect=_detect,
    roles={
      "train": "train.txt",
      "test": "test.txt",
      "semantic_train": "*/train.txt",
      "semantic_test": "*/test.txt",
    },
    read=_parse_folder,
    expects="train.txt + test.txt (user;target;trigger_seq;click_seq;label), semantic copies in "
    "a sub-folder",
  )
)

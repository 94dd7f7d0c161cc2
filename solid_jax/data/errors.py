"""The one exception type of the data package, and the checked readers that raise it.

Every problem with input data (a malformed line, a non-integer id, an id out of range, an empty
file, text that is not UTF-8, arrays of the wrong shape) raises `DataError`, a `ValueError` whose
message names the file, the line (1-based) and the field, so the user can open the file at the
right place.
"""

from __future__ import annotations

import json
import os
from typing import Any


class DataError(ValueError):
  """Invalid or inconsistent input data.

  Attributes:
    path: the file at fault (str) or None.
    line: 1-based line number, or None where no line applies.
    field: the field, column, key or token at fault, or None.
  """

  def __init__(
    self, message: str, *, path: Any = None, line: int | None = None, field: str | None = None
  ):
    self.path = None if path is None else os.fspath(path)
    self.line = line
    self.field = field
    self.reason = message
    where = []
    if self.path is not None:
      where.append(self.path)
    if line is not None:
      where.append(f"line {line}")
    if field is not None:
      where.append(f"field {field}")
    super().__init__(f"{', '.join(where)}: {message}" if where else message)


def read_text(path: Any) -> str:
  """Reads a whole file as UTF-8 text (a leading byte-order mark is dropped).

  Args:
    path: the file.

  Returns:
    The decoded text.

  Raises:
    DataError: the file is missing, empty (only whitespace) or not valid UTF-8 (the message gives
      the line and the byte offset of the first bad byte).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise DataError("file not found", path=path) from e
  if not data.strip():
    raise DataError("empty file", path=path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1)
    raise DataError(
      f"not valid UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
      f"(byte {column} of the line): {e.reason}",
      path=path,
      line=line,
    ) from e
  return text[1:] if text.startswith("\ufeff") else text


def read_json(path: Any) -> Any:
  """Reads a UTF-8 JSON file; syntax errors name the line and column.

  Args:
    path: the file.

  Returns:
    The decoded JSON value.

  Raises:
    DataError: as `read_text`, or when the JSON is malformed.
  """
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(
      f"malformed JSON: {e.msg}", path=path, line=e.lineno, field=f"column {e.colno}"
    ) from e

"""`Dataset`: a loaded sequential-recommendation data set, and `from_interactions` to build one.

Id conventions (the same for every format): internal ids are contiguous integers with 0 reserved
for padding; users are 1..num_users-1 and items 1..num_items-1. `user_vocab[i]` / `item_vocab[i]`
give the raw id (as a string, exactly as it appears in the source) of internal id i, and index 0 is
"". Raw ids that are all decimal integers are ordered numerically (so 1-based raw ids keep their
value and 0-based raw ids are shifted by one); other raw ids are ordered as strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from solid_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """User sequences plus item side information, with one semantic id per item.

  Attributes:
    name: short name ("ml-100k", "beauty", or a folder name).
    source: where the raw data came from (a folder path, "recbole==1.2.1 wheel", ...).
    fingerprint: sha256 hex digest of the raw files' bytes (or of the raw columns).
    user_vocab: list[str] of length num_users: raw user id of internal id u ("" at 0).
    item_vocab: list[str] of length num_items: raw item id of internal id i ("" at 0).
    seq_offsets: int64[num_users + 1], CSR offsets; user u's events are
      `seq_items[seq_offsets[u]:seq_offsets[u + 1]]`. Row 0 (padding user) is empty.
    seq_items: int32[num_interactions], each user's internal item ids, oldest to newest.
    item_semantic: int32[num_items], the semantic id of every item; 0 only at the padding item 0,
      ids 1..num_semantics-1 all used.
    semantic_source: how item_semantic was made (e.g. "first genre token").
    semantic_vocab: list[str] of length num_semantics: the label of each semantic id ("" at 0).
    side: item side information, every entry indexed by internal item id (row 0 = padding):
      lists of str, lists of lists, or arrays with leading axis num_items (e.g.
      "features/clip_text": float32[num_items, 512]).
    user_side: user side information, indexed by internal user id (row 0 = padding).
    seq_timestamps: float64[num_interactions] aligned with seq_items, or None.
    format: the on-disk format it was read from.
  """

  name: str
  source: str
  fingerprint: str
  user_vocab: list
  item_vocab: list
  seq_offsets: np.ndarray
  seq_items: np.ndarray
  item_semantic: np.ndarray
  semantic_source: str
  semantic_vocab: list
  side: Mapping = dataclasses.field(default_factory=dict)
  user_side: Mapping = dataclasses.field(default_factory=dict)
  seq_timestamps: np.ndarray | None = None
  format: str = "interactions"

  def __post_init__(self):
    set_ = object.__setattr__
    set_(self, "user_vocab", list(self.user_vocab))
    set_(self, "item_vocab", list(self.item_vocab))
    set_(self, "semantic_vocab", list(self.semantic_vocab))
    set_(self, "seq_offsets", np.asarray(self.seq_offsets, np.int64))
    set_(self, "seq_items", np.asarray(self.seq_items, np.int32))
    set_(self, "item_semantic", np.asarray(self.item_semantic, np.int32))
    if self.seq_timestamps is not None:
      set_(self, "seq_timestamps", np.asarray(self.seq_timestamps, np.float64))
    set_(self, "side", dict(self.side))
    set_(self, "user_side", dict(self.user_side))
    self._validate()

  def _validate(self):
    where = f"dataset {self.name!r}"
    if not self.user_vocab or self.user_vocab[0] != "":
      raise DataError(f"{where}: user_vocab[0] must be '' (padding)")
    if not self.item_vocab or self.item_vocab[0] != "":
      raise DataError(f"{where}: item_vocab[0] must be '' (padding)")
    off = self.seq_offsets
    if off.shape != (self.num_users + 1,):
      raise DataError(
        f"{where}: seq_offsets has shape {off.shape}, expected ({self.num_users + 1},)"
      )
    if off[0] != 0 or off[1] != 0 or off[-1] != self.seq_items.shape[0] or np.any(np.diff(off) < 0):
      raise DataError(f"{where}: seq_offsets is not a CSR offset array with an empty row 0")
    if self.seq_items.size and (self.seq_items.min() < 1 or self.seq_items.max() >= self.num_items):
      raise DataError(f"{where}: seq_items has ids outside 1..{self.num_items - 1}")
    if self.seq_timestamps is not None and self.seq_timestamps.shape != self.seq_items.shape:
      raise DataError(f"{where}: seq_timestamps is not aligned with seq_items")
    check_semantics(self.item_semantic, self.num_items, len(self.semantic_vocab), where)
    for table, size, label in (
      (self.side, self.num_items, "side"),
      (self.user_side, self.num_users, "user_side"),
    ):
      for key, value in table.items():
        if len(value) != size:
          raise DataError(f"{where}: {label}[{key!r}] has {len(value)} rows, expected {size}")

  @property
  def num_users(self) -> int:
    """Number of user ids including the padding id 0 (real users: num_users - 1)."""
    return len(self.user_vocab)

  @property
  def num_items(self) -> int:
    """Number of item ids including the padding id 0 (real items: num_items - 1)."""
    return len(self.item_vocab)

  @property
  def num_semantics(self) -> int:
    """Number of semantic ids including the padding id 0."""
    return len(self.semantic_vocab)

  @property
  def num_interactions(self) -> int:
    return int(self.seq_items.shape[0])

  @property
  def seq_lengths(self) -> np.ndarray:
    """int64[num_users]: number of events of every user (0 for the padding user)."""
    return np.diff(self.seq_offsets)

  def user_sequence(self, user: int) -> np.ndarray:
    """int32[n]: internal item ids of `user`'s events, oldest first."""
    return self.seq_items[self.seq_offsets[user] : self.seq_offsets[user + 1]]

  def with_semantics(
    self,
    item_semantic: np.ndarray,
    source: str,
    *,
    vocab: Sequence[str] | None = None,
    relabel: bool = False,
  ) -> "Dataset":
    """Returns a copy with a new semantic table.

    Args:
      item_semantic: int[num_items], semantic id per internal item id; 0 at index 0 only, and the
        ids used must be exactly 1..C (contiguous) unless `relabel`.
      source: provenance, e.g. "k-means (k=64) over CLIP image features".
      vocab: optional labels of ids 0..C ("" first); default: the ids as strings.
      relabel: map the distinct ids to 1..C in increasing order first (for k-means tables with
        empty clusters). Not allowed together with `vocab`.

    Returns:
      A new Dataset; num_semantics = C + 1.

    Raises:
      DataError: wrong shape, non-integer dtype, 0 at a real item, non-zero padding, or gaps.
    """
    table = np.asarray(item_semantic)
    if not np.issubdtype(table.dtype, np.integer):
      raise DataError(f"item_semantic must be an integer array, got dtype {table.dtype}")
    if table.shape != (self.num_items,):
      raise DataError(f"item_semantic has shape {table.shape}, expected ({self.num_items},)")
    if relabel:
      if vocab is not None:
        raise DataError("pass either vocab or relabel=True, not both")
      if table[0] != 0 or (table[1:] <= 0).any():
        raise DataError("item_semantic must be 0 at padding and positive elsewhere")
      uniq, inverse = np.unique(table[1:], return_inverse=True)
      table = np.concatenate([[0], inverse + 1])
      vocab = [""] + [str(u) for u in uniq]
    num = int(table.max()) + 1 if table.size else 1
    if vocab is None:
      vocab = [""] + [str(i) for i in range(1, num)]
    check_semantics(table, self.num_items, len(vocab), f"dataset {self.name!r}")
    return dataclasses.replace(
      self, item_semantic=table.astype(np.int32), semantic_source=source, semantic_vocab=list(vocab)
    )

  def summary(self) -> dict[str, Any]:
    """Plain counts (real users/items, without padding) for logs and tables."""
    lengths = self.seq_lengths[1:]
    return {
      "name": self.name,
      "format": self.format,
      "users": self.num_users - 1,
      "items": self.num_items - 1,
      "interactions": self.num_interactions,
      "semantic_classes": self.num_semantics - 1,
      "semantic_source": self.semantic_source,
      "avg_seq_len": float(lengths.mean()) if lengths.size else 0.0,
      "side": sorted(self.side),
      "user_side": sorted(self.user_side),
      "timestamps": self.seq_timestamps is not None,
    }


def check_semantics(table: np.ndarray, num_items: int, num_semantics: int, where: str) -> None:
  """Validates a semantic table: shape [num_items], 0 only at 0, ids exactly 1..num_semantics-1."""
  if table.shape != (num_items,):
    raise DataError(f"{where}: item_semantic has shape {table.shape}, expected ({num_items},)")
  if num_items and table[0] != 0:
    raise DataError(f"{where}: item_semantic[0] (padding) must be 0, got {table[0]}")
  real = table[1:]
  if real.size and real.min() < 1:
    bad = int(np.flatnonzero(real < 1)[0]) + 1
    raise DataError(f"{where}: item {bad} has semantic id {table[bad]}; only padding may be 0")
  used = np.unique(real)
  if used.size != num_semantics - 1 or (used.size and used[-1] != num_semantics - 1):
    raise DataError(
      f"{where}: semantic ids must be exactly 1..{num_semantics - 1} (contiguous, "
      f"all used); got {used.size} distinct ids with maximum "
      f"{int(used[-1]) if used.size else 0} (use relabel=True to compact them)"
    )


def make_vocab(raw: Any) -> tuple[list[str], np.ndarray]:
  """Builds a padded vocabulary over raw ids.

  Args:
    raw: array-like[N] of raw ids (integers or strings).

  Returns:
    (vocab, codes): vocab is list[str] with "" at 0 and the distinct raw ids after it (numeric order
    when all ids are decimal integers, else string order); codes is int32[N] with raw[k] ==
    vocab[codes[k]].
  """
  values = np.asarray(raw)
  if values.dtype.kind in "iu":
    uniq, inverse = np.unique(values, return_inverse=True)
    return [""] + [str(int(u)) for u in uniq], (inverse.reshape(-1) + 1).astype(np.int32)
  values = values.astype(str)
  uniq, inverse = np.unique(values, return_inverse=True)
  inverse = inverse.reshape(-1)
  numeric = uniq.size > 0 and all(u.isdecimal() and u.isascii() for u in uniq.tolist())
  if numeric:
    as_int = uniq.astype(np.int64)
    if np.unique(as_int).size == uniq.size:  # "01" and "1" would collide: keep string order then.
      order = np.argsort(as_int, kind="stable")
      rank = np.empty_like(order)
      rank[order] = np.arange(order.size)
      return [""] + uniq[order].tolist(), (rank[inverse] + 1).astype(np.int32)
  return [""] + uniq.tolist(), (inverse + 1).astype(np.int32)


# The label of items without one: numbered after every real label (``labels_to_ids(missing=)``);
# the readers and ``semantics.from_labels`` use the same marker.
MISSING = "<missing>"


def labels_to_ids(
  labels: Sequence[str], *, missing: str | None = None
) -> tuple[np.ndarray, list[str]]:
  """Turns one label per item into semantic ids, numbered by first appearance.

  The one numbering rule of the project for labels (readers, ``semantics.from_labels``).

  Args:
    labels: list[str] of length num_items; labels[0] (padding) is ignored.
    missing: the label that means "no label": when present it gets the LAST id, after every real
      label, wherever it first appears.

  Returns:
    (item_semantic int32[num_items] with 0 at index 0, vocab list[str] with "" at 0): ids 1..C are
    given to the distinct labels in the order in which they first appear over items 1, 2, ...
  """
  real = np.asarray(list(labels[1:]), dtype=object).astype(str)
  if real.size == 0:
    return np.zeros(1, np.int32), [""]
  uniq, first, inverse = np.unique(real, return_index=True, return_inverse=True)
  if missing is not None:
    first = np.where(uniq == missing, real.size, first)  # after every real label
  order = np.argsort(first, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  table = np.concatenate([[0], rank[inverse.reshape(-1)] + 1]).astype(np.int32)
  return table, [""] + uniq[order].tolist()


def sequences_from_events(
  user_codes: np.ndarray, num_users: int, timestamps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Orders events into CSR form.

  Args:
    user_codes: int[E], internal user id (1..num_users-1) of every event, in file order.
    num_users: size of the user vocabulary incl. padding.
    timestamps: optional float[E]; events of a user are sorted by it, ties kept in file order.

  Returns:
    (order int64[E], offsets int64[num_users + 1]): `order` permutes the events into
    (user, time, file order) order; offsets are the CSR offsets of the sorted events.
  """
  user_codes = np.asarray(user_codes)
  if timestamps is None:
    order = np.argsort(user_codes, kind="stable")
  else:
    by_time = np.argsort(np.asarray(timestamps), kind="stable")
    order = by_time[np.argsort(user_codes[by_time], kind="stable")]
  counts = np.bincount(user_codes, minlength=num_users)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return order.astype(np.int64), offsets


def from_interactions(
  user_ids: Any,
  item_ids: Any,
  timestamps: Any = None,
  *,
  name: str = "interactions",
  item_labels: Mapping[Any, str] | None = None,
  items: Any = None,
  source: str = "from_interactions",
  semantic_source: str | None = None,
) -> Dataset:
  """Builds a Dataset from raw interaction columns (the path a Hugging Face Hub dataset takes).

  Every row is one event. Each user's events are sorted by timestamp (stable: ties keep the
  column order); without timestamps the column order is the chronological order.

  Args:
    user_ids: array-like[E] of raw user ids (ints or strings), e.g. `hub["user_id"]`.
    item_ids: array-like[E] of raw item ids, e.g. `hub["parent_asin"]`.
    timestamps: optional array-like[E] of numbers, e.g. `hub["timestamp"]`.
    name: dataset name.
    item_labels: optional mapping raw item id -> category label; the semantic id of an item is its
      label, numbered by first appearance over internal ids; unlabelled items share the class
      "<missing>", numbered last. Without it every item gets that single class.
    items: optional array-like of raw item ids of the whole catalogue (items never interacted with
      become valid negatives); the item vocabulary is its union with `item_ids`.
    source: provenance string.
    semantic_source: provenance of the labels (default "item_labels" / "none").

  Returns:
    Dataset with `fingerprint` = sha256 of the columns.

  Raises:
    DataError: columns of different lengths, or no events.
  """
  import hashlib  # pylint: disable=import-outside-toplevel

  users = np.asarray(user_ids)
  item_col = np.asarray(item_ids)
  if users.ndim != 1 or item_col.ndim != 1 or users.shape != item_col.shape:
    raise DataError(
      f"user_ids and item_ids must be 1-D of equal length, got shapes {users.shape} "
      f"and {item_col.shape}",
      field="user_ids/item_ids",
    )
  if users.size == 0:
    raise DataError("no interactions", field="user_ids")
  ts = None
  if timestamps is not None:
    try:
      ts = np.asarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError) as e:
      raise DataError(f"timestamps are not numbers: {e}", field="timestamps") from e
    if ts.shape != users.shape:
      raise DataError(
        f"timestamps has shape {ts.shape}, expected {users.shape}", field="timestamps"
      )
  user_vocab, user_codes = make_vocab(users)
  if items is not None:
    catalogue = np.asarray(items)
    both = (
      np.concatenate([item_col.astype(str), catalogue.astype(str)])
      if (item_col.dtype.kind not in "iu" or catalogue.dtype.kind not in "iu")
      else np.concatenate([item_col, catalogue])
    )
    item_vocab, codes = make_vocab(both)
    item_codes = codes[: item_col.size]
  else:
    item_vocab, item_codes = make_vocab(item_col)
  order, offsets = sequences_from_events(user_codes, len(user_vocab), ts)
  digest = hashlib.sha256()
  for column in (users, item_col, ts):
    if column is not None:
      column = column if column.dtype.kind in "iuf" else column.astype(str)
      digest.update(np.ascontiguousarray(column).tobytes())
  if item_labels is not None:
    lookup = {str(k): str(v) for k, v in item_labels.items()}
    labels = [""] + [lookup.get(raw, MISSING) or MISSING for raw in item_vocab[1:]]
    digest.update(repr(sorted(lookup.items())).encode())
  else:
    labels = [""] + [MISSING] * (len(item_vocab) - 1)
  table, vocab = labels_to_ids(labels, missing=MISSING)
  if semantic_source is None:
    semantic_source = "item_labels" if item_labels is not None else "none (one class)"
  return Dataset(
    name=name,
    source=source,
    fingerprint=digest.hexdigest(),
    user_vocab=user_vocab,
    item_vocab=item_vocab,
    seq_offsets=offsets,
    seq_items=item_codes[order],
    item_semantic=table,
    semantic_source=semantic_source,
    semantic_vocab=vocab,
    seq_timestamps=None if ts is None else ts[order],
    format="interactions",
  )

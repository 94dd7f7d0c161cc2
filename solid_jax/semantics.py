"""Item -> semantic id: category labels, k-means over item vectors, and tables with provenance.

A semantic table is ``int32[num_items]``: entry 0 (the padding item) is 0 and every real item has an
id in 1..C. Two kinds of source (SPEC section 2, "Semantics"):

- **labels**: one label per item (MovieLens' first genre, an Amazon category path cut at a depth,
  an S3-Rec attribute id). ``from_labels`` numbers the distinct labels; items without a label share
  one extra id (0 is reserved for padding, so they cannot keep it).
- **k-means** over item vectors: trained item-id embeddings of a stage-0 DUET model, the CLIP
  text or image features of a dataset, or their concatenation, each part L2-normalised
  (``item_vectors``, ``cluster_items``). The clustering is ``solid_jax.nn.codebook.kmeans``
  (k-means++ seeding, jit-compiled Lloyd iterations, a fixed PRNG seed).

``save_table`` / ``load_table`` keep a table next to its provenance (source, k, seed, dataset
fingerprint, ...) as ``<prefix>.npz`` + ``<prefix>.json``; loading checks the provenance that the
caller expects, so a table is never reused for a different dataset or setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from solid_jax.data.dataset import MISSING, labels_to_ids
from solid_jax.nn import codebook

# Side-information keys of the CLIP features (DESIGN.md, Data), per modality.
FEATURE_KEYS = {"text": "features/clip_text", "image": "features/clip_image"}
# Semantic sources that cluster vectors, and the parts they concatenate.
KMEANS_SOURCES = {
  "id": ("id",),
  "text": ("text",),
  "image": ("image",),
  "text_image": ("text", "image"),
  "id_text_image": ("id", "text", "image"),
}
MISSING_LABEL = MISSING  # the one marker of "no label" (solid_jax.data.dataset)


class ProvenanceError(ValueError):
  """A saved semantic table was made with different settings than the ones asked for."""


# ------------------------------------------------------------------------------------------ labels


def _is_missing(label: Any) -> bool:
  if label is None:
    return True
  if isinstance(label, float) and np.isnan(label):
    return True
  return isinstance(label, (str, list, tuple)) and len(label) == 0


def from_labels(labels: Sequence[Hashable | None]) -> np.ndarray:
  """Semantic ids from one label per item.

  Args:
    labels: length num_items; ``labels[0]`` (padding) is ignored. A label is any hashable (a
      string, an int, a tuple path); ``None``, ``""`` and empty tuples mean "no label".

  Returns:
    int32[num_items]: 0 at index 0; the distinct labels get ids 1..C in the order in which they
    first appear over items 1, 2, ...; items without a label share one more id (after the others,
    only when some item has no label).

  >>> from_labels([None, "drama", "comedy", "drama", None]).tolist()
  [0, 1, 2, 1, 3]
  """
  keys = [""] + [MISSING_LABEL if _is_missing(l) else repr(l) for l in list(labels)[1:]]
  table, _ = labels_to_ids(keys, missing=MISSING_LABEL)  # "no label" gets the last id
  return table.astype(np.int32)


def first_labels(label_lists: Sequence[Sequence[Hashable] | None]) -> list:
  """The first label of each item's label list (MovieLens' first genre, an S3-Rec first attribute).

  Args:
    label_lists: length num_items; each a list of labels, or None/empty.

  Returns:
    list of length num_items: the first label or None.
  """
  out = []
  for labels in label_lists:
    if labels is None or isinstance(labels, str) or len(labels) == 0:
      out.append(labels if isinstance(labels, str) and labels else None)
    else:
      out.append(labels[0])
  return out


def from_category_paths(
  paths: Sequence[Sequence[str] | str | None], depth: int, separator: str = ","
) -> np.ndarray:
  """Semantic ids from category paths (Amazon ``categories``) cut at a depth.

  Args:
    paths: length num_items; each a list of category names from the root down, or a string with
      the levels joined by ``separator``, or None/empty.
    depth: number of levels kept from the root (>= 1); paths shorter than ``depth`` keep all their
      levels (a leaf above the cut is its own class).
    separator: the level separator of string paths.

  Returns:
    int32[num_items], as ``from_labels`` over the truncated paths.

  >>> from_category_paths([None, "A,B,C", "A,B,D", "A,E", ""], depth=2).tolist()
  [0, 1, 1, 2, 3]
  """
  if depth < 1:
    raise ValueError(f"depth={depth}; expected >= 1")
  labels = []
  for path in paths:
    if isinstance(path, str):
      path = [p.strip() for p in path.split(separator) if p.strip()]
    labels.append(tuple(path[:depth]) if path else None)
  return from_labels(labels)


# ----------------------------------------------------------------------------------------- k-means


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero): float[N, F] -> float32[N, F]."""
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
  return (x / np.maximum(norm, eps)).astype(np.float32)


def item_vectors(parts: Mapping[str, np.ndarray], source: str) -> np.ndarray:
  """The vectors that k-means clusters for a semantic source.

  Args:
    parts: the available item vectors by name ("id", "text", "image"), each float[num_items, F_p]
      indexed by internal item id (row 0 = padding).
    source: a key of ``KMEANS_SOURCES`` ("id", "text", "image", "text_image", "id_text_image").

  Returns:
    float32[num_items, sum F_p]: the concatenation of the source's parts, each L2-normalised.

  Raises:
    KeyError: a part the source needs is missing (the message lists what is there).
  """
  if source not in KMEANS_SOURCES:
    raise ValueError(
      f"semantic source {source!r} is not clustered; expected one of {sorted(KMEANS_SOURCES)}"
    )
  names = KMEANS_SOURCES[source]
  missing = [n for n in names if n not in parts]
  if missing:
    raise KeyError(
      f"semantic source {source!r} needs item vectors {missing}; available: {sorted(parts)}"
    )
  rows = {np.asarray(parts[n]).shape[0] for n in names}
  if len(rows) != 1:
    raise ValueError(f"item vectors of {names} have different numbers of rows: {sorted(rows)}")
  return np.concatenate([l2_normalize(parts[n]) for n in names], axis=-1)


def dataset_vectors(ds) -> dict[str, np.ndarray]:
  """The CLIP feature parts a dataset provides (``{"text": ..., "image": ...}``, when present)."""
  return {
    name: np.asarray(ds.side[key], np.float32)
    for name, key in FEATURE_KEYS.items()
    if key in ds.side
  }


def cluster_items(vectors: np.ndarray, k: int, *, seed: int = 0, iters: int = 50) -> np.ndarray:
  """k-means semantic ids of the real items.

  Args:
    vectors: float[num_items, F] indexed by internal item id; row 0 (padding) is not clustered.
    k: number of clusters, 1 <= k <= num_items - 1.
    seed: PRNG seed of the k-means++ seeding.
    iters: Lloyd iterations.

  Returns:
    int32[num_items]: 0 at index 0, cluster + 1 elsewhere. Ids are compacted to 1..k' in order of
    cluster index when some cluster ends empty (k' < k; only with duplicate vectors).
  """
  vectors = np.asarray(vectors, np.float32)
  n = vectors.shape[0] - 1
  if not 1 <= k <= n:
    raise ValueError(f"k={k} clusters for {n} items; expected 1 <= k <= {n}")
  _, assign = codebook.kmeans(jax.random.key(seed), vectors[1:], k, iters)
  assign = np.asarray(assign)
  _, compact = np.unique(assign, return_inverse=True)
  return np.concatenate([[0], compact.reshape(-1) + 1]).astype(np.int32)


def shuffled_labels(table: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """A control table: the ids of ``table`` dealt to the items in a random order.

  The result has the same number of classes C and the same class sizes as ``table``, but an
  item's id says nothing about the item: the control that shows whether a SOLID model gains from
  the semantics or from having C ids at all.

  Args:
    table: int32[num_items], 0 at index 0.
    seed: seed of the permutation (``np.random.default_rng([seed, 0x5E3A])``).

  Returns:
    int32[num_items]: 0 at index 0, a permutation of ``table[1:]`` elsewhere.
  """
  table = np.asarray(table, np.int32)
  rng = np.random.default_rng([int(seed), 0x5E3A])
  return np.concatenate([[0], rng.permutation(table[1:])]).astype(np.int32)


# --------------------------------------------------------------------------- tables with provenance


def table_fingerprint(table: np.ndarray) -> str:
  """sha256 of the table's int32 bytes (first 16 hex digits)."""
  return hashlib.sha256(np.ascontiguousarray(table, np.int32).tobytes()).hexdigest()[:16]


def save_table(prefix: str, table: np.ndarray, provenance: Mapping[str, Any]) -> None:
  """Writes ``<prefix>.npz`` (the table) and ``<prefix>.json`` (provenance + counts), atomically.

  Args:
    prefix: path without extension.
    table: int32[num_items].
    provenance: JSON-serialisable description (source, k, seed, dataset fingerprint, ...).
  """
  table = np.asarray(table, np.int32)
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  info = {
    **dict(provenance),
    "num_items": int(table.shape[0]),
    "num_semantics": int(table.max()) + 1,
    "table_sha256": table_fingerprint(table),
  }
  tmp = f"{prefix}.tmp{os.getpid()}"
  with open(tmp + ".npz", "wb") as f:
    np.savez(f, table=table)
  with open(tmp + ".json", "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(tmp + ".npz", prefix + ".npz")
  os.replace(tmp + ".json", prefix + ".json")


def load_table(
  prefix: str, expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
  """Reads a table saved by ``save_table`` and checks its provenance.

  Args:
    prefix: path without extension.
    expected: provenance fields that must match (a subset of the saved ones).

  Returns:
    (table int32[num_items], provenance dict).

  Raises:
    FileNotFoundError: no table at ``prefix``.
    ProvenanceError: a field differs from ``expected``, or the table does not match its recorded
      hash (the message names the fields).
  """
  with open(prefix + ".json") as f:
    info = json.load(f)
  with np.load(prefix + ".npz") as z:
    table = np.asarray(z["table"], np.int32)
  if table_fingerprint(table) != info.get("table_sha256"):
    raise ProvenanceError(f"{prefix}.npz does not match the hash recorded in {prefix}.json")
  diffs = [
    f"{k}: saved {info.get(k)!r}, expected {v!r}"
    for k, v in (expected or {}).items()
    if info.get(k) != v
  ]
  if diffs:
    raise ProvenanceError(
      f"semantic table {prefix} was made with other settings: " + "; ".join(diffs)
    )
  return table, info

"""Semantic ids from the side information a reader found: ``default_semantics``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from solid_jax.data import dataset as dataset_lib
from solid_jax.data.dataset import Dataset, labels_to_ids
from solid_jax.data.errors import DataError
from solid_jax.data.formats.common import _category_rule, split_category_path

SEMANTIC_KINDS = ("genre", "attribute", "category", "codes", "authors", "none")
# The label of items without one (it gets the last semantic id); not a word a data set could use
# as a real label (ml-100k has a genre "unknown"). ``semantics.MISSING_LABEL`` is the same.
MISSING = dataset_lib.MISSING


def default_semantics(
  ds: Dataset,
  *,
  semantics: str | None = None,
  category_depth: int = 2,
  category_split: str = "auto",
  codes: str = "text",
  code_levels: int = 1,
) -> Dataset:
  """Derives the semantic table of a freshly read Dataset from its side information.

  Semantic ids are numbered 1..C by first appearance of their label over internal item ids; items
  without a label share the class "<missing>", numbered after every real label (the rule of
  ``solid_jax.semantics.from_labels`` too).

  Args:
    ds: a Dataset from `parse_folder`.
    semantics: which label; default by what the data has: "genre" (RecBole `class`: the FIRST genre
      token in file order, e.g. ml-100k: 19 classes), "attribute" (S3-Rec: the first attribute id
      of the item's list), "category" (category path truncated to `category_depth` levels; an empty
      path is the class "<missing>"), "codes" (the first `code_levels` levels of the
      text or image codes), "authors" (the ids of the SOLID authors' semantic copies), "none"
      (one class). Items lacking the field get "<missing>".
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
    if "authors_semantic" in side:
      semantics = "authors"
    elif "genres" in side:
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
    labels, source = [""] + [MISSING] * (n - 1), "none (one class)"
  elif semantics == "authors":
    ids = _need(side, "authors_semantic", ds)
    labels = [""] + [str(int(i)) if i > 0 else MISSING for i in ids[1:]]
    source = "the semantic ids of the authors' line-aligned copies"
  elif semantics == "genre":
    genres = _need(side, "genres", ds)
    labels = [""] + [g[0] if g else MISSING for g in genres[1:]]
    source = "first genre token (RecBole `class` field, file order)"
  elif semantics == "attribute":
    attrs = _need(side, "attributes", ds)
    labels = [""] + [str(a[0]) if a else MISSING for a in attrs[1:]]
    source = "first attribute id (S3-Rec item2attributes)"
  elif semantics == "category":
    if category_depth < 1:
      raise DataError(f"category_depth must be >= 1, got {category_depth}")
    cats = _need(side, "categories", ds)
    labels = [""] + [" > ".join(c[:category_depth]) if c else MISSING for c in cats[1:]]
    source = f"category path truncated at depth {category_depth}"
  else:
    if codes not in ("text", "image"):
      raise DataError(f"codes must be 'text' or 'image', got {codes!r}")
    table = _need(side, f"codes/{codes}", ds)
    if not 1 <= code_levels <= table.shape[1]:
      raise DataError(f"code_levels must be in 1..{table.shape[1]}, got {code_levels}")
    labels = [""] + ["/".join(map(str, row)) for row in table[1:, :code_levels].tolist()]
    source = f"{codes} codes, first {code_levels} level(s)"
  item_semantic, vocab = labels_to_ids(labels, missing=MISSING)
  return ds.with_semantics(item_semantic, source, vocab=vocab)


def _need(side: Mapping[str, Any], key: str, ds: Dataset) -> Any:
  if key not in side:
    raise DataError(
      f"data set {ds.name!r} has no side information {key!r} (it has: "
      f"{', '.join(sorted(side)) or 'none'})"
    )
  return side[key]

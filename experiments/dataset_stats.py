r"""Writes docs/DATASETS.md: every available data set, its semantics and its split sizes.

  python -m experiments.dataset_stats                       # all registered data sets
  python -m experiments.dataset_stats --datasets=ml-100k,lastfm --output=/tmp/DATASETS.md

Loads the embedded ml-100k and every data set of the shared data folder (see
`solid_jax.data.registered_datasets`), builds the splits of SPEC section 3 (seed 0, L=10, 4
training and 99 evaluation negatives per positive) and renders one table row per data set, below
fixed prose on formats, semantics, splits and caching.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

from solid_jax import data

FLAGS = flags.FLAGS
COMMAND = "python -m experiments.dataset_stats"

flags.DEFINE_list("datasets", [], "names or folders (default: every registered data set)")
flags.DEFINE_string("output", "docs/DATASETS.md", "Markdown file to write")
flags.DEFINE_string(
  "cache_dir", None, "Arrow cache folder (default $SOLID_JAX_CACHE or ~/.cache/solid_jax)"
)
flags.DEFINE_integer("seed", 0, "seed of the negatives")


def dataset_row(
  name: str,
  *,
  seed: int = 0,
  seq_len: int = 10,
  train_negatives: int = 4,
  eval_negatives: int = 99,
  cache_dir: Any = None,
) -> dict[str, Any]:
  """Loads one data set, builds its splits and returns its statistics.

  Args:
    name: registered name or folder.
    seed, seq_len, train_negatives, eval_negatives: options of `make_splits`.
    cache_dir: Arrow cache folder.

  Returns:
    dict: the Dataset summary (users, items, interactions, semantic_classes, semantic_source,
    avg_seq_len, side, user_side, timestamps, format) plus train_rows, valid_rows, test_rows,
    dropped_users and load_s (seconds, including parsing when the cache was cold).
  """
  start = time.perf_counter()
  ds = data.load_dataset(name, cache_dir=cache_dir)
  loaded = time.perf_counter() - start
  splits = data.make_splits(
    ds, seq_len=seq_len, train_negatives=train_negatives, eval_negatives=eval_negatives, seed=seed
  )
  meta = splits["meta"]
  row = ds.summary()
  row.update(
    name=name if isinstance(name, str) else ds.name,
    train_rows=meta["train_rows"],
    valid_rows=meta["valid_rows"],
    test_rows=meta["test_rows"],
    dropped_users=meta["dropped_users"],
    load_s=loaded,
  )
  for key in ("train", "valid", "test"):
    assert splits[key]["label"].shape[0] == row[f"{key}_rows"]
  return row


def _side_text(row: dict[str, Any]) -> str:
  parts = list(row["side"]) + [f"user: {k}" for k in row["user_side"]]
  if row["timestamps"]:
    parts.append("timestamps")
  return ", ".join(parts) or "none"


def render(rows: Sequence[dict[str, Any]], *, seed: int = 0) -> str:
  """The Markdown of docs/DATASETS.md for these rows."""
  head = (
    "| data set | format | users | items | interactions | avg seq len | semantic source | "
    "classes | train rows | valid rows | test rows | side information |\n"
    "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|\n"
  )
  lines = []
  for r in rows:
    lines.append(
      f"| {r['name']} | {r['format']} | {r['users']:,} | {r['items']:,} | "
      f"{r['interactions']:,} | {r['avg_seq_len']:.2f} | {r['semantic_source']} | "
      f"{r['semantic_classes']:,} | {r['train_rows']:,} | {r['valid_rows']:,} | "
      f"{r['test_rows']:,} | {_side_text(r)} |"
    )
  dropped = [f"{r['name']} ({r['dropped_users']})" for r in rows if r["dropped_users"]]
  note = (
    "Users dropped for having fewer than 3 events: " + ", ".join(dropped) + "."
    if dropped
    else "No user has fewer than 3 events in any of these data sets."
  )
  return PROSE.format(command=COMMAND, seed=seed, table=head + "\n".join(lines), dropped=note)


def generate(
  names: Sequence[Any], output: Any, *, seed: int = 0, cache_dir: Any = None
) -> list[dict[str, Any]]:
  """Computes the rows of `names` and writes the Markdown file `output`; returns the rows."""
  rows = []
  for name in names:
    rows.append(dataset_row(name, seed=seed, cache_dir=cache_dir))
    logging.info("%s: %s", name, {k: v for k, v in rows[-1].items() if k not in ("side",)})
  with open(output, "w", encoding="utf-8") as f:
    f.write(render(rows, seed=seed))
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  names = FLAGS.datasets or list(data.registered_datasets())
  generate(names, FLAGS.output, seed=FLAGS.seed, cache_dir=FLAGS.cache_dir)
  logging.info("wrote %s", FLAGS.output)


PROSE = """\
# Data sets

<!-- Generated file; do not edit by hand. The prose lives in experiments/dataset_stats.py. -->

Generated over the data sets it finds by running, from the repository root,
`{command}`.
Splits: SPEC section 3 with seed {seed}, history length L = 10, 4 negatives per training positive,
99 per validation and test positive. "users" and "items" count real ids (the vocabularies
`ds.num_users` / `ds.num_items` add the padding id 0), and so does "classes"
(`ds.num_semantics` = classes + 1).

{table}

{dropped}

## Loading

```python
import solid_jax as sj
ds = sj.data.load_dataset("ml-100k")           # embedded default
ds = sj.data.load_dataset("scientific", category_depth=3)   # a shared name, with an option
ds = sj.data.load_dataset("/path/to/folder")   # any folder in a supported format
sj.data.registered_datasets()                  # name -> folder path or "embedded"
```

- **ml-100k** is embedded: it is read from `recbole/dataset_example/ml-100k/` of the PyPI wheel
  `recbole==1.2.1`, found with `importlib.util.find_spec("recbole")` without importing recbole
  (which would pull in torch). Without recbole the loader says to run
  `pip install --no-deps recbole==1.2.1`. The files are byte-identical to `../shared/data/ml-100k`.
- **Shared names** (`beauty`, `sports`, `lastfm`, `scientific`, `office`, `instruments`,
  `scientific_mm_subset`) resolve to the folders of `$SOLID_JAX_SHARED_DATA`, else `../shared/data`,
  when it exists. Each folder's SOURCE.md gives provenance, terms and the exact format.

### Id conventions
Internal ids are contiguous and 0 is padding: users 1..U, items 1..N. `ds.item_vocab[i]` /
`ds.user_vocab[u]` give the raw id as written in the source (`""` at 0). Raw ids that are all
decimal integers are ordered numerically, so 1-based sources (MovieLens, S3-Rec) keep their ids and
0-based sources (LC-Rec, UniSRec, instruments) are shifted by one; other raw ids are ordered as
strings. Side information (`ds.side`) is indexed by internal item id, row 0 being padding.

### Formats (detected from the file names)
| format | files | sequence order | side information |
|---|---|---|---|
| `recbole_atomic` | `X.inter` (typed TSV header: `user_id`, `item_id`, optional `timestamp`), optional `X.item`, `X.user` | per user by timestamp, ties in file order | `X.item` fields (`class` -> `genres`, `movie_title` -> `title`, `release_year` -> `year`); `X.user` fields -> `ds.user_side` |
| `s3rec` | `X.txt` (`user item item ...`), `X_item2attributes.json` | as written (chronological) | `attributes` (list of attribute ids) |
| `lcrec` | `X.inter.json` (`{{user: [items]}}`), optional `X.item.json`, `X.index_lemb.json`, `X.index_vitemb.json`, `X.item2id`, `X.user2id` | as written | `title`, `description`, `brand` (HTML entities unescaped), `categories` (list of path levels), `codes/text`, `codes/image` (int32[num_items, 4], -1 at padding), `asin`; user side `reviewer_id` |
| `solid_authors` | `train.txt`, `test.txt` (the SOLID authors' samples `user;target;trigger_seq;click_seq;label`), line-aligned semantic copies `<model>/train.txt`, `<model>/test.txt` | rebuilt from the positive samples in file order (train, then test), each window continuing the sequence where it overlaps | `authors_semantic` (the copies' semantic id of every item; the default semantics) |
| `unisrec` | `X.test.inter` (+ train/valid, not read), optional `X.item2index`, `X.user2index`, `X.text`, `X.feat1CLS`, `X.feat3CLS`, `X.categories.derived.tsv` | full sequence = test history + test target | `asin`, `text`, `categories`, `features/clip_text`, `features/clip_image` (float32[num_items, 512]; file row k = item index k = internal id k+1; zero row 0) |

Category paths are split into levels with the rule of their source: `,(?! )` when some path has a
comma without a following space (scientific, scientific_mm_subset: level names such as "Tapes,
Adhesives & Sealants" contain ", "), else `, ` (office). Option `category_split` forces a rule.

### Default semantics
The semantic id of an item is a class label, numbered 1..C by first appearance over internal item
ids; items without a label share the class "<missing>", numbered last (`ds.semantic_vocab` holds the
labels; `sj.semantics.from_labels` follows the same rule):
- ml-100k: the **first** genre token of the item's `class` field in file order (19 classes
  including "unknown"); all genres stay in `ds.side["genres"]`.
- S3-Rec (beauty, sports, lastfm): the first attribute id of the item's list. The attribute lists
  mix brand and sub-category ids (beauty, sports) or hold tag ids in tagging order (lastfm), so
  this is a coarse, order-dependent label; k-means over learned item embeddings
  (`solid_jax.semantics`) is the alternative.
- LC-Rec with item text (scientific, office) and scientific_mm_subset: the category path truncated
  at `category_depth` levels (default 2); an empty path is the class "unknown". Scientific's first
  level is "Industrial & Scientific" for every item, office's top level was already stripped, so
  depth 2 is finer for office.
- instruments: the first level of the 4-level text codes (`codes="image"` for the image codes,
  `code_levels` for more levels).
- `semantics="none"` gives one class; `ds.with_semantics(table, source)` installs any other table
  (validated: shape [num_items], 0 only at padding, ids 1..C all used; `relabel=True` compacts).

## Splits
`sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=99, seed=0)`: per user with
events e_0..e_(n-1) (users with n < 3 are dropped and counted in the log): test target e_(n-1),
valid target e_(n-2), training targets e_1..e_(n-3); the history of each target is the <= L items
before it, oldest first, right-padded with 0. Each positive row is followed by its negatives, which
share its user and history, drawn uniformly without replacement from the items the user never
interacted with. Training negatives are redrawn per epoch by
`sj.data.resample_train(ds, splits, epoch)`, a pure function of (seed, epoch); epoch 0 is
`splits["train"]`. The authors' conversion (SPEC section 5) has no validation split and so n-2
training positives per user: 490,570 training rows on ml-100k, against 485,855 here.

`sj.data.batches(split, batch_size, seed=, epoch=, shuffle=True, start_step=0)` yields fixed-shape
numpy batches in an order fixed by (seed, epoch); the last one is padded by repeating its first row
and every batch has `weight` float32[B] (0 on padding). `sj.data.prefetch(iterator, size=2)`
prepares batches in a background thread.

### The authors' file format
`sj.data.write_authors_file(split, path, semantics_path=None)` writes one line per row,
`user;target;trigger_seq;click_seq;label` (comma-separated, zero-padded to L), and optionally the
line-aligned semantic file (the same lines with semantic ids), so the authors' code can run on
exactly our samples. trigger_seq (used by the authors only for an analysis figure) is the history
without its newest item, zero-padded: the window of the previous step as far as the row knows it
(`trigger="zeros"` writes zeros). `sj.data.read_authors_file(path, semantics_path=None)` reads such
files back into a split dict (left or right zero padding accepted).

## Caching
Raw files are parsed once into Hugging Face `datasets` Arrow tables ("events", "items", "users")
saved with `save_to_disk` under `$SOLID_JAX_CACHE` (default `~/.cache/solid_jax`, or the
`cache_dir` argument), in a folder keyed by the sha256 of the raw files' bytes: a second load reads
the cache with `load_from_disk`, a changed file gets a new key and is parsed again. Nothing touches
the network (`HF_DATASETS_OFFLINE=1` changes nothing). Semantic options are applied after loading,
so changing them never re-parses.

## Data from the Hugging Face Hub
With a network, any interaction table can be fed to `sj.data.from_interactions(user_ids, item_ids,
timestamps, ...)`, which sorts each user's events by timestamp (ties in column order). For example
Amazon Reviews 2023 (`McAuley-Lab/Amazon-Reviews-2023`; benchmark columns user_id, parent_asin,
rating, timestamp in milliseconds):

```python
import datasets, solid_jax as sj
# datasets < 4 runs the repository's loading script; configs are named
# "{{0core,5core}}_{{rating_only,last_out,timestamp,...}}_<Category>":
hub = datasets.load_dataset("McAuley-Lab/Amazon-Reviews-2023", "5core_timestamp_All_Beauty",
                            trust_remote_code=True)
rows = datasets.concatenate_datasets([hub[s] for s in hub])    # train/valid/test -> one table
# datasets >= 4 has no loading scripts: read the repository's CSV file instead:
rows = datasets.load_dataset("csv", split="train", data_files=(
    "hf://datasets/McAuley-Lab/Amazon-Reviews-2023/benchmark/5core/rating_only/All_Beauty.csv"))
ds = sj.data.from_interactions(rows["user_id"], rows["parent_asin"], rows["timestamp"],
                               name="amazon23-all-beauty")
splits = sj.data.make_splits(ds, seed=0)
```

Categories from the item metadata (config `raw_meta_<Category>`) can be passed as
`item_labels={{asin: label}}`; without labels every item is in one class until
`ds.with_semantics` installs a k-means table. This path was written against the Hub's documented
layout and is tested here only on synthetic columns (the machines of this project have no network).
"""


if __name__ == "__main__":
  app.run(main)

"""Data: loaders for every supported format, Arrow caching, leave-last-out splits, batches.

  ds = sj.data.load_dataset("ml-100k")          # embedded default (recbole wheel files)
  ds.num_items, ds.num_semantics                # 1683, 20 (both include the padding id 0)
  ds.item_semantic                              # int32[num_items], 0 only at padding
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=99, seed=0)
  splits["train"]["items"]                      # int32[N, 10], right-padded with 0
  for batch in sj.data.batches(splits["train"], 1024, seed=0, epoch=0):
    batch["weight"]                             # float32[1024], 0 on padding rows

Public names:
  Dataset            loaded data set (CSR sequences, vocabularies, semantics, side information).
  DataError          ValueError naming file, line and field of bad input.
  load_dataset       registered name or folder -> Dataset (format detected, Arrow-cached).
  registered_datasets  name -> folder path or "embedded".
  from_interactions  raw columns (user, item, timestamp) -> Dataset (e.g. a Hugging Face Hub set).
  make_splits        Dataset -> {"train", "valid", "test": row dicts, "meta": counts, seed, CSR}.
  resample_train     training rows of another epoch (negatives a pure function of seed, epoch).
  position_rows      one row per user for training on every position (next item + negatives).
  cloze_rows         one row per user with masked items for BERT4Rec's cloze objective.
  full_ranking_users validation/test users with their exclusion lists, for full ranking.
  batches            fixed-shape batches, order a pure function of (seed, epoch), resumable.
  pack_rows          one batch of position rows laid end to end in fewer rows (segments).
  packed_batches     ``batches`` of position rows, each packed by ``pack_rows``.
  num_batches        ceil(N / batch_size).
  prefetch           background-thread prefetching of any iterator.
  read_authors_file / write_authors_file   the authors' `user;target;trigger;click;label` files.
  formats.FORMATS    the registry of on-disk formats (``Format(detect, roles, read)``); a folder
                     in the SOLID authors' layout (train.txt / test.txt + semantic copies) loads too.

See docs/DATASETS.md for the formats, semantics and per-data-set statistics.
"""

from solid_jax.data.dataset import Dataset
from solid_jax.data.dataset import from_interactions
from solid_jax.data.errors import DataError
from solid_jax.data.formats import read_authors_file
from solid_jax.data.formats import write_authors_file
from solid_jax.data.packing import pack_rows
from solid_jax.data.packing import packed_batches
from solid_jax.data.pipeline import batches
from solid_jax.data.pipeline import num_batches
from solid_jax.data.pipeline import prefetch
from solid_jax.data.registry import load_dataset
from solid_jax.data.registry import registered_datasets
from solid_jax.data.splits import cloze_rows
from solid_jax.data.splits import full_ranking_users
from solid_jax.data.splits import make_splits
from solid_jax.data.splits import position_rows
from solid_jax.data.splits import resample_train

__all__ = [
  "Dataset",
  "DataError",
  "load_dataset",
  "from_interactions",
  "make_splits",
  "resample_train",
  "position_rows",
  "cloze_rows",
  "full_ranking_users",
  "batches",
  "packed_batches",
  "pack_rows",
  "num_batches",
  "prefetch",
  "read_authors_file",
  "write_authors_file",
  "registered_datasets",
]

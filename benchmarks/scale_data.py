r"""Synthetic interaction logs at the scale of the SOLID paper's largest data sets.

  python -m benchmarks.scale_data --profile=electronics --output_dir=/tmp/electronics

writes a RecBole atomic folder (``<name>.inter``: ``user_id``, ``item_id``, ``rating``,
``timestamp``; ``<name>.item``: ``item_id``, ``class``, one category per item), which
``solid_jax.data.load_dataset(folder)`` reads like any other. The statistics:

- exactly the profile's users, items and interactions (`PROFILES`: the paper's Table 1 rows for
  Amazon CDs and Electronics, the 2014 ratings-only dumps);
- per-user lengths from a truncated power law ``P(n) ∝ n^-a`` on ``1..max_length``, the exponent
  solved so the mean is interactions / users (1.86 for Electronics: three users in four have one
  rating, as in the raw dumps), then adjusted by single events so the total is exact;
- item popularity Zipf ``P(rank r) ∝ r^-s`` (s = 0.8 by default, the fit of ml-100k in
  `benchmarks.synthetic`; the top item then has 1.5% of the Electronics events) over a random permutation of the
  items, every item used at least once;
- timestamps: each user starts at a uniform time in 2000-2014 and rates at exponential gaps
  (mean 30 days), integer seconds, so every user's events are in time order;
- categories: a Zipf(1) draw over ``num_categories`` labels per item.

Everything is a pure function of the seed. Memory is a few int64 arrays of the interaction count
(about 0.5 GB for Electronics); the files are written with pyarrow's CSV writer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
import numpy as np


@dataclasses.dataclass(frozen=True)
class Profile:
  """The size of a synthetic data set."""

  users: int
  items: int
  interactions: int
  max_length: int = 5000
  item_exponent: float = 0.8
  num_categories: int = 800


PROFILES = {
  # SOLID paper, Table 1 (Amazon 2014 ratings-only dumps).
  "electronics": Profile(users=4_201_696, items=476_002, interactions=7_824_482),
  "cds": Profile(users=1_578_597, items=486_360, interactions=3_749_004),
  # A small one for tests and dry runs.
  "tiny": Profile(users=3_000, items=800, interactions=12_000, max_length=200),
}

_DAY = 86_400.0
_START, _END = 946_684_800.0, 1_388_534_400.0  # 2000-01-01 .. 2014-01-01


def _power_law_probs(exponent: float, max_length: int) -> np.ndarray:
  n = np.arange(1, max_length + 1, dtype=np.float64)
  p = n**-exponent
  return p / p.sum()


def length_exponent(mean: float, max_length: int) -> float:
  """The exponent a of ``P(n) ∝ n^-a`` on ``1..max_length`` whose mean is ``mean`` (bisection)."""
  if not 1.0 < mean < (max_length + 1) / 2:
    raise ValueError(f"mean length {mean} is out of reach with max_length={max_length}")
  lo, hi = 0.0, 10.0  # mean decreases with the exponent
  n = np.arange(1, max_length + 1, dtype=np.float64)
  for _ in range(100):
    mid = (lo + hi) / 2
    if float(_power_law_probs(mid, max_length) @ n) > mean:
      lo = mid
    else:
      hi = mid
  return (lo + hi) / 2


def user_lengths(rng: np.random.Generator, profile: Profile) -> np.ndarray:
  """int64[users] per-user event counts, >= 1, summing exactly to ``profile.interactions``."""
  a = length_exponent(profile.interactions / profile.users, profile.max_length)
  p = _power_law_probs(a, profile.max_length)
  lengths = rng.choice(np.arange(1, profile.max_length + 1), size=profile.users, p=p)
  gap = profile.interactions - int(lengths.sum())
  while gap:
    if gap > 0:  # add one event to `gap` random users
      take = rng.choice(profile.users, size=min(gap, profile.users), replace=False)
      lengths[take] += 1
    else:  # remove one event from users that have more than one
      candidates = np.flatnonzero(lengths > 1)
      take = rng.choice(candidates, size=min(-gap, candidates.size), replace=False)
      lengths[take] -= 1
    gap = profile.interactions - int(lengths.sum())
  return lengths


def event_items(rng: np.random.Generator, profile: Profile) -> np.ndarray:
  """int64[interactions] item index (0-based) of every event: Zipf popularity, each item once."""
  n, m = profile.interactions, profile.items
  if n < m:
    raise ValueError(f"{n} interactions cannot use all {m} items")
  rank_p = _power_law_probs(profile.item_exponent, m)
  item_of_rank = rng.permutation(m)
  ranks = np.searchsorted(np.cumsum(rank_p), rng.random(n - m), side="right")
  items = np.concatenate([np.arange(m), item_of_rank[np.minimum(ranks, m - 1)]])
  return items[rng.permutation(n)]


def event_times(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
  """int64[sum(lengths)] unix seconds, increasing within every user's run of events."""
  users = lengths.size
  start = rng.uniform(_START, _END, users)
  gaps = rng.exponential(30 * _DAY, int(lengths.sum()))
  first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  gaps[first] = 0.0
  csum = np.cumsum(gaps)
  offset = csum - np.repeat(csum[first], lengths)
  return (np.repeat(start, lengths) + offset).astype(np.int64)


def write(profile: Profile, output_dir: str, *, name: str, seed: int = 0) -> dict:
  """Writes ``<name>.inter`` and ``<name>.item`` under ``output_dir``; returns their statistics."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  from pyarrow import compute as pc  # pylint: disable=import-outside-toplevel
  from pyarrow import csv  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  rng = np.random.default_rng([seed, 0])
  lengths = user_lengths(np.random.default_rng([seed, 1]), profile)
  items = event_items(np.random.default_rng([seed, 2]), profile)
  times = event_times(np.random.default_rng([seed, 3]), lengths)
  user_ids = np.random.default_rng([seed, 4]).permutation(profile.users)  # file order != id order
  users = np.repeat(user_ids, lengths)
  order = rng.permutation(users.size)  # events arrive unsorted, as in the raw dumps
  ratings = rng.integers(1, 6, users.size)
  os.makedirs(output_dir, exist_ok=True)
  options = csv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)

  def write_tsv(table, path):  # RecBole's typed header, unquoted, then the rows
    with open(path, "wb") as f:
      f.write(("\t".join(table.column_names) + "\n").encode())
      csv.write_csv(table, f, options)

  def ids(prefix, values):
    return pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")

  inter = pa.table(
    {
      "user_id:token": ids("u", users[order]),
      "item_id:token": ids("i", items[order]),
      "rating:float": pa.array(ratings[order].astype(np.float64)),
      "timestamp:float": pa.array(times[order]),
    }
  )
  write_tsv(inter, os.path.join(output_dir, f"{name}.inter"))
  del inter
  cat_p = _power_law_probs(1.0, profile.num_categories)
  cats = np.random.default_rng([seed, 5]).choice(profile.num_categories, profile.items, p=cat_p)
  item_table = pa.table(
    {"item_id:token": ids("i", np.arange(profile.items)), "class:token_seq": ids("c", cats)}
  )
  write_tsv(item_table, os.path.join(output_dir, f"{name}.item"))
  stats = {
    "name": name,
    "profile": dataclasses.asdict(profile),
    "seed": seed,
    "users": int(lengths.size),
    "items": int(np.unique(items).size),
    "interactions": int(lengths.sum()),
    "length_exponent": length_exponent(profile.interactions / profile.users, profile.max_length),
    "users_with_at_least_3": int((lengths >= 3).sum()),
    "max_length": int(lengths.max()),
    "length_quantiles_50_90_99": [float(q) for q in np.percentile(lengths, [50, 90, 99])],
    "top_item_share": float(np.bincount(items).max() / items.size),
    "seconds": time.perf_counter() - start,
  }
  with open(os.path.join(output_dir, "SOURCE.json"), "w") as f:
    json.dump(stats, f, indent=2)
  return stats


FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script: importers define their own
  flags.DEFINE_enum("profile", "electronics", list(PROFILES), "which sizes")
  flags.DEFINE_string("output_dir", "", "folder to write (created)")
  flags.DEFINE_integer("seed", 0, "seed of every draw")


def main(argv):
  del argv
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  stats = write(PROFILES[FLAGS.profile], FLAGS.output_dir, name=FLAGS.profile, seed=FLAGS.seed)
  print(json.dumps(stats, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)

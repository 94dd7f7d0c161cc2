"""Tiny synthetic datasets on disk, in formats that ``solid_jax.data.load_dataset`` reads.

Items fall into a few clusters; a user mostly stays in one cluster, so the next item is
predictable from the history and a trained model beats chance within a couple of epochs.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np


def _sequences(
  seed: int, num_users: int, num_items: int, num_clusters: int, min_len: int = 5, max_len: int = 12
) -> tuple[list[list[int]], np.ndarray]:
  rng = np.random.default_rng(seed)
  cluster = np.arange(num_items) % num_clusters  # cluster of item id i+1
  members = [np.flatnonzero(cluster == c) + 1 for c in range(num_clusters)]
  sequences = []
  for _ in range(num_users):
    home = rng.integers(num_clusters)
    length = int(rng.integers(min_len, max_len + 1))
    seq = []
    for _ in range(length):
      pool = members[home] if rng.random() < 0.85 else np.arange(1, num_items + 1)
      choices = [i for i in pool if i not in seq] or [
        i for i in range(1, num_items + 1) if i not in seq
      ]
      seq.append(int(rng.choice(choices)))
    sequences.append(seq)
  return sequences, cluster


def write_s3rec(
  folder,
  *,
  seed: int = 0,
  num_users: int = 40,
  num_items: int = 30,
  num_clusters: int = 3,
  prefix: str = "Toy",
) -> pathlib.Path:
  """Writes ``<prefix>.txt`` and ``<prefix>_item2attributes.json`` (S3-Rec format, 1-based ids).

  The first attribute of item i is its cluster, so the default semantics have ``num_clusters``
  classes.

  Returns:
    The folder.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  sequences, cluster = _sequences(seed, num_users, num_items, num_clusters)
  with open(folder / f"{prefix}.txt", "w") as f:
    for user, seq in enumerate(sequences, start=1):
      f.write(" ".join(map(str, [user] + seq)) + "\n")
  attributes = {str(i + 1): [int(cluster[i]) + 1, 100 + int(i % 2)] for i in range(num_items)}
  with open(folder / f"{prefix}_item2attributes.json", "w") as f:
    json.dump(attributes, f)
  return folder


def write_unisrec(
  folder,
  *,
  seed: int = 0,
  num_users: int = 40,
  num_items: int = 30,
  num_clusters: int = 3,
  feature_dim: int = 512,
  prefix: str = "Toy",
) -> pathlib.Path:
  """Writes a UniSRec/MISSRec folder with CLIP-like text and image features (0-based ids).

  Features are noisy copies of a per-cluster direction, so k-means over them finds the clusters.
  Category paths are "Science,Cluster <c>,Kind <i mod 2>" (1, 3 and 6 classes at depths 1, 2, 3).

  Returns:
    The folder.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  sequences, cluster = _sequences(seed, num_users, num_items, num_clusters)
  header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
  for split, cut in (("train", 3), ("valid", 2), ("test", 1)):
    with open(folder / f"{prefix}.{split}.inter", "w") as f:
      f.write(header)
      for user, seq in enumerate(sequences):
        seq0 = [i - 1 for i in seq]
        if split == "train":
          for t in range(1, len(seq0) - 2):
            f.write(f"{user}\t{' '.join(map(str, seq0[:t]))}\t{seq0[t]}\n")
        else:
          end = len(seq0) - cut
          f.write(f"{user}\t{' '.join(map(str, seq0[:end]))}\t{seq0[end]}\n")
  with open(folder / f"{prefix}.item2index", "w") as f:
    for i in range(num_items):
      f.write(f"ASIN{i:04d}\t{i}\n")
  with open(folder / f"{prefix}.user2index", "w") as f:
    for u in range(num_users):
      f.write(f"U{u:04d}\t{u}\n")
  with open(folder / f"{prefix}.categories.derived.tsv", "w") as f:
    f.write("item_index\tasin\tcategories\n")
    for i in range(num_items):
      f.write(f"{i}\tASIN{i:04d}\tScience,Cluster {cluster[i]},Kind {i % 2}\n")
  rng = np.random.default_rng(seed + 1)
  for suffix in ("feat1CLS", "feat3CLS"):
    directions = rng.normal(size=(num_clusters, feature_dim)) * 5
    feats = directions[cluster] + rng.normal(size=(num_items, feature_dim))
    feats.astype("<f4").tofile(folder / f"{prefix}.{suffix}")
  return folder

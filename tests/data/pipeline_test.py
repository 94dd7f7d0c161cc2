"""batches / num_batches / prefetch: fixed shapes, weights, order from (seed, epoch), resuming."""

import threading

import chex
import numpy as np
import pytest

from solid_jax import data
from solid_jax.data import pipeline


def make_split(n=23, seq_len=3):
  rows = np.arange(n)
  return {
    "user": rows.astype(np.int32),
    "items": np.stack([rows] * seq_len, 1).astype(np.int32),
    "semantics": np.zeros((n, seq_len), np.int32),
    "target": (rows + 100).astype(np.int32),
    "target_semantic": np.ones(n, np.int32),
    "label": (rows % 2).astype(np.float32),
  }


def test_shapes_weights_and_coverage():
  split = make_split()
  got = list(data.batches(split, 5, seed=0, epoch=0))
  assert len(got) == data.num_batches(split, 5) == 5
  seen = []
  for batch in got:
    chex.assert_shape([batch["user"], batch["target"], batch["label"], batch["weight"]], (5,))
    chex.assert_shape([batch["items"], batch["semantics"]], (5, 3))
    assert batch["weight"].dtype == np.float32 and batch["items"].dtype == np.int32
    seen += batch["user"][batch["weight"] == 1].tolist()
  assert sorted(seen) == list(range(23))  # Every row exactly once per epoch.
  last = got[-1]
  np.testing.assert_array_equal(last["weight"], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(last["user"][3:], last["user"][0])  # Padding repeats row 0.
  for batch in got:  # Rows stay intact.
    np.testing.assert_array_equal(batch["target"], batch["user"] + 100)


def test_order_is_a_function_of_seed_and_epoch():
  split = make_split(50)

  def order(seed, epoch, shuffle=True):
    return np.concatenate(
      [b["user"] for b in data.batches(split, 8, seed=seed, epoch=epoch, shuffle=shuffle)]
    )[:50]

  np.testing.assert_array_equal(order(0, 0), order(0, 0))
  assert not np.array_equal(order(0, 0), order(0, 1))
  assert not np.array_equal(order(0, 0), order(1, 0))
  np.testing.assert_array_equal(order(0, 3, shuffle=False), np.arange(50))


def test_resume_sees_the_same_batches():
  split = make_split(41)
  full = list(data.batches(split, 6, seed=5, epoch=2))
  resumed = list(data.batches(split, 6, seed=5, epoch=2, start_step=4))
  assert len(resumed) == len(full) - 4
  for a, b in zip(full[4:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  direct = pipeline.batch_at(split, 6, 5, seed=5, epoch=2)
  for key in direct:
    np.testing.assert_array_equal(direct[key], full[5][key])


def test_num_batches_and_bad_arguments():
  assert data.num_batches(make_split(10), 5) == 2
  assert data.num_batches(make_split(11), 5) == 3
  assert data.num_batches(make_split(1), 1024) == 1
  with pytest.raises(data.DataError):
    data.num_batches(make_split(4), 0)
  with pytest.raises(data.DataError, match="start_step"):
    list(data.batches(make_split(4), 2, seed=0, epoch=0, start_step=3))


def test_prefetch_keeps_order_and_raises_producer_errors():
  split = make_split(30)
  plain = list(data.batches(split, 4, seed=1, epoch=0))
  fetched = list(data.prefetch(data.batches(split, 4, seed=1, epoch=0), size=2))
  assert len(plain) == len(fetched)
  for a, b in zip(plain, fetched):
    np.testing.assert_array_equal(a["user"], b["user"])

  def broken():
    yield 1
    raise RuntimeError("boom")

  stream = data.prefetch(broken())
  assert next(stream) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(stream)


def test_prefetch_stops_its_thread_when_closed():
  produced = []

  def endless():
    k = 0
    while True:
      produced.append(k)
      yield k
      k += 1

  before = threading.active_count()
  stream = data.prefetch(endless(), size=2)
  assert [next(stream) for _ in range(3)] == [0, 1, 2]
  stream.close()
  assert threading.active_count() == before
  assert len(produced) <= 3 + 2 + 1

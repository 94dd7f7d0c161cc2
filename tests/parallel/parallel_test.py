"""solid_jax.parallel on the host's devices: prefetch, sharding helpers, distributed detection."""

import chex
import jax
import numpy as np
import pytest

from solid_jax import parallel


def _batches(n, size=8):
  rng = np.random.default_rng(0)
  return [
    {
      "items": rng.integers(0, 50, (size, 10), dtype=np.int32),
      "label": rng.random(size).astype(np.float32),
    }
    for _ in range(n)
  ]


@pytest.mark.parametrize("size", [0, 1, 2, 5])
def test_device_prefetch_preserves_order_and_content(size):
  host = _batches(4)
  got = list(parallel.device_prefetch(iter(host), size=size))
  assert len(got) == len(host)
  for a, b in zip(got, host):
    assert isinstance(a["items"], jax.Array)
    chex.assert_trees_all_equal(jax.device_get(a), b)


def _recording_source(n):
  """(pulled, iterator over n batches): ``pulled`` lists the indices the iterator has yielded."""
  pulled = []

  def source():
    for i, b in enumerate(_batches(n)):
      pulled.append(i)
      yield b

  return pulled, source()


def test_device_prefetch_runs_ahead_of_the_consumer():
  pulled, source = _recording_source(5)
  stream = parallel.device_prefetch(source, size=2)
  next(stream)
  assert pulled == [0, 1, 2]  # two batches in flight beyond the one handed out


def test_device_prefetch_with_a_sharding_places_batches():
  mesh = parallel.make_mesh()
  sharding = parallel.batch_sharding(mesh)
  host = _batches(3, size=8 * len(jax.devices()))
  for a, b in zip(parallel.device_prefetch(host, size=2, sharding=sharding), host):
    assert a["items"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(a["items"]), b["items"])


def test_device_prefetch_of_size_zero_reads_on_demand():
  pulled, source = _recording_source(3)
  stream = parallel.device_prefetch(source, size=0)
  next(stream)
  assert pulled == [0]


def test_device_prefetch_rejects_a_negative_size():
  with pytest.raises(ValueError, match=">= 0"):
    list(parallel.device_prefetch([], size=-1))


def test_process_rows_is_the_whole_batch_with_one_process():
  mesh = parallel.make_mesh()
  b = parallel.pad_batch(_batches(1, size=5)[0], len(jax.devices()))
  assert parallel.process_rows(b, mesh) is b


def test_pad_batch_adds_zero_weight_rows():
  b = _batches(1, size=5)[0]
  p = parallel.pad_batch(b, 4)
  assert p["items"].shape == (8, 10)
  np.testing.assert_array_equal(p["weight"], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(p["items"][5:], 0)
  np.testing.assert_array_equal(p["items"][:5], b["items"])


def test_shard_and_replicate_round_trip():
  mesh = parallel.make_mesh()
  b = _batches(1, size=4 * len(jax.devices()))[0]
  s = parallel.shard_batch(b, mesh)
  chex.assert_trees_all_equal(jax.device_get(s), b)
  r = parallel.replicate({"w": np.ones((3, 2), np.float32)}, mesh)
  assert r["w"].sharding.is_fully_replicated


def test_no_distributed_environment_means_no_initialisation(monkeypatch):
  for var in (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "OMPI_MCA_orte_hnp_uri",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
  ):
    monkeypatch.delenv(var, raising=False)
  assert parallel.distributed_environment() is None
  assert parallel.maybe_initialize_distributed() is False


def test_distributed_environment_detection(monkeypatch):
  slurm = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
  }
  for k, v in slurm.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert parallel.distributed_environment() is None  # a single task: nothing to initialise
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert parallel.distributed_environment() == "slurm"
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    parallel.distributed_environment()
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert parallel.distributed_environment() == "explicit"

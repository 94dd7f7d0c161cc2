"""Data parallelism over devices and hosts with `jax.sharding`.

The model is small (d = 32), so the only parallelism that pays is data parallelism: parameters and
optimizer state are replicated, the batch axis is split over a 1-D mesh axis ``"data"``, and XLA's
SPMD partitioner inserts the gradient all-reduce because the loss is a mean over the global batch. A
sharded step therefore computes what one device computes on the same global batch, up to the order
of floating-point sums.

The training loop (``solid_jax.train.loop.train_stage``) uses it when several devices exist::

  parallel.maybe_initialize_distributed()           # launcher, first, before any other JAX call
  mesh = parallel.make_mesh()                         # all devices of all processes
  params, opt_state = parallel.replicate((params, opt_state), mesh)
  step_fn = parallel.make_sharded_train_step(train_step, mesh)   # the loop's step function
  sharding = parallel.batch_sharding(mesh)
  host = (parallel.process_rows(parallel.pad_batch(b, mesh.size), mesh) for b in global_batches)
  for batch in parallel.device_prefetch(host, size=2, sharding=sharding):
    params, opt_state, scalars = step_fn(params, opt_state, batch, parallel.replicate(step, mesh))

With several processes every process iterates over the same global batches (same seed) and feeds
its own rows of each (`process_rows`: the contiguous block of rows its devices hold, ``[i * B / P,
(i + 1) * B / P)`` for process i of P); `shard_batch` and `device_prefetch` assemble the global
array from the process-local rows.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def _env_int(name: str, default: int = 0) -> int:
  try:
    return int(os.environ.get(name, default))
  except ValueError:
    return default


def distributed_environment() -> str | None:
  """Names the multi-process environment this process runs in, if any.

  Recognised, in this order:

  - ``"explicit"``: ``JAX_COORDINATOR_ADDRESS`` is set, together with ``JAX_NUM_PROCESSES`` (> 1)
    and ``JAX_PROCESS_ID`` (any launcher: torchrun-like scripts, Kubernetes indexed jobs);
  - ``"slurm"``: an ``srun`` step with more than one task (``SLURM_JOB_ID``,
    ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``, ``SLURM_LOCALID``);
  - ``"openmpi"``: ``mpirun`` with more than one rank (``OMPI_MCA_orte_hnp_uri``,
    ``OMPI_COMM_WORLD_SIZE`` > 1);
  - ``"tpu"``: a multi-host Cloud TPU slice (``TPU_WORKER_HOSTNAMES`` lists more than one host).

  Returns:
    The environment's name, or None for a single process.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS") and _env_int("JAX_NUM_PROCESSES", 1) > 1:
    if "JAX_PROCESS_ID" not in os.environ:
      raise ValueError(
        "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES are set but JAX_PROCESS_ID is not"
      )
    return "explicit"
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in os.environ for v in slurm) and _env_int("SLURM_NTASKS", 1) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in os.environ and _env_int("OMPI_COMM_WORLD_SIZE", 1) > 1:
    return "openmpi"
  if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "tpu"
  return None


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when this process is one of several, else does nothing.

  Must run before any other JAX call that touches devices. See `distributed_environment` for the
  environments recognised. In the ``"explicit"`` case the coordinator address, process count and
  process id come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
  (and ``JAX_LOCAL_DEVICE_IDS`` if set, read by JAX itself); in the others JAX detects them from the
  cluster.

  Returns:
    True when the distributed runtime was initialised by this call.
  """
  env = distributed_environment()
  if env is None:
    return False
  if env == "explicit":
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=_env_int("JAX_NUM_PROCESSES"),
      process_id=_env_int("JAX_PROCESS_ID"),
    )
  else:
    jax.distributed.initialize()
  return True


def make_mesh(devices=None, axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process) named ``axis_name``."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
  """Leading (batch) axis split over ``axis_name``, other axes replicated."""
  return NamedSharding(mesh, PartitionSpec(axis_name))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, PartitionSpec())


def pad_batch(batch: dict, multiple: int) -> dict:
  """Pads every leaf of ``batch`` along axis 0 to a multiple of ``multiple`` rows.

  Padding rows are zeros (the padding item id) and get ``weight`` 0 (a "weight" leaf of ones is
  added when the batch has none), so the weighted BCE is unchanged. Auxiliary losses that average
  over non-padding sequence positions are unchanged too, because padding rows have no such position.

  Args:
    batch: dict of arrays with a common leading size B.
    multiple: the row count is padded up to ``ceil(B / multiple) * multiple``.

  Returns:
    The padded batch (NumPy arrays).
  """
  leaves = {k: np.asarray(v) for k, v in batch.items()}
  size = _leading_size(leaves)
  if "weight" not in leaves:
    leaves["weight"] = np.ones(size, np.float32)
  extra = -size % multiple
  if not extra:
    return leaves
  return {
    k: np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)]) for k, v in leaves.items()
  }


def _leading_size(batch) -> int:
  sizes = {np.shape(x)[0] for x in jax.tree_util.tree_leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(f"batch leaves have different leading sizes: {sorted(sizes)}")
  return sizes.pop()


def _put_sharded(tree, sharding: NamedSharding):
  """Places process-local host arrays with ``sharding`` (global arrays across processes)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def shard_batch(batch: dict, mesh: Mesh, *, pad: bool = False, axis_name: str = DATA_AXIS) -> dict:
  """Splits the batch axis of every leaf over the mesh axis ``axis_name``.

  With one process ``batch`` is the global batch; with several, it is this process's rows and the
  result is the global array made of all processes' rows (in process order).

  Args:
    batch: dict of arrays with a common leading size B (process-local).
    mesh: from `make_mesh`.
    pad: pad B up to a multiple of the local device count with zero-weight rows (see `pad_batch`)
      instead of raising.
    axis_name: the data axis of ``mesh``.

  Returns:
    The batch as `jax.Array`s sharded by `batch_sharding`.

  Raises:
    ValueError: B is not a multiple of the number of local devices on the data axis and ``pad`` is
      False.
  """
  local = mesh.local_mesh.shape[axis_name]
  size = _leading_size(batch)
  if size % local:
    if not pad:
      raise ValueError(
        f"batch size {size} is not a multiple of the {local} local devices of mesh axis "
        f"{axis_name!r}; choose a multiple of {local} or pass pad=True (zero-weight padding "
        "rows)"
      )
    batch = pad_batch(batch, local)
  return _put_sharded(batch, batch_sharding(mesh, axis_name))


def process_rows(batch: dict, mesh: Mesh, *, axis_name: str = DATA_AXIS) -> dict:
  """This process's rows of a global batch that every process holds in full.

  With one process the batch is returned unchanged. With several, the rows that this process's
  devices hold under `batch_sharding` (a contiguous block: ``[i * B / P, (i + 1) * B / P)`` for
  process i of P when every process has the same number of devices and the mesh lists them process
  by process, as `make_mesh` does), ready for `device_prefetch` / `shard_batch`.

  Args:
    batch: dict of arrays with a common leading size B, a multiple of ``mesh.shape[axis_name]``
      (see `pad_batch`).
    mesh: from `make_mesh`.
    axis_name: the data axis of ``mesh``.

  Returns:
    dict of NumPy arrays with this process's rows.

  Raises:
    ValueError: B is not a multiple of the mesh axis, or this process's rows are not contiguous.
  """
  if jax.process_count() == 1:
    return batch
  size = _leading_size(batch)
  devices = mesh.shape[axis_name]
  if size % devices:
    raise ValueError(
      f"global batch of {size} rows is not a multiple of the {devices} devices of "
      f"mesh axis {axis_name!r} (pad it with pad_batch)"
    )
  index = batch_sharding(mesh, axis_name).addressable_devices_indices_map((size,))
  blocks = sorted({idx[0].indices(size)[:2] for idx in index.values()})
  if any(stop != start for (_, stop), (start, _) in zip(blocks, blocks[1:])):
    raise ValueError(
      f"the devices of process {jax.process_index()} hold rows {blocks} of the "
      "global batch, not one contiguous block; build the mesh with the devices of "
      "each process next to each other (make_mesh() does)"
    )
  start, stop = blocks[0][0], blocks[-1][1]
  return {k: np.asarray(v)[start:stop] for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
  """Copies ``tree`` (every process passes the same values) to every device of ``mesh``."""
  return _put_sharded(tree, replicated_sharding(mesh))


def device_prefetch(iterator: Iterable[Any], size: int = 2, sharding=None) -> Iterator[Any]:
  """Moves batches to the device(s) ``size`` steps ahead of their use.

  `jax.device_put` is asynchronous, so the copies of the next ``size`` batches overlap with the
  computation on the current one. Order and content are preserved. The iterator is read ``size``
  batches ahead of the batch handed out: while the consumer works on batch i, batches up to i +
  ``size`` have been read (and transferred).

  Args:
    iterator: yields pytrees of host arrays (e.g. ``sj.data.batches``).
    size: number of batches in flight beyond the one handed out (>= 0; 0 transfers each batch when
      it is requested).
    sharding: None (the default device), a `jax.sharding.Sharding` applied to every leaf (for
      `batch_sharding` the leaves are process-local rows, see `shard_batch`), or a pytree prefix of
      shardings.

  Yields:
    The same pytrees with `jax.Array` leaves.
  """
  if size < 0:
    raise ValueError(f"size must be >= 0, got {size}")
  queue = collections.deque()

  def put(batch):
    if isinstance(sharding, NamedSharding) and jax.process_count() > 1:
      return _put_sharded(batch, sharding)
    return jax.device_put(batch, sharding)

  iterator = iter(iterator)
  for batch in iterator:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def make_sharded_train_step(
  step_fn: Callable,
  mesh: Mesh,
  *,
  num_args: int = 4,
  batch_argnum: int = 2,
  axis_name: str = DATA_AXIS,
  donate: bool = True,
) -> Callable:
  """Jits a training step for data parallelism over ``mesh``.

  The default signature is the training loop's ``step_fn(params, opt_state, batch, step) -> (params,
  opt_state, scalars)`` (``solid_jax.train.step.make_train_step``; a step that is already jitted is
  fine, the outer jit inlines it). Argument ``batch_argnum`` (a dict of [B, ...] arrays) is split
  over ``axis_name``; every other argument is replicated, and so are the outputs. The step is
  written for the global batch (sums and means over all rows); the SPMD partitioner turns them into
  per-device partial results and an all-reduce, so the result equals the one-device step on the same
  global batch up to floating-point summation order.

  Args:
    step_fn: the training step.
    mesh: from `make_mesh`.
    num_args: number of positional arguments of ``step_fn``.
    batch_argnum: position of the batch.
    axis_name: the data axis.
    donate: donate arguments 0 and 1 (parameters and optimizer state; do not reuse them).

  Returns:
    The jitted step.
  """
  replicated = replicated_sharding(mesh)
  in_shardings = tuple(
    batch_sharding(mesh, axis_name) if i == batch_argnum else replicated for i in range(num_args)
  )
  return jax.jit(
    step_fn,
    in_shardings=in_shardings,
    out_shardings=replicated,
    donate_argnums=(0, 1) if donate else (),
  )


def global_batch_size(local_batch_size: int) -> int:
  """The global batch of a run where every process feeds ``local_batch_size`` rows."""
  return local_batch_size * jax.process_count()


def tree_allclose(a, b, *, atol: float = 1e-5, rtol: float = 1e-5) -> bool:
  """True when two pytrees have the same structure and all leaves are close (host-side check)."""
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  if ta != tb:
    return False
  return all(
    np.allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol) for x, y in zip(la, lb)
  )


__all__ = [
  "DATA_AXIS",
  "batch_sharding",
  "device_prefetch",
  "distributed_environment",
  "global_batch_size",
  "make_mesh",
  "make_sharded_train_step",
  "maybe_initialize_distributed",
  "pad_batch",
  "process_rows",
  "replicate",
  "replicated_sharding",
  "shard_batch",
  "tree_allclose",
]

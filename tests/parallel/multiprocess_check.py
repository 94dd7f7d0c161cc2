"""train_stage in a run of 2 processes (2 fake CPU devices each) or in one process (4 devices).

  python tests/parallel/multiprocess_check.py worker PROCESS_ID PORT WORKDIR   # 2 devices each
  python tests/parallel/multiprocess_check.py single WORKDIR                    # 4 devices

(`multiprocess_test.py` starts them with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.)
A worker joins the others with ``jax.distributed.initialize`` (coordinator on localhost, CPU
collectives over gloo) and both train the same stage (DUET on GRU4Rec, d = 8, the tiny synthetic
dataset of the training tests, 2 epochs, 50 rows = 10 candidate groups per batch, padded to 12 for
the 4 devices, a checkpoint every 5 steps) in one shared directory. Prints one JSON line: the stage
result (per-epoch train losses, metrics, devices) and what this process saw.

Exit status 3 (with the reason on stderr): this jaxlib has no CPU collectives.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402

NO_COLLECTIVES = 3


def _join(process_id: int, port: int) -> None:
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception as e:  # pylint: disable=broad-except
    print(f"no CPU collectives in this jaxlib: {e}", file=sys.stderr)
    sys.exit(NO_COLLECTIVES)
  jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=120,
  )


def train(workdir: str) -> dict:
  import solid_jax as sj  # pylint: disable=import-outside-toplevel
  from solid_jax import parallel  # pylint: disable=import-outside-toplevel
  from solid_jax.train import loop  # pylint: disable=import-outside-toplevel
  from tests.train import synthetic  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_disable_most_optimizations", True)  # tiny shapes: compile fast
  os.environ["SOLID_JAX_CACHE"] = os.path.join(workdir, f"cache{jax.process_index()}")
  folder = synthetic.write_s3rec(os.path.join(workdir, f"toy{jax.process_index()}"))
  ds = sj.data.load_dataset(str(folder))
  splits = sj.data.make_splits(ds, seq_len=10, train_negatives=4, eval_negatives=9, seed=0)
  model = sj.make_model(
    sj.ModelConfig(
      backbone="gru4rec", head="duet", num_items=ds.num_items, num_semantics=ds.num_semantics, dim=8
    )
  )
  data = loop.StageData(
    train_rows=lambda e: splits["train"] if e == 0 else sj.data.resample_train(ds, splits, e),
    valid=splits["valid"],
    test=splits["test"],
    batches=sj.data.batches,
  )
  spec = loop.StageSpec(
    name="main", directory=os.path.join(workdir, "main"), model=model, init=model.init, epochs=2
  )
  seen = set()
  original = parallel.device_prefetch

  def recording(iterator, size=2, sharding=None):
    for batch in original(iterator, size, sharding):
      items = batch["items"]
      seen.add((int(items.shape[0]), len(items.addressable_shards)))
      yield batch

  parallel.device_prefetch = recording
  result, params = loop.train_stage(
    spec,
    data,
    loop.LoopSettings(
      seed=0,
      batch_size=50,
      lr=1e-2,
      eval_batch_size=256,
      checkpoint_every_steps=5,
      progress=False,
      tensorboard=False,
    ),
  )
  leaf = jax.tree.leaves(params)[0]
  return {
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "devices": result["devices"],
    "valid": result["valid"],
    "test": result["test"],
    "train_loss": [h["train_loss"] for h in result["history"]],
    "selected_step": result["selected_step"],
    "batches": sorted(seen),
    "params_replicated": bool(leaf.sharding.is_fully_replicated),
  }


def main(argv):
  if argv[1] == "worker":
    _join(int(argv[2]), int(argv[3]))
    workdir = argv[4]
  elif argv[1] == "single":
    workdir = argv[2]
  else:
    raise SystemExit(f"usage: {argv[0]} worker PROCESS_ID PORT WORKDIR | single WORKDIR")
  out = train(workdir)
  if argv[1] == "worker":
    # Preemption: only process 1 got the signal; both must answer the same at every step.
    import signal  # pylint: disable=import-outside-toplevel
    from solid_jax.train import reliability  # pylint: disable=import-outside-toplevel

    watch = reliability.PreemptionWatch(sync_every=2)
    if jax.process_index() == 1:
      watch.received = signal.SIGTERM
    out["preempt"] = [watch.should_stop(step) for step in (1, 2, 3)]
    jax.distributed.shutdown()
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv)

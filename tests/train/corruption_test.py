"""Corrupted or partial checkpoints are detected on restore; the loop falls back to an older good
one (and still ends where an uninterrupted run ends) or fails with a clear error."""

import os

import jax
import numpy as np
import pytest

from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import loop
from tests.train.convergence_test import KWARGS, _data, _spec
from tests.train.loop_test import Crash, _crashing_batches
from tests.train.reliability_test import toy  # noqa: F401  (fixture)


def _files(step_dir):
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.join(root, n) for n in names]
  return out


def _largest(step_dir, item="params"):
  return max(_files(os.path.join(step_dir, item)), key=os.path.getsize)


def truncate(step_dir):
  path = _largest(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def flip(step_dir):
  path = _largest(step_dir)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    for i in range(len(data) // 3, len(data) // 3 + 8):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


def remove(step_dir):
  os.remove(_largest(step_dir))


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(64, 32)).astype(np.float32), "b": np.arange(5, dtype=np.int32)}


@pytest.mark.parametrize("damage", [truncate, flip, remove])
def test_a_damaged_latest_step_falls_back_to_the_older_one(tmp_path, damage, caplog):
  ckpts = checkpoint_lib.StageCheckpoints(tmp_path)
  ckpts.save(1, _tree(1), _tree(2), {"epoch": 1}, selection=1.0)  # the best
  ckpts.save(2, _tree(3), _tree(4), {"epoch": 2}, selection=0.5)  # the latest
  ckpts.wait()
  assert ckpts.all_steps() == [1, 2]
  damage(str(tmp_path / "2"))
  with caplog.at_level("WARNING"):
    step, params, opt_state, meta = ckpts.restore_latest_good(_tree(0), _tree(0))
  assert step == 1 and meta == {"epoch": 1}
  jax.tree.map(np.testing.assert_array_equal, params, _tree(1))
  jax.tree.map(np.testing.assert_array_equal, opt_state, _tree(2))
  assert any("checkpoint step 2" in r.getMessage() for r in caplog.records)
  assert ckpts.all_steps() == [1] and (tmp_path / "corrupted.2").is_dir()
  # Nothing intact left: a clear error, never silently wrong weights.
  damage(str(tmp_path / "1"))
  with pytest.raises(checkpoint_lib.CorruptCheckpointError, match=r"no intact checkpoint.*\[1\]"):
    ckpts.restore_latest_good(_tree(0), _tree(0))
  with pytest.raises(checkpoint_lib.CorruptCheckpointError):
    checkpoint_lib.StageCheckpoints(tmp_path / "other").restore_params(1)
  ckpts.close()


def test_a_changed_array_fails_the_checksum(tmp_path, monkeypatch):
  ckpts = checkpoint_lib.StageCheckpoints(tmp_path)
  ckpts.save(1, _tree(1), _tree(2), {"epoch": 1}, selection=1.0)
  ckpts.wait()
  # What a bit flip that the storage layer does not notice looks like: other values read back.
  real = checkpoint_lib.tree_checksum
  monkeypatch.setattr(
    checkpoint_lib,
    "tree_checksum",
    lambda tree: real(jax.tree.map(lambda x: np.asarray(x) + 1, tree)),
  )
  with pytest.raises(checkpoint_lib.CorruptCheckpointError, match="checksum"):
    ckpts.restore(1, _tree(0), _tree(0))
  with pytest.raises(checkpoint_lib.CorruptCheckpointError, match="checksum"):
    ckpts.restore_params(1)
  ckpts.close()


def test_the_loop_resumes_past_a_corrupted_checkpoint_and_ends_as_uninterrupted(toy, tmp_path):  # noqa: F811
  kwargs = dict(KWARGS, lr=1e-2)
  whole, params_whole = loop.train_stage(
    _spec(toy, tmp_path / "whole", 3), _data(toy), loop.LoopSettings(**kwargs)
  )
  spec = _spec(toy, tmp_path / "crashed", 3)
  # No prefetching: the crash then comes after two steps of epoch 3, each checkpointed (with
  # batches read ahead it would come before the epoch's first step).
  with pytest.raises(Crash):
    loop.train_stage(
      spec,
      _data(toy, _crashing_batches(2, 2)),
      loop.LoopSettings(checkpoint_every_steps=1, prefetch=0, **kwargs),
    )
  with checkpoint_lib.StageCheckpoints(spec.directory, read_only=True) as ckpts:
    latest, kept = ckpts.latest_step(), ckpts.all_steps()
  assert len(kept) == 2 and latest == 8, kept  # the mid-epoch latest and the best epoch end
  flip(os.path.join(spec.directory, str(latest)))
  resumed, params = loop.train_stage(
    spec, _data(toy), loop.LoopSettings(checkpoint_every_steps=1, **kwargs)
  )
  assert [r["train_loss"] for r in resumed["history"]] == [
    r["train_loss"] for r in whole["history"]
  ]
  jax.tree.map(np.testing.assert_array_equal, params_whole, params)


DISK_FULL = r"""
import resource, signal, sys
import numpy as np
from solid_jax.train import checkpoint as c
small = lambda: {"w": np.ones((16,), np.float32)}
ck = c.StageCheckpoints(sys.argv[1])
ck.save(1, small(), small(), {"epoch": 1}, selection=1.0)
ck.wait()
# A file-size limit makes every larger write fail as a full disk does (EFBIG instead of ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
try:
  ck.save(2, {"w": np.random.rand(1_000_000).astype(np.float32)}, small(), {"epoch": 2},
          selection=2.0)
  ck.wait()
except c.CheckpointSaveError as e:
  print("SAVE ERROR:", e)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
step, params, _, meta = c.StageCheckpoints(sys.argv[1]).restore_latest_good(small(), small())
print("RESTORED", step, meta["epoch"], float(params["w"].sum()))
"""


def test_a_full_disk_during_a_save_keeps_the_earlier_checkpoints(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tests.experiments.conftest import REPO_ROOT  # pylint: disable=import-outside-toplevel

  out = subprocess.run(
    [sys.executable, "-c", DISK_FULL, str(tmp_path / "ckpt")],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "SAVE ERROR: saving a checkpoint in" in out.stdout and "are intact" in out.stdout
  assert "RESTORED 1 1 16.0" in out.stdout

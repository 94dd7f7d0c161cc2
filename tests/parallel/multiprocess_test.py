"""A real 2-process data-parallel run of train_stage on CPU against one process with as many devices.

Two subprocesses with 2 fake CPU devices each join through ``jax.distributed.initialize``
(coordinator on localhost, gloo CPU collectives) and train one stage in a shared directory; a third
subprocess trains the same stage alone on 4 fake devices (`multiprocess_check.py`). Skipped when
this jaxlib has no CPU collectives.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
CHECK = str(HERE / "multiprocess_check.py")
NO_COLLECTIVES = 3
TIMEOUT = 300
pytestmark = pytest.mark.slow  # three processes training a small stage, about 30 s


def _env(devices):
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
    "--xla_cpu_multi_thread_eigen=false",
  )


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  shared = tmp_path_factory.mktemp("two_processes")
  port = str(_free_port())
  workers = [
    subprocess.Popen(
      [sys.executable, CHECK, "worker", str(i), port, str(shared)],
      env=_env(2),
      cwd=HERE.parents[1],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = []
  try:
    for proc in workers:
      outputs.append(proc.communicate(timeout=TIMEOUT))
  finally:
    for proc in workers:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  if any(proc.returncode == NO_COLLECTIVES for proc in workers):
    pytest.skip(
      "this jaxlib has no CPU collectives (gloo): "
      + " ".join(err.strip().splitlines()[-1] for _, err in outputs if err.strip())
    )
  for proc, (_, err) in zip(workers, outputs):
    assert proc.returncode == 0, err[-4000:]
  single_dir = tmp_path_factory.mktemp("one_process")
  single = subprocess.run(
    [sys.executable, CHECK, "single", str(single_dir)],
    env=_env(4),
    cwd=HERE.parents[1],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    check=False,
  )
  assert single.returncode == 0, single.stderr[-4000:]
  return {
    "workers": [_last_json(out) for out, _ in outputs],
    "single": _last_json(single.stdout),
    "shared": shared,
  }


def test_two_processes_train_over_four_devices(runs):
  for i, worker in enumerate(runs["workers"]):
    assert (worker["process"], worker["processes"], worker["devices"]) == (i, 2, 4)
    # 10 groups padded to 12 for the 4 devices; each process feeds 6 rows to its 2 devices.
    assert worker["batches"] == [[12, 2]]
    assert worker["params_replicated"]
  assert runs["single"]["batches"] == [[12, 4]] and runs["single"]["devices"] == 4


def test_processes_agree_and_match_one_process(runs):
  a, b = runs["workers"]
  assert a["valid"] == b["valid"] and a["test"] == b["test"] and a["train_loss"] == b["train_loss"]
  single = runs["single"]
  assert a["selected_step"] == single["selected_step"]
  for x, y in zip(a["train_loss"], single["train_loss"]):
    assert abs(x - y) <= 1e-5 * abs(y)
  for split in ("valid", "test"):
    for key, value in single[split].items():
      assert abs(a[split][key] - value) <= 1e-5, (split, key)


def test_processes_agree_on_the_step_to_stop_at_after_a_signal(runs):
  # Process 1 alone received SIGTERM; the flag is agreed on every 2nd step, so both stop at 2.
  assert [w["preempt"] for w in runs["workers"]] == [[False, True, False]] * 2


def test_one_set_of_records_in_the_shared_directory(runs):
  stage = runs["shared"] / "main"
  lines = (stage / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
  result = json.loads((stage / "result.json").read_text())
  assert result["devices"] == 4 and result["valid"] == runs["workers"][0]["valid"]
  assert str(result["selected_step"]) in os.listdir(stage)  # the Orbax checkpoint of that step

"""Fixtures of the launcher tests: a tiny dataset folder, a tiny config file, subprocess env."""

import os
import pathlib
import sys

import pytest

from tests.train import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY_CONFIG = '''"""Tiny settings for launcher tests."""
import dataclasses
from solid_jax.train.train_config import TrainConfig


def get_config():
  return dataclasses.replace(TrainConfig(), backbone="gru4rec", dim=8, batch_size=64,
                             eval_batch_size=256, eval_negatives=9, epochs=2, lr=1e-2,
                             progress=False, tensorboard=False)
'''


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
  """Folder of a 40-user, 30-item S3-Rec dataset with 3 attribute classes."""
  return str(synthetic.write_s3rec(tmp_path_factory.mktemp("toy") / "toy"))


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("configs") / "tiny.py"
  path.write_text(TINY_CONFIG)
  return str(path)


@pytest.fixture(scope="session")
def launcher_env(tmp_path_factory):
  """Environment of launcher subprocesses: CPU, fast compiles, a shared compilation cache."""
  env = dict(os.environ)
  env.update(
    {
      "JAX_PLATFORMS": "cpu",
      "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
      "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "SOLID_JAX_CACHE": str(tmp_path_factory.mktemp("data_cache")),
      "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    }
  )
  return env


def python_module(module, *args):
  return [sys.executable, "-m", module, *args]

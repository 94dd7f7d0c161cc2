"""Fixtures of the training tests: tiny synthetic datasets on disk and a tiny TrainConfig."""

import dataclasses
import os

import jax
import pytest

from solid_jax.train import TrainConfig
from tests.train import synthetic


@pytest.fixture(autouse=True)
def fast_compile():
  """Tiny shapes: XLA's optimisation passes cost more than they save."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
  """A private Arrow cache for the datasets loaded by these tests."""
  path = tmp_path_factory.mktemp("solid_jax_cache")
  previous = os.environ.get("SOLID_JAX_CACHE")
  os.environ["SOLID_JAX_CACHE"] = str(path)
  yield path
  if previous is None:
    os.environ.pop("SOLID_JAX_CACHE", None)
  else:
    os.environ["SOLID_JAX_CACHE"] = previous


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory, data_cache):
  """Folder of a 40-user, 30-item S3-Rec dataset with 3 attribute classes."""
  del data_cache
  return str(synthetic.write_s3rec(tmp_path_factory.mktemp("toy") / "toy"))


@pytest.fixture(scope="session")
def toy_features_dataset(tmp_path_factory, data_cache):
  """Folder of the same kind of data in the UniSRec layout, with text and image features."""
  del data_cache
  return str(synthetic.write_unisrec(tmp_path_factory.mktemp("toy_mm") / "toy_mm"))


@pytest.fixture
def tiny_config(toy_dataset):
  """A TrainConfig that trains in seconds on the toy dataset."""
  return TrainConfig(
    dataset=toy_dataset,
    backbone="gru4rec",
    dim=8,
    batch_size=64,
    eval_batch_size=256,
    eval_negatives=9,
    epochs=2,
    lr=1e-2,
    progress=False,
    tensorboard=False,
  )


def replace(config, **kwargs):
  return dataclasses.replace(config, **kwargs)

"""Tests of the launcher flags: one flag per TrainConfig field, config files, --flagfile."""

import dataclasses
import os

from absl import flags
import pytest

from solid_jax.train import cli
from solid_jax.train.train_config import TrainConfig

CONFIGS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")


def _parse(*args):
  values = flags.FlagValues()
  cli.define_flags(values)
  values(["prog", *args])
  return values


def test_every_field_has_a_flag_with_its_default():
  values = _parse()
  for field in dataclasses.fields(TrainConfig):
    assert values[field.name].default == field.default, field.name
    assert values[field.name].help.endswith(field.metadata["help"])
  assert cli.config_from_flags(values, CONFIGS_DIR) == TrainConfig()


def test_flags_override_the_config_file():
  config = cli.config_from_flags(
    _parse(
      "--method=duet", "--epochs=3", "--lr=0.01", "--paper_compat", "--codebook=frozen", "--seed=4"
    ),
    CONFIGS_DIR,
  )
  assert (
    config.method,
    config.epochs,
    config.lr,
    config.paper_compat,
    config.codebook,
    config.seed,
  ) == ("duet", 3, 0.01, True, "frozen", 4)
  assert config.batch_size == 1024 and config.dim == 32


def test_data_parallel_flag_reaches_the_training_loop():
  from solid_jax.train import stages  # pylint: disable=import-outside-toplevel

  assert TrainConfig().data_parallel
  config = cli.config_from_flags(_parse("--data_parallel=false"), CONFIGS_DIR)
  assert config.data_parallel is False
  assert stages.loop_settings(config).data_parallel is False
  assert cli.config_from_flags(_parse("--nodata_parallel"), CONFIGS_DIR).data_parallel is False


def test_flagfile(tmp_path):
  flagfile = tmp_path / "run.flags"
  flagfile.write_text(
    "--method=apg\n--epochs=3\n--clip_t=0.1\n--consistency_weight=0.5\n"
    "--select_on=test\n--noprogress\n"
  )
  config = cli.config_from_flags(_parse(f"--flagfile={flagfile}"), CONFIGS_DIR)
  assert (
    config.method,
    config.epochs,
    config.clip_t,
    config.consistency_weight,
    config.select_on,
    config.progress,
  ) == ("apg", 3, 0.1, 0.5, "test", False)
  later = cli.config_from_flags(_parse(f"--flagfile={flagfile}", "--epochs=7"), CONFIGS_DIR)
  assert later.epochs == 7 and later.method == "apg"


def test_config_files_by_name_and_path(tmp_path):
  smoke = cli.config_from_flags(_parse("--config=smoke"), CONFIGS_DIR)
  assert (smoke.epochs, smoke.batch_size, smoke.progress) == (1, 256, False)
  assert cli.config_from_flags(_parse("--config=smoke", "--epochs=4"), CONFIGS_DIR).epochs == 4
  assert cli.config_from_flags(_parse("--config=quick"), CONFIGS_DIR).epochs == 5
  path = tmp_path / "mine.py"
  path.write_text(
    "from solid_jax.train.train_config import TrainConfig\n"
    "def get_config():\n  return TrainConfig(method='static', dim=16)\n"
  )
  mine = cli.config_from_flags(_parse(f"--config={path}"), CONFIGS_DIR)
  assert (mine.method, mine.dim) == ("static", 16)
  with pytest.raises(FileNotFoundError, match="default"):
    cli.config_from_flags(_parse("--config=nonexistent"), CONFIGS_DIR)


def test_invalid_choice_is_a_flag_error():
  with pytest.raises(flags.IllegalFlagValueError):
    _parse("--semantics=audio")
  # Methods and backbones are registry names (plugins add some): checked with the config.
  with pytest.raises(ValueError, match="method='vqvae'"):
    cli.config_from_flags(_parse("--method=vqvae"), CONFIGS_DIR)

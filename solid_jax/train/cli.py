"""absl flags for TrainConfig: one flag per field, plus ``--config`` and ``--workdir``.

The configuration of a launch is ``get_config()`` of the chosen config file
(``experiments/configs/<name>.py``, or a path to a ``.py`` file) with every flag that was given on
the command line (or in a ``--flagfile``) replacing its field. Flags left out keep the config
file's value, so a config file can change defaults without the flags hiding them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from absl import flags

from solid_jax.train.train_config import TrainConfig


def single_threaded_cpu_kernels() -> None:
  """Runs XLA's CPU matmul/conv kernels on the calling thread (``--xla_cpu_multi_thread_eigen``).

  On a few shared CPU cores this costs no speed for these small models, and it removes the
  scheduling of kernel work across threads as a possible source of run-to-run differences in the
  last bits. It only takes effect before the JAX backend starts (call it at launcher import); an
  explicit setting of the flag in ``XLA_FLAGS`` is kept.
  """
  current = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in current:
    os.environ["XLA_FLAGS"] = f"{current} --xla_cpu_multi_thread_eigen=false".strip()


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, *, with_workdir: bool = True) -> None:
  """Defines ``--config``, ``--workdir`` and one flag per TrainConfig field in ``flag_values``."""
  flags.DEFINE_string(
    "config",
    "default",
    "config file: a name in experiments/configs/ or a "
    "path to a .py file whose get_config() returns a TrainConfig; the other "
    "flags override its fields",
    flag_values=flag_values,
  )
  if with_workdir:
    flags.DEFINE_string(
      "workdir",
      None,
      "directory of the run (checkpoints, metrics, results)",
      flag_values=flag_values,
    )
  for field in dataclasses.fields(TrainConfig):
    define_field_flag(field, flag_values)


def define_field_flag(field: dataclasses.Field, flag_values: flags.FlagValues) -> None:
  """Defines the absl flag of one TrainConfig field (type from its default value)."""
  default, help_text = field.default, field.metadata.get("help", field.name)
  choices = field.metadata.get("choices")
  if choices:
    flags.DEFINE_enum(field.name, default, list(choices), help_text, flag_values=flag_values)
  elif isinstance(default, bool):
    flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
  elif isinstance(default, int):
    flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
  elif isinstance(default, float):
    flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
  else:
    flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)


def load_config_file(name_or_path: str, configs_dir: str | None = None) -> TrainConfig:
  """Calls ``get_config()`` of a config file.

  Args:
    name_or_path: a file path ending in ``.py``, or a bare name looked up as
      ``<configs_dir>/<name>.py``.
    configs_dir: where bare names are looked up.

  Returns:
    The TrainConfig it returns.
  """
  if name_or_path.endswith(".py") or os.sep in name_or_path:
    path = name_or_path
  else:
    if configs_dir is None:
      raise ValueError(f"config {name_or_path!r} is a bare name but no configs directory is set")
    path = os.path.join(configs_dir, f"{name_or_path}.py")
  if not os.path.exists(path):
    available = (
      sorted(f[:-3] for f in os.listdir(configs_dir) if f.endswith(".py") and not f.startswith("_"))
      if configs_dir and os.path.isdir(configs_dir)
      else []
    )
    raise FileNotFoundError(f"config file {path} not found (configs: {available})")
  spec = importlib.util.spec_from_file_location(f"_solid_jax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if not isinstance(config, TrainConfig):
    raise TypeError(f"{path}: get_config() returned {type(config).__name__}, not TrainConfig")
  return config


def overrides_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
  """The TrainConfig fields set explicitly on the command line or in a flagfile."""
  return {
    f.name: flag_values[f.name].value
    for f in dataclasses.fields(TrainConfig)
    if flag_values[f.name].present
  }


def config_from_flags(
  flag_values: flags.FlagValues = flags.FLAGS, configs_dir: str | None = None
) -> TrainConfig:
  """The config file's TrainConfig with the explicitly given flags applied."""
  base = load_config_file(flag_values["config"].value, configs_dir)
  return dataclasses.replace(base, **overrides_from_flags(flag_values))

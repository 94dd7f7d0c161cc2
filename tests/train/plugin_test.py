"""A backbone and a head registered from outside the package train through the library's entry
point (``stages.run_experiment``), and the launcher loads such a plugin by module or file path."""

import dataclasses
import os
import sys

from absl import flags
import jax
import numpy as np
import pytest

import solid_jax as sj
from solid_jax import plugins
from solid_jax.train import checkpoint as checkpoint_lib
from solid_jax.train import cli
from solid_jax.train import loop
from solid_jax.train import stages

PLUGIN = "tests.train.toy_plugin"
CONFIGS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")


@pytest.fixture(autouse=True)
def unregister_afterwards():
  """The registries are process-wide: leave them as the other tests expect them."""
  yield
  sj.models.BACKBONES.unregister("toy_mean")
  sj.models.HEADS.unregister("toy_scale")
  sj.models.METHODS.unregister("toy")
  for name in [n for n in sys.modules if n.endswith("toy_plugin")]:
    del sys.modules[name]


def test_plugin_backbone_and_head_train_through_run_experiment(tiny_config, tmp_path):
  config = dataclasses.replace(
    tiny_config, plugins=PLUGIN, backbone="toy_mean", method="toy", epochs=2
  )
  results = stages.run_experiment(config, str(tmp_path / "run"))
  assert results["config"]["backbone"] == "toy_mean" and results["config"]["plugins"] == PLUGIN
  assert np.isfinite(results["test_full"]["ndcg@10"]) and 0 <= results["test"]["auc"] <= 1
  history = (
    results["stages"]["main"]["history"]
    if "history" in results["stages"]["main"]
    else loop.stage_result(str(tmp_path / "run" / "main"))["history"]
  )
  losses = [h["train_loss"] for h in history]
  assert losses[-1] < losses[0]
  # The toy head's own parameter learned (the training entry point saw it through the registry).
  ckpts = checkpoint_lib.StageCheckpoints(str(tmp_path / "run" / "main"), read_only=True)
  try:
    params = ckpts.restore_params(results["stages"]["main"]["selected_step"])
  finally:
    ckpts.close()
  assert set(params) == {"backbone", "head"} and set(params["head"]) == {"scale"}
  assert not np.allclose(params["head"]["scale"], 1.0)


def test_plugin_model_is_a_regular_model():
  plugins.load(PLUGIN)
  cfg = sj.ModelConfig(backbone="toy_mean", head="toy_scale", num_items=20, seq_len=5, dim=8)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  batch = {
    "items": np.array([[1, 2, 0, 0, 0]]),
    "semantics": np.zeros((1, 5), np.int32),
    "target": np.array([3]),
    "target_semantic": np.array([0]),
  }
  logits, aux = jax.jit(model.apply)(params, batch)
  users = model.encode_users(params, batch)
  np.testing.assert_allclose(
    logits, np.sum(users * model.encode_items(params, batch["target"]), -1), rtol=1e-6
  )
  assert float(aux["aux_loss"]) == 0.0


@pytest.mark.parametrize("spec", [PLUGIN, os.path.join(os.path.dirname(__file__), "toy_plugin.py")])
def test_launcher_loads_a_plugin_by_module_or_file_path(spec):
  values = flags.FlagValues()
  cli.define_flags(values)
  values(["prog", f"--plugins={spec}", "--backbone=toy_mean", "--method=toy"])
  config = cli.config_from_flags(values, CONFIGS_DIR)
  assert (config.backbone, config.method, config.plugins) == ("toy_mean", "toy", spec)
  assert config.model_config("main", num_items=10, num_semantics=3).head == "toy_scale"


def test_unknown_plugin_or_backbone_is_a_clear_error():
  with pytest.raises(ValueError, match="plugin 'no_such.module' could not be loaded"):
    sj.train.TrainConfig(plugins="no_such.module")
  with pytest.raises(ValueError, match="backbone='mine'"):
    sj.train.TrainConfig(backbone="mine")

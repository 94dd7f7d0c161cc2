"""Tests of experiments.main (the comparison table) and experiments.plot (curves to PNG)."""

import json
import os
import subprocess

import matplotlib.image
import numpy as np
import pytest

from experiments import plot
from tests.experiments.conftest import REPO_ROOT, python_module


def _record(epoch, codebook):
  metrics = {k: 0.5 + 0.05 * epoch for k in ("auc", "uauc", "ndcg@10", "hr@10", "logloss")}
  train = {"bce": 0.6 - 0.05 * epoch}
  if codebook:
    train.update({"codebook/usage": 0.4 + 0.1 * epoch, "codebook/perplexity": 3.0 + epoch})
  return {
    "epoch": epoch,
    "step": 10 * epoch,
    "train_loss": 0.7 - 0.05 * epoch,
    "train": train,
    "valid": metrics,
    "samples_per_s": 1000.0,
    "seconds": 1.0,
  }


def test_plot_draws_every_stage_and_the_codebook(tmp_path):
  for stage, codebook in (("stage1", False), ("stage2", True)):
    (tmp_path / stage).mkdir()
    with open(tmp_path / stage / "metrics.jsonl", "w") as f:
      for epoch in (1, 2, 3):
        f.write(json.dumps(_record(epoch, codebook)) + "\n")
  out = plot.plot(str(tmp_path), str(tmp_path / "curves.png"), dpi=50)
  image = matplotlib.image.imread(out)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
  assert np.std(image[..., :3]) > 0.05  # not a blank canvas
  assert plot.load_stages(str(tmp_path)).keys() == {"stage1", "stage2"}


def test_plot_without_records_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plot.plot(str(tmp_path), str(tmp_path / "x.png"))


@pytest.mark.slow
def test_main_prints_the_comparison_table_and_resumes(
  tmp_path, toy_dataset, tiny_config_file, launcher_env
):
  command = python_module(
    "experiments.main",
    f"--workdir_root={tmp_path}",
    f"--dataset={toy_dataset}",
    f"--config={tiny_config_file}",
    "--methods=static,duet",
    "--epochs=1",
    "--backbone=gru4rec",
  )
  done = subprocess.run(
    command, cwd=REPO_ROOT, env=launcher_env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  assert lines[0].split()[:2] == ["method", "epoch"]
  assert [l.split()[0] for l in lines[2:4]] == ["static", "duet"]
  workdirs = sorted(os.listdir(tmp_path))
  assert workdirs == ["toy_gru4rec_duet_seed0", "toy_gru4rec_static_seed0"]
  results = json.loads((tmp_path / workdirs[0] / "results.json").read_text())
  assert f"{results['test']['uauc']:.4f}" in lines[3]
  again = subprocess.run(
    command, cwd=REPO_ROOT, env=launcher_env, capture_output=True, text=True, timeout=300
  )
  assert again.returncode == 0 and again.stdout.splitlines()[:4] == lines[:4]
  assert again.stderr.count("already finished") == 2

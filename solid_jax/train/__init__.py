"""Training: configs, the one training loop, stage orchestration, checkpoints and records.

- ``TrainConfig`` (``train_config.py``): every setting of a run, pure data.
- ``run_experiment(config, workdir)`` (``stages.py``): all stages of a method, resumable.
- ``summary_table(results_by_method)``: the static / DUET / SOLID comparison as text.
- ``train_stage`` (``loop.py``): one stage; ``StageCheckpoints`` (``checkpoint.py``): orbax.
- ``WorkdirLock``, ``Preempted`` (``reliability.py``): one writer per workdir; SIGTERM / SIGINT
  checkpoint at the next step and stop (launchers exit with ``PREEMPTED_EXIT_CODE``).
"""

from solid_jax.train.train_config import METHODS, SEMANTIC_SOURCES, TrainConfig, config_differences
from solid_jax.train.loop import LoopSettings, NonFiniteLossError, StageData, StageSpec, train_stage
from solid_jax.train.reliability import Preempted, PREEMPTED_EXIT_CODE, WorkdirLock
from solid_jax.train.reliability import WorkdirLockedError
from solid_jax.train.stages import (
  Stage1MismatchError,
  WorkdirError,
  run_experiment,
  summary_table,
  with_semantics,
)
from solid_jax.train.step import make_train_step, weighted_bce
from solid_jax.train.optim import make_optimizer
from solid_jax.train.rows import semantic_view

__all__ = [
  "METHODS",
  "NonFiniteLossError",
  "PREEMPTED_EXIT_CODE",
  "Preempted",
  "SEMANTIC_SOURCES",
  "Stage1MismatchError",
  "StageData",
  "StageSpec",
  "TrainConfig",
  "WorkdirError",
  "WorkdirLock",
  "WorkdirLockedError",
  "config_differences",
  "make_optimizer",
  "make_train_step",
  "run_experiment",
  "semantic_view",
  "summary_table",
  "LoopSettings",
  "train_stage",
  "weighted_bce",
  "with_semantics",
]

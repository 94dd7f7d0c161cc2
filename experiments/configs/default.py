"""The SOLID authors' settings (SPEC sections 2 and 3), validation-UAUC model selection.

  python -m experiments.train --config=default --dataset=ml-100k --backbone=sasrec \
      --method=solid --workdir=/tmp/solid_ml100k --epochs=10 --seed=0
"""

from solid_jax.train.train_config import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig()

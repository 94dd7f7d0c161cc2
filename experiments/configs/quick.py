"""Minutes on 2 CPU cores: the default settings with 5 epochs per stage (the main comparison).

python -m experiments.train --config=quick --method=solid --workdir=/tmp/solid_quick
"""

import dataclasses

from solid_jax.train.train_config import TrainConfig


def get_config() -> TrainConfig:
  return dataclasses.replace(TrainConfig(), epochs=5)

"""A seconds-long smoke run: 1 epoch, small batches, no progress bar (checks that a setup works).

python -m experiments.train --config=smoke --method=solid --workdir=/tmp/solid_smoke
"""

import dataclasses

from solid_jax.train.train_config import TrainConfig


def get_config() -> TrainConfig:
  return dataclasses.replace(
    TrainConfig(), epochs=1, batch_size=256, eval_batch_size=4096, progress=False, tensorboard=False
  )

"""GRU4Rec next to S3-Rec's SASRec settings (`s3rec_sasrec`): the same data, objective, optimiser,
early stopping and evaluation, with a one-layer GRU (hidden 64) in place of the transformer.

  python -m experiments.train --config=s3rec_gru4rec --dataset=../shared/data/beauty \
      --method=static --workdir=/tmp/gru4rec_beauty --seed=0
"""

import dataclasses

from solid_jax.train.train_config import TrainConfig


def get_config() -> TrainConfig:
  return dataclasses.replace(
    TrainConfig(),
    backbone="gru4rec",
    dim=64,
    embedding="layer_norm",
    target_tower="embedding",
    static_head_layers=0,
    head_layers=2,
    init_std=0.02,
    layer_norm_eps=1e-12,
    dropout_embedding=0.3,
    seq_len=50,
    objective="positions",
    pack_sequences=True,
    train_negatives=1,
    eval_negatives=99,
    batch_size=256,
    lr=1e-3,
    epochs=200,
    patience=10,
    stop_rule="select",
    select_metric="full:ndcg@20",
    eval_protocol="both",
    eval_batch_size=8192,
  )

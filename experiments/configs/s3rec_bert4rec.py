"""BERT4Rec next to S3-Rec's SASRec settings (`s3rec_sasrec`), trained with its cloze objective.

The same data, optimiser, batch, early stopping and evaluation as `s3rec_sasrec`; the encoder is
bidirectional (2 blocks, 2 heads, hidden 64, GELU, layer norm eps 1e-12, N(0, 0.02) init), trained
as BERT4Rec (Sun et al., CIKM 2019): a share of every row's items (0.6, the paper's choice for
Beauty) is replaced by [MASK] and predicted; a user is scored from the state at a [MASK] appended
after the newest item. Dropout 0.1 (the paper's). Where this differs from the paper: BCE against one
uniform negative per masked item (as the SASRec config) instead of a softmax over the catalogue,
Adam lr 1e-3 and at most 200 epochs (the paper: lr 1e-4, 400k steps).

  python -m experiments.train --config=s3rec_bert4rec --dataset=../shared/data/beauty \
      --method=static --workdir=/tmp/bert4rec_beauty --seed=0
"""

import dataclasses

from solid_jax.train.train_config import TrainConfig


def get_config() -> TrainConfig:
  return dataclasses.replace(
    TrainConfig(),
    method="static",
    backbone="bert4rec",
    dim=64,
    num_heads=2,
    ff_dim=256,
    ff_activation="gelu",
    embedding="layer_norm",
    position_alignment="end",
    target_tower="embedding",
    static_head_layers=0,
    head_layers=2,
    init_std=0.02,
    layer_norm_eps=1e-12,
    dropout_embedding=0.1,
    dropout_hidden=0.1,
    dropout_attention=0.1,
    seq_len=50,
    objective="cloze",
    mask_rate=0.6,
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

"""SASRec as released with S3-Rec (CIKM 2020, aHuiWang/CIKM2020-S3Rec): the published baseline.

Hidden 64, 2 blocks, 2 heads, GELU, feed-forward 4 x 64, layer norm eps 1e-12, N(0, 0.02) init,
dropout 0.5 on the embedding, the hidden states and the attention probabilities, max sequence
length 50 (the newest item at position 49, as their left-padded input), the item embedding shared
with the output, trained on every position with one uniform negative per position (binary cross-
entropy), Adam lr 1e-3, batch 256 sequences, up to 200 epochs, early stopping as S3-Rec's
``run_finetune_full.py``: stop after 10 epochs in a row without a better validation full NDCG@20,
and select the epoch with the best one.

  python -m experiments.train --config=s3rec_sasrec --dataset=../shared/data/beauty \
      --method=static --workdir=/tmp/s3rec_beauty --seed=0

The static head has no layer (SASRec scores the items with its state); the dynamic heads (duet,
apg, solid, solid_apg) put --head_layers=2 generated layers on that state.
"""

import dataclasses

from solid_jax.train.train_config import TrainConfig


def get_config() -> TrainConfig:
  return dataclasses.replace(
    TrainConfig(),
    backbone="sasrec",
    dim=64,
    sasrec_layers=2,
    num_heads=2,
    ff_dim=256,
    ff_activation="gelu",
    causal=True,
    embedding="layer_norm",
    position_alignment="end",
    target_tower="embedding",
    static_head_layers=0,
    head_layers=2,
    init_std=0.02,
    layer_norm_eps=1e-12,
    dropout_embedding=0.5,
    dropout_hidden=0.5,
    dropout_attention=0.5,
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

"""Tests of TrainConfig: defaults, validation, stages and per-stage model configs."""

import dataclasses

import pytest

from solid_jax.train import train_config as config_lib
from solid_jax.train.train_config import TrainConfig


def test_defaults_are_the_spec_settings():
  c = TrainConfig()
  assert (c.batch_size, c.lr, c.dim, c.seq_len, c.seed) == (1024, 1e-3, 32, 10, 0)
  assert (c.train_negatives, c.eval_negatives) == (4, 99)
  assert (c.clip_t, c.consistency_weight, c.commitment_weight) == (0.01, 0.1, 0.25)
  assert c.codebook == "straight_through" and not c.paper_compat
  assert c.select_on == "valid" and c.method == "solid" and c.backbone == "sasrec"


@pytest.mark.parametrize(
  "field,value",
  [
    ("method", "vqvae"),
    ("backbone", "bert"),
    ("codebook", "learned"),
    ("semantics", "audio"),
    ("select_on", "train"),
    ("batch_size", 0),
    ("epochs", -1),
    ("lr", 0.0),
  ],
)
def test_invalid_values_are_rejected(field, value):
  with pytest.raises(ValueError, match=field):
    TrainConfig(**{field: value})


def test_each_bounded_integer_field_is_checked_once_at_its_bound():
  names = [n for group in config_lib._INTEGER_LOWER_BOUNDS.values() for n in group]
  assert len(names) == len(set(names))
  fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
  for bound, group in config_lib._INTEGER_LOWER_BOUNDS.items():
    for name in group:
      assert fields[name].type in (int, "int"), name
      with pytest.raises(ValueError, match=rf"TrainConfig\.{name}={bound - 1} must be >= {bound}"):
        TrainConfig(**{name: bound - 1})
      TrainConfig(**{name: bound})


@pytest.mark.parametrize(
  "method,semantics,stages",
  [
    ("static", "labels", ("main",)),
    ("duet", "id", ("main",)),
    ("apg", "text", ("main",)),
    ("solid", "labels", ("stage1", "stage2")),
    ("solid_apg", "text_image", ("stage1", "stage2")),
    ("solid", "id", ("stage0", "stage1", "stage2")),
    ("solid", "id_text_image", ("stage0", "stage1", "stage2")),
  ],
)
def test_stages_of_each_method(method, semantics, stages):
  assert TrainConfig(method=method, semantics=semantics).stages() == stages


def test_stage_epochs_default_to_epochs():
  c = TrainConfig(epochs=7, stage1_epochs=3)
  assert [c.epochs_of(s) for s in ("stage0", "stage1", "stage2", "main")] == [7, 3, 7, 7]


def test_model_configs_per_stage():
  c = TrainConfig(
    method="solid_apg",
    backbone="gru4rec",
    dim=16,
    clip_t=0.1,
    consistency_weight=0.5,
    codebook="frozen",
    paper_compat=True,
  )
  s0 = c.model_config("stage0", num_items=50, num_semantics=6)
  s1 = c.model_config("stage1", num_items=50, num_semantics=6)
  s2 = c.model_config("stage2", num_items=50, num_semantics=6)
  assert (s0.head, s0.num_items) == ("duet", 50)
  assert (s1.head, s1.num_items, s1.num_semantics) == ("apg", 6, 6)
  assert (s2.head, s2.generator, s2.num_items, s2.num_semantics) == ("solid", "apg", 50, 6)
  assert (s2.clip_t, s2.consistency_weight, s2.codebook, s2.paper_compat) == (
    0.1,
    0.5,
    "frozen",
    True,
  )
  assert all(m.backbone == "gru4rec" and m.dim == 16 for m in (s0, s1, s2))
  main = TrainConfig(method="static").model_config("main", num_items=50, num_semantics=6)
  assert main.head == "static"
  with pytest.raises(ValueError, match="stage"):
    c.model_config("stage3", num_items=50, num_semantics=6)


def test_config_differences_name_fields_and_ignore_runtime_fields():
  a = TrainConfig().to_dict()
  b = dataclasses.replace(
    TrainConfig(),
    lr=0.01,
    progress=False,
    method="duet",
    checkpoint_every_steps=100,
    check_every_steps=7,
    data_parallel=False,
  ).to_dict()
  assert config_lib.config_differences(a, b) == ["lr: 0.001 -> 0.01", "method: 'solid' -> 'duet'"]


def test_dict_round_trip_and_unknown_fields():
  c = TrainConfig(method="apg", epochs=3)
  assert TrainConfig.from_dict(c.to_dict()) == c
  with pytest.raises(ValueError, match="unknown TrainConfig fields"):
    TrainConfig.from_dict({**c.to_dict(), "dropout": 0.1})

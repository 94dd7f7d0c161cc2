"""BERT4Rec's cloze objective: the masked training rows, the [MASK] readout, and that the state a
cloze model scores candidates with is the one its training positions learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import solid_jax as sj
from solid_jax.train import step as step_lib
from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib
from solid_jax.train.train_config import TrainConfig
from solid_jax.train.full_eval import FullEvaluator
from tests.models.conftest import NUM_ITEMS, config, make_batch

CLOZE = dict(
  cloze=True,
  embedding="layer_norm",
  target_tower="embedding",
  head_layers=0,
  position_alignment="end",
  ff_activation="gelu",
  seq_len=10,
)


@pytest.fixture(scope="module")
def toy(toy_dataset):
  ds = sj.data.load_dataset(toy_dataset)
  return ds, sj.data.make_splits(ds, seq_len=10, train_negatives=2, eval_negatives=9, seed=0)


def test_cloze_rows_mask_training_events_only(toy):
  ds, splits = toy
  rows = sj.data.cloze_rows(ds, splits, 0, mask_rate=0.3)
  again = sj.data.cloze_rows(ds, splits, 0, mask_rate=0.3)
  other = sj.data.cloze_rows(ds, splits, 1, mask_rate=0.3)
  jax.tree.map(np.testing.assert_array_equal, rows, again)
  assert not np.array_equal(rows["items"], other["items"])
  mask = ds.num_items
  masked_total = real_total = 0
  for r, user in enumerate(rows["user"]):
    seq = ds.user_sequence(user)
    n = len(seq)
    want = seq[max(0, n - 2 - 10) : n - 2]  # the last L training events e_0 .. e_{n-3}
    m = len(want)
    got = rows["items"][r]
    assert (got[m:] == 0).all() and (got[:m] != 0).all()
    is_mask = got[:m] == mask
    assert is_mask.any(), "every row has a masked position"
    np.testing.assert_array_equal(got[:m][~is_mask], want[~is_mask])
    np.testing.assert_array_equal(rows["target"][r, :m, 0][is_mask], want[is_mask])
    assert (rows["target"][r, :m][~is_mask] == 0).all() and (rows["target"][r, m:] == 0).all()
    assert (rows["label"][r, :m, 0] == is_mask).all() and (rows["label"][r, :, 1:] == 0).all()
    negs = rows["target"][r, :m, 1:][is_mask]
    assert (negs > 0).all() and not np.isin(negs, seq).any()
    assert (rows["semantics"][r, :m][is_mask] == 0).all()
    masked_total += is_mask.sum()
    real_total += m
  assert 0.25 < masked_total / real_total < 0.45  # 0.3, plus the one forced per row
  with pytest.raises(ValueError, match="mask_rate"):
    sj.data.cloze_rows(ds, splits, 0, mask_rate=0.0)


def test_append_mask_after_the_newest_item():
  cfg = config("bert4rec", "static", **{**CLOZE, "seq_len": 4})
  m = cfg.mask_id
  items = jnp.array([[5, 6, 0, 0], [1, 2, 3, 4]])
  np.testing.assert_array_equal(
    sj.models.base.append_mask(items, cfg), [[5, 6, m, 0], [2, 3, 4, m]]
  )
  # A row cut to 2 slots (length groups) gains a slot rather than losing its oldest item.
  np.testing.assert_array_equal(sj.models.base.append_mask(items[:1, :2], cfg), [[5, 6, m]])


def test_readout_is_the_state_training_learns_at_a_masked_position():
  """encode_users (the state at an appended [MASK]) == apply_positions at that [MASK]."""
  cfg = config("bert4rec", "static", **CLOZE)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  assert sj.models.item_table(params).shape[0] == NUM_ITEMS + 1
  batch = make_batch(1, lengths=[3, 9, 10, 1])
  users = model.encode_users(params, batch)
  n = (batch["items"] != 0).sum(1)
  items = np.array(sj.models.base.append_mask(jnp.asarray(batch["items"]), cfg))
  target = np.zeros(items.shape + (NUM_ITEMS - 1,), np.int32)
  at = np.minimum(n, 9)
  target[np.arange(4), at] = np.arange(1, NUM_ITEMS)
  logits, _ = model.apply_positions(params, {"items": items, "target": target})
  want = np.asarray(users) @ np.asarray(sj.models.item_table(params)[1:NUM_ITEMS]).T
  np.testing.assert_allclose(np.asarray(logits)[np.arange(4), at], want, rtol=1e-5, atol=1e-6)
  # apply (the sampled protocol) scores with the same state.
  scored, _ = model.apply(params, batch)
  np.testing.assert_allclose(
    scored, np.sum(users * model.encode_items(params, batch["target"]), -1), rtol=1e-5, atol=1e-6
  )


def test_cloze_training_step_reaches_the_mask_embedding(toy):
  ds, splits = toy
  cfg = sj.ModelConfig(
    backbone="bert4rec",
    head="static",
    num_items=ds.num_items,
    num_semantics=ds.num_semantics,
    dim=8,
    num_heads=2,
    **CLOZE,
  )
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  rows = sj.data.cloze_rows(ds, splits, 0, mask_rate=0.3)
  batch = next(sj.data.batches(rows, 16, seed=0, epoch=0))
  tx = optim_lib.make_optimizer(model, params, 1e-2)
  grads = jax.grad(lambda p: _loss(model, p, batch))(params)
  assert float(jnp.abs(sj.models.item_table(grads)[cfg.mask_id]).sum()) > 0
  assert float(optax.global_norm(grads)) > 0
  # Packed cloze rows score as unpacked ones (bidirectional attention kept within a user).
  packed = sj.data.pack_rows(batch)
  np.testing.assert_allclose(_loss(model, params, packed), _loss(model, params, batch), rtol=1e-5)
  step = step_lib.make_train_step(model, tx)
  _, _, scalars = step(
    params, tx.init(params), {k: v for k, v in batch.items() if k != "user"}, np.int32(0)
  )
  assert float(scalars["weight"]) == float((batch["target"][..., 0] != 0).sum() * 3)


def _loss(model, params, batch):
  logits, _ = model.apply_positions(params, rows_lib.model_batch(batch, None, with_weight=True))
  weights = jnp.broadcast_to(step_lib._position_weights(batch)[:, :, None], logits.shape)
  return step_lib.weighted_bce(logits.reshape(-1), batch["label"].reshape(-1), weights.reshape(-1))


def test_full_ranking_of_a_cloze_model_equals_every_pair():
  cfg = config("bert4rec", "static", **CLOZE)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(2))
  batch = make_batch(3, batch_size=12)
  seen = batch["items"].copy()
  users = {
    "items": batch["items"],
    "semantics": batch["semantics"],
    "target": batch["target"],
    "seen": seen,
  }
  u = np.asarray(model.encode_users(params, batch))
  scores = u @ np.asarray(model.encode_items(params, jnp.arange(NUM_ITEMS))).T
  want = sj.metrics.evaluate_full(scores, batch["target"], seen)
  got = FullEvaluator(model, users, user_batch=5, item_tile=7)(params)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key


def test_cloze_config_checks():
  TrainConfig(backbone="bert4rec", method="static", objective="cloze", pack_sequences=True)
  with pytest.raises(ValueError, match="cloze"):
    TrainConfig(backbone="sasrec", causal=True, method="static", objective="cloze")
  with pytest.raises(ValueError, match="cloze"):
    TrainConfig(backbone="bert4rec", method="duet", objective="cloze")
  with pytest.raises(ValueError, match="mask_rate"):
    TrainConfig(backbone="bert4rec", method="static", objective="cloze", mask_rate=1.5)
  with pytest.raises(ValueError, match="cloze"):
    sj.ModelConfig(backbone="sasrec", head="static", cloze=True)
  cfg = TrainConfig(backbone="bert4rec", method="static", objective="cloze")
  assert cfg.model_config("main", num_items=5, num_semantics=3).cloze

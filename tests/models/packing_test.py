"""Packed position rows (``sj.data.pack_rows``): the layout, and that a packed batch trains as the
unpacked one does (same logits at every real position, same loss, same gradients), for the static
head and for the dynamic heads (DUET, APG, SOLID), whose generators' GRUs restart at every
segment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import solid_jax as sj
from solid_jax.train import step as step_lib
from solid_jax.train import optim as optim_lib
from solid_jax.train import rows as rows_lib
from tests.models.conftest import NUM_ITEMS, config, item_semantic
from tests.models.positions_test import PUBLISHED

SEQ_LEN = 12


def _rows(seed, users=37, candidates=2):
  """Right-padded position rows with lengths 1..L (a few of L), as ``position_rows`` makes them."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, SEQ_LEN + 1, size=users)
  lengths[:3] = SEQ_LEN
  items = rng.integers(1, NUM_ITEMS, size=(users, SEQ_LEN)).astype(np.int32)
  live = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
  items[~live] = 0
  target = rng.integers(1, NUM_ITEMS, size=(users, SEQ_LEN, candidates)).astype(np.int32)
  target[~live] = 0
  label = np.zeros(target.shape, np.float32)
  label[..., 0] = live
  sem = item_semantic()
  weight = np.ones(users, np.float32)
  weight[-2:] = 0.0  # padding rows of a last batch
  return {
    "user": np.arange(users, dtype=np.int32),
    "items": items,
    "semantics": sem[items],
    "target": target,
    "target_semantic": sem[target],
    "label": label,
    "weight": weight,
  }


def test_layout_keeps_every_real_position_once():
  rows = _rows(0)
  packed = sj.data.pack_rows(rows)
  r, length = packed["items"].shape
  assert length == SEQ_LEN and r % sj.data.packing.ROW_MULTIPLE == 0
  assert "user" not in packed and packed["weight"].shape == (r, length)
  real = rows["items"] != 0
  kept = real & (rows["weight"][:, None] > 0)
  assert np.count_nonzero(packed["items"]) == kept.sum()
  assert packed["target"].shape == (r, length, 2)
  # Fewer rows than users, and first-fit decreasing is within one row per bin of the ideal.
  assert (
    r < len(rows["items"])
    and np.count_nonzero(packed["items"].any(1)) <= -(-kept.sum() // length) + 3
  )
  # Every real (item, candidate) multiset is kept, and each segment is one user's row in order.
  for row in range(r):
    seg = packed["segment"][row]
    used = seg != 0
    assert np.all(used[: used.sum()]), "segments are contiguous from the row start"
    for s in np.unique(seg[used]):
      cols = np.flatnonzero(seg == s)
      assert np.array_equal(packed["slot"][row, cols], np.arange(cols.size))
      span = packed["span"][row, cols]
      assert np.all(span == cols.size)
      matches = [
        u
        for u in range(len(rows["items"]))
        if rows["weight"][u] > 0
        and real[u].sum() == cols.size
        and np.array_equal(rows["items"][u, : cols.size], packed["items"][row, cols])
        and np.array_equal(rows["target"][u, : cols.size], packed["target"][row, cols])
      ]
      assert matches
  assert np.all(packed["weight"][packed["items"] != 0] == 1.0)
  assert np.all(packed["weight"][packed["items"] == 0] == 0.0)


def test_layout_errors_and_edges():
  rows = _rows(1, users=8)
  left = dict(rows, items=rows["items"][:, ::-1].copy())
  with pytest.raises(ValueError, match="right-padded"):
    sj.data.pack_rows(left)
  with pytest.raises(ValueError, match="items int"):
    sj.data.pack_rows({"target": rows["target"]})
  empty = sj.data.pack_rows(dict(rows, weight=np.zeros(8, np.float32)), row_multiple=1)
  assert empty["items"].shape == (1, SEQ_LEN) and not empty["items"].any()


def test_packed_batches_are_the_same_users_as_batches():
  rows = _rows(2, users=50)
  plain = list(sj.data.batches(rows, 16, seed=3, epoch=1, start_step=1))
  packed = list(sj.data.packed_batches(rows, 16, seed=3, epoch=1, start_step=1))
  assert len(plain) == len(packed) == 3
  for a, b in zip(plain, packed):
    kept = (a["items"] != 0) & (a["weight"][:, None] > 0)
    assert sorted(a["items"][kept].tolist()) == sorted(b["items"][b["items"] != 0].tolist())


def _loss(model, params, batch):
  """BCE over the real positions plus the head's auxiliary losses (SOLID's codebook terms)."""
  logits, aux = model.apply_positions(params, rows_lib.model_batch(batch, None, with_weight=True))
  weights = jnp.broadcast_to(step_lib._position_weights(batch)[:, :, None], logits.shape)
  bce = step_lib.weighted_bce(logits.reshape(-1), batch["label"].reshape(-1), weights.reshape(-1))
  return bce + aux["aux_loss"], (logits, aux)


GRU4REC = dict(embedding="layer_norm", target_tower="embedding")
# (backbone, head, generator, codebook, options); dropout is 0, so both layouts see one function.
PACKABLE = {
  "sasrec_end": ("sasrec", "static", "duet", "straight_through", PUBLISHED),
  "sasrec_start": (
    "sasrec",
    "static",
    "duet",
    "straight_through",
    {**PUBLISHED, "position_alignment": "start"},
  ),
  "gru4rec": ("gru4rec", "static", "duet", "straight_through", GRU4REC),
  "sasrec_duet": ("sasrec", "duet", "duet", "straight_through", PUBLISHED),
  "sasrec_apg": ("sasrec", "apg", "apg", "straight_through", PUBLISHED),
  "sasrec_solid": ("sasrec", "solid", "duet", "straight_through", PUBLISHED),
  "sasrec_solid_apg_ema": ("sasrec", "solid", "apg", "ema", PUBLISHED),
  "sasrec_solid_embedding_space": (
    "sasrec",
    "solid",
    "duet",
    "frozen",
    {**PUBLISHED, "quantize_space": "embedding"},
  ),
  "gru4rec_solid": ("gru4rec", "solid", "duet", "straight_through", GRU4REC),
}


@pytest.mark.parametrize("name", list(PACKABLE))
def test_packed_batch_scores_and_trains_as_unpacked(name):
  backbone, head, generator, codebook, options = PACKABLE[name]
  cfg = config(backbone, head, generator, codebook, **options, seq_len=SEQ_LEN)
  assert cfg.packable
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  rows = _rows(3)
  packed = sj.data.pack_rows(rows)
  loss_and_grad = jax.value_and_grad(lambda p, b: _loss(model, p, b), has_aux=True)
  (loss_a, (logits_a, aux_a)), grad_a = loss_and_grad(params, rows)
  (loss_b, (logits_b, aux_b)), grad_b = loss_and_grad(params, packed)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
  np.testing.assert_allclose(aux_b["aux_loss"], aux_a["aux_loss"], rtol=1e-5, atol=1e-7)
  if head == "solid":  # the codebook sees the same real positions
    assert float(aux_a["aux_loss"]) > 0
    np.testing.assert_array_equal(aux_b["codebook/counts"], aux_a["codebook/counts"])
  if codebook == "ema" and head == "solid":
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      aux_b["codebook_state"],
      aux_a["codebook_state"],
    )
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)  # noqa: E731
  jax.tree_util.tree_map(chex_close, grad_b, grad_a)
  assert float(optax.global_norm(grad_a)) > 0
  if head != "static":  # the generators learn from packed rows too
    generators = {k: v for k, v in grad_b["head"].items() if "generator" in k}
    assert generators and all(float(optax.global_norm(g)) > 0 for g in generators.values())
  # Every real position's logits are where pack_rows put it.
  for row, col in zip(*np.nonzero(packed["items"])):
    s = packed["segment"][row, col]
    first = np.flatnonzero(packed["segment"][row] == s)[0]
    matches = [
      u
      for u in range(len(rows["items"]))
      if rows["weight"][u] > 0
      and np.count_nonzero(rows["items"][u]) == packed["span"][row, col]
      and np.array_equal(
        rows["items"][u, : packed["span"][row, col]],
        packed["items"][row, first : first + packed["span"][row, col]],
      )
    ]
    # Users with the same history score alike, so any of them will do.
    np.testing.assert_allclose(
      logits_b[row, col], logits_a[matches[0], packed["slot"][row, col]], rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("name", ["sasrec_end", "sasrec_solid_apg_ema"])
def test_train_step_on_packed_rows_matches_unpacked(name):
  backbone, head, generator, codebook, options = PACKABLE[name]
  cfg = config(backbone, head, generator, codebook, **options, seq_len=SEQ_LEN)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  tx = optim_lib.make_optimizer(model, params, 1e-2)
  step = step_lib.make_train_step(model, tx)
  rows = _rows(4)
  out = {}
  for name, batch in (("plain", rows), ("packed", sj.data.pack_rows(rows))):
    p, o = jax.tree_util.tree_map(jnp.copy, (params, tx.init(params)))
    p, o, scalars = step(p, o, {k: v for k, v in batch.items() if k != "user"}, np.int32(0))
    out[name] = (p, scalars)
  assert float(out["packed"][1]["weight"]) == float(out["plain"][1]["weight"]) > 0
  np.testing.assert_allclose(out["packed"][1]["loss"], out["plain"][1]["loss"], rtol=1e-5)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    out["packed"][0],
    out["plain"][0],
  )


@pytest.fixture
def unpackable_head():
  """A plugin head that declines packed rows (a DUET whose ``packable`` is False)."""

  @sj.models.HEADS.register("unpackable_duet_test", replace=True)
  class UnpackableDuet(sj.models.HEADS["duet"]):
    packable = False

  yield "unpackable_duet_test"
  sj.models.HEADS.unregister("unpackable_duet_test")


def test_models_that_cannot_take_packed_rows_say_so(unpackable_head):
  # A backbone that is not positionwise has no apply_positions at all.
  assert not config("din", "solid", "duet", seq_len=SEQ_LEN).packable
  cfg = config("sasrec", unpackable_head, "duet", **PUBLISHED, seq_len=SEQ_LEN)
  assert cfg.positionwise and not cfg.packable
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  packed = sj.data.pack_rows(_rows(5))
  with pytest.raises(ValueError, match="packed rows"):
    model.apply_positions(params, rows_lib.model_batch(packed, None, with_weight=True))

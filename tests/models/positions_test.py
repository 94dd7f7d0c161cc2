"""Training on every position, SASRec-as-published options, dropout and the factorised encoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from tests.models.conftest import HEADS, NUM_ITEMS, ROLLED, config, item_semantic, make_batch

# The SASRec of S3-Rec's release (small): causal blocks, GELU, LN embedding, end-aligned
# positions, shared item embedding as the target tower, N(0, 0.02) init.
PUBLISHED = dict(
  causal=True,
  sasrec_layers=2,
  num_heads=2,
  ff_dim=32,
  ff_activation="gelu",
  embedding="layer_norm",
  position_alignment="end",
  target_tower="embedding",
  init_std=0.02,
  layer_norm_eps=1e-12,
  dim=16,
)


def _positions_batch(seed, batch_size=4, seq_len=10, candidates=3):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, seq_len + 1, size=batch_size)
  lengths[0] = seq_len
  items = rng.integers(1, NUM_ITEMS, size=(batch_size, seq_len)).astype(np.int32)
  live = np.arange(seq_len)[None, :] < lengths[:, None]
  items[~live] = 0
  target = rng.integers(1, NUM_ITEMS, size=(batch_size, seq_len, candidates)).astype(np.int32)
  target[~live] = 0
  sem = item_semantic()
  return {"items": items, "semantics": sem[items], "target": target, "target_semantic": sem[target]}


# With end-aligned positions a prefix inside a longer sequence sees other position embeddings
# than the same prefix on its own (as in a left-padded SASRec); start alignment makes every
# position exactly its prefix's row.
CASES = [
  ("sasrec", {**PUBLISHED, "position_alignment": "start"}),
  ("gru4rec", dict(embedding="layer_norm", target_tower="embedding")),
]


@pytest.mark.parametrize("head,generator", HEADS)
@pytest.mark.parametrize("backbone,options", CASES, ids=["sasrec_published", "gru4rec"])
def test_every_position_equals_the_row_of_its_prefix(backbone, options, head, generator):
  """apply_positions at position t == apply on the history items[:t+1] with target[t]."""
  cfg = config(backbone, head, generator, **options)
  model = sj.make_model(cfg, scan_unroll=ROLLED)
  params = model.init(jax.random.key(1))
  batch = _positions_batch(0)
  logits, aux = jax.jit(model.apply_positions)(params, batch)
  b, length, c = batch["target"].shape
  assert logits.shape == (b, length, c)
  # Rows: every (user, position t) with its prefix as a right-padded history.
  rows = {"items": [], "target": []}
  index = []
  for i in range(b):
    for t in range(length):
      if batch["items"][i, t] == 0:
        continue
      for j in range(c):
        hist = np.zeros(length, np.int32)
        hist[: t + 1] = batch["items"][i, : t + 1]
        rows["items"].append(hist)
        rows["target"].append(batch["target"][i, t, j])
        index.append((i, t, j))
  sem = item_semantic()
  rows = {"items": np.stack(rows["items"]), "target": np.asarray(rows["target"], np.int32)}
  rows.update(semantics=sem[rows["items"]], target_semantic=sem[rows["target"]])
  want, _ = jax.jit(model.apply)(params, rows)
  got = np.asarray(logits)[tuple(np.asarray(index).T)]
  np.testing.assert_allclose(got, np.asarray(want), rtol=2e-4, atol=2e-5)
  assert np.isfinite(float(aux["aux_loss"]))


def test_end_aligned_last_position_equals_the_whole_history_row():
  model = sj.make_model(config("sasrec", "duet", **PUBLISHED))
  params = model.init(jax.random.key(1))
  batch = _positions_batch(3)
  logits, _ = model.apply_positions(params, batch)
  last = (batch["items"] != 0).sum(1) - 1
  rows = {k: batch[k] for k in ("items", "semantics")}
  for j in range(batch["target"].shape[2]):
    rows["target"] = batch["target"][np.arange(4), last, j]
    want, _ = model.apply(params, rows)
    np.testing.assert_allclose(
      np.asarray(logits)[np.arange(4), last, j], want, rtol=2e-4, atol=2e-5
    )


def test_apply_positions_only_for_causal_backbones():
  assert sj.make_model(config("sasrec", "static")).apply_positions is None  # not causal
  assert sj.make_model(config("bert4rec", "static")).apply_positions is None
  assert sj.make_model(config("din", "duet")).apply_positions is None
  assert sj.make_model(config("sasrec", "static", causal=True)).apply_positions is not None


@pytest.mark.parametrize("head,generator", [("static", "duet"), ("solid", "duet")])
def test_every_parameter_learns_through_apply_positions(head, generator):
  cfg = config(
    "sasrec",
    head,
    generator,
    dropout_embedding=0.2,
    dropout_hidden=0.2,
    dropout_attention=0.2,
    **PUBLISHED,
  )
  model = sj.make_model(cfg, scan_unroll=ROLLED)
  params = model.init(jax.random.key(0))
  batch = _positions_batch(1)
  labels = np.zeros(batch["target"].shape, np.float32)
  labels[..., 0] = 1.0

  def loss(p):
    logits, aux = model.apply_positions(p, batch, train=True, key=jax.random.key(3))
    live = (batch["items"] != 0)[..., None]
    bce = jnp.where(
      live, jax.nn.softplus(-logits) * labels + jax.nn.softplus(logits) * (1 - labels), 0.0
    )
    return jnp.sum(bce) / jnp.sum(live, dtype=bce.dtype) + aux["aux_loss"]

  grads = jax.grad(loss)(params)
  trainable = model.trainable(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    keys = [getattr(p, "key", None) for p in path]
    mask = trainable
    for k in keys:
      mask = mask[k]
    if not mask or "item_embedding" in keys:
      continue
    if "semantic_position_embedding" in keys:
      assert float(jnp.abs(g[:10]).max()) > 0, keys  # rows of real positions
      continue
    assert float(jnp.abs(g).max()) > 0, f"no gradient for {'/'.join(map(str, keys))}"
  # The item embedding learns except its padding row (the target tower shares it).
  g = sj.models.item_table(grads)
  assert float(jnp.abs(g[1:]).sum()) > 0


def test_dropout_needs_a_key_and_is_off_in_evaluation():
  cfg = config(
    "sasrec",
    "static",
    dropout_embedding=0.5,
    dropout_hidden=0.5,
    dropout_attention=0.5,
    **PUBLISHED,
  )
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(0))
  batch = make_batch(2, seq_len=10)
  plain, _ = model.apply(params, batch)
  assert np.allclose(plain, model.apply(params, batch, train=False, key=jax.random.key(1))[0])
  with pytest.raises(ValueError, match="PRNG key"):
    model.apply(params, batch, train=True)
  a, _ = model.apply(params, batch, train=True, key=jax.random.key(1))
  b, _ = model.apply(params, batch, train=True, key=jax.random.key(1))
  c, _ = model.apply(params, batch, train=True, key=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, plain) and not np.allclose(a, c)


def test_end_aligned_positions_give_the_newest_item_the_last_slot():
  cfg = config("sasrec", "static", position_alignment="end", seq_len=5)
  items = jnp.array([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(
    sj.models.base.positions(items, cfg), [[2, 3, 4, 0, 0], [0, 1, 2, 3, 4]]
  )
  # A row cut to fewer slots (evaluation by length buckets) keeps its positions.
  np.testing.assert_array_equal(sj.models.base.positions(items[:1, :3], cfg), [[2, 3, 4]])


def test_normal_init_and_head_layers():
  cfg = config("sasrec", "static", head_layers=0, **PUBLISHED)
  params = sj.make_model(cfg).init(jax.random.key(0))
  backbone = params["backbone"]
  assert "head" not in params and "seq_trans" not in backbone and "target_trans" not in backbone
  table = sj.models.item_table(params)
  std = float(jnp.std(table[1:]))
  assert 0.015 < std < 0.025
  assert float(jnp.abs(table[0]).max()) == 0.0
  layer = backbone["transformer"]["layer_0"]
  np.testing.assert_array_equal(layer["ff_1"]["bias"], 0.0)
  assert 0.015 < float(jnp.std(layer["attention"]["query"]["kernel"])) < 0.025
  np.testing.assert_array_equal(backbone["embedding_norm"]["scale"], 1.0)
  with pytest.raises(ValueError, match="at least one layer"):
    config("sasrec", "duet", head_layers=0)
  three = sj.make_model(config("sasrec", "duet", head_layers=3)).init(jax.random.key(0))
  assert sorted(three["head"]["generator"]["proj"]) == ["layer_0", "layer_1", "layer_2"]


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "bert4rec"])
@pytest.mark.parametrize("head,generator", HEADS)
def test_encoders_factorise_the_score(backbone, head, generator):
  """score == <encode_users, encode_items(target)> for every non-DIN model."""
  model = sj.make_model(config(backbone, head, generator), scan_unroll=ROLLED)
  params = model.init(jax.random.key(4))
  batch = make_batch(5)
  weights = model.generate(params, batch)
  want = model.score(params, weights, batch)
  got = jnp.sum(
    model.encode_users(params, batch) * model.encode_items(params, batch["target"]), axis=-1
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert sj.make_model(config("din", head, generator)).encode_users is None

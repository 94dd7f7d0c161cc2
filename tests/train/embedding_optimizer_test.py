"""The item table's update rules (``embedding_optimizer``): dense Adam, optax SGD / Adagrad on the
table, and the row-wise sparse Adam, against each other and a float64 NumPy lazy-Adam reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solid_jax as sj
from solid_jax.train import optim as optim_lib
from solid_jax.train import population
from solid_jax.train import rows as rows_lib
from solid_jax.train import step as step_lib
from solid_jax.train.train_config import TrainConfig

N, S, L, D = 300, 7, 6, 8
LR = 1e-2


def _model(backbone="sasrec", head="solid", **kwargs):
  fields = dict(generator="duet", num_items=N, num_semantics=S, seq_len=L, dim=D)
  cfg = sj.ModelConfig(backbone=backbone, head=head, **{**fields, **kwargs})
  return sj.make_model(cfg)


def _batch(seed, low, high, rows=16):
  """Rows whose item and target ids are drawn from [low, high)."""
  rng = np.random.default_rng(seed)
  items = rng.integers(low, high, (rows, L)).astype(np.int32)
  items[:, 4:] = 0
  target = rng.integers(low, high, rows).astype(np.int32)
  sem = lambda x: np.where(x > 0, x % (S - 1) + 1, 0).astype(np.int32)  # noqa: E731
  return {
    "items": items,
    "semantics": sem(items),
    "target": target,
    "target_semantic": sem(target),
    "label": (np.arange(rows) % 2).astype(np.float32),
    "weight": np.ones(rows, np.float32),
  }


def _step(model, tx, **kwargs):
  fn = jax.jit(step_lib.train_step_fn(model, tx, **kwargs))
  return lambda p, o, b, t: fn(p, o, b, np.int32(t), jax.random.key(1))


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@pytest.mark.parametrize(
  "grouped, transform",
  [(False, None), (True, None), (False, rows_lib.semantic_view)],
  ids=["rows", "groups", "stage1_view"],
)
def test_one_rowwise_step_is_one_dense_adam_step(grouped, transform):
  # From zero moments, dense Adam moves exactly the rows with a gradient, as the row-wise one.
  # Stage 1 (semantic view): a DUET model whose "items" are the semantic ids.
  model = _model(head="duet", num_items=S) if transform is not None else _model()
  params = model.init(jax.random.key(0))
  batch = _batch(0, 1, S if transform is not None else 60)
  if grouped:
    batch = rows_lib.to_groups(
      {
        k: np.repeat(v[:4], 4, axis=0) if k in ("items", "semantics") else v
        for k, v in batch.items()
      }
      | {"weight": np.ones(16, np.float32)},
      4,
    )
  dense = optim_lib.make_optimizer(model, params, LR)
  rowwise = optim_lib.make_optimizer(model, params, LR, embedding_optimizer="rowwise_adam")
  p1, _, s1 = _step(model, dense, grouped=grouped, transform=transform)(
    params, dense.init(params), batch, 0
  )
  p2, o2, s2 = _step(model, rowwise, grouped=grouped, transform=transform)(
    params, rowwise.init(params), batch, 0
  )
  np.testing.assert_allclose(s1["loss"], s2["loss"], rtol=1e-6)
  assert _max_diff(p1, p2) < 1e-6
  # The table's gradient flows through the K-row copy: the rows of the batch moved.
  view = transform(batch) if transform is not None else batch
  ids = np.setdiff1d(np.r_[np.ravel(view["items"]), np.ravel(view["target"])], [0])
  moved = np.abs(sj.models.item_table(p2) - sj.models.item_table(params)).max(axis=1)
  assert (np.asarray(moved)[ids] > 0).all()
  assert int(o2["rows"]["count"]) == 1


def test_rowwise_adam_moves_only_the_rows_of_the_batch_and_matches_numpy_lazy_adam():
  model = _model()
  params = model.init(jax.random.key(0))
  first, second = _batch(0, 1, 60), _batch(1, 100, 160)  # disjoint item ids (and padding 0)
  rowwise = optim_lib.make_optimizer(model, params, LR, embedding_optimizer="rowwise_adam")
  dense = optim_lib.make_optimizer(model, params, LR)
  step = _step(model, rowwise)
  p1, o1, _ = step(params, rowwise.init(params), first, 0)
  p2, o2, _ = step(p1, o1, second, 1)
  table = lambda p: np.asarray(sj.models.item_table(p), np.float64)  # noqa: E731
  only_first = np.setdiff1d(np.unique(np.r_[first["items"].ravel(), first["target"]]), [0])
  # Rows of the first batch only: untouched by the second step (dense Adam keeps moving them).
  np.testing.assert_array_equal(table(p2)[only_first], table(p1)[only_first])
  untouched = np.setdiff1d(
    np.arange(N),
    np.r_[first["items"].ravel(), first["target"], second["items"].ravel(), second["target"]],
  )
  np.testing.assert_array_equal(table(p2)[untouched], table(params)[untouched])
  dstep = _step(model, dense)
  d1, do1, _ = dstep(params, dense.init(params), first, 0)
  d2, _, _ = dstep(d1, do1, second, 1)
  assert np.abs(table(d2)[only_first] - table(d1)[only_first]).max() > 1e-5
  # Second-step rows: float64 lazy Adam from the stored moments and this step's row gradient.
  ids = np.unique(np.r_[0, second["items"].ravel(), second["target"]])
  grad = jax.grad(
    lambda t: step_lib._loss_fn(model, None, False)(  # pylint: disable=protected-access
      optim_lib.set_path(p1, optim_lib.ITEM_TABLE_PATH, t), second, np.int32(1), jax.random.key(1)
    )[0]
  )(sj.models.item_table(p1))
  g = np.asarray(grad, np.float64)[ids]
  mu = 0.9 * np.asarray(o1["rows"]["mu"], np.float64)[ids] + 0.1 * g
  nu = 0.999 * np.asarray(o1["rows"]["nu"], np.float64)[ids] + 0.001 * g * g
  want = table(p1)[ids] - LR * (mu / (1 - 0.9**2)) / (np.sqrt(nu / (1 - 0.999**2)) + 1e-8)
  np.testing.assert_allclose(table(p2)[ids], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(o2["rows"]["mu"])[ids], mu, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("rule", ["sgd", "adagrad"])
def test_sgd_and_adagrad_on_the_table_adam_elsewhere(rule):
  model = _model()
  params = model.init(jax.random.key(0))
  batch = _batch(0, 1, 60)
  tx = optim_lib.make_optimizer(model, params, LR, embedding_optimizer=rule, embedding_lr=0.5)
  dense = optim_lib.make_optimizer(model, params, LR)
  p1, _, _ = _step(model, tx)(params, tx.init(params), batch, 0)
  d1, _, _ = _step(model, dense)(params, dense.init(params), batch, 0)
  grad = np.asarray(
    jax.grad(
      lambda p: step_lib._loss_fn(model, None, False)(p, batch, np.int32(0), jax.random.key(1))[0]  # pylint: disable=protected-access
    )(params)["backbone"]["item_embedding"]["embedding"],
    np.float64,
  )
  t0 = np.asarray(sj.models.item_table(params), np.float64)
  if rule == "sgd":
    want = t0 - 0.5 * grad
  else:  # optax.adagrad: accumulator 0.1 + g^2, eps 1e-7
    want = t0 - 0.5 * grad / (np.sqrt(0.1 + grad * grad) + 1e-7)
  np.testing.assert_allclose(sj.models.item_table(p1), want, rtol=1e-5, atol=1e-6)
  rest = lambda p: optim_lib.split_path(p, optim_lib.ITEM_TABLE_PATH)[0]  # noqa: E731
  assert _max_diff(rest(p1), rest(d1)) < 1e-6


def test_rowwise_population_member_equals_its_solo_step():
  model = _model()
  tx = optim_lib.make_optimizer(
    model, model.init(jax.random.key(0)), LR, embedding_optimizer="rowwise_adam"
  )
  members = [model.init(jax.random.key(i)) for i in range(2)]
  batches = [_batch(i, 1, 60) for i in range(2)]
  step = population.make_population_step(model, tx, scale_lr=False)
  out, _, _ = step(
    population.stack(members),
    population.stack([tx.init(p) for p in members]),
    {k: np.stack([b[k] for b in batches]) for k in batches[0]},
    np.zeros(2, np.int32),
    jax.vmap(jax.random.key)(np.arange(2)),
    np.full(2, LR, np.float32),
    np.ones(2, bool),
  )
  solo = jax.jit(step_lib.train_step_fn(model, tx))
  for i in range(2):
    want, _, _ = solo(members[i], tx.init(members[i]), batches[i], np.int32(0), jax.random.key(i))
    got = jax.tree.map(lambda x, i=i: x[i], out)
    assert _max_diff(got, want) < 1e-5


def test_option_checks():
  model = _model()
  params = model.init(jax.random.key(0))
  with pytest.raises(ValueError, match="embedding_optimizer"):
    optim_lib.make_optimizer(model, params, LR, embedding_optimizer="lazy")
  with pytest.raises(ValueError, match="embedding_lr"):
    optim_lib.make_optimizer(model, params, LR, embedding_lr=0.1)
  with pytest.raises(ValueError, match="weight decay"):
    optim_lib.make_optimizer(
      model, params, LR, weight_decay=0.1, embedding_optimizer="rowwise_adam"
    )
  with pytest.raises(ValueError, match="cloze"):
    cloze = _model(backbone="bert4rec", head="static", cloze=True)
    tx = optim_lib.make_optimizer(
      cloze, cloze.init(jax.random.key(0)), LR, embedding_optimizer="rowwise_adam"
    )
    step_lib.train_step_fn(cloze, tx)
  with pytest.raises(ValueError, match="embedding_optimizer"):
    TrainConfig(embedding_optimizer="lazy")
  with pytest.raises(ValueError, match="embedding_lr"):
    TrainConfig(embedding_lr=0.1)
  TrainConfig(embedding_optimizer="rowwise_adam", embedding_lr=0.01)

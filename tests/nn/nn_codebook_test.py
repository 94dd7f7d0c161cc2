"""Codebook lookup, gradients per mode, EMA updates and k-means against NumPy float64."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solid_jax.nn import codebook

C, D = 9, 4


def _queries(seed, b=4, steps=6):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, steps, D)).astype(np.float32)
  lengths = rng.integers(1, steps + 1, size=b)
  lengths[0] = steps
  mask = (np.arange(steps)[None, :] < lengths[:, None]).astype(np.float32)
  return q, mask


def _table(seed):
  return np.random.default_rng(seed).normal(size=(C, D)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("mode",))
def _quantize(params, q, mask, mode, key=None):
  return codebook.quantize(params, q, mask, mode=mode, decay=0.9, dead_steps=3, key=key)


def test_distances_and_nearest_match_brute_force_float64():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(200, D)).astype(np.float32)
  codes = _table(1)
  brute = ((q.astype(np.float64)[:, None, :] - codes.astype(np.float64)[None]) ** 2).sum(-1)
  np.testing.assert_allclose(codebook.distances(q, codes), brute, rtol=1e-5, atol=1e-5)
  got = np.asarray(jax.jit(codebook.nearest)(q, codes))
  want = brute[:, 1:].argmin(-1) + 1  # code 0 (padding) is never a candidate
  assert got.min() >= 1
  # Exact indices wherever the nearest code is not a float32 near-tie.
  gap = np.sort(brute[:, 1:], axis=-1)
  clear = gap[:, 1] - gap[:, 0] > 1e-4
  assert clear.sum() > 150
  np.testing.assert_array_equal(got[clear], want[clear])
  np.testing.assert_allclose(brute[np.arange(200), got], brute[:, 1:].min(-1), atol=1e-4)


def test_code_zero_is_excluded_even_when_nearest():
  codes = jnp.asarray(_table(2)).at[0].set(0.0)
  q = jnp.zeros((3, D))  # exactly code 0
  assert np.all(np.asarray(codebook.nearest(q, codes)) >= 1)


@pytest.mark.parametrize("mode", codebook.MODES)
def test_quantize_masks_padding_and_reports_usage(mode):
  q, mask = _queries(3)
  params = codebook.init(jax.random.key(0), C, D, mode=mode, table=_table(4))
  out, info = _quantize(params, q, mask, mode)
  chex.assert_shape(out, q.shape)
  chex.assert_type(out, jnp.float32)
  valid = mask > 0
  idx = np.asarray(info["index"])
  np.testing.assert_array_equal(idx[~valid], 0)
  np.testing.assert_array_equal(np.asarray(out)[~valid], 0.0)
  np.testing.assert_array_equal(idx[valid], np.asarray(codebook.nearest(q, params["codes"]))[valid])
  np.testing.assert_allclose(np.asarray(out)[valid], _table(4)[idx[valid]], rtol=1e-6, atol=1e-6)
  counts = np.bincount(idx[valid], minlength=C).astype(np.float64)
  p = counts / counts.sum()
  nz = p > 0
  np.testing.assert_allclose(info["perplexity"], np.exp(-(p[nz] * np.log(p[nz])).sum()), rtol=1e-5)
  np.testing.assert_allclose(info["usage"], (counts[1:] > 0).mean(), rtol=1e-6)
  np.testing.assert_allclose(info["counts"], counts, rtol=1e-6)
  assert ("state" in info) == (mode == "ema")


def test_straight_through_gradient_is_identity_and_losses_match_numpy():
  q, mask = _queries(5)
  table = _table(6)
  params = codebook.init(jax.random.key(0), C, D, mode="straight_through", table=table)
  cot = np.random.default_rng(7).normal(size=q.shape).astype(np.float32)

  def f(q):
    out, _ = codebook.quantize(params, q, mask, mode="straight_through")
    return jnp.sum(out * cot)

  g = jax.jit(jax.grad(f))(q)
  valid = mask > 0
  np.testing.assert_allclose(np.asarray(g)[valid], cot[valid], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(g)[~valid], 0.0)

  _, info = _quantize(params, q, mask, "straight_through")
  chosen = table[np.asarray(info["index"])].astype(np.float64)
  err = ((q - chosen) ** 2 * mask[..., None]).sum() / (mask.sum() * D)
  np.testing.assert_allclose(info["codebook_loss"], err, rtol=1e-5)
  np.testing.assert_allclose(info["commitment_loss"], err, rtol=1e-5)

  def losses(params, q):
    _, info = codebook.quantize(params, q, mask, mode="straight_through")
    return info["codebook_loss"] + 0.25 * info["commitment_loss"]

  g_codes, g_q = jax.jit(jax.grad(losses, argnums=(0, 1)))(params, q)
  # d/dc of mean((sg(q) - c)^2) and d/dq of 0.25 mean((q - sg(c))^2), by hand.
  n = mask.sum() * D
  want_q = 0.25 * 2 * (q - chosen) * mask[..., None] / n
  np.testing.assert_allclose(g_q, want_q, rtol=1e-4, atol=1e-7)
  want_c = np.zeros((C, D))
  np.add.at(want_c, np.asarray(info["index"])[valid], (2 * (chosen - q) / n)[valid])
  np.testing.assert_allclose(g_codes["codes"], want_c, rtol=1e-4, atol=1e-7)


def test_frozen_passes_no_gradient_to_query_or_codes():
  q, mask = _queries(8)
  params = codebook.init(jax.random.key(0), C, D, mode="frozen", table=_table(9))

  def f(params, q):
    out, info = codebook.quantize(params, q, mask, mode="frozen")
    return jnp.sum(out**2) + info["codebook_loss"] + info["commitment_loss"]

  g_codes, g_q = jax.grad(f, argnums=(0, 1))(params, q)
  np.testing.assert_array_equal(g_q, 0.0)
  np.testing.assert_array_equal(g_codes["codes"], 0.0)


def _numpy_ema(state, codes, q, idx, mask, decay, prior=1.0):
  """The EMA step in float64: shares of the step's assignments, the prior a pseudo-count."""
  n_k = np.zeros(C)
  s_k = np.zeros((C, D))
  for qi, ki, mi in zip(q.reshape(-1, D), idx.reshape(-1), mask.reshape(-1)):
    n_k[ki] += mi
    s_k[ki] += mi * qi
  total = n_k.sum()
  count = decay * state["count"] + (1 - decay) * n_k / total
  summed = decay * state["sum"] + (1 - decay) * s_k / total
  mu = 1.0 / (C - 1)
  with np.errstate(invalid="ignore", divide="ignore"):  # row 0 (count 0) is replaced below
    new = (summed + prior * mu * state["prior"]) / (count + prior * mu)[:, None]
  new[0] = codes[0]
  count[0], summed[0] = state["count"][0], state["sum"][0]
  return new, count, summed, n_k


@pytest.mark.parametrize("prior", [0.0, 1.0, 4.0])
def test_ema_update_matches_numpy(prior):
  q, mask = _queries(10, b=6)
  params = codebook.init(jax.random.key(1), C, D, mode="ema", table=_table(11))
  _, info = codebook.quantize(params, q, mask, mode="ema", decay=0.9, dead_steps=3, prior=prior)
  state = info["state"]
  ema = jax.tree.map(lambda a: np.asarray(a, np.float64), params["ema"])
  idx = np.asarray(info["index"])
  want, count, summed, _ = _numpy_ema(
    ema, _table(11).astype(np.float64), q, idx, mask, 0.9, prior=prior
  )
  np.testing.assert_allclose(state["codes"], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state["ema"]["count"], count, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state["ema"]["sum"], summed, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state["ema"]["prior"], params["ema"]["prior"])
  assert float(state["ema"]["step"]) == 1.0
  assert float(state["ema"]["seed"]) == float(params["ema"]["seed"])
  chex.assert_trees_all_equal_structs(state, params)


def test_fresh_ema_statistics_reproduce_their_table():
  params = codebook.init(jax.random.key(1), C, D, mode="ema", table=_table(11))
  ema = params["ema"]
  np.testing.assert_allclose(np.asarray(ema["count"]).sum(), 1.0, rtol=1e-6)
  assert float(ema["count"][0]) == 0.0
  means = np.asarray(ema["sum"])[1:] / np.asarray(ema["count"])[1:, None]
  np.testing.assert_allclose(means, _table(11)[1:], rtol=1e-5)
  np.testing.assert_array_equal(ema["prior"], _table(11))


def test_ema_update_is_the_same_for_candidate_groups_and_single_rows():
  """A batch of histories, and the same histories each repeated G times (one row per candidate,
  as a batch of single rows holds them), update the statistics identically."""
  q, mask = _queries(20, b=5)
  params = codebook.init(jax.random.key(4), C, D, mode="ema", table=_table(21))
  weight = np.asarray([1.0, 1.0, 0.5, 1.0, 0.0], np.float32)  # row weights (0: padding row)
  grouped = _quantize(params, q, mask * weight[:, None], "ema")[1]["state"]
  g = 5
  rows_q, rows_mask = np.repeat(q, g, axis=0), np.repeat(mask * weight[:, None], g, axis=0)
  single = _quantize(params, rows_q, rows_mask, "ema")[1]["state"]
  chex.assert_trees_all_close(grouped, single, rtol=1e-5, atol=1e-6)


def test_the_metacode_prior_is_not_washed_out():
  """Queries that all sit at one point x, in equal shares on every code: after many steps each
  code settles at (x + prior * P_k) / (1 + prior), never at x alone while prior > 0."""
  table = _table(30)
  params = codebook.init(jax.random.key(5), C, D, mode="ema", table=table)
  x = np.full((D,), 3.0, np.float32)
  # One query per code 1..C-1, each placed at that code (so it selects it) but with the same
  # moving-mean target x fed through ema_update directly.
  index = np.arange(1, C, dtype=np.int32)[None, :]
  q = np.broadcast_to(x, (1, C - 1, D))
  mask = np.ones((1, C - 1), np.float32)
  update = jax.jit(functools.partial(codebook.ema_update, decay=0.9, dead_steps=10_000, prior=1.0))
  for _ in range(300):
    params = update(params, q, index, mask)
  want = (x[None, :] + table[1:]) / 2.0
  np.testing.assert_allclose(params["codes"][1:], want, rtol=1e-4, atol=1e-4)
  # Without the prior the codes become the moving mean, x.
  bare = codebook.init(jax.random.key(5), C, D, mode="ema", table=table)
  update0 = jax.jit(functools.partial(codebook.ema_update, decay=0.9, dead_steps=10_000, prior=0.0))
  for _ in range(300):
    bare = update0(bare, q, index, mask)
  np.testing.assert_allclose(bare["codes"][1:], np.broadcast_to(x, (C - 1, D)), rtol=1e-4)


def test_an_empty_batch_leaves_the_ema_statistics_alone():
  q, _ = _queries(22)
  params = codebook.init(jax.random.key(6), C, D, mode="ema", table=_table(23))
  state = _quantize(params, q, np.zeros(q.shape[:2], np.float32), "ema")[1]["state"]
  for name in ("count", "sum", "prior"):
    np.testing.assert_array_equal(state["ema"][name], params["ema"][name])
  np.testing.assert_allclose(state["codes"], params["codes"], rtol=1e-5, atol=1e-6)


def test_ema_dead_code_revival_reseeds_from_valid_queries():
  q, mask = _queries(12, b=3, steps=4)
  table = _table(13)
  table[5] = 1e3  # far from every query: never selected
  params = codebook.init(jax.random.key(2), C, D, mode="ema", table=table)
  valid_q = q[mask > 0]
  unused_history = []
  for _ in range(3):
    _, info = _quantize(params, q, mask, "ema")
    params = info["state"]
    unused_history.append(np.asarray(params["ema"]["unused"]))
  # After 3 (= dead_steps) steps unused, code 5 was re-seeded to one of the valid queries.
  assert unused_history[1][5] == 2.0
  assert unused_history[2][5] == 0.0
  new5 = np.asarray(params["codes"][5])
  assert np.min(np.abs(valid_q - new5).sum(-1)) < 1e-6
  assert float(params["ema"]["count"][5]) == pytest.approx(1.0 / (C - 1))
  np.testing.assert_array_equal(params["ema"]["prior"][5], new5)  # the anchor moves with it
  np.testing.assert_array_equal(params["codes"][0], table[0])  # row 0 never changes
  # The same state and queries give the same revival (randomness from the seed and the step).
  again = _quantize(info["state"], q, mask, "ema")[1]["state"]
  again2 = _quantize(info["state"], q, mask, "ema")[1]["state"]
  chex.assert_trees_all_equal(again, again2)


def test_ema_key_argument_drives_the_revival():
  q, mask = _queries(14, b=8, steps=6)
  table = _table(15)
  table[1:] = 1e3
  table[1] = 0.0  # every query picks code 1; codes 2.. are dead from the start
  params = codebook.init(jax.random.key(3), C, D, mode="ema", table=table)
  params["ema"]["unused"] = jnp.full((C,), 5.0)
  a = _quantize(params, q, mask, "ema", key=jax.random.key(0))[1]["state"]["codes"]
  b = _quantize(params, q, mask, "ema", key=jax.random.key(1))[1]["state"]["codes"]
  assert not np.array_equal(np.asarray(a[2:]), np.asarray(b[2:]))


def test_init_from_table_and_shape_check():
  params = codebook.init(jax.random.key(0), C, D, mode="frozen", table=_table(16))
  np.testing.assert_array_equal(params["codes"], _table(16))
  with pytest.raises(ValueError, match="shape"):
    codebook.init(jax.random.key(0), C + 1, D, table=_table(16))
  with pytest.raises(ValueError, match="mode"):
    codebook.init(jax.random.key(0), C, D, mode="vq")


def test_kmeans_recovers_separated_clusters_and_chunking_is_exact():
  rng = np.random.default_rng(17)
  centres = rng.normal(size=(5, 3)) * 20
  labels = rng.integers(0, 5, size=300)
  x = (centres[labels] + rng.normal(size=(300, 3)) * 0.1).astype(np.float32)
  got, assign = codebook.kmeans(jax.random.key(0), x, 5, 10)
  chex.assert_shape(got, (5, 3))
  chex.assert_shape(assign, (300,))
  # Every true centre is matched by one centroid, and the partition equals the true one.
  d = ((np.asarray(got)[:, None] - centres[None]) ** 2).sum(-1)
  assert sorted(d.argmin(0).tolist()) == list(range(5))
  assert np.all(d.min(0) < 0.1)
  mapping = {int(a): int(t) for a, t in zip(np.asarray(assign), labels)}
  assert all(mapping[int(a)] == int(t) for a, t in zip(np.asarray(assign), labels))
  got_chunked, assign_chunked = codebook.kmeans(jax.random.key(0), x, 5, 10, chunk=64)
  np.testing.assert_array_equal(assign_chunked, assign)
  np.testing.assert_allclose(got_chunked, got, rtol=1e-6)


def test_kmeans_plusplus_picks_distinct_points():
  x = np.repeat(np.eye(6, dtype=np.float32), 3, axis=0)  # 6 distinct points, each 3 times
  seeds = np.asarray(codebook.kmeans_plusplus(jax.random.key(1), jnp.asarray(x), 6))
  assert len({tuple(r) for r in seeds.tolist()}) == 6


def test_kmeans_init_reserves_row_zero():
  rng = np.random.default_rng(18)
  vectors = rng.normal(size=(100, D)).astype(np.float32)
  table = codebook.kmeans_init(jax.random.key(0), vectors, C)
  chex.assert_shape(table, (C, D))
  np.testing.assert_array_equal(table[0], 0.0)
  assert len({tuple(r) for r in np.asarray(table[1:]).tolist()}) == C - 1

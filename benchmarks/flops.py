"""Analytic FLOPs and bytes per sample of the SASRec models, and a measured peak FLOP/s of the host.

Counting rules: a multiply-add is 2 FLOPs; a dense layer ``[n, a] @ [a, b]`` costs ``2 n a b`` plus
``n b`` for its bias; element-wise operations cost 1 FLOP per element (transcendentals counted
apart); gathers cost no FLOPs. The backward pass of a matmul costs two matmuls of the same size
(gradients of both operands), so a training step is about 3x the forward pass (`TRAIN_FACTOR`); the
optimizer (Adam, about 10 FLOPs per parameter) is shared by the whole batch and amortised per
sample.

The architecture is the one of ``docs/MODELS.md``: SASRec computes keys and values of all ``L``
positions but only the query row ``n - 1`` in its (last) transformer layer.
"""

from __future__ import annotations

import time

TRAIN_FACTOR = 3.0
ADAM_FLOPS_PER_PARAM = 10.0


def _dense(rows: float, n_in: int, n_out: int) -> float:
  return 2.0 * rows * n_in * n_out + rows * n_out


def sasrec_components(cfg) -> dict[str, float]:
  """Forward FLOPs per sample of each component of a SASRec model (any head).

  Args:
    cfg: a ModelConfig with ``backbone="sasrec"``.

  Returns:
    {component: forward FLOPs per sample}.
  """
  if cfg.backbone != "sasrec":
    raise ValueError("the analytic count covers the SASRec backbone")
  d, seq, ff, heads = cfg.dim, cfg.seq_len, cfg.ff_dim, cfg.num_heads
  out = {}
  # Backbone: E[items] + P (L*d adds), seq_trans d->d with tanh over L rows.
  out["embeddings + seq_trans"] = seq * d + _dense(seq, d, d) + seq * d
  # Transformer layer: K, V over L rows; Q, attention, out projection, norms and FF on row n-1 only.
  attention = (
    2 * _dense(seq, d, d)
    + _dense(1, d, d)  # k, v (all rows), q (one row)
    + 2.0 * seq * d
    + heads * seq * 3  # q.k scores, masked softmax
    + 2.0 * seq * d
    + _dense(1, d, d)
  )  # weighted values, out projection
  ffn = _dense(1, d, ff) + ff + _dense(1, ff, d)
  norms = 2 * (d + 8 * d)
  out["transformer layer"] = attention + ffn + norms
  out["target tower"] = _dense(1, d, d) + d + _dense(1, d, d)
  layers = [(d, d), (d, d)]
  dynamic_apply = sum(_dense(1, i, o) for i, o in layers) + d  # + tanh
  logit = 2.0 * d

  def generator_cost(kind):
    gru = seq * (_dense(1, d, 3 * d) + _dense(1, d, 3 * d) + 10 * d)  # gates, 2 matmuls a step
    mlp = _dense(1, d, d) + d + _dense(1, d, d)
    if kind == "duet":
      proj = sum(_dense(1, d, i * o) + _dense(1, d, o) for i, o in layers)
    else:
      k = cfg.apg_rank
      proj = sum(_dense(1, d, k * k) for _ in layers)
    return gru, mlp, proj

  if cfg.head == "static":
    out["static head"] = sum(_dense(1, i, o) for i, o in layers) + d
  else:
    kind = cfg.head if cfg.head in ("duet", "apg") else cfg.generator
    gru, mlp, proj = generator_cost(kind)
    branches = 2 if cfg.head == "solid" else 1
    out["generator GRU"] = branches * gru
    out["generator MLP"] = branches * mlp
    out["generator projections (DUET A,B / APG cores)"] = branches * proj
    if kind == "duet":
      out["dynamic layers"] = dynamic_apply
    else:
      k = cfg.apg_rank
      out["dynamic layers"] = (
        sum(_dense(1, i, k) + 2.0 * k * k + _dense(1, k, o) for i, o in layers) + d
      )
    if cfg.head == "solid":
      codes, hidden = cfg.codebook_size, cfg.codebook_hidden
      out["codebook distances + argmin"] = seq * (2.0 * codes * d + 3 * codes + 2 * d)
      out["decoder"] = _dense(seq, d, hidden) + seq * hidden + _dense(seq, hidden, d)
      out["semantic embeddings + seq_trans"] = seq * d + _dense(seq, d, d) + seq * d
      per_layer = sum(i * o + o for i, o in layers) if kind == "duet" else len(layers) * k * k
      out["clip + sum of the two branches"] = 2.0 * per_layer
      out["consistency / commitment losses"] = 3 * 3.0 * seq * d
  out["logit"] = logit
  return out


# Components computed once per candidate (target) rather than once per history.
PER_CANDIDATE = ("target tower", "dynamic layers", "logit", "static head")


def sasrec_grouped_flops_per_row(cfg, group: int) -> float:
  """Forward FLOPs per training row when ``group`` rows share a history (the grouped step).

  The history side (embeddings, transformer, generators, codebook, ...) is computed once per group;
  the candidate side (target tower, dynamic layers, logit) once per row.
  """
  comps = sasrec_components(cfg)
  per_candidate = sum(v for k, v in comps.items() if k in PER_CANDIDATE)
  return per_candidate + (sum(comps.values()) - per_candidate) / group


def param_count(params) -> int:
  """Number of scalars in a parameter pytree."""
  import jax  # pylint: disable=import-outside-toplevel

  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def sasrec_bytes_per_sample(cfg, dtype_bytes: int = 4) -> dict[str, float]:
  """Approximate forward activation bytes per sample that must be written once and read once.

  Dominant terms: the gathered embeddings (L x d per table), the generator's GRU inputs and states
  (L x 3d gate pre-activations, L x d states per branch), the per-user generated weights (DUET:
  sum N_in x N_out + N_out per layer and branch; APG: K x K), the codebook distance matrix (L x C).
  Parameters are shared by the batch and are not per-sample traffic.
  """
  d, seq = cfg.dim, cfg.seq_len
  out = {"id inputs": 4.0 * (2 * seq + 2)}
  tables = 2 if cfg.head == "solid" else 1
  out["embedding rows + sequence embeddings"] = dtype_bytes * tables * 2.0 * seq * d
  out["transformer (k, v, scores)"] = dtype_bytes * (2.0 * seq * d + cfg.num_heads * seq)
  if cfg.head != "static":
    branches = 2 if cfg.head == "solid" else 1
    kind = cfg.head if cfg.head in ("duet", "apg") else cfg.generator
    out["generator GRU (gates, states)"] = dtype_bytes * branches * seq * (3 * d + 3 * d + d)
    per_user = (2 * (d * d + d)) if kind == "duet" else 2 * cfg.apg_rank**2
    out["generated per-user weights"] = dtype_bytes * branches * per_user
    if cfg.head == "solid":
      out["codebook distances"] = dtype_bytes * seq * cfg.codebook_size
      out["decoder"] = dtype_bytes * seq * (cfg.codebook_hidden + d)
  return out


def measure_peak_flops(size: int = 2048, repeats: int = 5, dtype=None) -> dict:
  """Measured float32 matmul FLOP/s of the default JAX device (a practical peak).

  Args:
    size: n of the n x n x n matmul.
    repeats: timed repeats (median reported).
    dtype: jnp dtype (default float32).

  Returns:
    {"matmul_n", "gflops_per_s" (median), "best_gflops_per_s"}.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  dtype = dtype or jnp.float32
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  flops = 2.0 * size**3
  return {
    "matmul_n": size,
    "gflops_per_s": flops / float(np.median(times)) / 1e9,
    "best_gflops_per_s": flops / min(times) / 1e9,
  }


def xla_cost(cfg, batch_size: int = 256, phase: str = "forward", seed: int = 0) -> dict:
  """XLA's own count (``compiled.cost_analysis()``) per sample, with the GRU scans unrolled.

  XLA counts the body of a while loop once, whatever its trip count, so the count is taken on a
  model built with ``scan_unroll=True`` (same arithmetic, no loop).

  Args:
    cfg: a ModelConfig.
    batch_size: rows of the compiled batch.
    phase: "forward" (``model.apply``) or "train" (the training loop's step with Adam).
    seed: seed of the synthetic batch and the initialisation.

  Returns:
    {"flops", "transcendentals", "bytes_accessed"} per sample.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import solid_jax as sj  # pylint: disable=import-outside-toplevel
  from benchmarks import synthetic  # pylint: disable=import-outside-toplevel
  from solid_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from solid_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from solid_jax.train import rows as rows_lib  # pylint: disable=import-outside-toplevel

  model = sj.make_model(cfg, scan_unroll=True)
  params = model.init(jax.random.key(seed))
  catalog = synthetic.make_catalog(cfg.num_items, cfg.num_semantics, cfg.seq_len, seed=seed)
  batch = synthetic.make_batch(catalog, batch_size, seed)
  if phase == "forward":
    inputs = {k: batch[k] for k in rows_lib.MODEL_KEYS}
    lowered = jax.jit(lambda p, b: model.apply(p, b)[0]).lower(params, inputs)
  elif phase == "train":
    tx = optim_lib.make_optimizer(model, params, 1e-3)
    inputs = {k: batch[k] for k in rows_lib.MODEL_KEYS + ("label", "weight")}
    lowered = step_lib.make_train_step(model, tx).lower(
      params, tx.init(params), inputs, np.int32(0)
    )
  else:
    raise ValueError(f"phase={phase!r}; expected 'forward' or 'train'")
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return {
    "flops": float(cost.get("flops", 0.0)) / batch_size,
    "transcendentals": float(cost.get("transcendentals", 0.0)) / batch_size,
    "bytes_accessed": float(cost.get("bytes accessed", 0.0)) / batch_size,
  }

"""Per-component cost of the SOLID (DUET generators) training step: each part's forward + backward.

The step is cut into four parts, each jitted alone as ``value_and_grad`` of a scalar function of its
own parameters and inputs (random inputs of the real shapes), built from the same library functions
the model uses:

- ``backbone``: item embeddings + position, seq_trans, the SASRec/BERT4Rec transformer (or GRU4Rec /
  DIN encoder), target tower;
- ``generator GRUs``: the item and semantic generators' GRUs (one scan, as the model runs them);
- ``generator heads``: the two generators' MLPs, DUET projections ``z @ A + a`` (per-user weights),
  ``clip(item) + semantic``, and the dynamic layers applied to the head input;
- ``codebook + decoder + semantic branch``: distances, nearest code, straight-through, the losses,
  the decoder MLP and the semantic sequence embedding.

The parts are timed in interleaved rounds (wall and process CPU time); their sum is compared with
the whole step. CPU time is reported because, on a shared machine, it is less sensitive to the load
than wall time.

In the same rounds, the GRU part and the whole step are also timed with the GRU differentiated by
JAX through its scan (``nn.gru.gru_last_states_autodiff``) instead of the hand-written VJP the
models use, which measures what that VJP gains.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import solid_jax as sj
from benchmarks import synthetic
from benchmarks import throughput
from solid_jax.models import BACKBONES, SolidHead
from solid_jax.models import solid as solid_lib
from solid_jax.models.base import lengths_of
from solid_jax.nn import gru as gru_lib


def _parts(cfg, params, batch: dict, seed: int = 0):
  """{name: (function, args)} for the four parts, with inputs of the step's shapes."""
  bsz, seq, d = batch["items"].shape[0], cfg.seq_len, cfg.dim
  keys = jax.random.split(jax.random.key(seed), 6)
  items = jnp.asarray(batch["items"])
  lengths = lengths_of(items)
  mask = (items != 0).astype(jnp.float32)
  seq_a = 0.5 * jax.random.normal(keys[0], (bsz, seq, d))
  seq_b = 0.5 * jax.random.normal(keys[1], (bsz, seq, d))
  states = [jax.random.normal(keys[2], (bsz, d)), jax.random.normal(keys[3], (bsz, d))]
  head_in = jax.random.normal(keys[4], (bsz, d))
  backbone_module = BACKBONES[cfg.backbone](cfg)
  head_module = SolidHead(cfg, specs=tuple(BACKBONES[cfg.backbone].head_specs(cfg)))
  head_params = params["head"]
  gens = {k: head_params[k] for k in ("item_generator", "semantic_generator")}
  rest = {k: v for k, v in head_params.items() if k not in gens}

  def backbone_fn(m, items, target):
    seq_emb = m.embed(items)
    t = m.tower(target)
    x = m.encode(seq_emb, items, t)
    return jnp.sum(jnp.sin(x) * t) + jnp.sum(jnp.sin(seq_emb))

  def backbone(p, items, target):
    return backbone_module.apply({"params": p}, items, target, method=backbone_fn)

  def grus(g, xs_a, xs_b):
    hs = gru_lib.gru_last_states(
      [g["item_generator"]["gru"], g["semantic_generator"]["gru"]], [xs_a, xs_b], lengths
    )
    return jnp.sum(jnp.sin(hs[0])) + 2.0 * jnp.sum(jnp.sin(hs[1]))

  def heads_fn(m, hs, x):
    weights = solid_lib.combine(
      m.item_generator.project(hs[0]), m.semantic_generator.project(hs[1]), cfg.clip_t
    )
    return jnp.sum(jnp.sin(m(weights, x)))

  def heads(g, hs, x):
    return head_module.apply({"params": {**rest, **g}}, hs, x, method=heads_fn)

  def codebook_fn(m, query, semantics):
    quant, info = m.codebook(query, mask)
    dec = m.decoder(quant)
    sem = m.semantic_embedding(semantics) + m.semantic_position_embedding(jnp.arange(seq))
    sem = jnp.tanh(m.semantic_seq_trans(sem))
    consistency = jnp.sum(mask[..., None] * (sem - info["selected"]) ** 2) / jnp.sum(mask)
    return jnp.sum(jnp.sin(dec)) + consistency + info["codebook_loss"] + info["commitment_loss"]

  def codebook_part(p, query, semantics):
    return head_module.apply({"params": {**p, **gens}}, query, semantics, method=codebook_fn)

  return {
    "backbone": (backbone, (params["backbone"], items, jnp.asarray(batch["target"]))),
    "generator GRUs (item + semantic)": (grus, (gens, seq_a, seq_b)),
    "generator MLPs + DUET projections + clip/sum + dynamic layers": (
      heads,
      (gens, states, head_in),
    ),
    "codebook + decoder + semantic branch + losses": (
      codebook_part,
      (rest, seq_a, jnp.asarray(batch["semantics"])),
    ),
  }


@contextlib.contextmanager
def _autodiff_gru():
  """Functions traced inside use the GRU differentiated through its scan (no custom VJP)."""
  hand = gru_lib.gru_last_states
  gru_lib.gru_last_states = gru_lib.gru_last_states_autodiff
  try:
    yield
  finally:
    gru_lib.gru_last_states = hand


def component_timings(
  backbone: str = "sasrec",
  *,
  batch_size: int = 1024,
  num_items: int = 1683,
  num_semantics: int = 20,
  rounds: int = 5,
  steps: int = 4,
  seed: int = 0,
) -> dict:
  """Forward + backward time of each part and of the whole training step (SOLID, DUET generators).

  Args:
    backbone: the backbone.
    batch_size: B.
    num_items, num_semantics: vocabulary sizes.
    rounds: interleaved timing rounds (medians over rounds are reported).
    steps: calls per round.
    seed: data / initialisation seed.

  Returns:
    {"parts": {name: {"wall_ms", "cpu_ms"}}, "sum_cpu_ms", "step": {"wall_ms", "cpu_ms"},
    "gru_autodiff": {"gru": {...}, "step": {...}} (the GRU part and the step with the GRU
    differentiated through its scan), "batch": B, "model": "<backbone>/solid"}.
  """
  cfg = throughput.model_config(backbone, "solid", num_items=num_items, num_semantics=num_semantics)
  model = sj.make_model(cfg)
  params = model.init(jax.random.key(seed))
  catalog = synthetic.make_catalog(num_items, num_semantics, cfg.seq_len, seed=seed)
  batches = synthetic.make_batches(catalog, batch_size, 2, seed=seed)
  runners = {}
  parts = _parts(cfg, params, batches[0], seed)

  def compile_part(fn, args):
    argnums = tuple(
      i
      for i, a in enumerate(args)
      if all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(a))
    )
    compiled = jax.jit(jax.value_and_grad(fn, argnums=argnums)).lower(*args).compile()
    return lambda: compiled(*args)

  for name, (fn, args) in parts.items():
    runners[name] = compile_part(fn, args)
  gru_name = "generator GRUs (item + semantic)"
  steps_by_name = {"step": throughput.TrainBench(model, params, batches)}
  with _autodiff_gru():
    autodiff_gru = compile_part(*parts[gru_name])
    steps_by_name["step_gru_autodiff"] = throughput.TrainBench(model, params, batches)
  state = {}

  def call(name):
    if name in steps_by_name:
      steps_by_name[name].run(1)
      return steps_by_name[name].params
    if name == "gru_autodiff":
      return autodiff_gru()
    return runners[name]()

  names = list(runners) + ["step", "gru_autodiff", "step_gru_autodiff"]
  samples = {n: [] for n in names}
  for n in names:
    jax.block_until_ready(call(n))
  for _ in range(rounds):
    for n in names:
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(steps):
        state["out"] = call(n)
      jax.block_until_ready(state["out"])
      samples[n].append(
        ((time.perf_counter() - wall) / steps * 1e3, (time.process_time() - cpu) / steps * 1e3)
      )
  med = {n: np.median(np.asarray(samples[n]), axis=0) for n in names}
  parts = {n: {"wall_ms": float(med[n][0]), "cpu_ms": float(med[n][1])} for n in runners}
  return {
    "parts": parts,
    "sum_cpu_ms": float(sum(p["cpu_ms"] for p in parts.values())),
    "sum_wall_ms": float(sum(p["wall_ms"] for p in parts.values())),
    "step": {"wall_ms": float(med["step"][0]), "cpu_ms": float(med["step"][1])},
    "gru_autodiff": {
      n: {"wall_ms": float(med[k][0]), "cpu_ms": float(med[k][1])}
      for n, k in (("gru", "gru_autodiff"), ("step", "step_gru_autodiff"))
    },
    "batch": batch_size,
    "model": f"{backbone}/solid",
  }

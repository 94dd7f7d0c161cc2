"""The dynamic heads of the baselines: DUET (a full-rank generator) and APG (a low-rank one), and
``Generator``, the parameter generator SOLID uses twice.

A generator encodes the user's sequence embeddings into a condition ``z`` (a GRU, state at
position n-1, then an MLP d -> d tanh -> d) and projects it to the per-user weights of every
dynamic layer j (Flax ``Dense`` projections, initialised ``fmod(normal, 2)`` as the authors'):

- DUET: ``W_j = reshape(z @ A_j + a_j, [N_in, N_out])`` (row-major), ``b_j = z @ B_j + c_j``;
  weights ``{"layer_j": {"w": [B, N_in, N_out], "b": [B, N_out]}}``; params
  ``proj/layer_j/{w, b}/{kernel, bias}`` (A = w.kernel, a = w.bias, B = b.kernel, c = b.bias).
- APG: the K x K core ``S_j = reshape(z @ A_j + a_j, [K, K])``; weights ``{"layer_j": {"core":
  [B, K, K]}}``; params ``proj/layer_j/core``. The shared factors ``V_j: N_in -> K`` and ``U_j: K
  -> N_out`` are the head's ``shared/layer_j/{V, U}``.

The layers that apply those weights are the one-user functions of ``solid_jax.nn.dynamic``,
vmapped over users.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from solid_jax.model_config import ModelConfig
from solid_jax.models.base import Head, LayerSpec, lengths_of, segment_starts
from solid_jax.models.registry import HEADS
from solid_jax.nn import dynamic
from solid_jax.nn import gru
from solid_jax.nn import layers

Array = jax.Array
Params = dict

KINDS = ("duet", "apg")
GENERATOR_NAMES = ("generator", "item_generator", "semantic_generator")


class _LayerProjection(nn.Module):
  """One dynamic layer's projection of the condition z: float[B, d] -> that layer's weights."""

  n_in: int
  n_out: int
  kind: str
  rank: int
  scale: float = 1.0

  @nn.compact
  def __call__(self, z):
    init = layers.fmod_normal(self.scale)
    dense = lambda width, name: nn.Dense(width, kernel_init=init, bias_init=init, name=name)  # noqa: E731
    b = z.shape[0]
    if self.kind == "duet":
      return {
        "w": dense(self.n_in * self.n_out, "w")(z).reshape(b, self.n_in, self.n_out),
        "b": dense(self.n_out, "b")(z),
      }
    return {"core": dense(self.rank * self.rank, "core")(z).reshape(b, self.rank, self.rank)}


class _Projections(nn.Module):
  specs: tuple[LayerSpec, ...]
  kind: str
  rank: int
  scale: float = 1.0

  @nn.compact
  def __call__(self, z):
    return {
      f"layer_{j}": _LayerProjection(
        n_in, n_out, self.kind, self.rank, self.scale, name=f"layer_{j}"
      )(z)
      for j, (n_in, n_out, _) in enumerate(self.specs)
    }


class Generator(nn.Module):
  """A parameter generator: ``gru`` (``nn.gru.GRUWeights``), ``mlp`` ``{dense_0, dense_1}``,
  ``proj`` (see the module docstring).

  The GRU is not run here: ``generate_weights`` runs the GRUs of several generators in one fused
  scan (``gru_weights``), then ``project`` maps each state to weights.

  Attributes:
    dim: d (the width of the input sequence and of z). specs: the dynamic layers.
    kind: "duet" or "apg". rank: K (APG).
    init_scale: the projections start at ``init_scale * fmod(normal, 2)`` (1: the authors').
  """

  dim: int
  specs: tuple[LayerSpec, ...]
  kind: str = "duet"
  rank: int = 16
  init_scale: float = 1.0

  def setup(self):
    if self.kind not in KINDS:
      raise ValueError(f"generator kind {self.kind!r}; expected one of {KINDS}")
    self.gru = gru.GRUWeights(self.dim)
    self.mlp = layers.MLP((self.dim, self.dim), ("tanh", None))
    self.proj = _Projections(tuple(self.specs), self.kind, self.rank, self.init_scale)

  def gru_weights(self) -> Params:
    """This generator's GRU weights (created on first use)."""
    return self.gru(self.dim)

  def project(self, state: Array) -> Params:
    """The per-user weights from the GRU state float[B, d] (``z = mlp(state)``)."""
    return self.proj(self.mlp(state))

  def __call__(self, seq: Array, lengths: Array, *, unroll: int | bool = 1) -> Params:
    """One generator on its own: float[B, L, d], int[B] -> weights with leading axis B."""
    return generate_weights([self], [seq], lengths, unroll=unroll)[0]


def generate_weights(
  generators: Sequence[Generator],
  seqs: Sequence[Array],
  lengths: Array,
  *,
  unroll: int | bool = 1,
  all_positions: bool = False,
  segments: Array | None = None,
) -> list[Params]:
  """Runs several generators, their GRUs fused in one scan.

  Args:
    generators: bound ``Generator`` modules.
    seqs: float[B, L, d], the input of each.
    lengths: int[B], n (the state is read at n-1).
    unroll: ``lax.scan`` unroll factor.
    all_positions: weights for every prefix (the GRU state after each position): leading axis
      B * L (user-major).
    segments: int[B, L] segment ids of packed rows (with ``all_positions``): every state is
      reset where a segment starts, so a prefix never reads another user's slots.

  Returns:
    One weight pytree per generator.
  """
  weights = [g.gru_weights() for g in generators]
  with jax.named_scope("generator_gru"):
    if all_positions:
      states = gru.gru_all_states(weights, seqs, unroll=unroll, resets=segment_starts(segments))
      states = [h.reshape(-1, h.shape[-1]) for h in states]
    else:
      states = gru.gru_last_states(weights, seqs, lengths, unroll=unroll)
  with jax.named_scope("generator_project"):
    return [g.project(h) for g, h in zip(generators, states)]


class _LowRankLayer(nn.Module):
  """APG's shared factors of one layer around the user's core: ``U(core(V x))``."""

  rank: int
  n_out: int

  @nn.compact
  def __call__(self, core, x):
    x = nn.Dense(self.rank, kernel_init=layers.xavier_uniform(), name="V")(x)
    return nn.Dense(self.n_out, kernel_init=layers.xavier_uniform(), name="U")(
      dynamic.apg_cores(core, x)
    )


class DynamicLayers(nn.Module):
  """Applies generated weights: float[B, N_in] -> float[B, N_out], ``act(layer_j(x))`` per spec.

  DUET layers have no parameters of their own; APG layers own ``layer_j/{V, U}`` (Flax ``Dense``,
  Xavier uniform, bias 0).
  """

  specs: tuple[LayerSpec, ...]
  kind: str
  rank: int

  @nn.compact
  def __call__(self, weights, x):
    for j, (_, n_out, act) in enumerate(self.specs):
      w = weights[f"layer_{j}"]
      if self.kind == "apg":
        x = _LowRankLayer(self.rank, n_out, name=f"layer_{j}")(w["core"], x)
      else:
        x = dynamic.duet_layers(w, x)
      x = layers.activation(act)(x)
    return x


def generator_frozen(cfg: ModelConfig, path: tuple[str, ...]) -> bool:
  """With ``paper_compat``, the generators' projections stay at their init (the authors'
  behaviour)."""
  return cfg.paper_compat and len(path) > 1 and path[0] in GENERATOR_NAMES and path[1] == "proj"


@HEADS.register("duet")
class DuetHead(Head):
  """A dynamic head generated by one ``Generator`` (``generator``) of ``kind``."""

  kind: ClassVar[str] = "duet"
  # Every prefix's weights come from the GRU state at that slot, reset at segment starts.
  packable: ClassVar[bool] = True

  @classmethod
  def frozen(cls, cfg, path):
    return generator_frozen(cfg, path)

  def setup(self):
    specs = self.layer_specs()
    self.generator = Generator(
      self.cfg.dim, specs, self.kind, self.cfg.apg_rank, self.cfg.generator_init_scale
    )
    self.shared = DynamicLayers(specs, self.kind, self.cfg.apg_rank)

  def generate(self, seq_emb, batch, *, all_positions=False, key=None, train=False):
    del key, train
    lengths = lengths_of(jnp.asarray(batch["items"]))
    (weights,) = generate_weights(
      [self.generator],
      [seq_emb],
      lengths,
      unroll=self.scan_unroll,
      all_positions=all_positions,
      segments=batch.get("segment"),
    )
    return weights, {"aux_loss": jnp.zeros((), jnp.float32)}

  def __call__(self, weights, x):
    return self.shared(weights, x)


@HEADS.register("apg")
class ApgHead(DuetHead):
  """APG: the low-rank generator; the shared factors are ``shared/layer_j/{V, U}``."""

  kind: ClassVar[str] = "apg"

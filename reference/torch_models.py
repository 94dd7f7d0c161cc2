"""PyTorch reference of the solid_jax model zoo.

The same architectures as ``solid_jax.make_model`` (backbones SASRec, GRU4Rec, DIN, BERT4Rec;
heads static, DUET, APG, SOLID), written as ordinary PyTorch: ``nn.Embedding``, ``nn.Linear``,
``nn.GRU``, ``nn.TransformerEncoderLayer``, and batched ``bmm``/``einsum`` for the per-user dynamic
layers. Two uses:

- parity: with the weights of a solid_jax model copied in (``reference.convert.load_jax_params``),
  the logits and the auxiliary loss equal solid_jax's up to float32 rounding (``tests/parity``);
- a baseline for throughput comparisons: what a PyTorch user would write.

This module imports torch only (never jax or solid_jax), so that it can be timed on its own. ``cfg``
is any object with the attributes of ``solid_jax.ModelConfig``. The equations are those of
``docs/MODELS.md``; the attribute names of ``RecModel`` follow the keys of the solid_jax parameter
tree (``reference/README.md`` has the table).

Batch layout (SPEC section 1): ``items[b, :n]`` are the user's last ``n >= 1`` items, oldest to
newest, ``items[b, n:] == 0``; the user state is read at position ``n - 1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5
LEAKY_SLOPE = 0.1

Batch = dict[str, torch.Tensor]
Weights = list[dict[str, torch.Tensor]]


# ------------------------------------------------------------------------------------ helpers


def seq_lengths(items: torch.Tensor) -> torch.Tensor:
  """n, the number of non-padding items of every row: int[B, L] -> int64[B]."""
  return (items != 0).sum(dim=1)


def gather_last(seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
  """Row ``max(n - 1, 0)`` of each sequence: float[B, L, D], int[B] -> float[B, D]."""
  index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, seq.shape[-1])
  return seq.gather(1, index).squeeze(1)


def xavier_(tensor: torch.Tensor) -> torch.Tensor:
  """Xavier-uniform init in place (a 2-D tensor; the limit is symmetric in its two dimensions)."""
  return nn.init.xavier_uniform_(tensor)


def fmod_normal_(tensor: torch.Tensor) -> torch.Tensor:
  """``fmod(normal(0, 1), 2)`` in place: the authors' init of the generator projections."""
  with torch.no_grad():
    return tensor.copy_(torch.fmod(torch.randn_like(tensor), 2.0))


def dense(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
  """``nn.Linear`` with solid_jax's init: Xavier-uniform weight, zero bias."""
  layer = nn.Linear(n_in, n_out, bias=bias)
  xavier_(layer.weight)
  if bias:
    nn.init.zeros_(layer.bias)
  return layer


def embedding(num: int, dim: int) -> nn.Embedding:
  """``nn.Embedding``, solid_jax's init: Xavier uniform, padding row 0 zeroed (still trained)."""
  table = nn.Embedding(num, dim)
  xavier_(table.weight)
  with torch.no_grad():
    table.weight[0].zero_()
  return table


class Mlp(nn.Module):
  """Dense layers ``dense_0, dense_1, ...``, each followed by its activation (``None``: none)."""

  def __init__(self, sizes: list[int], activations: list[str | None]):
    super().__init__()
    if len(activations) != len(sizes) - 1:
      raise ValueError(f"{len(sizes) - 1} layers but {len(activations)} activations")
    self.layers = nn.ModuleDict(
      {f"dense_{j}": dense(a, b) for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}
    )
    self.activations = list(activations)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """float[..., sizes[0]] -> float[..., sizes[-1]]."""
    for layer, act in zip(self.layers.values(), self.activations):
      x = activate(layer(x), act)
    return x


def activate(x: torch.Tensor, name: str | None) -> torch.Tensor:
  """Applies the activation ``name``: tanh, relu, gelu (exact erf), leaky_relu (0.1) or None."""
  if name is None:
    return x
  if name == "tanh":
    return torch.tanh(x)
  if name == "relu":
    return F.relu(x)
  if name == "gelu":
    return F.gelu(x)
  if name == "leaky_relu":
    return F.leaky_relu(x, LEAKY_SLOPE)
  raise ValueError(f"unknown activation {name!r}")


def transformer_layer(dim: int, heads: int, ff_dim: int, act: str) -> nn.TransformerEncoderLayer:
  """A post-norm encoder layer (dropout 0); init: Xavier per projection, zero biases."""
  layer = nn.TransformerEncoderLayer(
    dim,
    heads,
    ff_dim,
    dropout=0.0,
    activation=act,
    layer_norm_eps=LAYER_NORM_EPS,
    batch_first=True,
    norm_first=False,
  )
  with torch.no_grad():
    for block in layer.self_attn.in_proj_weight.view(3, dim, dim):
      xavier_(block)
    layer.self_attn.in_proj_bias.zero_()
    for lin in (layer.self_attn.out_proj, layer.linear1, layer.linear2):
      xavier_(lin.weight)
      lin.bias.zero_()
  return layer


def layer_specs(cfg: Any) -> list[tuple[int, int, str | None]]:
  """``(N_in, N_out, activation)`` of every head layer (docs/MODELS.md, "Heads")."""
  d = cfg.dim
  if cfg.backbone != "din":
    return [(d, d, "tanh"), (d, d, None)]
  sizes = [2 * d, *cfg.din_hidden, 1]
  acts = ["tanh"] * len(cfg.din_hidden) + [None]
  return list(zip(sizes[:-1], sizes[1:], acts))


# ---------------------------------------------------------------------------------- generator


class Projection(nn.Module):
  """One dynamic layer's projections of z.

  DUET: ``w`` = Linear(d, N_in·N_out) holding (A, a) and ``b`` = Linear(d, N_out) holding (B, c).
  APG: ``core`` = Linear(d, K·K) holding (A, a).
  """

  def __init__(self, dim: int, n_in: int, n_out: int, kind: str, rank: int):
    super().__init__()
    if kind == "duet":
      self.w = nn.Linear(dim, n_in * n_out)
      self.b = nn.Linear(dim, n_out)
      self.shape = (n_in, n_out)
    elif kind == "apg":
      self.core = nn.Linear(dim, rank * rank)
      self.shape = (rank, rank)
    else:
      raise ValueError(f"unknown generator {kind!r}")
    self.kind = kind
    for p in self.parameters():
      fmod_normal_(p)

  def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """z float[B, d] -> {"w": [B, N_in, N_out], "b": [B, N_out]} (DUET) | {"core": [B, K, K]}."""
    if self.kind == "duet":
      return {"w": self.w(z).view(-1, *self.shape), "b": self.b(z)}
    return {"core": self.core(z).view(-1, *self.shape)}


class Generator(nn.Module):
  """DUET / APG generator: ``z = mlp(GRU(seq)[n-1])``, then one ``Projection`` per dynamic layer."""

  def __init__(self, cfg: Any, kind: str):
    super().__init__()
    d = cfg.dim
    self.gru = nn.GRU(d, d, batch_first=True)
    self.mlp = Mlp([d, d, d], ["tanh", None])
    self.proj = nn.ModuleDict(
      {
        f"layer_{j}": Projection(d, n_in, n_out, kind, cfg.apg_rank)
        for j, (n_in, n_out, _) in enumerate(layer_specs(cfg))
      }
    )

  def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> Weights:
    """float[B, L, d], int[B] -> one weight dict per dynamic layer (see ``Projection``)."""
    out, _ = self.gru(seq)
    z = self.mlp(gather_last(out, lengths))
    return [proj(z) for proj in self.proj.values()]


class ApgShared(nn.Module):
  """APG's shared factors of one layer: ``V`` = Linear(N_in, K), ``U`` = Linear(K, N_out)."""

  def __init__(self, n_in: int, n_out: int, rank: int):
    super().__init__()
    self.V = dense(n_in, rank)
    self.U = dense(rank, n_out)


class Codebook(nn.Module):
  """The codes ``[C, d]``: a parameter (straight_through) or a buffer (frozen, ema)."""

  def __init__(self, num_codes: int, dim: int, trainable: bool):
    super().__init__()
    codes = torch.empty(num_codes, dim)
    xavier_(codes)
    codes[0] = 0.0
    if trainable:
      self.codes = nn.Parameter(codes)
    else:
      self.register_buffer("codes", codes)


# -------------------------------------------------------------------------------------- model


class RecModel(nn.Module):
  """A backbone plus a static / DUET / APG / SOLID head.

  ``forward(batch) -> (logits float[B], aux_loss float[])``; ``generate(batch)`` and
  ``score(weights, batch)`` split it as solid_jax's ``generate``/``score`` do.
  """

  def __init__(self, cfg: Any, codebook_init: torch.Tensor | None = None):
    super().__init__()
    self.cfg = cfg
    d = cfg.dim
    self.backbone = cfg.backbone
    self.head_kind = cfg.head
    self.specs = layer_specs(cfg)
    self.family = {"duet": "duet", "apg": "apg", "solid": cfg.generator}.get(cfg.head)

    # Backbone (static part).
    self.item_embedding = embedding(cfg.num_items, d)
    self.seq_trans = dense(d, d)
    if cfg.backbone == "din":
      self.target_trans = Mlp([d, d], ["tanh"])
      self.attention = nn.ModuleDict(
        {n: dense(d, d, bias=False) for n in ("query", "key", "value")}
      )
    else:
      self.target_trans = Mlp([d, d, d], ["tanh", None])
    if cfg.backbone in ("sasrec", "bert4rec"):
      self.position_embedding = nn.Parameter(xavier_(torch.empty(cfg.seq_len, d)))
      num_layers = 1 if cfg.backbone == "sasrec" else cfg.bert_layers
      act = "relu" if cfg.backbone == "sasrec" else "gelu"
      self.transformer = nn.ModuleDict(
        {
          f"layer_{i}": transformer_layer(d, cfg.num_heads, cfg.ff_dim, act)
          for i in range(num_layers)
        }
      )
    elif cfg.backbone == "gru4rec":
      self.gru = nn.GRU(d, d, batch_first=True)
    elif cfg.backbone != "din":
      raise ValueError(f"unknown backbone {cfg.backbone!r}")

    # Head.
    if cfg.head == "static":
      sizes = [self.specs[0][0]] + [n_out for _, n_out, _ in self.specs]
      self.head = Mlp(sizes, [act for _, _, act in self.specs])
    elif self.family == "apg":
      self.head = nn.ModuleDict(
        {
          f"layer_{j}": ApgShared(n_in, n_out, cfg.apg_rank)
          for j, (n_in, n_out, _) in enumerate(self.specs)
        }
      )
    if cfg.head in ("duet", "apg"):
      self.generator = Generator(cfg, self.family)
    elif cfg.head == "solid":
      self.item_generator = Generator(cfg, self.family)
      self.semantic_generator = Generator(cfg, self.family)
      self.semantic_embedding = embedding(cfg.num_semantics, d)
      self.semantic_position_embedding = nn.Parameter(xavier_(torch.empty(cfg.seq_len, d)))
      self.semantic_seq_trans = dense(d, d)
      self.codebook = Codebook(cfg.codebook_size, d, trainable=cfg.codebook == "straight_through")
      if codebook_init is not None:
        with torch.no_grad():
          self.codebook.codes.copy_(torch.as_tensor(codebook_init, dtype=torch.float32))
      self.decoder = Mlp([d, cfg.codebook_hidden, d], ["leaky_relu", None])
    if getattr(cfg, "paper_compat", False):
      for name, p in self.named_parameters():
        if ".proj." in f".{name}":
          p.requires_grad_(False)

  # -- backbone -----------------------------------------------------------------------------------
  def sequence_embedding(self, items: torch.Tensor) -> torch.Tensor:
    """``tanh((E[items] (+ P)) @ seq_trans)``: int[B, L] -> float[B, L, d]."""
    x = self.item_embedding(items)
    if self.backbone in ("sasrec", "bert4rec"):
      x = x + self.position_embedding[: items.shape[1]]
    return torch.tanh(self.seq_trans(x))

  def head_input(
    self, seq: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor, tgt: torch.Tensor
  ) -> torch.Tensor:
    """The head's input: state at n-1 [B, d] (DIN: concat(target, pooled) [B, 2d])."""
    if self.backbone == "gru4rec":
      out, _ = self.gru(seq)
      return gather_last(out, lengths)
    # Key-padding mask. A row without items (n = 0, never in real data) attends to every position,
    # which keeps its (meaningless) output finite where a fully masked softmax would give NaN.
    pad = (items == 0) & (lengths > 0).unsqueeze(-1)
    if self.backbone == "din":
      att = self.attention
      q = att["query"](tgt)
      scores = torch.einsum("bd,bld->bl", q, att["key"](seq)) / math.sqrt(q.shape[-1])
      probs = torch.softmax(scores.masked_fill(pad, float("-inf")), dim=-1)
      pooled = torch.einsum("bl,bld->bd", probs, att["value"](seq))
      return torch.cat([tgt, pooled], dim=-1)
    x = seq
    for layer in self.transformer.values():
      x = layer(x, src_key_padding_mask=pad)
    return gather_last(x, lengths)

  # -- dynamic weights ----------------------------------------------------------------------------
  def quantize(self, query: torch.Tensor, mask: torch.Tensor):
    """Nearest code (code 0 excluded) of every valid position, with the mode's gradient.

    Args:
      query: float[B, L, d].
      mask: float[B, L] position weights (0 at padding).

    Returns:
      ``(out float[B, L, d], selected float[B, L, d], codebook_loss, commitment_loss)``; ``out`` and
      ``selected`` are 0 at padding; ``selected`` carries no gradient.
    """
    codes = self.codebook.codes
    valid = (mask > 0).unsqueeze(-1)
    with torch.no_grad():
      dist = (
        query.pow(2).sum(-1, keepdim=True)
        - 2.0 * torch.einsum("bld,cd->blc", query, codes)
        + codes.pow(2).sum(-1)
      )
      dist[..., 0] = float("inf")
      index = dist.argmin(dim=-1).masked_fill(~valid.squeeze(-1), 0)
    chosen = codes[index]
    selected = chosen.detach()
    zero = query.new_zeros(())
    mode = self.cfg.codebook
    if mode == "frozen":
      out = selected
      codebook_loss = commitment_loss = zero
    else:
      out = query + (chosen - query).detach()
      commitment_loss = masked_mean((query - selected).pow(2), mask)
      codebook_loss = zero
      if mode == "straight_through":
        codebook_loss = masked_mean((query.detach() - chosen).pow(2), mask)
    return out * valid, selected * valid, codebook_loss, commitment_loss

  def dynamic_weights(self, batch: Batch, seq: torch.Tensor, lengths: torch.Tensor):
    """Per-user weights of the dynamic layers and the auxiliary loss.

    Returns:
      ``(weights, aux_loss)``: ``weights[j]`` is {"w": [B, N_in, N_out], "b": [B, N_out]} (DUET
      family) or {"core": [B, K, K]} (APG family); ``aux_loss`` float[].
    """
    if self.head_kind in ("duet", "apg"):
      return self.generator(seq, lengths), seq.new_zeros(())
    items = batch["items"]
    mask = (items != 0).to(seq.dtype)
    if "weight" in batch:
      mask = mask * batch["weight"].to(seq.dtype).unsqueeze(-1)
    quant, selected, codebook_loss, commitment_loss = self.quantize(seq, mask)
    item_weights = self.item_generator(self.decoder(quant), lengths)
    sem = self.semantic_embedding(batch["semantics"])
    sem = sem + self.semantic_position_embedding[: items.shape[1]]
    sem = torch.tanh(self.semantic_seq_trans(sem))
    sem_weights = self.semantic_generator(sem, lengths)
    t = self.cfg.clip_t
    weights = [
      {k: v.clamp(-t, t) + sw[k] for k, v in iw.items()}
      for iw, sw in zip(item_weights, sem_weights)
    ]
    consistency = masked_mean((sem - selected).pow(2), mask)
    aux = (
      self.cfg.consistency_weight * consistency
      + codebook_loss
      + self.cfg.commitment_weight * commitment_loss
    )
    return weights, aux

  def apply_head(self, x: torch.Tensor, weights: Weights | None) -> torch.Tensor:
    """The (dynamic) head of every user at once: float[B, N_in] -> float[B, last layer's N_out]."""
    if weights is None:
      return self.head(x)
    for j, (w, (_, _, act)) in enumerate(zip(weights, self.specs)):
      if "core" in w:
        shared = self.head[f"layer_{j}"]
        h = torch.bmm(shared.V(x).unsqueeze(1), w["core"]).squeeze(1)
        x = shared.U(h)
      else:
        x = torch.baddbmm(w["b"].unsqueeze(1), x.unsqueeze(1), w["w"]).squeeze(1)
      x = activate(x, act)
    return x

  def logits(self, out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """float[B] logits from the head output (DIN: its single column; others: ``<u, t>``)."""
    return out[:, 0] if self.backbone == "din" else (out * tgt).sum(-1)

  # -- public -------------------------------------------------------------------------------------
  def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and auxiliary loss.

    Args:
      batch: {"items": int[B, L], "semantics": int[B, L], "target": int[B],
        "target_semantic": int[B]}, optionally "weight": float[B] (row weights of the SOLID losses).
        With ``target`` int[B, G] (G candidates per history, ``target_semantic`` likewise) the
        batch is grouped: see ``forward_grouped``.

    Returns:
      ``(logits float[B], aux_loss float[])`` (grouped: ``logits float[B, G]``); the training loss
      is ``BCE + aux_loss``.
    """
    if batch["target"].dim() == 2:
      return self.forward_grouped(batch)
    items = batch["items"]
    lengths = seq_lengths(items)
    seq = self.sequence_embedding(items)
    tgt = self.target_trans(self.item_embedding(batch["target"]))
    x = self.head_input(seq, items, lengths, tgt)
    if self.head_kind == "static":
      return self.logits(self.apply_head(x, None), tgt), x.new_zeros(())
    weights, aux = self.dynamic_weights(batch, seq, lengths)
    return self.logits(self.apply_head(x, weights), tgt), aux

  def forward_grouped(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of G candidates per history, the history encoded once (solid_jax's grouped step).

    Everything that depends on the history alone (sequence embedding, the backbone's state for
    SASRec / GRU4Rec / BERT4Rec, the per-user weights and the auxiliary loss) is computed once per
    history and repeated for its G candidates; the target tower, DIN's target attention, the
    dynamic head and the logit are computed per candidate. Equal to ``forward`` on the B * G rows.

    Args:
      batch: {"items": int[B, L], "semantics": int[B, L], "target": int[B, G], ...}, optionally
        "weight": float[B].

    Returns:
      ``(logits float[B, G], aux_loss float[])``.
    """
    items = batch["items"]
    num, group = batch["target"].shape
    lengths = seq_lengths(items)
    seq = self.sequence_embedding(items)
    tgt = self.target_trans(self.item_embedding(batch["target"].reshape(-1)))  # [B * G, d]
    rep = lambda t: t.repeat_interleave(group, dim=0)  # noqa: E731  history -> its candidates
    if self.backbone == "din":
      x = self.head_input(rep(seq), rep(items), rep(lengths), tgt)
    else:
      x = rep(self.head_input(seq, items, lengths, tgt[::group]))  # the target is not read
    if self.head_kind == "static":
      return self.logits(self.apply_head(x, None), tgt).reshape(num, group), x.new_zeros(())
    weights, aux = self.dynamic_weights(batch, seq, lengths)
    weights = [{k: rep(v) for k, v in w.items()} for w in weights]
    return self.logits(self.apply_head(x, weights), tgt).reshape(num, group), aux

  def generate(self, batch: Batch) -> Weights:
    """The per-user dynamic weights (empty list for the static head)."""
    if self.head_kind == "static":
      return []
    items = batch["items"]
    lengths = seq_lengths(items)
    return self.dynamic_weights(batch, self.sequence_embedding(items), lengths)[0]

  def score(self, weights: Weights, batch: Batch) -> torch.Tensor:
    """Logits float[B] of ``batch`` with precomputed ``weights`` (``generate``)."""
    items = batch["items"]
    seq = self.sequence_embedding(items)
    tgt = self.target_trans(self.item_embedding(batch["target"]))
    x = self.head_input(seq, items, seq_lengths(items), tgt)
    return self.logits(self.apply_head(x, weights if self.head_kind != "static" else None), tgt)


def masked_mean(sq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """``Σ mask·sq / max(Σ mask · D, 1)`` for sq float[B, L, D], mask float[B, L]."""
  denom = (mask.sum() * sq.shape[-1]).clamp(min=1.0)
  return (sq * mask.unsqueeze(-1)).sum() / denom


def build_torch_model(cfg: Any, codebook_init: torch.Tensor | None = None) -> RecModel:
  """The PyTorch model of ``cfg`` (a ``solid_jax.ModelConfig`` or any object with its attributes).

  Args:
    cfg: the architecture.
    codebook_init: optional float[C, d] initial codes of a SOLID model (the stage-1 metacode).

  Returns:
    A float32 ``RecModel`` (there is no dropout: train and eval modes compute the same function).
  """
  return RecModel(cfg, codebook_init)


def train_step(
  model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, labels: torch.Tensor
) -> torch.Tensor:
  """One optimizer step on the solid_jax training loss, ``BCE + aux_loss``.

  The BCE is ``mean(weight · bce) / mean(weight)`` when the batch has a "weight" row (a padded last
  batch), the plain mean otherwise. A grouped batch (``target`` int[B, G], ``labels`` float[B, G],
  ``weight`` float[B] per history) is the same loss over its B * G rows.

  Args:
    model: a ``RecModel``.
    opt: e.g. ``make_optimizer(model)``.
    batch: as ``RecModel.forward``.
    labels: float[B] (grouped: float[B, G]) in {0, 1}.

  Returns:
    The loss, a detached float[] tensor.
  """
  opt.zero_grad(set_to_none=True)
  logits, aux = model(batch)
  if "weight" in batch:
    weight = batch["weight"].to(logits.dtype)
    if logits.dim() == 2:
      weight = weight.unsqueeze(-1).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    loss = (weight * bce).sum() / weight.sum().clamp(min=1e-12) + aux
  else:
    loss = F.binary_cross_entropy_with_logits(logits, labels) + aux
  loss.backward()
  opt.step()
  return loss.detach()


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Adam:
  """Adam over the trainable parameters (the paper_compat projections and frozen codes excluded)."""
  return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

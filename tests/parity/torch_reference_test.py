"""The PyTorch reference on its own.

Import hygiene, shapes, the training step, and NumPy float64 checks of the equations it shares with
docs/MODELS.md (GRU gates, the codebook lookup, the DUET/APG layers).
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reference import torch_models  # noqa: E402

pytestmark = pytest.mark.torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

B, L, D = 8, 10, 32
NUM_ITEMS, NUM_SEMANTICS = 30, 5
LENGTHS = np.array([1, 10, 4, 6, 2, 10, 3, 8])


@dataclasses.dataclass(frozen=True)
class Cfg:
  """The attributes of ``solid_jax.ModelConfig`` that the reference reads (no solid_jax import)."""

  backbone: str = "sasrec"
  head: str = "solid"
  generator: str = "duet"
  num_items: int = NUM_ITEMS
  num_semantics: int = NUM_SEMANTICS
  seq_len: int = L
  dim: int = D
  codebook: str = "straight_through"
  codebook_hidden: int = 64
  apg_rank: int = 16
  clip_t: float = 0.01
  consistency_weight: float = 0.1
  commitment_weight: float = 0.25
  paper_compat: bool = False
  num_heads: int = 4
  ff_dim: int = 128
  bert_layers: int = 2
  din_hidden: tuple[int, ...] = (128, 64)
  num_codes: int | None = None

  @property
  def codebook_size(self) -> int:
    return self.num_semantics if self.num_codes is None else self.num_codes


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
  g = torch.Generator().manual_seed(seed)
  valid = torch.arange(L)[None, :] < torch.from_numpy(LENGTHS)[:, None]
  items = torch.randint(1, NUM_ITEMS, (B, L), generator=g) * valid
  table = torch.cat(
    [
      torch.zeros(1, dtype=torch.long),
      torch.randint(1, NUM_SEMANTICS, (NUM_ITEMS - 1,), generator=g),
    ]
  )
  target = torch.randint(1, NUM_ITEMS, (B,), generator=g)
  return {
    "items": items,
    "semantics": table[items],
    "target": target,
    "target_semantic": table[target],
  }


def test_imports_neither_jax_nor_solid_jax():
  code = (
    "import sys; import reference.torch_models, reference.convert; "
    "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'solid_jax')]; "
    "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def all_configs():
  for backbone in ("sasrec", "gru4rec", "din", "bert4rec"):
    for head, generator, mode in (
      ("static", "duet", "straight_through"),
      ("duet", "duet", "straight_through"),
      ("apg", "apg", "straight_through"),
      ("solid", "duet", "straight_through"),
      ("solid", "apg", "frozen"),
      ("solid", "duet", "ema"),
    ):
      yield pytest.param(
        Cfg(backbone=backbone, head=head, generator=generator, codebook=mode),
        id=f"{backbone}-{head}-{generator}-{mode}",
      )


@pytest.mark.parametrize("cfg", list(all_configs()))
def test_shapes_and_one_training_step(cfg):
  torch.manual_seed(0)
  model = torch_models.build_torch_model(cfg)
  batch = make_batch()
  logits, aux = model(batch)
  assert logits.shape == (B,) and logits.dtype == torch.float32
  assert aux.shape == () and torch.isfinite(logits).all()
  assert (float(aux.detach()) > 0.0) == (cfg.head == "solid")

  weights = model.generate(batch)
  specs = torch_models.layer_specs(cfg)
  if cfg.head == "static":
    assert weights == []
  else:
    family = cfg.generator if cfg.head == "solid" else cfg.head
    for w, (n_in, n_out, _) in zip(weights, specs, strict=True):
      if family == "duet":
        assert w["w"].shape == (B, n_in, n_out) and w["b"].shape == (B, n_out)
      else:
        assert w["core"].shape == (B, cfg.apg_rank, cfg.apg_rank)
  torch.testing.assert_close(model.score(weights, batch), logits, rtol=1e-6, atol=1e-6)

  opt = torch_models.make_optimizer(model, lr=1e-2)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  loss = torch_models.train_step(model, opt, batch, torch.ones(B))
  assert torch.isfinite(loss)
  changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
  assert "item_embedding.weight" in changed
  if cfg.head == "solid":
    assert "semantic_embedding.weight" in changed and "decoder.layers.dense_0.weight" in changed
    names = {n for n, _ in model.named_parameters()}
    assert ("codebook.codes" in names) == (cfg.codebook == "straight_through")
    if cfg.codebook == "straight_through":
      assert "codebook.codes" in changed


def test_paper_compat_freezes_the_projections_only():
  model = torch_models.build_torch_model(Cfg(paper_compat=True))
  frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
  assert frozen and all(".proj." in n for n in frozen)
  assert {n.split(".")[0] for n in frozen} == {"item_generator", "semantic_generator"}
  opt = torch_models.make_optimizer(model)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  torch_models.train_step(model, opt, make_batch(), torch.zeros(B))
  for n, p in model.named_parameters():
    assert torch.equal(p, before[n]) == (n in frozen), n


def test_rows_are_independent():
  torch.manual_seed(1)
  model = torch_models.build_torch_model(Cfg(backbone="bert4rec", generator="apg"))
  batch = make_batch(seed=2)
  perm = torch.randperm(B)
  with torch.no_grad():
    logits, _ = model(batch)
    permuted, _ = model({k: v[perm] for k, v in batch.items()})
  torch.testing.assert_close(permuted, logits[perm], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backbone", ["sasrec", "din"])
def test_empty_rows_stay_finite(backbone):
  model = torch_models.build_torch_model(Cfg(backbone=backbone))
  batch = make_batch(seed=7)
  batch["items"][3] = 0
  batch["semantics"][3] = 0
  with torch.no_grad():
    logits, aux = model(batch)
  assert torch.isfinite(logits).all() and torch.isfinite(aux)


def test_weighted_training_loss():
  torch.manual_seed(2)
  model = torch_models.build_torch_model(Cfg(head="duet"))
  batch = make_batch(seed=3)
  labels = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])
  weight = torch.tensor([1.0, 1, 0, 1, 0, 1, 1, 1])
  with torch.no_grad():
    logits, aux = model(batch)
  bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
  expected = float((bce * weight).sum() / weight.sum() + aux)
  opt = torch.optim.SGD(model.parameters(), lr=0.0)
  loss = torch_models.train_step(model, opt, {**batch, "weight": weight}, labels)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


# ------------------------------------------------------------------- NumPy float64 references


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_gru4rec_state_matches_numpy_gru_equations():
  """nn.GRU read at n-1 is the docs/MODELS.md GRU (gates r, z, n; r inside the n gate's h term)."""
  torch.manual_seed(3)
  model = torch_models.build_torch_model(Cfg(backbone="gru4rec", head="static")).double()
  batch = make_batch(seed=4)
  seq = model.sequence_embedding(batch["items"])
  with torch.no_grad():
    state = model.head_input(seq, batch["items"], torch_models.seq_lengths(batch["items"]), None)
  gru = model.gru
  w_ih, w_hh = gru.weight_ih_l0.detach().numpy().T, gru.weight_hh_l0.detach().numpy().T
  b_ih, b_hh = gru.bias_ih_l0.detach().numpy(), gru.bias_hh_l0.detach().numpy()
  xs = seq.detach().numpy()
  for b, n in enumerate(LENGTHS):
    h = np.zeros(D)
    for t in range(n):
      gi, gh = xs[b, t] @ w_ih + b_ih, h @ w_hh + b_hh
      r = sigmoid(gi[:D] + gh[:D])
      z = sigmoid(gi[D : 2 * D] + gh[D : 2 * D])
      cand = np.tanh(gi[2 * D :] + r * gh[2 * D :])
      h = (1 - z) * cand + z * h
    np.testing.assert_allclose(state[b].numpy(), h, rtol=1e-10, atol=1e-12)


def test_quantize_matches_brute_force_numpy():
  torch.manual_seed(4)
  model = torch_models.build_torch_model(Cfg(num_codes=7)).double()
  with torch.no_grad():
    model.codebook.codes.mul_(3.0)  # Spread the codes so that several are selected.
  query = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
  mask = torch.from_numpy((np.arange(L)[None] < LENGTHS[:, None]).astype(np.float64))
  mask[2] *= 0.5  # A row weight.
  out, selected, codebook_loss, commitment_loss = model.quantize(query, mask)

  q = query.detach().numpy()
  codes = model.codebook.codes.detach().numpy()
  dist = ((q[:, :, None, :] - codes[None, None]) ** 2).sum(-1)  # The [B, L, C, D] way, on purpose.
  dist[..., 0] = np.inf
  index = np.where(mask.numpy() > 0, dist.argmin(-1), 0)
  assert len(np.unique(index[mask.numpy() > 0])) >= 3
  expected = np.where(mask.numpy()[..., None] > 0, codes[index], 0.0)
  np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(selected.numpy(), expected, rtol=1e-12, atol=1e-12)
  m = mask.numpy()[..., None]
  mse = float(((q - expected) ** 2 * m).sum() / (m.sum() * D))
  np.testing.assert_allclose(float(codebook_loss.detach()), mse, rtol=1e-12)
  np.testing.assert_allclose(float(commitment_loss.detach()), mse, rtol=1e-12)
  # Straight-through: d out / d query is the identity at valid positions, 0 at padding.
  out.sum().backward()
  np.testing.assert_array_equal(query.grad.numpy(), np.broadcast_to(m > 0, q.shape).astype(float))


@pytest.mark.parametrize("family", ["duet", "apg"])
def test_dynamic_head_matches_numpy(family):
  torch.manual_seed(5)
  cfg = Cfg(backbone="din", head=family)
  model = torch_models.build_torch_model(cfg).double()
  rng = np.random.default_rng(6)
  x = rng.standard_normal((B, 2 * D))
  specs = torch_models.layer_specs(cfg)
  weights = []
  for n_in, n_out, _ in specs:
    if family == "duet":
      weights.append(
        {
          "w": rng.standard_normal((B, n_in, n_out)) / np.sqrt(n_in),
          "b": rng.standard_normal((B, n_out)),
        }
      )
    else:
      weights.append({"core": rng.standard_normal((B, cfg.apg_rank, cfg.apg_rank)) / 4})
  with torch.no_grad():
    out = model.apply_head(
      torch.from_numpy(x), [{k: torch.from_numpy(v) for k, v in w.items()} for w in weights]
    )
  y = x
  for j, (w, (_, _, act)) in enumerate(zip(weights, specs)):
    if family == "duet":
      y = np.einsum("bi,bio->bo", y, w["w"]) + w["b"]
    else:
      shared = model.head[f"layer_{j}"]
      v_w, v_b = shared.V.weight.detach().numpy(), shared.V.bias.detach().numpy()
      u_w, u_b = shared.U.weight.detach().numpy(), shared.U.bias.detach().numpy()
      y = np.einsum("bk,bkl->bl", y @ v_w.T + v_b, w["core"]) @ u_w.T + u_b
    if act == "tanh":
      y = np.tanh(y)
  np.testing.assert_allclose(out.numpy(), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
  "backbone,head",
  [("sasrec", "solid"), ("din", "duet"), ("gru4rec", "static"), ("bert4rec", "solid")],
)
def test_grouped_batch_equals_its_rows(backbone, head):
  """A grouped batch (one history, G candidates) computes what its B * G rows compute."""
  torch.manual_seed(3)
  model = torch_models.build_torch_model(Cfg(backbone=backbone, head=head))
  hist = make_batch(seed=4)
  group = 3
  g = torch.Generator().manual_seed(5)
  target = torch.randint(1, NUM_ITEMS, (B, group), generator=g)
  labels = (torch.rand(B, group, generator=g) < 0.4).float()
  weight = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 0])  # two padding histories
  grouped = {
    "items": hist["items"],
    "semantics": hist["semantics"],
    "target": target,
    "target_semantic": torch.zeros_like(target),
    "weight": weight,
  }
  rows = {
    k: v.repeat_interleave(group, dim=0)
    for k, v in grouped.items()
    if k in ("items", "semantics", "weight")
  }
  rows.update(target=target.reshape(-1), target_semantic=torch.zeros(B * group, dtype=torch.long))
  with torch.no_grad():
    g_logits, g_aux = model(grouped)
    r_logits, r_aux = model(rows)
  assert g_logits.shape == (B, group)
  torch.testing.assert_close(g_logits.reshape(-1), r_logits, rtol=1e-5, atol=1e-6)
  torch.testing.assert_close(g_aux, r_aux, rtol=1e-5, atol=1e-7)
  opt = torch.optim.SGD(model.parameters(), lr=0.0)
  g_loss = torch_models.train_step(model, opt, grouped, labels)
  r_loss = torch_models.train_step(model, opt, rows, labels.reshape(-1))
  np.testing.assert_allclose(float(g_loss), float(r_loss), rtol=1e-5)

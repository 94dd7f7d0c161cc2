"""The model zoo: ``flax.linen`` modules picked from registries, behind ``make_model(cfg) -> Model``.

``Model(init, apply, generate, score, trainable, update_state, config, ...)`` is a NamedTuple of
pure functions over plain nested-dict parameters (SPEC section 4). Inside, ``Recommender(cfg)``
composes ``BACKBONES[cfg.backbone]`` (``sasrec``, ``gru4rec``, ``din``, ``bert4rec``) and
``HEADS[cfg.head]`` (``static``, ``duet``, ``apg``, ``solid``: dual item/semantic generators of
family ``cfg.generator``, a codebook on the item branch); ``METHODS`` maps a training method to its
head and generator. Every module is exported, so a Flax user can put, e.g., a ``SolidHead`` in their
own model; a new backbone or head registers itself with one decorator (``registry``).
``docs/MODELS.md`` says the same with more words; both are the contract of the PyTorch reference
(``reference/torch_models.py``).

Conventions: row vectors; dense ``kernel: [in, out]``, ``bias: [out]``, ``y = x @ kernel + bias``
(PyTorch ``Linear.weight = kernel.T``); float32; ``n = sum(items != 0)``; the user state is read at
position ``max(n-1, 0)``; masked attention gives masked keys weight 0; layer norm eps 1e-5 with
biased variance; GELU is the exact erf form.

Parameter tree (d = cfg.dim, L = cfg.seq_len, F = cfg.ff_dim, K = cfg.apg_rank, C = codebook size;
``dense`` = ``{kernel [in, out], bias [out]}``, ``embed`` = ``{embedding [num, d]}``)::

  backbone/
    item_embedding       embed [num_items, d]                 (row 0 = padding, zero at init)
    seq_trans            dense d->d                           seq_emb = tanh(.)
    target_trans         {dense_0, dense_1}                   t = tanh(e T0 + t0) T1 + t1
                         (din: {dense_0}, t = tanh(e T0 + t0))
    position_embedding   embed [L, d]                         (sasrec, bert4rec)
    transformer          {layer_i: {attention: {query, key, value: {kernel [d, H, d/H], bias [H, d/H]},
                                                out: {kernel [H, d/H, d], bias [d]}},
                                    norm_1: {scale, bias}, ff_1: dense d->F, ff_2: dense F->d,
                                    norm_2}}   (sasrec: layer_0, ReLU; bert4rec: layer_0..1, GELU)
    gru                  {w_ih [d, 3d], w_hh [d, 3d], b_ih [3d], b_hh [3d]}   (gru4rec; gates r, z, n)
    attention            {query, key, value: {kernel [d, d]}}  (din; no bias)
  head/
    static:              {dense_0, dense_1(, dense_2)}
    duet, apg:           generator: {gru, mlp: {dense_0, dense_1},
                                     proj: {layer_j: {w: dense d->N_in*N_out, b: dense d->N_out}
                                                     | {core: dense d->K*K}}}
    apg, solid-apg:      shared: {layer_j: {V: dense N_in->K, U: dense K->N_out}}
    solid:               item_generator, semantic_generator (as generator),
                         semantic_embedding embed [num_semantics, d],
                         semantic_position_embedding embed [L, d], semantic_seq_trans dense d->d,
                         codebook {codes [C, d]} (ema mode adds
                           ema: {count [C], sum [C, d], unused [C], step [], seed []}),
                         decoder {dense_0: d->codebook_hidden, dense_1: codebook_hidden->d}

Equations:

- SASRec/BERT4Rec ``seq_emb = tanh((E[items] + P) Ws + bs)``; GRU4Rec/DIN
  ``seq_emb = tanh(E[items] Ws + bs)``.
- Transformer layer, post-norm: ``y = LN1(x + MHA(x))``, ``out = LN2(y + ff_2(act(ff_1(y))))``;
  MHA scores ``q_h·k_h / sqrt(d/H)`` with a key-padding mask; head h = features
  ``h*d/H:(h+1)*d/H``. SASRec: 1 layer; BERT4Rec: 2 bidirectional layers; state = row n-1 of the
  last layer.
- GRU (PyTorch equations, h0 = 0): ``r = σ(x W_ir + b_ir + h W_hr + b_hr)``,
  ``z = σ(x W_iz + b_iz + h W_hz + b_hz)``, ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``,
  ``h' = (1 - z) * n + z * h``; the state after step n-1.
- DIN: ``q = t Wq, k = seq_emb Wk, v = seq_emb Wv``, ``p = masked_softmax(q·k / sqrt(d))``, head
  input ``concat(t, Σ p v)`` (2d).
- Head layers ``(N_in, N_out, act)``: ``[(d, d, tanh), (d, d, -)]``; DIN ``[(2d, 128, tanh),
  (128, 64, tanh), (64, 1, -)]``. Logit ``Σ head(x) * t`` (DIN: ``head(x)[:, 0]``).
- Generator: ``h = GRU(seq)`` at n-1; ``z = tanh(h M0 + m0) M1 + m1``. DUET:
  ``W_j = reshape(z A_j + a_j, [N_in, N_out])`` (row-major; A, a = proj.w), ``b_j = z B_j + c_j``
  (B, c = proj.b), layer
  ``act(x W_j + b_j)``. APG: ``S_j = reshape(z A_j + a_j, [K, K])``, layer
  ``act(((x V + v) S_j) U + u)``.
- SOLID: ``quant = codebook(seq_emb)`` (nearest code among rows 1..C-1; zero at padding positions),
  ``dec = leaky_relu(quant D0 + d0, 0.1) D1 + d1``,
  ``sem = tanh((E_sem[semantics] + P_sem) Wss + bss)``; item generator on ``dec``, semantic
  generator on ``sem``; ``W = clip(W_item, -t, t) + W_sem`` for every generated leaf (DUET w and b,
  APG cores). ``aux_loss = λ·mse_m(sem, sg(code)) + codebook_loss + β·commitment_loss`` over
  non-padding positions.

``generate`` returns only the user-dependent weights (DUET
``{layer_j: {w [B, N_in, N_out], b [B, N_out]}}``, APG ``{layer_j: {core [B, K, K]}}``, static
``{}``); ``score`` recomputes the backbone, the target tower and, for DIN, the target-dependent
``concat(t, pooled)``, then applies the head with those weights.
"""

from solid_jax.models.registry import BACKBONES, HEADS, METHODS
from solid_jax.models.base import Backbone, EmbeddingBackbone, Head

# The built-in backbones and heads register themselves on import.
from solid_jax.models.sasrec import SASRec, TransformerBackbone
from solid_jax.models.bert4rec import BERT4Rec
from solid_jax.models.gru4rec import GRU4Rec
from solid_jax.models.din import DIN
from solid_jax.models.static import StaticHead
from solid_jax.models.hyper import ApgHead, DuetHead, Generator
from solid_jax.models.solid import SolidHead
from solid_jax.models.recommender import Recommender
from solid_jax.models.model import Model, item_table, make_model

__all__ = [
  "ApgHead",
  "BACKBONES",
  "BERT4Rec",
  "Backbone",
  "DIN",
  "DuetHead",
  "EmbeddingBackbone",
  "GRU4Rec",
  "Generator",
  "HEADS",
  "Head",
  "METHODS",
  "Model",
  "Recommender",
  "SASRec",
  "SolidHead",
  "StaticHead",
  "TransformerBackbone",
  "item_table",
  "make_model",
]

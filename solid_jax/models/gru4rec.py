"""GRU4Rec (Hidasi et al., 2016): a one-layer GRU over the sequence embeddings, the state after
the last real item. The GRU is the hand-written one of ``solid_jax.nn.gru`` (custom gradient)."""

from __future__ import annotations

from solid_jax.models.base import EmbeddingBackbone, lengths_of, segment_starts
from solid_jax.models.registry import BACKBONES
from solid_jax.nn import gru


@BACKBONES.register("gru4rec")
class GRU4Rec(EmbeddingBackbone):
  """GRU4Rec: ``gru`` ``{w_ih [d, 3d], w_hh [d, 3d], b_ih, b_hh}`` (PyTorch's gates r, z, n)."""

  @classmethod
  def positionwise(cls, cfg):
    return True

  def setup(self):
    super().setup()
    self.gru = gru.GRUWeights(self.cfg.dim)

  def encode(
    self, seq_emb, items, target_vec=None, *, all_positions=False, segments=None, train=False
  ):
    del target_vec, train
    weights = self.gru(seq_emb.shape[-1])
    if all_positions:
      # In packed rows a user's segment starts where the previous one's slots end.
      resets = segment_starts(segments)
      return gru.gru_all_states([weights], [seq_emb], unroll=self.scan_unroll, resets=resets)[0]
    return gru.gru_last_state(weights, seq_emb, lengths_of(items), unroll=self.scan_unroll)

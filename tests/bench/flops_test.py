"""The analytic FLOP count of the SASRec models agrees with XLA's own count."""

import pytest

from benchmarks import flops
from benchmarks import throughput


@pytest.mark.parametrize("method", ["static", "solid"])
def test_analytic_forward_flops_match_xla(method):
  cfg = throughput.model_config("sasrec", method, num_items=101, num_semantics=7)
  analytic = sum(flops.sasrec_components(cfg).values())
  xla = flops.xla_cost(cfg, batch_size=64, phase="forward")
  # Element-wise operations are counted approximately; the matmuls dominate.
  assert xla["flops"] == pytest.approx(analytic, rel=0.06)


def test_solid_components_are_the_sum_of_their_parts():
  solid = flops.sasrec_components(
    throughput.model_config("sasrec", "solid", num_items=101, num_semantics=7)
  )
  duet = flops.sasrec_components(
    throughput.model_config("sasrec", "duet", num_items=101, num_semantics=7)
  )
  assert solid["generator GRU"] == 2 * duet["generator GRU"]
  d, seq, codes = 32, 10, 7
  assert solid["codebook distances + argmin"] == seq * (2.0 * codes * d + 3 * codes + 2 * d)
  # DUET projection of one branch: z (32) -> 32*32 + 32 per layer, 2 layers.
  assert duet["generator projections (DUET A,B / APG cores)"] == 2 * (
    2 * d * d * d + d * d + 2 * d * d + d
  )

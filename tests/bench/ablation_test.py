"""Per-component timings of the SOLID step: every part runs; the parts add up to about the step."""

import pytest

from benchmarks import ablation


@pytest.mark.slow  # compiles four parts and the SOLID training step
def test_component_timings():
  out = ablation.component_timings(batch_size=40, num_items=51, num_semantics=6, rounds=1, steps=1)
  assert len(out["parts"]) == 4
  for part in out["parts"].values():
    assert part["wall_ms"] > 0 and part["cpu_ms"] >= 0
  assert out["step"]["wall_ms"] > 0
  # The parts are the step cut in four (plus the optimizer update), so their sum is of its order.
  assert 0.2 < out["sum_wall_ms"] / out["step"]["wall_ms"] < 5
  # The same GRU part and step with the GRU differentiated through its scan, for comparison.
  assert set(out["gru_autodiff"]) == {"gru", "step"}
  assert out["gru_autodiff"]["gru"]["wall_ms"] > 0 and out["gru_autodiff"]["step"]["wall_ms"] > 0
  from solid_jax.nn import gru as layers  # noqa: PLC0415

  assert layers.gru_last_states.__name__ == "gru_last_states"  # the swap was undone

"""The profiler breakdown attributes XLA operations to the solid_jax functions that traced them."""

import jax
import jax.numpy as jnp

from benchmarks import profile
from solid_jax.nn import gru


def test_time_is_attributed_to_source_functions(tmp_path):
  params = gru.gru_init(jax.random.key(0), 64, 64)
  x = jax.random.normal(jax.random.key(1), (256, 8, 64))
  lengths = jnp.full((256,), 8, jnp.int32)
  fn = jax.jit(lambda p, x: (gru.gru_last_state(p, x, lengths), jnp.sum(x**2)))
  compiled = fn.lower(params, x).compile()
  sources = profile.hlo_sources(compiled.as_text())
  found = {m["source"] for m in sources.values()}
  assert any(s.startswith("gru.py:") for s in found), found
  assert "profile_test.py:test_time_is_attributed_to_source_functions.<locals>.<lambda>" in found
  state = {}

  def run(n):
    for _ in range(n):
      state["out"] = compiled(params, x)

  out = profile.op_time_by_source(
    run, lambda: jax.block_until_ready(state["out"]), compiled.as_text(), str(tmp_path), steps=3
  )
  assert sum(v for k, v in out["by_source"].items() if k.startswith("gru.py:")) > 0.0
  assert out["op_ms_per_step"] > 0.0 and out["wall_ms_per_step"] > 0.0
  assert all(v["source"] for v in out["by_op"].values())

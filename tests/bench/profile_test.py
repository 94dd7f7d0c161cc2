"""The profiler breakdown attributes XLA operations to the solid_jax functions that traced them."""

import jax
import jax.numpy as jnp

from solid_jax.bench import profile
from solid_jax.nn import layers


def test_time_is_attributed_to_source_functions(tmp_path):
  params = layers.dense_init(jax.random.key(0), 256, 256)
  x = jax.random.normal(jax.random.key(1), (512, 256))
  fn = jax.jit(lambda p, x: (layers.dense(p, x), jnp.sum(x ** 2)))
  compiled = fn.lower(params, x).compile()
  sources = profile.hlo_sources(compiled.as_text())
  found = {m["source"] for m in sources.values()}
  assert "layers.py:dense" in found
  assert "profile_test.py:test_time_is_attributed_to_source_functions.<locals>.<lambda>" in found
  state = {}

  def run(n):
    for _ in range(n):
      state["out"] = compiled(params, x)

  out = profile.op_time_by_source(run, lambda: jax.block_until_ready(state["out"]),
                                  compiled.as_text(), str(tmp_path), steps=3)
  assert out["by_source"].get("layers.py:dense", 0.0) > 0.0
  assert out["op_ms_per_step"] > 0.0 and out["wall_ms_per_step"] > 0.0
  assert all(v["source"] for v in out["by_op"].values())

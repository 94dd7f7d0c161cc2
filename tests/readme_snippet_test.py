"""The README's "use it from your own JAX code" snippet runs as written.

The snippet is the first ```python block of README.md that calls ``make_model``; when README.md
has none, the first ```python block of docs/USAGE_SNIPPET.md (the snippet's source, included in the
README verbatim).
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _snippet() -> str:
  readme = ROOT / "README.md"
  if readme.exists():
    for block in BLOCK.findall(readme.read_text()):
      if "make_model(" in block:
        return block
  blocks = BLOCK.findall((ROOT / "docs" / "USAGE_SNIPPET.md").read_text())
  assert blocks, "docs/USAGE_SNIPPET.md has no python block"
  return blocks[0]


def _flax_snippet() -> str:
  for block in BLOCK.findall((ROOT / "README.md").read_text()):
    if "nn.Module" in block:
      return block
  raise AssertionError("README.md has no python block with a Flax module")


def _as_a_user_runs_it():
  """JAX's default (standard) dtype promotion: the snippets are user code, which mixes int and
  float freely (and calls optax's Adam, which needs it), while the suite is strict."""
  return jax.numpy_dtype_promotion("standard")


def test_flax_snippet_runs():
  """A SOLID head inside a user's own Flax model: logits, the auxiliary loss and a gradient for
  every parameter of the head but the codebook's padding row."""
  namespace = {}
  with _as_a_user_runs_it():
    exec(compile(_flax_snippet(), "flax_snippet", "exec"), namespace)  # noqa: S102
  assert namespace["logits"].shape == (4,)
  assert bool(jnp.all(jnp.isfinite(namespace["logits"])))
  assert float(namespace["aux"]["aux_loss"]) > 0
  assert "SolidHead_0" in namespace["variables"]["params"]


def test_usage_snippet_is_short():
  assert len(_snippet().strip().splitlines()) <= 25


def test_usage_snippet_runs():
  namespace = {}
  with _as_a_user_runs_it():
    exec(compile(_snippet(), "usage_snippet", "exec"), namespace)  # noqa: S102
  assert np.isfinite(float(namespace["loss"]))
  assert namespace["weights"]["layer_0"]["w"].shape == (4, 32, 32)
  assert namespace["scores"].shape == (4,)
  assert bool(jnp.all(jnp.isfinite(namespace["scores"])))

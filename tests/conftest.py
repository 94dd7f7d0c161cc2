"""Test configuration shared by the whole suite.

- Every test runs on the CPU; nothing here needs an accelerator.
- Tests over the real datasets in ``../shared/data`` carry the ``shared_data`` marker and are skipped, with
  the reason, when that folder is absent (set ``SOLID_JAX_SHARED_DATA`` to point elsewhere).
- JAX's dtype promotion is strict suite-wide: an implicit promotion is a test failure.
- Tests against the PyTorch reference carry the ``torch`` marker and are skipped when torch is absent.
"""

import importlib.util
import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax reads it at import
import jax  # noqa: E402

# Every implicit promotion between dtypes (int * float, bfloat16 + float32, ...) is an error in
# the tests, as in Equinox's suite: the library casts explicitly wherever it mixes dtypes.
jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
  os.environ.get("SOLID_JAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)
HAVE_SHARED_DATA = SHARED_DATA.is_dir()
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
  del config
  skip_data = pytest.mark.skip(
    reason=f"real datasets not found at {SHARED_DATA} (set SOLID_JAX_SHARED_DATA to their folder)"
  )
  skip_torch = pytest.mark.skip(reason="torch is not installed (pip install -e '.[torch]')")
  for item in items:
    if "shared_data" in item.keywords and not HAVE_SHARED_DATA:
      item.add_marker(skip_data)
    if "torch" in item.keywords and not HAVE_TORCH:
      item.add_marker(skip_torch)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """Path of ``../shared/data`` (tests using it must also carry ``@pytest.mark.shared_data``)."""
  return SHARED_DATA

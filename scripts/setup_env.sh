#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment and installs everything the project needs:
# solid_jax itself (editable) with its test extras, PyTorch (CPU) for the reference models, and the
# recbole==1.2.1 wheel whose bundled MovieLens-100K files are the embedded default dataset.
#
# Usage: source-free; prints the path of the environment's python on its last line.
#   SOLID_JAX_VENV   where the environment lives (default: <repo>/.venv)
#   SOLID_JAX_TORCH  the torch requirement to install (default: torch==2.13.0)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SOLID_JAX_VENV:-$repo/.venv}"
torch_req="${SOLID_JAX_TORCH:-torch==2.13.0}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.solid_jax_installed"
want="$(cat "$repo/pyproject.toml" "$repo/scripts/setup_env.sh" | sha256sum | cut -c1-32) $torch_req"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing dependencies into $venv (first run takes a few minutes)" >&2
  pip_install() {
    # pip's notes about unused local index folders are noise; real errors still fail the script.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
      | { grep -v '^WARNING: Location' || true; } >&2
  }
  pip_install "$torch_req"
  pip_install -e "$repo[test,tensorboard,plot,bench]"
  # Data only: the wheel ships recbole/dataset_example/ml-100k; recbole itself is never imported.
  pip_install --no-deps "recbole==1.2.1"
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"

#!/usr/bin/env bash
# Sets up the environment (scripts/setup_env.sh) and checks the code with ruff: lint rules and the
# formatter's layout (settings in pyproject.toml). `bash scripts/lint.sh --fix` rewrites instead.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh" | tail -n 1)"
ruff="$(dirname "$py")/ruff"
cd "$repo"
if [ "${1:-}" = "--fix" ]; then
  "$ruff" check --fix .
  "$ruff" format .
else
  "$ruff" check .
  "$ruff" format --check .
fi

#!/usr/bin/env bash
# Sets up the environment (scripts/setup_env.sh) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -k metrics`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh" | tail -n 1)"
cd "$repo"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# Two workers (pytest-xdist): the suite is CPU-bound and the machines here have 2 cores.
exec "$py" -m pytest -q -n "${SOLID_JAX_TEST_WORKERS:-2}" "$@"

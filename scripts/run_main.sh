#!/usr/bin/env bash
# Sets up the environment (scripts/setup_env.sh) and runs the main job: stage-wise SOLID training and
# evaluation on the embedded MovieLens-100K with SASRec, next to the static and DUET baselines, printing a
# results table. Extra arguments go to experiments.main, e.g. `--epochs=2`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup_env.sh" | tail -n 1)"
cd "$repo"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec "$py" -m experiments.main "$@"

#!/usr/bin/env bash
# Fills wheels/ (ignored by git) with what scripts/gpu_check.sh installs offline on a bare GPU
# machine: the packages its python lacks (datasets, tensorboardX) and their dependencies, for that
# machine's python and platform. Run on a machine with internet:
#
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION] [PLATFORM]     # e.g. 3.11 manylinux2014_x86_64
#
# Defaults: this python's version and manylinux2014_x86_64. The folder then travels with the tree.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
version="${1:-$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
platform="${2:-manylinux2014_x86_64}"
mkdir -p "$repo/wheels"
"$py" -m pip download --quiet --dest "$repo/wheels" --only-binary=:all: \
  --python-version "$version" --platform "$platform" --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any \
  "datasets>=2.19" "tensorboardX>=2.6"
ls "$repo/wheels" | wc -l | xargs echo "wheels in $repo/wheels:"

#!/usr/bin/env bash
# The one-call accelerator check: throughput against PyTorch, a training epoch, the full-catalogue
# evaluation and the population step, as JSON in one folder, within a time budget.
#
#   bash scripts/gpu_check.sh OUT_DIR [--device=gpu|cpu] [--tiny] [--data=FOLDER] [--budget=SECONDS]
#                                     [--only=STEP,STEP,...]
#
# Runs from the repository root on a bare machine with no internet whose python already has jax
# (CUDA), flax, optax, orbax-checkpoint, chex, numpy, torch, pyarrow and tqdm. What is missing
# (datasets, tensorboardX) is installed offline from wheels/, which scripts/gpu_wheels.sh fills
# on a machine with internet. The tree itself is used in place (PYTHONPATH), not installed.
#
# Steps, most important first; each writes OUT_DIR/<step>.json and OUT_DIR/<step>.log, and a step
# that fails or runs out of time is recorded and the next one runs. OUT_DIR/summary.json lists
# every step (status, seconds, exit code) and the device. With --tiny every size is small (a CPU
# smoke test of the script: tests/bench/gpu_check_test.py).
#
#   throughput_f32_b1024     SASRec + SOLID train / infer: solid_jax vs torch eager vs torch.compile
#   train_epoch              one epoch of each SOLID stage on --data (default ../shared/data/beauty,
#                            else the embedded ml-100k), with its evaluation
#   full_eval                full-catalogue evaluation of --data's test users (FullEvaluator)
#   population               the vmapped population step at N = 1 and 32 members
#   throughput_bf16_b1024, throughput_f32_b65536, throughput_bf16_b65536
#   catalog_<n>              the same at 1k, 10k, 100k and 1M items (torch eager only)
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out=""
device="gpu"
tiny=0
data=""
budget=480
only=""
for arg in "$@"; do
  case "$arg" in
    --device=*) device="${arg#--device=}" ;;
    --tiny) tiny=1 ;;
    --data=*) data="${arg#--data=}" ;;
    --budget=*) budget="${arg#--budget=}" ;;
    --only=*) only=",${arg#--only=}," ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
if [[ -z "$out" ]]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR [--device=gpu|cpu] [--tiny] [--data=FOLDER]" >&2
  exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"
py="${PYTHON:-python3}"
start=$(date +%s)

# Offline installs of what the machine's python lacks.
for pkg in datasets tensorboardX; do
  if ! "$py" -c "import $pkg" 2>/dev/null; then
    if [[ -d "$repo/wheels" ]]; then
      "$py" -m pip install --quiet --no-index --find-links "$repo/wheels" "$pkg" \
        >>"$out/install.log" 2>&1 || echo "could not install $pkg from wheels/" >>"$out/install.log"
    else
      echo "$pkg missing and no wheels/ folder (scripts/gpu_wheels.sh)" >>"$out/install.log"
    fi
  fi
done

export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export SOLID_JAX_CACHE="${SOLID_JAX_CACHE:-$out/data_cache}"
if [[ "$device" == "cpu" ]]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
fi
if [[ -z "$data" ]]; then
  data="$repo/../shared/data/beauty"
  [[ -d "$data" && $tiny -eq 0 ]] || data="ml-100k"
fi

if [[ $tiny -eq 1 ]]; then
  big=256 small=64 repeats=2 rounds=1 catalogs="10000" members="1,2" epochs_flags="--config=smoke"
  compare=torch_eager  # torch.compile needs a C++ toolchain on the CPU; the GPU run covers it
else
  big=65536 small=1024 repeats=10 rounds=2 catalogs="1000 10000 100000 1000000" members="1,32"
  epochs_flags="--config=default" compare=torch
fi

steps_json=""
run_step() {  # name, timeout seconds, command...
  local name="$1" limit="$2"
  shift 2
  local now left status rc t0 t1
  if [[ -n "$only" && "$only" != *",$name,"* ]]; then
    return
  fi
  now=$(date +%s)
  left=$((budget - (now - start)))
  if ((left < 10)); then
    status="skipped (time budget)"
    rc=-1
    t0=$now t1=$now
  else
    # Tiny sizes (the CPU smoke test) are bounded by the whole budget only: a loaded CPU
    # compiles slowly, and the per-step limits are sized for an accelerator.
    if ((limit > left || tiny == 1)); then limit=$left; fi
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    t1=$(date +%s)
    if ((rc == 0)); then status="ok"; elif ((rc == 124 || rc == 137)); then status="timed out"; else status="failed"; fi
  fi
  echo "$name: $status ($((t1 - t0)) s)"
  steps_json+="${steps_json:+,}{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $((t1 - t0))}"
}

bench() {  # name, timeout, dtype, batch, items, compare
  run_step "$1" "$2" "$py" -m experiments.benchmark --backbone=sasrec --method=solid \
    --device="$device" --dtype="$3" --batch_size="$4" --num_items="$5" --compare="$6" \
    --repeats="$repeats" --rounds="$rounds" --pipeline_dataset= --torch_threads=0 \
    --output="$out/$1.json"
}

bench throughput_f32_b$small 120 float32 "$small" 1683 "$compare"
run_step train_epoch 120 "$py" -m experiments.train $epochs_flags --dataset="$data" \
  --backbone=sasrec --method=solid --epochs=1 --progress=false --tensorboard=false \
  --workdir="$out/train_epoch_workdir"
[[ -f "$out/train_epoch_workdir/results.json" ]] && cp "$out/train_epoch_workdir/results.json" "$out/train_epoch.json"
run_step full_eval 60 "$py" -m experiments.full_eval_benchmark --datasets="$data" \
  --repeats=2 --output="$out/full_eval.json"
run_step population 60 "$py" -m benchmarks.population --sizes="$members" \
  --batch_size=$(( small - small % 5 )) --repeats="$repeats" --output="$out/population.json"
bench throughput_bf16_b$small 90 bfloat16 "$small" 1683 "$compare"
bench throughput_f32_b$big 90 float32 "$big" 1683 "$compare"
bench throughput_bf16_b$big 90 bfloat16 "$big" 1683 "$compare"
for n in $catalogs; do
  bench catalog_$n 60 float32 "$small" "$n" torch_eager
done

device_name="$("$py" -c 'import jax; d = jax.devices()[0]; print(getattr(d, "device_kind", str(d)))' 2>/dev/null || echo unknown)"
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
cat >"$out/summary.json" <<EOF
{"device": "$device", "jax_device": "$device_name", "nvidia_smi": "${gpu//\"/}", "data": "$data",
 "tiny": $tiny, "seconds": $(( $(date +%s) - start )), "budget_s": $budget, "steps": [$steps_json]}
EOF
echo "summary: $out/summary.json"

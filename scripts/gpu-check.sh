#!/bin/bash
# The GPU checks, as one script for a machine with an NVIDIA GPU and a CUDA torch
# (no Docker needed): the gpu test tier, the selftest's measured bf16 TFLOP/s, bf16
# transformer training (tokens/s, MFU) eager and compiled, the trainer against a
# plain loop, and DDP over NCCL through torchrun. One line of figures per check.
#
#   bash scripts/gpu-check.sh [OUTDIR]      (about 3 minutes on an H100/H200)
#   AIBUILD_GPU_IMAGE=REF bash scripts/gpu-check.sh
#
# Runs from a checkout with PYTHONPATH=. when aibuild is not installed. With
# AIBUILD_GPU_IMAGE (an aibuild CUDA image, e.g. `aibuild image gpu-h100 -q`), the
# trainer's checks (selftest, bf16 training, DDP) run inside that image through
# `aibuild run --gpus all`, as users run it; the test tier and the plain-loop benchmark
# always use the host's CUDA torch. Fails (exit 1), never skips, when no GPU works.
# Logs and JSON go to OUTDIR (default ./gpu-check).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
: >"$out/figures.txt"
fig() { printf '%s\n' "$1" | tee -a "$out/figures.txt"; }  # one line of figures, kept as it comes

check() {  # check NAME TIMEOUT COMMAND...: run, log, remember failure
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "::: $name" >&2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "::: $name rc=$rc in $((SECONDS - t0))s" >&2
    tail -n 4 "$out/$name.log" >&2
    ((rc == 0)) || status=1
    return $rc
}

summary() {  # summary NAME DIR: one line from a training run's summary.json
    "$py" - "$1" "$2/summary.json" <<'EOF'
import json, sys
name, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
keys = ("device_name", "precision", "world_size", "steps", "samples_per_s", "tokens_per_s",
        "model_tflops_per_device", "mfu", "peak_memory_bytes", "train_time_s")
print(name + ": " + ", ".join(f"{k}={s.get(k)}" for k in keys if s.get(k) is not None))
EOF
}

nvidia-smi -L >"$out/nvidia-smi.txt" 2>&1 || { echo "no working nvidia-smi" >&2; status=1; }
"$py" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee "$out/torch.txt" || exit 1

# The trainer, on the host or in the image (results in host directories either way).
# train_cmd/ddp_cmd set CMD: `check` runs commands, not shell functions.
image=${AIBUILD_GPU_IMAGE:-}
train_cmd() {  # train_cmd OUTPUT|- ARGS...: `aibuild train ARGS` writing into OUTPUT
    local output=$1 dest=()
    shift
    [[ $output == - ]] || dest=(--output "$output")
    if [[ -n $image ]]; then
        CMD=("$py" -m aibuild run "$image" --gpus all "${dest[@]}" -- "$@")
    else
        CMD=("$py" -m aibuild train "${dest[@]}" "$@")
    fi
}
ddp_cmd() {  # ddp_cmd NPROC OUTPUT ARGS...: torchrun with NPROC processes
    local nproc=$1 output=$2
    shift 2
    if [[ -n $image ]]; then
        CMD=("$py" -m aibuild run "$image" --gpus all --nproc-per-node "$nproc"
            --output "$output" -- "$@")
    else
        CMD=("$py" -m torch.distributed.run --standalone --nproc-per-node "$nproc"
            -m aibuild train --output "$output" "$@")
    fi
}
[[ -z $image ]] || echo "trainer checks in the image $image" | tee "$out/image.txt"

# 1. the gpu test tier
check test-gpu 150 "$py" -m pytest -m gpu -q -p no:cacheprovider tests/train/test_train_gpu.py

# 2. selftest: versions, each GPU, measured matmul TFLOP/s and copy bandwidth
printf 'name: g\nhardware:\n  accelerator: nvidia\n' >"$out/nvidia.yaml"
if [[ -n $image ]]; then  # the image's own profile says it expects a GPU
    train_cmd - --selftest
else
    train_cmd - --selftest --config "$out/nvidia.yaml"
fi
check selftest 60 "${CMD[@]}" &&
    fig "selftest: $(grep -iE 'TFLOP' "$out/selftest.log" | tr '\n' ' ')"

# 3. bf16 transformer training (GPT-2 small shape on the bundled text), eager then compiled
gpt=(--model transformer --precision bf16 --device cuda --batch-size 16 --max-steps 60
    --set n_layer=12 --set n_head=12 --set n_embd=768 --set block_size=1024
    --set eval=false --set sample_tokens=0 --set log_every=20)
train_cmd "$out/eager" "${gpt[@]}" --no-compile
check bf16-eager 120 "${CMD[@]}" &&
    fig "$(summary bf16-eager "$out/eager")"
train_cmd "$out/compiled" "${gpt[@]}" --compile
check bf16-compile 180 "${CMD[@]}" &&
    fig "$(summary bf16-compile "$out/compiled")"

# 4. the trainer against a plain PyTorch loop on the GPU (same model, data, batch)
check bench-train 120 "$py" benchmarks/bench_train.py --device cuda --repeats 2 &&
    fig "bench-train: $(grep -E 'the plain loop' "$out/bench-train.log" | tail -n 4 | tr '\n' ' ')"

# 5. DDP over NCCL through torchrun: one process per GPU this machine has (NCCL refuses
#    two ranks on one GPU, so a one-GPU machine runs world size 1)
ngpu=$("$py" -c "import torch; print(torch.cuda.device_count())")
ddp_cmd "$ngpu" "$out/ddp" --device cuda --precision bf16 --epochs 1 --max-steps 40
check ddp-nccl 90 "${CMD[@]}" && fig "$(summary "ddp-nccl-x$ngpu" "$out/ddp")"
grep -m1 -i "nccl\|backend" "$out/ddp-nccl.log" >&2 || true

exit $status

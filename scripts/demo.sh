#!/bin/bash
# The main job, end to end: build the cpu profile's image and train in it on the
# embedded dataset, writing checkpoints and metrics to ./aibuild-output.
#
#   scripts/demo.sh            (make demo)
#
# It picks how to build by itself, and says which:
#   networked   the official base python:3.11-slim-bookworm is on the engine or can be
#               pulled: `aibuild image cpu` as is (PyTorch's CPU wheel index).
#   air-gapped  no registry answers: scripts/test-env.sh prepares the engine, a Debian
#               bookworm base bootstrapped locally and a wheelhouse holding the local
#               torch 2.13.0 CPU wheel; the build uses those (--base-image, --wheelhouse).
# Environment: DOCKER_HOST; AIBUILD_DEMO_MODE=networked|air-gapped forces a mode;
# AIBUILD_DEMO_EPOCHS (default 1); AIBUILD_DEMO_OUTPUT (default ./aibuild-output).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
official_base=python:3.11-slim-bookworm
epochs=${AIBUILD_DEMO_EPOCHS:-}  # empty: the profile's (cpu: 10 epochs, ~97% test accuracy)
output=${AIBUILD_DEMO_OUTPUT:-$root/aibuild-output}
aibuild=(python3 -m aibuild)

say() { printf '\ndemo: %s\n' "$*" >&2; }

# A fresh machine: install aibuild itself (the host needs no torch: training runs in the image).
if ! python3 -c "import aibuild.cli" >/dev/null 2>&1; then
    say "installing aibuild: python3 -m pip install -e ."
    python3 -m pip install -q -e .
fi
# No engine yet: start one (as root on Debian this installs docker.io and starts dockerd).
if ! docker version >/dev/null 2>&1; then
    say "no Docker engine answers: starting one with scripts/ensure-docker.sh"
    bash scripts/ensure-docker.sh
fi

engine_answers() { docker version >/dev/null 2>&1; }

can_use_official_base() {
    engine_answers || return 1
    docker image inspect "$official_base" >/dev/null 2>&1 && return 0
    say "pulling $official_base (60 s at most)..."
    timeout 60 docker pull --quiet "$official_base" >/dev/null 2>&1
}

mode=${AIBUILD_DEMO_MODE:-}
if [[ -z $mode ]]; then
    if can_use_official_base; then
        mode=networked
    else
        mode=air-gapped
    fi
fi

build_args=()
case $mode in
networked)
    say "mode: networked (base $official_base, PyTorch's CPU wheel index)"
    ;;
air-gapped)
    say "mode: air-gapped ($official_base cannot be pulled): preparing the local base image" \
        "and wheelhouse with scripts/test-env.sh"
    bash scripts/test-env.sh
    # shellcheck disable=SC1091
    source ./.aibuild-test-env
    export DOCKER_HOST
    build_args=(
        --base-image "$AIBUILD_TEST_BASE_IMAGE"
        --wheelhouse "$AIBUILD_TEST_WHEELHOUSE"
        --set software.torch=2.13.0
        --set software.python=3.11
    )
    if [[ ${AIBUILD_TEST_BUILD_NETWORK:-} != "" && $AIBUILD_TEST_BUILD_NETWORK != none ]]; then
        build_args+=(--network "$AIBUILD_TEST_BUILD_NETWORK")
    fi
    say "base image $AIBUILD_TEST_BASE_IMAGE, wheelhouse $AIBUILD_TEST_WHEELHOUSE"
    ;;
*)
    say "AIBUILD_DEMO_MODE must be networked or air-gapped, not '$mode'"
    exit 2
    ;;
esac

engine_answers || {
    say "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
    exit 1
}

say "checking this host: ${aibuild[*]} doctor cpu"
"${aibuild[@]}" doctor cpu || true

# --set only what the build needs: `run` names the same profile to find the image.
sets=()
for ((i = 0; i < ${#build_args[@]}; i++)); do
    if [[ ${build_args[i]} == --set ]]; then
        sets+=(--set "${build_args[i + 1]}")
    fi
done

say "building: ${aibuild[*]} image cpu ${build_args[*]}"
start=$SECONDS
"${aibuild[@]}" image cpu "${build_args[@]}"
say "image built in $((SECONDS - start)) s"

rm -rf "$output"
mkdir -p "$output"
train_args=()
[[ -n $epochs ]] && train_args=(-- --epochs "$epochs")
say "training: ${aibuild[*]} run cpu ${sets[*]} --output $output ${train_args[*]}"
start=$SECONDS
"${aibuild[@]}" run cpu "${sets[@]}" --output "$output" "${train_args[@]}"
say "trained in $((SECONDS - start)) s; written to $output:"
ls -l "$output" >&2
if [[ -f $output/summary.json ]]; then
    cat "$output/summary.json"
fi

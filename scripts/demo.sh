#!/bin/bash
# The main job, end to end: build the cpu profile's image and train in it on the
# embedded dataset, writing checkpoints and metrics to ./aibuild-output.
#
#   scripts/demo.sh            (make demo)
#
# It needs only what the demo uses: a Docker engine, a base image and, offline, a
# wheelhouse. It starts nothing else (no registry, no Slurm, no second engine, no
# Node or Dev Containers CLI: those are the tests', see scripts/test-env.sh), and it
# says what it started or made at the end.
#   engine      DOCKER_HOST, else the default socket. When none answers and we are
#               root on Debian, scripts/ensure-docker.sh installs and starts dockerd
#               (without the tests' fake NVIDIA hook).
#   networked   the official base python:3.11-slim-bookworm is on the engine or can
#               be pulled: `aibuild image cpu` as is (PyTorch's CPU wheel index).
#   air-gapped  no registry answers: a Debian bookworm base bootstrapped locally
#               (scripts/bootstrap-base.sh) and a wheelhouse holding torch 2.13.0's
#               CPU wheel (scripts/make-wheelhouse.sh); the build uses those.
# Environment: DOCKER_HOST; AIBUILD_DEMO_MODE=networked|air-gapped forces a mode;
# AIBUILD_DEMO_EPOCHS (default: the profile's 10); AIBUILD_DEMO_OUTPUT (default
# ./aibuild-output); AIBUILD_DEMO_IMAGE (the image repository, default the profile's
# `aibuild`); AIBUILD_TEST_BASE_IMAGE, AIBUILD_TEST_WHEELHOUSE (the air-gapped base
# and wheelhouse; defaults aibuild-test/bookworm:12 and .cache/wheelhouse).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
official_base=python:3.11-slim-bookworm
epochs=${AIBUILD_DEMO_EPOCHS:-} # empty: the profile's (cpu: 10 epochs)
output=${AIBUILD_DEMO_OUTPUT:-$root/aibuild-output}
aibuild=(python3 -m aibuild)
started=() # what this run started or made, said at the end
t_start=$SECONDS

say() { printf '\ndemo: %s\n' "$*" >&2; }
engine_answers() { docker version >/dev/null 2>&1; }

# A fresh machine: install aibuild itself (the host needs no torch: training runs in the image).
if ! python3 -c "import aibuild.cli" >/dev/null 2>&1; then
    say "installing aibuild: python3 -m pip install -e ."
    python3 -m pip install -q -e .
    started+=("installed aibuild (pip install -e .)")
fi

# The engine: the one that answers, else start one (root on Debian only).
if engine_answers; then
    say "engine: Docker $(docker version --format '{{.Server.Version}}') at ${DOCKER_HOST:-unix:///var/run/docker.sock} (already running)"
else
    say "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}: starting one with scripts/ensure-docker.sh"
    AIBUILD_FAKE_NVIDIA_HOOK=0 bash scripts/ensure-docker.sh main
    engine_answers || {
        say "still no Docker engine answers; start one yourself or point DOCKER_HOST at one"
        exit 1
    }
    started+=("a Docker engine (dockerd; scripts/ensure-docker.sh stop main stops it)")
fi

can_use_official_base() {
    docker image inspect "$official_base" >/dev/null 2>&1 && return 0
    say "pulling $official_base (60 s at most)..."
    if timeout 60 docker pull --quiet "$official_base" >/dev/null 2>&1; then
        started+=("pulled $official_base")
        return 0
    fi
    return 1
}

mode=${AIBUILD_DEMO_MODE:-}
if [[ -z $mode ]]; then
    if can_use_official_base; then mode=networked; else mode=air-gapped; fi
fi

build_args=()
sets=()
case $mode in
networked)
    say "mode: networked (base $official_base, PyTorch's CPU wheel index)"
    ;;
air-gapped)
    base=${AIBUILD_TEST_BASE_IMAGE:-aibuild-test/bookworm:12}
    wheelhouse=${AIBUILD_TEST_WHEELHOUSE:-$root/.cache/wheelhouse}
    say "mode: air-gapped ($official_base cannot be pulled): base $base, wheelhouse $wheelhouse"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        if ! command -v debootstrap >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            say "installing debootstrap (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
                { apt-get update -q >/dev/null &&
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null; }
            started+=("installed debootstrap")
        fi
        bash scripts/bootstrap-base.sh "$base"
        started+=("bootstrapped the base image $base")
    fi
    [[ -s $wheelhouse/.complete ]] || started+=("filled the wheelhouse $wheelhouse")
    bash scripts/make-wheelhouse.sh "$wheelhouse"
    sets=(--set software.torch=2.13.0 --set software.python=3.11)
    build_args=(--base-image "$base" --wheelhouse "$wheelhouse")
    ;;
*)
    say "AIBUILD_DEMO_MODE must be networked or air-gapped, not '$mode'"
    exit 2
    ;;
esac
# `run` names the same profile (and the same --set) to find the image.
[[ -n ${AIBUILD_DEMO_IMAGE:-} ]] && sets+=(--set "image.name=$AIBUILD_DEMO_IMAGE")

say "building: ${aibuild[*]} image cpu ${sets[*]} ${build_args[*]}"
start=$SECONDS
"${aibuild[@]}" image cpu "${sets[@]}" "${build_args[@]}"
say "image built in $((SECONDS - start)) s"
started+=("built the image $("${aibuild[@]}" check cpu "${sets[@]}" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["plan"]["image_ref"])')")

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
    python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
print("demo: %d steps, eval accuracy %.2f%%" % (s["steps"], 100 * s["eval"]["accuracy"]))' "$output/summary.json" >&2 || true
fi
say "done in $((SECONDS - t_start)) s. This demo started or made:"
for item in "${started[@]}"; do printf '  - %s\n' "$item" >&2; done
say "nothing else was started (no registry, no Slurm, no second engine)."

#!/bin/bash
# Prepare the real parts the integration tests use, then write .aibuild-test-env.
#
#   scripts/test-env.sh          (make engine; make test runs it first)
#
# Steps, each idempotent and quick when warm:
#   1. the main Docker engine, with the fake NVIDIA hook (scripts/ensure-docker.sh)
#   2. the offline base image aibuild-test/bookworm:12 (scripts/bootstrap-base.sh)
#   3. which network builds/containers reach Debian's mirror and PyPI through
#   4. a second engine without the hook, holding the base image too; then Docker 26.1
#      with the classic and with the containerd image store (scripts/docker-modern.sh)
#   5. the wheelhouses (scripts/make-wheelhouse.sh): the images' packages, and the same
#      plus JupyterLab for images with dev.jupyter: true
#   6. the registries: plain :5000, auth :5001 (scripts/registry.sh)
#   7. the Dev Containers CLI (@devcontainers/cli from npm, into .cache)
#   8. a 2-node Slurm on this host (scripts/slurm-local.sh; one already running is used)
#   9. .aibuild-test-env: `export VAR=value` lines for the tests and the shell
# Timings go to stderr and to .cache/test-env-timings.log.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scripts=$root/scripts
cd "$root"
export AIBUILD_TEST_CACHE=${AIBUILD_TEST_CACHE:-$root/.cache}
export AIBUILD_TEST_STATE=${AIBUILD_TEST_STATE:-/var/lib/aibuild-test}
mkdir -p "$AIBUILD_TEST_CACHE"
env_file=$root/.aibuild-test-env
timings=()
JUPYTERLAB_VERSION=4.6.6
DEVCONTAINERS_CLI_VERSION=0.83.0

log() { printf 'test-env: %s\n' "$*" >&2; }
step() {
    # step NAME COMMAND...: run, time it, stop everything on failure.
    local name=$1 t0=$EPOCHREALTIME dt
    shift
    if ! "$@"; then
        log "FAILED: $name"
        exit 1
    fi
    dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    timings+=("$name=${dt}s")
}

# 0. system packages the steps below need, when missing (root on Debian/Ubuntu only), so
#    that `make test` works on a fresh machine as well as after .ci/run.
system_packages() {
    local wanted=(docker.io iptables iproute2 debootstrap docker-registry apache2-utils docker-compose tmux)
    local missing=() p
    for p in "${wanted[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
    done
    # node and npm for the Dev Containers CLI: Debian's, unless a node with npm is there
    command -v npm >/dev/null || missing+=(nodejs npm)
    ((${#missing[@]})) || return 0
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing system packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})"
        return 1
    fi
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
step system-packages system_packages

# 1. main engine
step engine bash "$scripts/ensure-docker.sh" main
export DOCKER_HOST
DOCKER_HOST=$(bash "$scripts/ensure-docker.sh" host main)
storage_driver=$(docker info --format '{{.Driver}}')

# 2. base image
base_image=${AIBUILD_TEST_BASE_IMAGE:-aibuild-test/bookworm:12}
step base-image bash "$scripts/bootstrap-base.sh" "$base_image"

# 3. networking: which network do builds use? The host's first: aibuild serves the
# wheelhouse to builds on loopback, which RUN steps reach only on the host network (on
# another network it copies the wheelhouse in; tests of that pass --network bridge).
# Bridge (NAT) as the fallback where host networking cannot reach Debian's mirror.
probe_network() {
    local mode out
    for mode in host bridge; do
        if out=$(docker run --rm --network "$mode" "$base_image" \
            timeout 10 bash -c 'exec 3<>/dev/tcp/deb.debian.org/80 && echo reached' 2>&1) &&
            [[ $out == *reached* ]]; then
            build_network=$mode
            [[ $mode == host ]] || log "using bridge networking for builds and containers"
            return 0
        fi
        log "containers on the $mode network cannot reach deb.debian.org:80: ${out:0:300}"
    done
    log "no network mode reaches Debian's mirror: builds that apt-get install will fail"
    build_network=none
}
step network probe_network

# The fake hook: a GPU request on the main engine must start the container.
probe_hook() {
    local out
    gpu_hook=1
    if ! out=$(docker run --rm --gpus all "$base_image" true 2>&1); then
        gpu_hook=0
        log "WARNING: the engine at $DOCKER_HOST refuses --gpus (${out:0:300})."
        log "  It was not started with nvidia-container-runtime-hook on its PATH: stop it"
        log "  and rerun this script, which then starts dockerd with the fake hook."
    fi
}
step gpu-hook probe_hook

# 4. the engine without the hook, with the base image in it
nohook_host=$(bash "$scripts/ensure-docker.sh" host nohook)
load_into_nohook() {
    bash "$scripts/ensure-docker.sh" nohook || return 1
    if ! docker -H "$nohook_host" image inspect "$base_image" >/dev/null 2>&1; then
        docker save "$base_image" | docker -H "$nohook_host" load >/dev/null
    fi
}
step nohook-engine load_into_nohook

# 4b. the engines users run today: Docker 26.1 with the classic store and with the
# containerd image store (the default of fresh Docker 29 installs), beside the system's,
# each on its own socket, data-root and bridge (scripts/docker-modern.sh), with the base
# image loaded. `make test-engines` runs the engine tiers on them. AIBUILD_TEST_ENGINES=0
# skips them (the variables are then left empty and test-engines fails saying so).
modern_engines() {
    local store host
    for store in classic containerd; do
        host=$(bash "$scripts/docker-modern.sh" up "$store") || return 1
        host=${host#DOCKER_HOST=}
        if ! docker -H "$host" image inspect "$base_image" >/dev/null 2>&1; then
            docker save "$base_image" | docker -H "$host" load >/dev/null || return 1
        fi
        if [[ $store == classic ]]; then classic_host=$host; else containerd_host=$host; fi
    done
}
classic_host="" containerd_host=""
if [[ ${AIBUILD_TEST_ENGINES:-1} != 0 ]]; then
    step modern-engines modern_engines
fi

# 5. wheelhouses
wheelhouse=${AIBUILD_TEST_WHEELHOUSE:-$AIBUILD_TEST_CACHE/wheelhouse}
step wheelhouse bash "$scripts/make-wheelhouse.sh" "$wheelhouse"
# The same plus JupyterLab (a dev.jupyter image installs it from here): torch's wheel is
# taken from the first wheelhouse (a hard link where the disk allows).
dev_wheelhouse=${AIBUILD_TEST_DEV_WHEELHOUSE:-$AIBUILD_TEST_CACHE/wheelhouse-dev}
step wheelhouse-dev env AIBUILD_TORCH_WHEEL_DIR="$wheelhouse" \
    bash "$scripts/make-wheelhouse.sh" "$dev_wheelhouse" "jupyterlab==$JUPYTERLAB_VERSION"

# 6. registries
step registries bash -c "'$scripts/registry.sh' start plain && '$scripts/registry.sh' start auth"
# 7. the Dev Containers CLI, pinned: 0.83.0 is the newest that runs on Debian 12's node 18
devcontainer_cli=$AIBUILD_TEST_CACHE/devcontainers-cli/node_modules/.bin/devcontainer
install_devcontainer_cli() {
    [[ -x $devcontainer_cli && $("$devcontainer_cli" --version 2>/dev/null) == "$DEVCONTAINERS_CLI_VERSION" ]] && return 0
    log "installing @devcontainers/cli@$DEVCONTAINERS_CLI_VERSION into $AIBUILD_TEST_CACHE/devcontainers-cli"
    npm install --prefix "$AIBUILD_TEST_CACHE/devcontainers-cli" --no-audit --no-fund --loglevel=error \
        "@devcontainers/cli@$DEVCONTAINERS_CLI_VERSION" >/dev/null
}
step devcontainer-cli install_devcontainer_cli

registry=$(bash "$scripts/registry.sh" addr plain)
auth_registry=$(bash "$scripts/registry.sh" addr auth)
creds=$AIBUILD_TEST_STATE/registry/credentials

# 8. Slurm: munge, slurmctld and two slurmd (n1, n2) on this host, for `aibuild export slurm`
step slurm bash "$scripts/slurm-local.sh"
slurm_nodes=$(sinfo -h -N -o '%N' | sort -u | wc -l)

# 9. the env file, written whole then moved into place
tmp=$(mktemp "$env_file.XXXXXX")
{
    echo "# Written by scripts/test-env.sh on $(date -Is); source it: . ./.aibuild-test-env"
    vars=(
        DOCKER_HOST "$DOCKER_HOST"
        AIBUILD_TEST_NOHOOK_DOCKER_HOST "$nohook_host"
        AIBUILD_TEST_CLASSIC26_DOCKER_HOST "$classic_host"
        AIBUILD_TEST_CONTAINERD26_DOCKER_HOST "$containerd_host"
        AIBUILD_TEST_BASE_IMAGE "$base_image"
        AIBUILD_TEST_BUILD_NETWORK "$build_network"
        AIBUILD_TEST_STORAGE_DRIVER "$storage_driver"
        AIBUILD_TEST_GPU_HOOK "$gpu_hook"
        AIBUILD_TEST_HOOK_LOG "/var/log/aibuild-test/nvidia-hook.jsonl"
        AIBUILD_TEST_WHEELHOUSE "$wheelhouse"
        AIBUILD_TEST_DEV_WHEELHOUSE "$dev_wheelhouse"
        AIBUILD_TEST_DEVCONTAINER_CLI "$devcontainer_cli"
        AIBUILD_TEST_REGISTRY "$registry"
        AIBUILD_TEST_AUTH_REGISTRY "$auth_registry"
        AIBUILD_TEST_AUTH_USER "$(<"$creds/user")"
        AIBUILD_TEST_AUTH_PASSWORD "$(<"$creds/password")"
        AIBUILD_TEST_CA_CERT "/etc/ssl/certs/ca-certificates.crt"
        AIBUILD_TEST_STATE "$AIBUILD_TEST_STATE"
        AIBUILD_TEST_SLURM_NODES "$slurm_nodes"
    )
    for ((i = 0; i < ${#vars[@]}; i += 2)); do
        printf 'export %s=%q\n' "${vars[i]}" "${vars[i + 1]}"
    done
} >"$tmp"
chmod 600 "$tmp" # it holds the registry password
mv "$tmp" "$env_file"

printf '%s %s\n' "$(date -Is)" "${timings[*]}" >>"$AIBUILD_TEST_CACHE/test-env-timings.log"
log "ready (${timings[*]}); wrote $env_file"

#!/bin/bash
# Make sure a Docker engine answers, starting one when needed.
#
#   scripts/ensure-docker.sh [main|nohook]      ensure the engine (default main)
#   scripts/ensure-docker.sh stop [main|nohook] stop it, only if this script started it
#   scripts/ensure-docker.sh host [main|nohook] print its DOCKER_HOST
#
# main:   the engine the integration tests use. DOCKER_HOST when set, else the
#         default socket. When nothing answers and we are root on Debian, installs
#         docker.io if needed and starts dockerd in the background with the fake
#         NVIDIA hook's directory first on its PATH, so dockerd registers its
#         "nvidia" device driver and `--gpus` works end to end without a GPU.
# nohook: a second dockerd on its own socket, data-root and exec-root, on its own
#         bridge (aibuild-nh0, no iptables) and a PATH without the hook: a host
#         without the NVIDIA runtime, where a GPU request must fail with
#         `could not select device driver "" with capabilities: [[gpu]]`.
#         Not --bridge=none: a dockerd started with that deletes the docker0
#         interface, which is the main engine's bridge.
#
# Idempotent. Never stops an engine it did not start (it records the pid of what
# it starts under $AIBUILD_TEST_STATE). Engines are machine-wide, so their state
# (data, logs, pidfiles, the installed hook) lives outside any checkout:
#   AIBUILD_TEST_STATE (default /var/lib/aibuild-test), logs in /var/log/aibuild-test.
# AIBUILD_FAKE_NVIDIA_HOOK=0 starts the main engine without the fake hook (make demo).
# Optional: AIBUILD_TEST_STORAGE_DRIVER (default: dockerd's own choice, overlay2
# where the backing filesystem allows it), AIBUILD_TEST_ENGINE_TIMEOUT (s, 60).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${AIBUILD_TEST_STATE:-/var/lib/aibuild-test}
logdir=${AIBUILD_TEST_LOGDIR:-/var/log/aibuild-test}
timeout=${AIBUILD_TEST_ENGINE_TIMEOUT:-60}
sys_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
hook_name=nvidia-container-runtime-hook

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

action=ensure
case ${1:-} in
    stop | host) action=$1; shift ;;
esac
engine=${1:-main}

case $engine in
    main)
        host=${DOCKER_HOST:-unix:///var/run/docker.sock}
        data_root=/var/lib/docker
        exec_root=/var/run/docker
        pidfile=/var/run/docker.pid
        extra=()
        ;;
    nohook)
        host=${AIBUILD_TEST_NOHOOK_DOCKER_HOST:-unix:///var/run/aibuild-test-nohook.sock}
        data_root=$state/nohook/data
        # Short: containerd's sockets live under it and unix socket paths are short.
        exec_root=/var/run/aibuild-nohook
        pidfile=/var/run/aibuild-test-nohook.pid
        nohook_bridge=aibuild-nh0
        extra=(--bridge="$nohook_bridge" --iptables=false --ip-masq=false --ip-forward=false)
        ;;
    *) die "unknown engine '$engine' (main or nohook)" ;;
esac
marker=$state/engine-$engine.pid # the pid of a dockerd this script started

answers() { docker -H "$host" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

our_pid() {
    # The pid we recorded, if that process is still a dockerd.
    local pid
    [[ -s $marker ]] || return 1
    pid=$(<"$marker")
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == dockerd ]] || return 1
    printf '%s\n' "$pid"
}

if [[ $action == host ]]; then
    printf '%s\n' "$host"
    exit 0
fi

if [[ $action == stop ]]; then
    if pid=$(our_pid); then
        log "stopping $engine engine (dockerd pid $pid, started by this script)"
        kill -TERM "$pid"
        for _ in $(seq 1 $((timeout * 2))); do
            [[ -d /proc/$pid ]] || break
            sleep 0.5
        done
        [[ -d /proc/$pid ]] && die "dockerd $pid did not stop within ${timeout}s"
        rm -f "$marker"
    else
        log "$engine engine was not started by this script; leaving it alone"
    fi
    exit 0
fi

if answers; then
    log "$engine engine answers at $host"
    # Keep the hook current for an engine we started from an older checkout:
    # dockerd looks the hook up on its PATH for every GPU container.
    if [[ $engine == main && -w $state/bin/$hook_name ]]; then
        install -m 0755 "$here/fake-nvidia/$hook_name" "$state/bin/$hook_name"
    fi
    exit 0
fi

if [[ $engine == main && $host != unix:///var/run/docker.sock ]]; then
    # The data-root below belongs to the default socket's engine; a second
    # dockerd on it would corrupt it.
    die "no engine answers at DOCKER_HOST=$host; unset DOCKER_HOST to let this script start one at the default socket"
fi
case $host in
    unix://*) sock=${host#unix://} ;;
    *) die "no engine answers at $host, and only a local unix socket can be started here" ;;
esac
[[ $(id -u) == 0 ]] || die "no engine answers at $host; starting dockerd needs root (or start Docker yourself)"

if ! command -v dockerd >/dev/null; then
    [[ -r /etc/debian_version ]] || die "dockerd is not installed and this is not Debian: install Docker yourself"
    log "installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends docker.io iptables >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends docker.io iptables >/dev/null
    }
fi

if pid=$(our_pid); then
    # Ours, but not (yet) answering: give it the usual time, do not start a second one.
    log "dockerd $pid (ours) is running but not answering yet; waiting"
else
    mkdir -p "$state" "$logdir" "$data_root"
    logfile=$logdir/dockerd-$engine.log
    if [[ -S $sock ]] && ! answers; then
        rm -f "$sock" # a stale socket from an engine that died
    fi
    args=(--host "$host" --data-root "$data_root" --exec-root "$exec_root" --pidfile "$pidfile")
    [[ -n ${AIBUILD_TEST_STORAGE_DRIVER:-} ]] && args+=(--storage-driver "$AIBUILD_TEST_STORAGE_DRIVER")
    args+=("${extra[@]}")
    if [[ $engine == main && ${AIBUILD_FAKE_NVIDIA_HOOK:-1} == 0 ]]; then
        # make demo: a plain engine, no test hook (a real NVIDIA hook on PATH still counts).
        engine_path=$sys_path
    elif [[ $engine == main ]]; then
        # A copy of the hook outside the checkout: the engine outlives any one
        # checkout (a CI clone in /tmp), and its hook must not vanish with it.
        mkdir -p "$state/bin"
        install -m 0755 "$here/fake-nvidia/$hook_name" "$state/bin/$hook_name"
        engine_path=$state/bin:$sys_path
    else
        engine_path=$sys_path
        if ! ip link show "$nohook_bridge" >/dev/null 2>&1; then
            ip link add "$nohook_bridge" type bridge
            ip addr add 172.30.254.1/24 dev "$nohook_bridge"
            ip link set "$nohook_bridge" up
        fi
        for d in ${engine_path//:/ }; do
            [[ -x $d/$hook_name ]] && die "$d/$hook_name exists: the nohook engine would register the NVIDIA driver"
        done
    fi
    # A stale pidfile from a dead dockerd makes the new one refuse to start.
    if [[ -s $pidfile ]] && ! [[ -d /proc/$(<"$pidfile") ]]; then rm -f "$pidfile"; fi
    log "starting dockerd ($engine) at $host; log: $logfile"
    printf '\n==== %s dockerd %s\n' "$(date -Is)" "${args[*]}" >>"$logfile"
    # setsid: its own session, so the engine outlives this script and make.
    env PATH="$engine_path" setsid dockerd "${args[@]}" </dev/null >>"$logfile" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$marker"
fi

start=$SECONDS
until answers; do
    if ! [[ -d /proc/$pid ]]; then
        log "dockerd ($engine) exited before answering; tail of $logdir/dockerd-$engine.log:"
        tail -n 30 "$logdir/dockerd-$engine.log" >&2
        rm -f "$marker"
        exit 1
    fi
    if ((SECONDS - start > timeout)); then
        log "dockerd ($engine, pid $pid) did not answer at $host within ${timeout}s; tail of $logdir/dockerd-$engine.log:"
        tail -n 30 "$logdir/dockerd-$engine.log" >&2
        exit 1
    fi
    sleep 0.3
done
log "$engine engine answers at $host after $((SECONDS - start))s (storage driver: $(docker -H "$host" info --format '{{.Driver}}'))"

#!/bin/bash
# Local distribution registries (Debian's docker-registry) for the publish tests.
#
#   scripts/registry.sh {start|stop|restart|status|addr|wait} NAME
#
# Known names:
#   plain  127.0.0.1:5000, no auth
#   auth   127.0.0.1:5001, htpasswd (bcrypt) auth; user and a generated password
#          in $state/registry/credentials/{user,password}
# Any other NAME is ad hoc: AIBUILD_REGISTRY_PORT=N picks its port (required the
# first time, remembered after), AIBUILD_REGISTRY_AUTH=1 turns on the same htpasswd
# auth. Tests that stop a registry mid-push should use an ad hoc one (or
# tests/integration's disposable_registry fixture), not the shared plain/auth ones.
#
# Each registry has its own config, storage, log and pidfile under
# $AIBUILD_TEST_STATE/registry/NAME (default /var/lib/aibuild-test): registries are
# machine-wide, like the engine, so every checkout sees the same credentials.
# Storage survives stop/restart. dockerd treats 127.0.0.0/8 as insecure (plain HTTP)
# by default, so no engine configuration is needed.
# Idempotent: start on a running registry does nothing; stop only stops a process
# this script started (recorded pid, still a docker-registry).
set -euo pipefail

state=${AIBUILD_TEST_STATE:-/var/lib/aibuild-test}
timeout=${AIBUILD_REGISTRY_TIMEOUT:-30}

log() { printf 'registry: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $# == 2 ]] || die "usage: $0 {start|stop|restart|status|addr|wait} NAME"
action=$1
name=$2
[[ $name =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "bad registry name '$name'"
dir=$state/registry/$name
pidfile=$dir/pid

case $name in
    plain) port=5000 auth=0 ;;
    auth) port=5001 auth=1 ;;
    *)
        auth=${AIBUILD_REGISTRY_AUTH:-0}
        if [[ -n ${AIBUILD_REGISTRY_PORT:-} ]]; then
            port=$AIBUILD_REGISTRY_PORT
        elif [[ -s $dir/port ]]; then
            port=$(<"$dir/port")
        else
            die "ad hoc registry '$name' needs AIBUILD_REGISTRY_PORT"
        fi
        ;;
esac
[[ $port =~ ^[0-9]+$ ]] || die "bad port '$port'"
addr=127.0.0.1:$port

running_pid() {
    local pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == docker-registry ]] || return 1
    printf '%s\n' "$pid"
}

# 200 without auth, 401 with auth: either way the registry's API answers.
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/v2/" || true; }
ready() { [[ $(http_code) == 200 || $(http_code) == 401 ]]; }

wait_ready() {
    local start=$SECONDS
    until ready; do
        if ! running_pid >/dev/null; then
            log "$name exited; tail of $dir/registry.log:"
            tail -n 20 "$dir/registry.log" >&2
            return 1
        fi
        if ((SECONDS - start > timeout)); then
            log "$name did not answer at http://$addr/v2/ within ${timeout}s; tail of $dir/registry.log:"
            tail -n 20 "$dir/registry.log" >&2
            return 1
        fi
        sleep 0.2
    done
}

write_config() {
    mkdir -p "$dir/data"
    printf '%s\n' "$port" >"$dir/port"
    local auth_block=""
    if [[ $auth == 1 ]]; then
        command -v htpasswd >/dev/null || die "htpasswd missing: apt-get install -y apache2-utils"
        # One user and password per machine, shared by all auth registries.
        local creds=$state/registry/credentials
        mkdir -p "$creds"
        [[ -s $creds/user ]] || printf 'aibuild\n' >"$creds/user"
        if [[ ! -s $creds/password ]]; then
            (umask 077 && openssl rand -hex 16 >"$creds/password")
        fi
        if [[ ! -s $creds/htpasswd ]]; then
            # The registry accepts only bcrypt entries.
            htpasswd -Bbn "$(<"$creds/user")" "$(<"$creds/password")" >"$creds/htpasswd"
        fi
        auth_block="auth:
  htpasswd:
    realm: aibuild-test
    path: $creds/htpasswd"
    fi
    cat >"$dir/config.yml" <<YAML
# Written by scripts/registry.sh; rewritten on every start.
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $addr
  headers:
    X-Content-Type-Options: [nosniff]
$auth_block
YAML
}

start() {
    local pid
    if pid=$(running_pid); then
        wait_ready
        log "$name running at $addr (pid $pid)"
        return 0
    fi
    if ready; then
        die "something not started by this script already answers at $addr"
    fi
    command -v docker-registry >/dev/null || die "docker-registry missing: apt-get install -y docker-registry"
    write_config
    printf '\n==== %s start\n' "$(date -Is)" >>"$dir/registry.log"
    setsid docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
    printf '%s\n' "$!" >"$pidfile"
    wait_ready
    log "$name started at $addr (pid $(<"$pidfile"))"
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        log "$name not running (or not started by this script)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 50); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    [[ -d /proc/$pid ]] && kill -KILL "$pid"
    rm -f "$pidfile"
    log "$name stopped"
}

case $action in
    start) start ;;
    stop) stop ;;
    restart) stop && start ;;
    status)
        if pid=$(running_pid) && ready; then
            echo "$name running at $addr (pid $pid)"
        else
            echo "$name not running"
            exit 1
        fi
        ;;
    addr) echo "$addr" ;;
    wait) wait_ready ;;
    *) die "unknown action '$action'" ;;
esac

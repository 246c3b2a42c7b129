#!/bin/bash
# Make the offline base image the integration tests build on: Debian bookworm
# minbase, bootstrapped with debootstrap (no registry can be reached, so nothing
# can be pulled) and imported with `docker import`.
#
#   scripts/bootstrap-base.sh [IMAGE]        (default aibuild-test/bookworm:12)
#
# Idempotent and quick when warm: the image is reused when the engine has it; the
# rootfs tarball is cached under .cache/ (AIBUILD_TEST_CACHE) so a re-import after
# an engine reset takes seconds instead of a new debootstrap (about a minute).
# The image has no python3: rendered Dockerfiles install Debian's python3 (3.11)
# with apt when the base lacks one.
# Environment: DOCKER_HOST (the engine), DEBIAN_MIRROR (default deb.debian.org).
set -euo pipefail

image=${1:-${AIBUILD_TEST_BASE_IMAGE:-aibuild-test/bookworm:12}}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${AIBUILD_TEST_CACHE:-$root/.cache}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
tarball=$cache/base/$suite-minbase.tar

log() { printf 'bootstrap-base: %s\n' "$*" >&2; }

if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image present, reused"
    exit 0
fi

mkdir -p "$cache/base"
# A lock, so two checkouts (or two engineers) bootstrapping at once do not race.
exec 9>"$cache/base/.lock"
flock 9
if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image present, reused"
    exit 0
fi

if [[ ! -s $tarball ]]; then
    command -v debootstrap >/dev/null || {
        log "debootstrap missing: apt-get install -y debootstrap"
        exit 1
    }
    [[ $(id -u) == 0 ]] || { log "debootstrap needs root"; exit 1; }
    dir=$(mktemp -d "$cache/base/rootfs.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
    log "debootstrap --variant=minbase $suite from $mirror (about a minute)"
    start=$SECONDS
    if ! debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$cache/base/debootstrap.log" 2>&1; then
        log "debootstrap failed; tail of $cache/base/debootstrap.log:"
        tail -n 30 "$cache/base/debootstrap.log" >&2
        exit 1
    fi
    # Slim and make it behave like the official debian image: apt sources in
    # deb822 form with updates and security, no caches, no package lists (every
    # Dockerfile runs apt-get update first anyway).
    rm -f "$dir/etc/apt/sources.list"
    cat >"$dir/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    # Keep layers small and builds quick, as the official image does.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$dir/etc/apt/apt.conf.d/99aibuild-test-no-recommends"
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb \
        "$dir"/var/cache/apt/*.bin "$dir"/var/log/* "$dir"/tmp/*
    : >"$dir/etc/hostname"
    # Numeric owners and sorted names: the same rootfs gives the same tar bytes.
    tar -C "$dir" --numeric-owner --sort=name -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$dir"
    trap - EXIT
    log "rootfs cached at $tarball ($(du -h "$tarball" | cut -f1)) in $((SECONDS - start))s"
fi

log "docker import $tarball as $image"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite" \
    "$tarball" "$image" >/dev/null
log "$image imported"

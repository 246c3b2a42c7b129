#!/bin/bash
# Fill a wheelhouse for test images: the CPU torch 2.13.0 wheel that lies on this
# machine, every wheel it needs, and what the aibuild runtime needs in the image.
#
#   scripts/make-wheelhouse.sh DIR [EXTRA_REQUIREMENT...]
#
# scripts/test-env.sh makes two: .cache/wheelhouse (the images' packages) and
# .cache/wheelhouse-dev (the same plus JupyterLab, for images with dev.jupyter: true).
# AIBUILD_TORCH_WHEEL_DIR names where the local CPU torch wheel lies (default /opt/wheels).
#
# Wheels are for the image's Python (Debian bookworm's CPython 3.11, x86_64,
# glibc 2.36), not necessarily the host's, so pip is asked for that platform
# explicitly. Reused when complete (a stamp file records the requirement list).
# Never resolves an unpinned torch: an unpinned torch is a multi-GB CUDA build.
set -euo pipefail

log() { printf 'make-wheelhouse: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $# -ge 1 ]] || die "usage: $0 DIR [EXTRA_REQUIREMENT...]"
dir=$1
shift
torch_version=2.13.0
torch_local=${AIBUILD_TORCH_WHEEL_DIR:-/opt/wheels}
python=${PYTHON:-python3}

# torch's own requirements (its METADATA) plus the aibuild runtime's, pinned only
# where torch pins a floor; numpy because training code and datasets want it.
reqs=(
    "torch==$torch_version"
    filelock "typing-extensions>=4.10.0" "setuptools>=77.0.3" "sympy>=1.13.3" mpmath
    "networkx>=2.5.1" jinja2 markupsafe "fsspec>=0.8.5"
    "click>=8.1" "pyyaml>=6.0" "packaging>=23" numpy
    pip wheel uv==0.9.30
    "$@"
)
stamp_text=$(printf '%s\n' "${reqs[@]}")
stamp=$dir/.complete

if [[ -s $stamp && $(<"$stamp") == "$stamp_text" ]] && compgen -G "$dir/torch-$torch_version*.whl" >/dev/null; then
    log "$dir complete, reused ($(find "$dir" -name '*.whl' | wc -l) wheels)"
    exit 0
fi

mkdir -p "$dir"
rm -f "$stamp"
# The local CPU wheel first, so the resolver below finds it in DIR and never
# considers PyPI's CUDA build of the same version.
if ! compgen -G "$dir/torch-$torch_version+cpu-*.whl" >/dev/null; then
    if compgen -G "$torch_local/torch-$torch_version+cpu-cp311-*.whl" >/dev/null; then
        # a hard link where the disk allows: the wheel is 190 MB
        for w in "$torch_local"/torch-"$torch_version"+cpu-cp311-*.whl; do
            ln -f "$w" "$dir/" 2>/dev/null || cp "$w" "$dir/"
        done
    else
        log "no local CPU wheel in $torch_local; downloading torch==$torch_version+cpu"
        "$python" -m pip download --no-deps --dest "$dir" \
            --index-url https://download.pytorch.org/whl/cpu \
            --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
            --platform manylinux_2_28_x86_64 "torch==$torch_version+cpu"
    fi
fi

# pip matches each --platform tag exactly: name every manylinux a glibc 2.36 system runs
# (as aibuild/image/wheelhouse.py PLATFORMS does; pyzmq carries 2_26, tornado 2_5, ...).
platforms=()
for minor in $(seq 28 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

log "downloading wheels into $dir"
"$python" -m pip download --dest "$dir" --find-links "$dir" \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    "${platforms[@]}" --progress-bar off -q \
    "${reqs[@]}" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

# pip may have added PyPI's (CUDA) torch next to ours only if something went
# wrong above; refuse rather than hand a test image a multi-GB download.
for w in "$dir"/torch-*.whl; do
    [[ $w == *"+cpu-"* ]] || die "unexpected non-CPU torch wheel $w"
done
printf '%s\n' "$stamp_text" >"$stamp"
log "$dir complete ($(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1))"

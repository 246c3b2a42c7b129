#!/bin/bash
# Fill the CUDA wheelhouse the heavy tier builds its CUDA image from: PyPI's torch 2.13.0
# (the CUDA 13.0 build) and its nvidia-* wheels, for the bootstrapped Debian 12 base
# (CPython 3.11), fetched by aibuild's own `aibuild wheelhouse` for the gpu-h200 profile.
# About 3 GB, made once and reused (a stamp records the command).
#
#   scripts/make-cuda-wheelhouse.sh DIR
set -euo pipefail
dir=${1:?usage: $0 DIR}
python=${PYTHON:-python3}
args=(wheelhouse gpu-h200 --set software.python=3.11 --set software.os=debian12 -o "$dir")
stamp=$dir/.complete
if [[ -s $stamp && $(<"$stamp") == "${args[*]}" ]] && compgen -G "$dir/torch-2.13.0-*.whl" >/dev/null; then
    echo "make-cuda-wheelhouse: $dir complete, reused ($(du -sh "$dir" | cut -f1))" >&2
    exit 0
fi
rm -f "$stamp"
t0=$SECONDS
"$python" -m aibuild "${args[@]}" >/dev/null
echo "${args[*]}" >"$stamp"
echo "make-cuda-wheelhouse: $dir filled in $((SECONDS - t0))s ($(du -sh "$dir" | cut -f1))" >&2

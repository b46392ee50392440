#!/usr/bin/env bash
# Usage (here, before a GPU session's one device call):
#   bash bench/keras_wheels.sh [DIR]   (default: .keras-wheels, git-ignored)
#
# Downloads Keras and the wheels it needs for the GPU machine (CPython 3.12,
# manylinux x86_64; it has no Keras and no internet) into DIR, about 26 MB.
# Then carry DIR and name it (bench/gpu_checks.sh installs only the wheels of
# distributions the machine lacks):
#   run(carry=[".keras-wheels"], command="KERAS_WHEELS=.keras-wheels bash bench/gpu_checks.sh")
# The Keras version is the one this checkout's tests run with.
set -euo pipefail
dir="${1:-.keras-wheels}"
py="${PYTHON:-python3}"
version="$("$py" -c "import importlib.metadata as m; print(m.version('keras'))" 2>/dev/null || true)"
spec="keras${version:+==$version}"
mkdir -p "$dir"
"$py" -m pip download --quiet --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$spec"
ls "$dir"

#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the C++ kernels and the
# pybind11 module `_C` under the NumPy-kernel tests.
#
# Usage (repository root; PYTHON: an interpreter with numpy, pybind11, cmake,
# pytest and hypothesis, e.g. the dev venv):
#   PYTHON=.venv/bin/python bash tools/sanitize.sh [extra pytest args]
#   PYTHON=.venv/bin/python bash tools/sanitize.sh --tf [extra pytest args]
#
# What it does (default mode):
#   1. configures a separate build (FUSEDOPT_SANITIZE=ON: -fsanitize=address,
#      undefined, no recovery) of `_C` without the TensorFlow ops (TF is not
#      built with ASan; loading it under the ASan runtime only adds noise),
#   2. stages the Python package with that `_C` in $BUILD/stage,
#   3. runs the NumPy-kernel tests against it with the ASan/UBSan runtimes
#      preloaded (CPython itself is not instrumented, so they must come first)
#      and TensorFlow hidden, so that nothing imports it.
# ASAN_OPTIONS: leak detection off (CPython keeps objects alive at exit by
# design; every report would be about the interpreter, not us).
# Any sanitizer report aborts the test process: the script then exits non-zero.
# --tf: the TensorFlow op library too, with real TensorFlow; tools/sanitize_tf.sh
# (this script hands over to it) says how.
set -euo pipefail
py="${PYTHON:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ "${1:-}" == "--tf" ]]; then
  shift
  exec bash "$root/tools/sanitize_tf.sh" "$@"
fi
build="${BUILD:-/tmp/fusedopt-sanitize}"
stage="$build/stage"

# CPU only (FUSEDOPT_NO_CUDA): the CUDA paths need a GPU, and compute-sanitizer
# (bench/gpu_checks.sh sanitize) checks them there.
export FUSEDOPT_NO_CUDA=1
"$py" -m cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFUSEDOPT_SANITIZE=ON -DFUSEDOPT_WITH_TF=OFF \
  -DPython_EXECUTABLE="$("$py" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
"$py" -m cmake --build "$build" --target _C

rm -rf "$stage"
mkdir -p "$stage/tensorflow" "$stage/keras"
cp -r "$root/python/fusedopt" "$stage/fusedopt"
cp "$build"/_C*.so "$build/_build_config.py" "$stage/fusedopt/"
# `import tensorflow` / `import keras` fail: fusedopt.kernels only.
for m in tensorflow keras; do
  echo "raise ImportError('$m is hidden in the sanitizer run')" > "$stage/$m/__init__.py"
done

cxx="${CXX:-c++}"
preload="$("$cxx" -print-file-name=libasan.so):$("$cxx" -print-file-name=libubsan.so)"
cd "$build"  # not the repository root: the source tree must not shadow $stage
env PYTHONPATH="$stage" LD_PRELOAD="$preload" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  "$py" -m pytest -q -p no:cacheprovider \
    "$root/tests/test_kernels_adam.py" "$root/tests/test_kernels_sgd.py" \
    "$root/tests/test_kernels_clip.py" "$root/tests/test_fuzz_kernels.py" \
    "$root/tests/test_bad_input.py" -k "not tf" "$@"
echo "sanitize: clean (no ASan/UBSan report)"

#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the TensorFlow op
# library (_tf_ops.so, _tf_xla_ops.so), `_C` and the CPU kernels under the tests
# that call the ops, with real TensorFlow.
#
# Usage (repository root; PYTHON: an interpreter with TensorFlow, keras, numpy,
# pybind11, cmake, ninja, pytest and hypothesis, e.g. the dev venv):
#   PYTHON=.venv/bin/python bash tools/sanitize.sh --tf [extra pytest args]
# (tools/sanitize.sh --tf runs this script.)
#
# What it does:
#   1. configures a separate build (FUSEDOPT_SANITIZE=ON, FUSEDOPT_WITH_TF=ON,
#      CPU only) in $BUILD (default /tmp/fusedopt-sanitize-tf) and builds `_C`,
#      `_tf_ops` and, where TensorFlow ships XLA's headers, `_tf_xla_ops`,
#   2. stages the Python package with those libraries in $BUILD/stage and
#      checks that it loads them (a run against the stock fallback would
#      check nothing),
#   3. runs every test that calls the ops (the raw ops, bad input, skip_nonfinite,
#      threads, XLA, sparse, and model.fit with the Keras optimizers, mixed
#      precision, checkpoints, tf.distribute; about 15 minutes on 2 cores)
#      with the sanitizer runtimes and libstdc++ preloaded.
# The TF op libraries are built without UBSan's three null checks (a GCC bug
# with TF's headers, CMakeLists.txt); the CPU kernels they call keep them.
# TensorFlow is not instrumented: only our code is checked, plus what ASan's
# interceptors (malloc, memcpy, ...) see of TF's calls. libstdc++ must be
# preloaded after the runtimes: ASan's __cxa_throw interceptor looks the real
# function up when the runtime starts, and without libstdc++ in the process by
# then, TF's first C++ exception aborts with
#   CHECK failed: asan_interceptors.cpp:320 "((__interception::real___cxa_throw)) != (0)"
# TF_ENABLE_ONEDNN_OPTS=0: with oneDNN on, TF's CPU allocator serves large
# tensors (a 400 KB one in our check) from a BFC pool, one big malloc, so a
# kernel reading past such a tensor stays inside the pool and ASan says
# nothing; with it off every tensor is its own malloc with redzones. Checked
# with a throwaway op reading one element past its input: with oneDNN on,
# reported for a 40 B input but not for a 400 KB one; with it off, reported
# for 400 KB and 40 MB inputs too.
# ASAN_OPTIONS: leak detection off (CPython and TF keep allocations alive at
# exit by design). No recovery (-fno-sanitize-recover=all, halt_on_error): any
# report aborts the test process and the script exits non-zero.
# Suppressions: tools/asan-tf.supp and tools/ubsan-tf.supp, only for reports
# whose whole stack is TensorFlow's; never one with a frame in fusedopt's
# libraries or csrc/.
set -euo pipefail
py="${PYTHON:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD:-/tmp/fusedopt-sanitize-tf}"
stage="$build/stage"

# CPU only: the CUDA kernels are checked by compute-sanitizer on the GPU
# machine (bench/gpu_checks.sh sanitize).
export FUSEDOPT_NO_CUDA=1
"$py" -m cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFUSEDOPT_SANITIZE=ON -DFUSEDOPT_WITH_TF=ON \
  -DPython_EXECUTABLE="$("$py" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
targets=(_C _tf_ops)
if grep -q '_tf_xla_ops' "$build/build.ninja"; then
  targets+=(_tf_xla_ops)
fi
"$py" -m cmake --build "$build" --target "${targets[@]}"

rm -rf "$stage"
mkdir -p "$stage"
cp -r "$root/python/fusedopt" "$stage/fusedopt"
cp "$build"/_C*.so "$build/_build_config.py" "$stage/fusedopt/"
for t in "${targets[@]:1}"; do
  cp "$build/$t.so" "$stage/fusedopt/"
done

cxx="${CXX:-c++}"
preload="$("$cxx" -print-file-name=libasan.so):$("$cxx" -print-file-name=libubsan.so)"
preload="$preload:$("$cxx" -print-file-name=libstdc++.so.6)"
asan_options="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
ubsan_options="print_stacktrace=1:halt_on_error=1"
if [[ -s "$root/tools/asan-tf.supp" ]]; then
  asan_options="$asan_options:suppressions=$root/tools/asan-tf.supp"
fi
if [[ -s "$root/tools/ubsan-tf.supp" ]]; then
  ubsan_options="$ubsan_options:suppressions=$root/tools/ubsan-tf.supp"
fi

run() {
  env PYTHONPATH="$stage" LD_PRELOAD="$preload" TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0 \
    ASAN_OPTIONS="$asan_options" UBSAN_OPTIONS="$ubsan_options" "$py" "$@"
}

cd "$build"  # not the repository root: the source tree must not shadow $stage
want_xla=0
[[ " ${targets[*]} " == *" _tf_xla_ops "* ]] && want_xla=1
run -c "
import fusedopt, sys
from fusedopt import _ops
assert fusedopt.__file__.startswith('$stage/'), fusedopt.__file__
assert _ops.library() is not None, _ops._state.get('error')
assert _ops.xla_kernels() or not $want_xla, _ops._state.get('xla_error')
print('sanitize --tf: sanitized op library loaded; XLA kernels:', _ops.xla_kernels())
"
run -m pytest -q -p no:cacheprovider -rs \
  "$root/tests/test_tf_op_adam.py" "$root/tests/test_tf_op_sgd.py" \
  "$root/tests/test_bad_input.py" "$root/tests/test_skip_nonfinite.py" \
  "$root/tests/test_concurrency.py" "$root/tests/test_xla.py" \
  "$root/tests/test_apply_validation.py" "$root/tests/test_sparse.py" \
  "$root/tests/test_optimizers_adam.py" "$root/tests/test_optimizers_sgd.py" \
  "$root/tests/test_argument_structure.py" "$root/tests/test_checkpoints.py" \
  "$root/tests/test_mixed_precision.py" "$root/tests/test_distribute.py" \
  "$@"
echo "sanitize --tf: clean (no ASan/UBSan report)"

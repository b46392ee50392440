#!/usr/bin/env bash
# Usage (on the GPU machine, from the repository root; one device `run`):
#   bash bench/gpu_checks.sh [all|build|test|sanitize|bench]   (default: all)
#
# Issue 4's GPU verification in one command: build fusedopt with CUDA and
# without TensorFlow (the GPU machine has PyTorch, CuPy and nvcc but no
# TensorFlow), run the CUDA tests with PyTorch and with CuPy, run them once
# under compute-sanitizer (memcheck, racecheck), and run bench/gpu_adam.py.
# One log ($OUT/gpu_checks.log) and the benchmark JSON go to $OUT (when set);
# the JSON also to bench/results/ (commit it).
set -u -o pipefail
what="${1:-all}"
out="${OUT:-/tmp/fusedopt-gpu-out}"
mkdir -p "$out" bench/results
exec > >(tee -a "$out/gpu_checks.log") 2>&1
py="${PYTHON:-python3}"
status=0
step() { echo; echo "=== $*"; }
run() {  # run NAME CMD...: remember failures, go on
  local name="$1"; shift
  step "$name: $*"
  "$@" || { echo "!!! $name failed ($?)"; status=1; }
}

if [[ "$what" == all || "$what" == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  # sm_90 only: the H100/H200 here (the default list also builds sm_80 + PTX).
  run build env CUDAARCHS="${CUDAARCHS:-90-real}" "$py" -m pip install --no-build-isolation \
    --no-deps -Ccmake.define.FUSEDOPT_WITH_TF=OFF -Cbuild-dir=/tmp/fusedopt-build -v .
  run build_info "$py" -c "import sys; sys.path.insert(0, 'tests'); from cuda_helpers import import_fusedopt; f, _ = import_fusedopt(); print(f.build_info())"
fi
cd tests  # cuda_helpers.py is importable from here; the installed package is used
if [[ "$what" == all || "$what" == test ]]; then
  run test_torch env FUSEDOPT_CUDA_TEST_BACKEND=torch "$py" -m pytest -q -rs -p no:cacheprovider \
    test_cuda_kernels.py test_cuda_bindings.py
  run test_cupy env FUSEDOPT_CUDA_TEST_BACKEND=cupy "$py" -m pytest -q -rs -p no:cacheprovider \
    test_cuda_kernels.py
fi
if [[ "$what" == all || "$what" == sanitize ]]; then
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  # PyTorch arrays (the default backend), each its own cudaMalloc: with the
  # caching allocator an out-of-bounds access inside a cached block is not
  # seen by memcheck.
  export FUSEDOPT_CUDA_TEST_BACKEND=torch PYTORCH_NO_CUDA_MEMORY_CACHING=1
  # Not the 34 GB case (the sanitizer's shadow memory) and not graph capture.
  run memcheck "$cs" --tool memcheck --error-exitcode 99 \
    "$py" -m pytest -q -p no:cacheprovider test_cuda_kernels.py test_cuda_bindings.py \
    -k "not 2_31 and not graph"
  run racecheck "$cs" --tool racecheck --error-exitcode 99 \
    "$py" -m pytest -q -p no:cacheprovider test_cuda_kernels.py \
    -k "odd_sizes and native and float32 or thousands or continuing or 16bit"
  unset FUSEDOPT_CUDA_TEST_BACKEND PYTORCH_NO_CUDA_MEMORY_CACHING
fi
cd ..
if [[ "$what" == all || "$what" == bench ]]; then
  run bench "$py" bench/gpu_adam.py --out bench/results
  cp bench/results/gpu-adam-*.json "$out/" 2>/dev/null || true
fi
step "done (status $status); logs in $out"
exit $status

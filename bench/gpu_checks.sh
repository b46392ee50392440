#!/usr/bin/env bash
# Usage (on the GPU machine, from the repository root; one device `run`):
#   bash bench/gpu_checks.sh [all | build test keras jax sanitize bench ...]   (default: all)
#
# The GPU verification in one command (issue 15, "GPU truth"): build fusedopt
# with CUDA and without TensorFlow (the GPU machine has PyTorch, CuPy, nvcc
# and Python 3.12 but no TensorFlow and no Keras), run the CUDA tests with
# PyTorch and with CuPy arrays, the ptxas resource check, the Keras-torch
# optimizers on CUDA tensors (step `keras`) and the Keras-JAX optimizers on
# the CUDA FFI handlers (step `jax`; Keras for both from wheels: KERAS_WHEELS,
# made here with bench/keras_wheels.sh and carried),
# a compute-sanitizer memcheck and racecheck run, and bench/gpu_adam.py
# (Adam, Adam with global-norm clipping, Adam with skip_nonfinite, SGD, the
# global norm: each against torch's fused optimizers and the memory floor).
#
# It fails (exit 1) unless the build has CUDA (build_info()['cuda']), the
# kernels can run here (build_info()['cuda_problem'] is None: driver against
# runtime), and each test run passed at least its minimum number of tests
# with none failing: a run where everything skipped (no device, no
# torch/cupy, a CPU-only build) is a failure, not a success.
#
# Budget (H200, 16 cores): build ~3 min (sm_90 only), tests ~2 min, sanitizer
# ~2 min, bench ~2 min; run `build test` and `sanitize bench` in two calls if
# one call's 10 minutes are short. One log ($OUT/gpu_checks.log), the junit
# files and the benchmark JSON go to $OUT (when set); the JSON also to
# bench/results/ (commit it).
set -u -o pipefail
what=" ${*:-all} "
wants() { [[ "$what" == *" all "* || "$what" == *" $1 "* ]]; }
out="${OUT:-/tmp/fusedopt-gpu-out}"
mkdir -p "$out" bench/results
exec > >(tee -a "$out/gpu_checks.log") 2>&1
py="${PYTHON:-python3}"
# The minimum number of passing tests per run (test_cuda_kernels.py has about
# 150 tests with PyTorch, fewer with CuPy, which has no bfloat16 and no graph
# capture here).
min_torch="${MIN_TORCH_TESTS:-140}"
min_cupy="${MIN_CUPY_TESTS:-110}"
# tests/backends/torch/test_torch_gpu.py: 93 tests need the GPU.
min_keras_torch="${MIN_KERAS_TORCH_TESTS:-90}"
# tests/backends/jax/test_jax_gpu.py: 82 tests need the GPU, 2 run anywhere.
min_keras_jax="${MIN_KERAS_JAX_TESTS:-80}"
status=0
step() { echo; echo "=== $*"; }
run() {  # run NAME CMD...: remember failures, go on
  local name="$1"; shift
  step "$name: $*"
  "$@" || { echo "!!! $name failed ($?)"; status=1; }
}
# passed JUNIT MIN NAME: at least MIN passed, none failed.
passed() {
  "$py" - "$1" "$2" "$3" <<'EOF'
import sys
import xml.etree.ElementTree as ET
path, minimum, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError) as e:
    sys.exit(f"!!! {name}: no test report ({e})")
suites = [root] if root.tag == "testsuite" else list(root)
count = lambda k: sum(int(s.get(k, 0)) for s in suites)
tests, failures, errors, skipped = (count(k) for k in ("tests", "failures", "errors", "skipped"))
ok = tests - failures - errors - skipped
print(f"{name}: {ok} passed, {skipped} skipped, {failures} failed, {errors} errors "
      f"(at least {minimum} must pass)")
sys.exit(0 if ok >= minimum and failures == 0 and errors == 0 else 1)
EOF
}
info_here() {  # the build has CUDA and the kernels can run here (from the repo root)
  "$py" - <<'EOF'
import sys
sys.path.insert(0, "tests")
from cuda_helpers import import_fusedopt
f, _ = import_fusedopt()
info = f.build_info()
print(info)
if not info.get("cuda"):
    sys.exit("!!! this build has no CUDA kernels")
if info.get("cuda_problem") is not None:
    sys.exit(f"!!! the CUDA kernels cannot run here: {info['cuda_problem']}")
EOF
}

if wants build; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  # sm_90 only: the H100/H200 here (the default list also builds sm_80 + PTX).
  run build env CUDAARCHS="${CUDAARCHS:-90-real}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$py" -m pip install --no-build-isolation --no-deps -Ccmake.define.FUSEDOPT_WITH_TF=OFF \
    -Cbuild-dir=/tmp/fusedopt-build -v .
  run build_info info_here
  if [[ $status != 0 ]]; then step "the build failed: nothing else runs"; exit 1; fi
fi
info() { (cd .. && info_here); }
cd tests  # cuda_helpers.py is importable from here; the installed package is used
if wants test; then
  run build_info info
  run test_torch env FUSEDOPT_CUDA_TEST_BACKEND=torch "$py" -m pytest -q -rs -p no:cacheprovider \
    --junitxml="$out/junit-torch.xml" test_cuda_kernels.py test_cuda_bindings.py
  run count_torch passed "$out/junit-torch.xml" "$min_torch" torch
  run test_cupy env FUSEDOPT_CUDA_TEST_BACKEND=cupy "$py" -m pytest -q -rs -p no:cacheprovider \
    --junitxml="$out/junit-cupy.xml" test_cuda_kernels.py
  run count_cupy passed "$out/junit-cupy.xml" "$min_cupy" cupy
  run ptxas "$py" -m pytest -q -p no:cacheprovider test_cuda_ptxas.py
fi
# keras_backend BACKEND MIN: tests/backends/BACKEND/test_BACKEND_gpu.py under
# KERAS_BACKEND=BACKEND, at least MIN passing. The GPU machine has no Keras:
# bring the wheels of keras and of what it needs that the machine lacks
# (namex, optree, absl-py, rich, h5py, ml-dtypes for cp312: pip download
# --only-binary=:all: --python-version 3.12 keras) in a carried folder and
# name it in KERAS_WHEELS.
# Only the wheels of distributions not installed here go in: the machine's
# own numpy (which its torch and jax were built against) stays.
keras_wheels() {
  "$py" - "$KERAS_WHEELS" <<'EOF'
import glob, importlib.metadata as md, os, subprocess, sys
missing = []
for wheel in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name = os.path.basename(wheel).split("-")[0]
    try:
        print(f"{name} {md.version(name)} is installed: not installing {os.path.basename(wheel)}")
    except md.PackageNotFoundError:
        missing.append(wheel)
if missing:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           *missing])
EOF
}
keras_backend() {
  local backend="$1" minimum="$2"
  if ! KERAS_BACKEND="$backend" "$py" -c "import keras" 2>/dev/null && [[ -n "${KERAS_WHEELS:-}" ]]; then
    run keras_wheels keras_wheels
  fi
  run "test_keras_$backend" env KERAS_BACKEND="$backend" FUSEDOPT_BACKEND_TESTS="$backend" \
    "$py" -m pytest -q -rs -s -p no:cacheprovider --junitxml="$out/junit-keras-$backend.xml" \
    "backends/$backend/test_${backend}_gpu.py"
  run "count_keras_$backend" passed "$out/junit-keras-$backend.xml" "$minimum" "keras-$backend"
}
# The fused torch ops and fusedopt's optimizers on CUDA tensors under
# Keras-torch (ops against the CPU kernels bit for bit, CUDA graphs,
# model.fit against stock on the GPU).
if wants keras; then keras_backend torch "$min_keras_torch"; fi
# The CUDA XLA FFI handlers and the optimizers under Keras-JAX on the GPU
# (every handler against the CPU one bit for bit, the compiled HLO,
# model.fit against stock on the GPU).
if wants jax; then keras_backend jax "$min_keras_jax"; fi
if wants sanitize; then
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  # PyTorch arrays (the default backend), each its own cudaMalloc: with the
  # caching allocator an out-of-bounds access inside a cached block is not
  # seen by memcheck.
  export FUSEDOPT_CUDA_TEST_BACKEND=torch PYTORCH_NO_CUDA_MEMORY_CACHING=1
  # Not the 34 GB case (the sanitizer's shadow memory), not graph capture.
  run memcheck "$cs" --tool memcheck --error-exitcode 99 \
    "$py" -m pytest -q -p no:cacheprovider test_cuda_kernels.py test_cuda_bindings.py \
    -k "not 2_31 and not graph and not stream_argument"
  # The reductions use shared memory and barriers: racecheck them.
  run racecheck "$cs" --tool racecheck --error-exitcode 99 \
    "$py" -m pytest -q -p no:cacheprovider test_cuda_kernels.py \
    -k "global_norm or clip_options or skip_nonfinite or all_finite or continuing or thousands"
  unset FUSEDOPT_CUDA_TEST_BACKEND PYTORCH_NO_CUDA_MEMORY_CACHING
fi
cd ..
if wants bench; then
  run bench "$py" bench/gpu_adam.py --out bench/results
  cp bench/results/gpu-adam-*.json "$out/" 2>/dev/null || true
fi
step "done (status $status); logs in $out"
exit $status

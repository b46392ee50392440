"""The CUDA sources run on the CPU: csrc/cuda/*.cu compiled as C++ against the
host emulation of csrc/testing/cuda_emulation/ (no copy of any kernel), under
ASan and UBSan, every result compared bit for bit with the per-element rules
of csrc/kernels/ (harness.cpp says what each case covers).

Needs g++ with the ASan and UBSan runtimes (any Linux x86-64 CI image has
them), not CUDA: this runs on every machine, GPU or not. The build (about a
minute on two cores) is cached under build/cuda-emulation/ keyed by a hash of
the sources and flags; the cases then run two at a time.
"""

import concurrent.futures
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMU = CSRC / "testing" / "cuda_emulation"

# Every case of harness.cpp (test_case_list checks that this is all of them).
CASES = [
    "adam_apply_if", "adam_bf16_f32", "adam_bf16_tf", "adam_clips", "adam_continuing",
    "adam_device_scalars", "adam_f16_f32", "adam_f16_tf", "adam_f32", "adam_f64",
    "adam_many_tensors", "adam_torch", "all_finite", "clip_factors", "conversions", "driver",
    "fibers", "launch_errors", "norms", "norms_deterministic", "norms_launches", "planner",
    "refuse_before_launch",
    "sgd_clips_apply_if", "sgd_many_continuing", "sgd_momentum", "sgd_nesterov", "sgd_plain",
    "sgd_torch",
]

FLAGS = [
    "-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer", "-ffp-contract=off", "-Wall", "-Wextra",
    "-Wno-unknown-pragmas", f"-I{EMU}", f"-I{CSRC}",
]
ENV = {
    "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=0:strict_string_checks=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}

if not EMU.is_dir():
    pytest.skip("the C++ sources are not next to the tests", allow_module_level=True)
if platform.machine() not in ("x86_64", "AMD64"):
    pytest.skip("the emulation's fibers are written for x86-64", allow_module_level=True)
GXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
if GXX is None:
    pytest.skip("no g++", allow_module_level=True)


def _sources():
    return sorted((CSRC / "cuda").glob("*.cu")) + [EMU / "emulation.cpp", EMU / "harness.cpp"]


def _build_key():
    h = hashlib.sha256()
    h.update(subprocess.run([GXX, "--version"], capture_output=True, text=True).stdout.encode())
    h.update(" ".join(FLAGS).encode())
    for folder in (CSRC / "cuda", CSRC / "kernels", EMU):
        for f in sorted(folder.iterdir()):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cache_dir():
    for base in (ROOT / "build" / "cuda-emulation",
                 Path(tempfile.gettempdir()) / f"fusedopt-cuda-emulation-{os.getuid()}"):
        try:
            base.mkdir(parents=True, exist_ok=True)
            return base
        except OSError:
            continue
    raise RuntimeError("no writable folder for the emulation build")


def _compile(src, obj):
    cmd = [GXX, *FLAGS, "-c", str(src), "-o", str(obj)]
    if src.suffix == ".cu":
        cmd[1:1] = ["-x", "c++"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {src.name} failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")


@pytest.fixture(scope="session")
def harness():
    """The harness binary, built once per source state."""
    out = _cache_dir() / _build_key()
    binary = out / "harness"
    if binary.exists():
        return binary
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    objs = [tmp / (s.name + ".o") for s in _sources()]
    workers = max(2, min(8, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(_compile, s, o) for s, o in zip(_sources(), objs)]:
            f.result()
    r = subprocess.run([GXX, "-fsanitize=address,undefined", *map(str, objs), "-o",
                        str(tmp / "harness")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"linking the harness failed:\n{r.stderr[-4000:]}")
    try:
        tmp.rename(out)
    except OSError:  # another session built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


def _run(binary, *args, env=None):
    return subprocess.run([str(binary), *args], capture_output=True, text=True,
                          env={**os.environ, **ENV, **(env or {})}, timeout=900)


@pytest.fixture(scope="session")
def results(harness):
    """Every case, run two at a time (each its own process: the first ASan or
    UBSan report aborts only that case)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = dict(zip(CASES, pool.map(lambda c: _run(harness, c), CASES)))
    return runs


def test_case_list(harness):
    listed = _run(harness, "list").stdout.split()
    assert listed == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_case(results, case):
    r = results[case]
    assert r.returncode == 0 and f"ok {case}" in r.stdout, (
        f"harness {case}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-8000:]}")


def test_fibers_on_every_block(harness):
    """The reductions with every block on fibers give the same results (the
    first-block probe that lets element-wise kernels run without fibers
    changes nothing)."""
    r = _run(harness, "norms_launches", "adam_apply_if", "fibers",
             env={"FUSEDOPT_EMU_FIBERS": "all"})
    assert r.returncode == 0, r.stderr[-8000:]


def test_old_driver_refuses(harness):
    """With an emulated driver older than the runtime, every driver call
    refuses before any launch, with the message naming both versions."""
    r = _run(harness, "adam_f32", env={"FUSEDOPT_EMU_DRIVER_VERSION": "12040"})
    assert r.returncode == 1
    assert "built with CUDA 13.0" in r.stderr and "CUDA 12.4" in r.stderr, r.stderr

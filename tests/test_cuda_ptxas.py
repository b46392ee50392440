"""Every CUDA kernel compiles for sm_80 and sm_90 without register spills and
without a stack frame (`nvcc -Xptxas -v`): a spill or a stack frame is local
memory traffic inside a kernel that should move only its tensors' bytes.

Skips where nvcc is missing. Compiles device code only (-cubin: no host
compilation), one nvcc per source file and architecture, two at a time.
"""

import concurrent.futures
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
NVCC = os.environ.get("CUDACXX") or shutil.which("nvcc")
if NVCC is None or not Path(NVCC).exists():
    pytest.skip("nvcc not found", allow_module_level=True)
if not (CSRC / "cuda").is_dir():
    pytest.skip("the CUDA sources are not next to the tests", allow_module_level=True)

SOURCES = sorted((CSRC / "cuda").glob("*.cu"))
ARCHS = ["sm_80", "sm_90"]
# Which files must hold kernels, at least.
KERNEL_FILES = {"adam_cuda.cu", "sgd_cuda.cu", "norm_cuda.cu", "finite_cuda.cu"}


def _include_flags():
    flags = [f"-I{CSRC}"]
    # CUDA 13 moved the CCCL headers under include/cccl.
    bin_dir = Path(NVCC).resolve().parent
    for inc in (bin_dir.parent / "include" / "cccl", bin_dir.parent / "targets" / "x86_64-linux" / "include" / "cccl"):
        if inc.is_dir():
            flags.append(f"-I{inc}")
    return flags


def _ptxas(src, arch, out_dir):
    # The flags of CMakeLists.txt's fusedopt_cuda target.
    cmd = [NVCC, "-cubin", f"-arch={arch}", "-std=c++17", "--fmad=false", "-O3", "-Xptxas", "-v",
           *_include_flags(), str(src), "-o", str(Path(out_dir) / f"{src.stem}.{arch}.cubin")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    return r.stderr


def _functions(report):
    """{function: (stack bytes, spill store bytes, spill load bytes)} and the
    entry functions, from ptxas's report."""
    props, entries, current = {}, set(), None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            entries.add(m.group(1))
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            props[current] = tuple(int(x) for x in m.groups())
            current = None
    return props, entries


@pytest.fixture(scope="module")
def reports():
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {(src.name, arch): pool.submit(_ptxas, src, arch, tmp)
                for src in SOURCES for arch in ARCHS}
        return {k: f.result() for k, f in jobs.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_no_stack_frame(reports, arch):
    bad, kernels = [], 0
    for src in SOURCES:
        props, entries = _functions(reports[(src.name, arch)])
        if src.name in KERNEL_FILES:
            assert entries, f"{src.name}: no kernel compiled for {arch}"
        kernels += len(entries)
        for entry in entries:
            assert entry in props, f"{src.name}: no resource report for {entry}"
        for fn, (stack, stores, loads) in props.items():
            if stack or stores or loads:
                bad.append(f"{src.name} {fn}: {stack} bytes stack frame, {stores} bytes spill "
                           f"stores, {loads} bytes spill loads")
    assert not bad, f"{arch}:\n" + "\n".join(bad)
    assert kernels >= 30, f"only {kernels} kernels for {arch}"

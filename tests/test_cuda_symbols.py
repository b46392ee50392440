"""_C and _tf_ops.so each link their own copy of the CUDA drivers: neither may
export fusedopt::cuda symbols, or the dynamic linker binds both libraries to
whichever copy was loaded first (checked with nm -D --defined-only)."""

import shutil
import subprocess
from pathlib import Path

import pytest
from cuda_helpers import import_fusedopt

fusedopt, _ = import_fusedopt()
NM = shutil.which("nm")
if NM is None:
    pytest.skip("nm not found", allow_module_level=True)
if not fusedopt.build_info()["cuda"]:
    pytest.skip("fusedopt was built without CUDA", allow_module_level=True)


def _libraries():
    from fusedopt import _C

    folder = Path(_C.__file__).parent
    libs = [Path(_C.__file__)]
    tf_ops = folder / "_tf_ops.so"
    if tf_ops.exists():
        libs.append(tf_ops)
    return libs


def _exported(lib):
    r = subprocess.run([NM, "-D", "--defined-only", "-C", str(lib)], capture_output=True,
                       text=True, check=True)
    return {line.split(" ", 2)[-1] for line in r.stdout.splitlines() if "fusedopt::cuda" in line}


@pytest.mark.parametrize("lib", _libraries(), ids=lambda p: p.name)
def test_no_cuda_driver_symbol_is_exported(lib):
    exported = _exported(lib)
    assert not exported, f"{lib.name} exports {len(exported)} fusedopt::cuda symbols, e.g. " + \
        "; ".join(sorted(exported)[:5])

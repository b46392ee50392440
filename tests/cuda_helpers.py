"""Shared by the CUDA tests (and bench/gpu_adam.py's import logic).

import_fusedopt() returns (fusedopt, fusedopt.kernels) also where TensorFlow
and Keras are missing, as on the GPU machine: the package's __init__ imports
the Keras optimizers, while the kernels only need fusedopt._C.
"""

import importlib
import importlib.util
import sys
import types


def import_fusedopt():
    try:
        import fusedopt
        import fusedopt.kernels

        return fusedopt, fusedopt.kernels
    except ImportError:
        spec = importlib.util.find_spec("fusedopt")
        if spec is None or not spec.submodule_search_locations:
            raise
        for name in [k for k in sys.modules if k == "fusedopt" or k.startswith("fusedopt.")]:
            del sys.modules[name]
        # The package without its __init__: only what the kernels need.
        pkg = types.ModuleType("fusedopt")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        sys.modules["fusedopt"] = pkg
        c = importlib.import_module("fusedopt._C")
        pkg.build_info = lambda: dict(c.build_info())
        kernels = importlib.import_module("fusedopt.kernels")
        pkg.kernels = kernels
        return pkg, kernels

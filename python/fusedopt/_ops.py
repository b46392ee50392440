"""Loading the TensorFlow op library, refusing one built for another TF.

A custom-op library is tied to the TensorFlow minor version it was compiled
against. Loading it under another can crash the process, so the versions are
compared first; on a mismatch (or a build without the ops) the library is not
loaded, a warning says why once, and the optimizers use the stock per-variable
path instead.
"""

from __future__ import annotations

import os
import warnings

from fusedopt import _build_config

_LIBRARY_FILE = "_tf_ops.so"
# XLA kernels for the ops, where the build found XLA's headers (CMakeLists.txt):
# each emits one custom call to fusedopt's XLA FFI handler (csrc/ffi/), which
# loading the library registers into TensorFlow's XLA (docs/xla.md).
_XLA_LIBRARY_FILE = "_tf_xla_ops.so"


def _library_dir() -> str:
    """Where the build installed the compiled libraries: beside `_C` (in an
    editable install that is the build tree, not this source folder)."""
    import importlib.util

    spec = importlib.util.find_spec("fusedopt._C")
    origin = spec.origin if spec is not None else None
    return os.path.dirname(os.path.abspath(origin or __file__))


class FusedOpsUnavailableWarning(UserWarning):
    """The fused TF ops cannot be used; optimizers run the stock Keras code."""


_state = {"tried": False, "library": None, "error": None}


def version_mismatch(built: str | None, running: str) -> str | None:
    """Returns why an op library built for `built` cannot load under `running`.

    None means it can: the same major.minor version.
    """
    if built is None:
        return "this fusedopt build has no TensorFlow ops (built without TensorFlow)"
    if built.split(".")[:2] != running.split(".")[:2]:
        return (
            f"fusedopt's TensorFlow ops were built against TensorFlow {built} but "
            f"TensorFlow {running} is running; a custom-op library only loads "
            f"under the minor version it was built for. Reinstall fusedopt "
            f"against TensorFlow {running} (pip install --force-reinstall "
            f"--no-binary fusedopt fusedopt), or install TensorFlow "
            f"{'.'.join(built.split('.')[:2])}.*"
        )
    return None


def library():
    """Returns the loaded op module, or None when the ops cannot be used.

    The first failure warns with FusedOpsUnavailableWarning; later calls are
    silent and return None.
    """
    if not _state["tried"]:
        _state["tried"] = True
        import tensorflow as tf

        error = version_mismatch(_build_config.TF_VERSION, tf.__version__)
        path = os.path.join(_library_dir(), _LIBRARY_FILE)
        if error is None and not os.path.exists(path):
            error = f"the op library {path} is missing from this installation"
        if error is None:
            try:
                _state["library"] = tf.load_op_library(path)
            except Exception as e:  # tf raises NotFoundError and friends
                error = f"loading {path} failed: {e}"
        if error is None:
            _state["xla"] = _load_xla_kernels(tf)
        if error is not None:
            _state["error"] = error
            warnings.warn(
                f"{error}. fusedopt optimizers fall back to the stock Keras "
                "per-variable update (correct, not fused).",
                FusedOpsUnavailableWarning,
                stacklevel=2,
            )
    return _state["library"]


def _load_xla_kernels(tf) -> bool:
    """Loads the XLA kernels (after the op library: they register against its
    ops), which also registers the FFI handlers they call into TensorFlow's
    XLA. Loading after an XLA compilation already ran works too (the library
    then registers its kernels on the XLA devices itself). False, with the
    reason in xla_error(), where they are not built or do not load; the
    optimizers then fall back to the stock update inside XLA clusters, which
    is correct, so this does not warn."""
    path = os.path.join(_library_dir(), _XLA_LIBRARY_FILE)
    if not os.path.exists(path):
        _state["xla_error"] = "this build has no XLA kernels"
        return False
    try:
        tf.load_op_library(path)
    except Exception as e:  # noqa: BLE001 - any failure means "no XLA kernels"
        _state["xla_error"] = f"loading {path} failed: {e}"
        return False
    return True


def xla_kernels() -> bool:
    """Whether the fused ops (FusedoptAdam, FusedoptSgd, FusedoptSquaredNorms,
    FusedoptClipFactors, FusedoptAllFinite) have XLA kernels, so that they can
    run inside an XLA cluster (jit_compile=True) on the CPU."""
    return library() is not None and bool(_state.get("xla"))


def in_xla_context() -> bool:
    """Whether ops created now go into an XLA cluster (a jit_compile=True
    function, or a function nested in one), where only ops with XLA kernels run."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def xla_error() -> str | None:
    """Why there are no XLA kernels, or None."""
    return _state.get("xla_error")


def load_error() -> str | None:
    """Why the ops are unavailable, or None (also None before the first try)."""
    return _state["error"]


def load_state() -> bool | None:
    """True/False once loading was tried, None before."""
    if not _state["tried"]:
        return None
    return _state["library"] is not None

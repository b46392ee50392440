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
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY_FILE)
        if error is None and not os.path.exists(path):
            error = f"the op library {path} is missing from this installation"
        if error is None:
            try:
                _state["library"] = tf.load_op_library(path)
            except Exception as e:  # tf raises NotFoundError and friends
                error = f"loading {path} failed: {e}"
        if error is not None:
            _state["error"] = error
            warnings.warn(
                f"{error}. fusedopt optimizers fall back to the stock Keras "
                "per-variable update (correct, not fused).",
                FusedOpsUnavailableWarning,
                stacklevel=2,
            )
    return _state["library"]


def load_error() -> str | None:
    """Why the ops are unavailable, or None (also None before the first try)."""
    return _state["error"]


def load_state() -> bool | None:
    """True/False once loading was tried, None before."""
    if not _state["tried"]:
        return None
    return _state["library"] is not None

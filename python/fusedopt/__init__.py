"""fusedopt: fused multi-tensor optimizer kernels for TensorFlow and Keras.

- `fusedopt.Adam`, `fusedopt.AdamW`, `fusedopt.SGD`: drop-in Keras optimizers
  whose update step is one fused op over all variables (need TensorFlow, or
  Keras' torch backend with PyTorch).
- `fusedopt.transformers`: gradient transformers (clip by value / norm /
  global norm) that the optimizers fold into their fused kernels.
- `fusedopt.kernels`: the same kernels on NumPy (and CUDA) arrays; works
  without TensorFlow.
- `fusedopt.build_info()`: what this build contains.
"""

from fusedopt import kernels
from fusedopt._info import build_info
from fusedopt._ops import FusedOpsUnavailableWarning

__version__ = "0.1.0"

_TF_NAMES = ("Adam", "AdamW", "SGD", "Optimizer", "transformers", "hyperparameters")



def _keras_backend():
    """The Keras backend in use, or None where Keras cannot be imported."""
    try:
        import keras
    except ImportError:
        return None
    return keras.backend.backend()


def _framework():
    """The framework the optimizers run on: "tensorflow" where it imports
    (and Keras does not run on torch), "torch" on Keras' torch backend (no
    TensorFlow needed), else None."""
    backend = _keras_backend()
    if backend == "torch":
        return "torch"
    try:
        import tensorflow as _tf  # noqa: F401
    except ImportError:
        return None
    return "tensorflow"


_FRAMEWORK = _framework()

if _FRAMEWORK is not None:
    from fusedopt import hyperparameters, transformers
    from fusedopt.optimizers import SGD, Adam, AdamW, Optimizer

    if _FRAMEWORK == "tensorflow":
        # Load (or refuse, with a warning) the TF op library now rather than
        # at the first training step.
        from fusedopt import _ops as _ops_module

        _ops_module.library()
else:
    def __getattr__(name):
        if name in _TF_NAMES:
            raise ImportError(
                f"fusedopt.{name} needs TensorFlow and Keras (pip install 'tensorflow>=2.21,<2.22'), "
                "or Keras on PyTorch (pip install 'fusedopt[torch]' and KERAS_BACKEND=torch); "
                "fusedopt.kernels works without them"
            )
        raise AttributeError(f"module 'fusedopt' has no attribute {name!r}")

__all__ = [
    "Adam",
    "AdamW",
    "FusedOpsUnavailableWarning",
    "Optimizer",
    "SGD",
    "build_info",
    "hyperparameters",
    "kernels",
    "transformers",
]

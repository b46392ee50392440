"""fusedopt: fused multi-tensor optimizer kernels for Keras (TensorFlow, JAX, PyTorch).

- `fusedopt.Adam`, `fusedopt.AdamW`, `fusedopt.SGD`: drop-in Keras optimizers
  whose update step is one fused op (TensorFlow), one XLA custom call (JAX)
  or one torch.library custom op (PyTorch) over all variables (need Keras
  and its backend's framework).
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

_OPTIMIZER_NAMES = ("Adam", "AdamW", "SGD", "Optimizer", "transformers", "hyperparameters")


def _keras_backend():
    """The Keras backend in use, or None where Keras (or the framework of its
    backend) cannot be imported. Imports no framework Keras does not."""
    try:
        import keras
    except ImportError:
        return None
    return keras.backend.backend()


_backend = _keras_backend()

if _backend is not None:
    from fusedopt import hyperparameters, transformers
    from fusedopt.optimizers import SGD, Adam, AdamW, Optimizer

    if _backend == "tensorflow":
        # Load (or refuse, with a warning) the TF op library now rather than at
        # the first training step.
        from fusedopt import _ops as _ops_module

        _ops_module.library()
else:
    def __getattr__(name):
        if name in _OPTIMIZER_NAMES:
            raise ImportError(
                f"fusedopt.{name} needs Keras and the framework of its backend: "
                "TensorFlow (pip install 'fusedopt[tensorflow]'), JAX ('fusedopt[jax]', "
                "KERAS_BACKEND=jax) or PyTorch ('fusedopt[torch]', KERAS_BACKEND=torch); "
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

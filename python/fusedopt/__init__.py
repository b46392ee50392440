"""fusedopt: fused multi-tensor optimizer kernels for TensorFlow and Keras.

- `fusedopt.Adam`, `fusedopt.AdamW`, `fusedopt.SGD`: drop-in Keras optimizers
  whose update step is one fused op over all variables.
- `fusedopt.kernels`: the same kernels on NumPy arrays.
- `fusedopt.build_info()`: what this build contains.
"""

from fusedopt import kernels
from fusedopt._info import build_info
from fusedopt._ops import FusedOpsUnavailableWarning
from fusedopt.optimizers import SGD, Adam, AdamW, Optimizer

__version__ = "0.1.0"

# Load (or refuse, with a warning) the TF op library now rather than at the
# first training step.
from fusedopt import _ops as _ops_module

_ops_module.library()
__all__ = [
    "Adam",
    "AdamW",
    "FusedOpsUnavailableWarning",
    "Optimizer",
    "SGD",
    "build_info",
    "kernels",
]

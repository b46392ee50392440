"""fusedopt: fused multi-tensor optimizer kernels for TensorFlow and Keras."""

from fusedopt._info import build_info

__version__ = "0.1.0"
__all__ = ["build_info"]

"""Keras optimizers whose update step runs fused kernels."""

from fusedopt.optimizers.adam import Adam, AdamW
from fusedopt.optimizers.base import Optimizer

__all__ = ["Adam", "AdamW", "Optimizer"]

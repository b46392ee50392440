"""Keras optimizers whose update step runs fused kernels."""

from fusedopt.optimizers.adam import Adam, AdamW
from fusedopt.optimizers.base import Optimizer
from fusedopt.optimizers.sgd import SGD

__all__ = ["Adam", "AdamW", "Optimizer", "SGD"]

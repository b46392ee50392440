"""Fused SGD: the stock Keras class with a planned, fused update."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from fusedopt import hyperparameters as hp
from fusedopt.optimizers.base import Optimizer


@keras.saving.register_keras_serializable(package="fusedopt")
class SGD(Optimizer, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with all variables updated by one fused op.

    Plain SGD, momentum and Nesterov momentum, with the weight decay folded
    into the same pass. Same arguments, config, optimizer variables and
    results as the stock class (the parity contract: docs/design.md).
    Variables the fused op does not cover (sparse gradients, other dtypes,
    ...) use the stock per-variable update; `fused_paths` shows which path
    each variable took.
    """

    _fused_rule = "sgd"

    @classmethod
    def _hyperparameter_ranges(cls):
        return {**super()._hyperparameter_ranges(), "momentum": hp.UNIT_CLOSED}

    def _slot_attributes(self):
        # The stock build creates the momentum slots only for momentum != 0.
        if self.built:
            return {"momentum": "momentums"} if self.momentums else {}
        momentum = self.momentum
        if isinstance(momentum, numbers.Real) and momentum == 0:
            return {}
        return {"momentum": "momentums"}

    def _uses_momentum(self) -> bool:
        """Whether this step updates the momentum buffers.

        As the stock `update_step`: `momentum != 0`, with the buffers the
        stock `build` created (only if momentum was != 0 then). A momentum
        given as a tensor, variable, schedule or callable is decided by the
        buffers alone (its value is only known at run time).
        """
        momentum = self.momentum
        if isinstance(momentum, numbers.Real) and momentum == 0:
            return False
        return bool(self.momentums)

    def _fused_slots(self):
        return (self.momentums,) if self._uses_momentum() else ()

    def _fused_scalars(self, learning_rate, dtype):
        # The same ops and dtype as keras.optimizers.SGD.update_step (ops.cast
        # of a Python float goes through float32, as in the stock code).
        return {"lr": ops.cast(learning_rate, dtype),
                "momentum": ops.cast(self.momentum, dtype),
                "nesterov": bool(self.nesterov)}

"""Fused SGD: the stock Keras class with a planned, fused update."""

from __future__ import annotations

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
        return {**super()._hyperparameter_ranges(), "momentum": hp.RANGES["momentum"]}

    def _slot_attributes(self):
        # The stock build creates the momentum slots only for momentum != 0;
        # a dynamic momentum always has them (see build).
        if self.built:
            return {"momentum": "momentums"} if self.momentums else {}
        if self._momentum_is_dynamic() or self.momentum != 0:
            return {"momentum": "momentums"}
        return {}

    def _momentum_is_dynamic(self) -> bool:
        """Whether momentum was given in a form whose value can change while
        training runs (a tensor, variable, schedule or callable).

        Such a momentum always has its buffers and always takes the momentum
        rule (m <- m * momentum - g * lr; p <- p + m), whatever its value when
        the optimizer is built: at momentum 0 that rule moves the parameters
        exactly as plain SGD does (0 * m - g * lr is -(g * lr) exactly), and a
        variable that starts at 0 and is later assigned 0.9 gets its momentum.
        (The stock build decides `momentum != 0` once, which a traced step
        cannot do on a tensor, and which would leave such a variable without
        buffers for good.) A number keeps the stock rule: no buffers at 0.
        """
        return hp.is_dynamic(self._hyperparameter_argument("momentum"))

    def build(self, variables):
        if self.built or not self._momentum_is_dynamic():
            return super().build(variables)
        # The stock SGD.build without its `momentum != 0` test: the base
        # build (EMA, accumulators), then the buffers, in the stock order.
        super(keras.optimizers.SGD, self).build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        # The per-variable (fallback) update. The stock code tests
        # `momentum != 0` in Python, which a traced step cannot do on a
        # tensor; a dynamic momentum takes the stock momentum branch, written
        # with the same ops.
        if not self._momentum_is_dynamic():
            return super().update_step(gradient, variable, learning_rate)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(m, ops.subtract(ops.multiply(m, momentum),
                                    ops.multiply(gradient, learning_rate)))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(m, momentum),
                                                   ops.multiply(gradient, learning_rate)))
        else:
            self.assign_add(variable, m)

    def _uses_momentum(self) -> bool:
        """Whether this step updates the momentum buffers.

        As the stock `update_step`: `momentum != 0`, with the buffers the
        stock `build` created (only if momentum was != 0 then). A dynamic
        momentum always has its buffers and always uses them (see
        `_momentum_is_dynamic`).
        """
        if self._momentum_is_dynamic():
            return True
        return self.momentum != 0 and bool(self.momentums)

    def _fused_slots(self):
        return (self.momentums,) if self._uses_momentum() else ()

    def _fused_scalars(self, learning_rate, dtype):
        # The same ops and dtype as keras.optimizers.SGD.update_step (ops.cast
        # of a Python float goes through float32, as in the stock code).
        return {"lr": ops.cast(learning_rate, dtype),
                "momentum": ops.cast(self.momentum, dtype),
                "nesterov": bool(self.nesterov)}

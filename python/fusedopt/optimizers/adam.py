"""Fused Adam and AdamW: the stock Keras classes with a planned, fused update."""

from __future__ import annotations

import keras
from keras import ops

from fusedopt import hyperparameters as hp
from fusedopt.optimizers.base import Optimizer


class _FusedAdamRule:
    """The Adam/AdamW rule's part of the fused update, shared by both classes."""

    _fused_rule = "adam"

    @classmethod
    def _hyperparameter_ranges(cls):
        return {**super()._hyperparameter_ranges(), "beta_1": hp.RANGES["beta_1"],
                "beta_2": hp.RANGES["beta_2"], "epsilon": hp.RANGES["epsilon"]}

    def _slot_attributes(self):
        slots = {"momentum": "_momentums", "velocity": "_velocities"}
        if self.amsgrad:
            slots["velocity_hat"] = "_velocity_hats"
        return slots

    def _fused_unsupported_reason(self):
        if self.amsgrad:
            return "amsgrad=True (not fused yet)"
        return None

    def _fused_slots(self):
        return (self._momentums, self._velocities)

    def _fused_scalars(self, learning_rate, dtype):
        # The same ops, in the same order and dtype, as
        # keras.optimizers.Adam.update_step, so that the kernel reproduces the
        # stock optimizer bit for bit (ops.cast of a Python float goes through
        # float32, as in the stock code; the executor converts the numbers
        # 1 - beta_1, ... exactly, as the stock `tensor * (1 - beta_1)` does).
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        return {"lr": lr, "alpha": alpha, "one_minus_beta_1": 1 - self.beta_1,
                "one_minus_beta_2": 1 - self.beta_2, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="fusedopt")
class Adam(_FusedAdamRule, Optimizer, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with all variables updated by one fused op.

    Same arguments, config, optimizer variables and results as the stock class
    (the parity contract: docs/design.md). Variables the fused op does not
    cover (sparse gradients, other dtypes, amsgrad, ...) use the stock
    per-variable update; `fused_paths` shows which path each variable took.
    """


@keras.saving.register_keras_serializable(package="fusedopt")
class AdamW(_FusedAdamRule, Optimizer, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with the decoupled weight decay and the Adam
    update fused into one pass over all variables. See `fusedopt.Adam`."""

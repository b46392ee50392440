"""Fused Adam and AdamW: the stock Keras classes with a fused update step."""

from __future__ import annotations

import keras
from keras import ops

from fusedopt import _ops
from fusedopt import hyperparameters as hp
from fusedopt.optimizers import clipping
from fusedopt.optimizers.base import Optimizer, decay_scalars, scalar


class _FusedAdamUpdate:
    """The fused Adam/AdamW update, shared by Adam and AdamW."""

    @classmethod
    def _hyperparameter_ranges(cls):
        return {**super()._hyperparameter_ranges(), "beta_1": hp.UNIT_OPEN,
                "beta_2": hp.UNIT_OPEN, "epsilon": hp.NON_NEGATIVE}

    def _slot_attributes(self):
        slots = {"momentum": "_momentums", "velocity": "_velocities"}
        if self.amsgrad:
            slots["velocity_hat"] = "_velocity_hats"
        return slots

    def _fused_unsupported_reason(self):
        if self.amsgrad:
            return "amsgrad=True (not fused yet)"
        return None

    def _fused_update(self, grads, variables, learning_rate, weight_decay,
                      clip=clipping.NO_CLIP, apply_if=None):
        # The scalars are computed with the same ops, in the same order and
        # dtype, as keras.optimizers.Adam.update_step, so that the fused op
        # reproduces the stock optimizer bit for bit. (Note ops.cast of a Python
        # float goes through float32, as in the stock code; `scalar` converts
        # exactly, as the stock code's `tensor * (1 - beta_1)` does.)
        dtype = variables[0].dtype
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        decay_lr, wd = decay_scalars(self, lr, dtype, weight_decay)
        _ops.library().fusedopt_adam(
            params=[v.handle for v in variables],
            m=[self._slot(self._momentums, v).handle for v in variables],
            v=[self._slot(self._velocities, v).handle for v in variables],
            grads=grads,
            alpha=alpha,
            one_minus_beta_1=scalar(1 - self.beta_1, dtype),
            one_minus_beta_2=scalar(1 - self.beta_2, dtype),
            epsilon=scalar(self.epsilon, dtype),
            lr=decay_lr,
            weight_decay=wd,
            apply_weight_decay=weight_decay,
            clip=clip[0],
            clip_args=clipping.clip_args(clip, dtype),
            apply_if=[] if apply_if is None else [apply_if],
        )


@keras.saving.register_keras_serializable(package="fusedopt")
class Adam(_FusedAdamUpdate, Optimizer, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with all variables updated by one fused op.

    Same arguments, config, optimizer variables and results as the stock class
    (bit-identical in float32 on the CPU). Variables the fused op does not
    cover (sparse gradients, dtypes other than float32/float64, amsgrad, XLA
    clusters in a build without the XLA kernels, tf.distribute strategies
    other than the mirrored ones) use the
    stock per-variable update;
    `fused_paths` shows which path each variable took.
    """


@keras.saving.register_keras_serializable(package="fusedopt")
class AdamW(_FusedAdamUpdate, Optimizer, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with the decoupled weight decay and the Adam
    update fused into one pass over all variables. See `fusedopt.Adam`."""

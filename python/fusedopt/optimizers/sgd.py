"""Fused SGD: the stock Keras class with a fused update step."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from fusedopt import _ops
from fusedopt import hyperparameters as hp
from fusedopt.optimizers import _grappler, clipping
from fusedopt.optimizers.base import Optimizer, decay_scalars


@keras.saving.register_keras_serializable(package="fusedopt")
class SGD(Optimizer, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with all variables updated by one fused op.

    Plain SGD, momentum and Nesterov momentum, with the weight decay folded
    into the same pass. Same arguments, config, optimizer variables and
    results as the stock class (bit-identical in float32 on the CPU).
    Variables the fused op does not cover (sparse gradients, dtypes other than
    float32/float64, XLA clusters in a build without the XLA kernels,
    tf.distribute strategies other than the
    mirrored ones, GPU variables)
    use the stock per-variable update; `fused_paths` shows which path each
    variable took.
    """

    @classmethod
    def _hyperparameter_ranges(cls):
        return {**super()._hyperparameter_ranges(), "momentum": hp.UNIT_CLOSED}

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

    def _fused_unsupported_reason(self):
        return None

    def _fallback_reason(self, distribution, grad, var):
        reason = super()._fallback_reason(distribution, grad, var)
        if reason is None and "GPU" in var.device.upper():
            return "variable on a GPU (FusedoptSgd has no GPU kernel yet)"
        if reason is None and self._pending_clip is None:
            # Only an unclipped gradient can be absorbed into Grappler's
            # product (a global-norm scale keeps it a plain input).
            try:
                _grappler.product_of(grad)
            except _grappler.Unsupported as e:
                return str(e)
        return reason

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

    def _fused_update(self, grads, variables, learning_rate, weight_decay,
                      clip=clipping.NO_CLIP, apply_if=None):
        # The scalars are computed with the same ops and dtype as
        # keras.optimizers.SGD.update_step (ops.cast of a Python float goes
        # through float32, as in the stock code), so that the fused op
        # reproduces the stock optimizer bit for bit.
        dtype = variables[0].dtype
        lr = ops.cast(learning_rate, dtype)
        momentum = ops.cast(self.momentum, dtype)
        decay_lr, wd = decay_scalars(self, lr, dtype, weight_decay)
        use_momentum = self._uses_momentum()
        kind, args = clip

        # In a traced graph, Grappler computes the stock `gradient * lr` as
        # `g * (scale * lr)` where the gradient is `g * scale` (global
        # clipnorm, gradient accumulation, loss scaling; see _grappler.py).
        # The gradient clipped by value or by norm is not such a product.
        # One op call per distinct scalar, so that each rounds like the stock
        # code.
        scales = (tf.reshape(args, []),) if kind == "scale" else ()
        calls = {}
        for grad, var in zip(grads, variables):
            if kind == "scale":
                product = _grappler.product_of(grad, scales=scales)
            elif kind == "none":
                product = _grappler.product_of(grad)
            else:
                product = _grappler.as_written(grad)
            key = (product.key(), product.includes_scales)
            entry = calls.setdefault(key, (product, [], []))
            entry[1].append(product.tensor)
            entry[2].append(var)

        for product, call_grads, call_vars in calls.values():
            # The scale is in the scalar, or (no rewrite) applied by the op.
            call_clip = clipping.NO_CLIP if product.includes_scales else clip
            _ops.library().fusedopt_sgd(
                params=[v.handle for v in call_vars],
                momentums=[self._slot(self.momentums, v).handle for v in call_vars]
                if use_momentum else [],
                grads=call_grads,
                lr=product.scalar(lr),
                momentum=momentum,
                weight_decay=wd,
                decay_lr=decay_lr,
                nesterov=bool(self.nesterov),
                apply_weight_decay=weight_decay,
                clip=call_clip[0],
                clip_args=clipping.clip_args(call_clip, dtype),
                apply_if=[] if apply_if is None else [apply_if],
            )

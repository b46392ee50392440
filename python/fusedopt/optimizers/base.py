"""The fused update path shared by every fusedopt optimizer.

A fusedopt optimizer is the stock Keras optimizer with one method replaced:
``_distributed_tf_update_step``, which Keras calls once per step with every
``(grad, var)`` pair after loss-scale unscaling, gradient accumulation and
Keras' own clipping. Instead of a handful of TF ops per variable, the pairs are
grouped by (dtype, device, weight decay) and each group is updated by one call
of a fused op. Everything upstream and downstream (constraints, EMA, the
iteration counter) is the inherited Keras code, which is why constructor
arguments, ``get_config``, optimizer variables and checkpoints are those of
the stock class.

Pairs the fused op does not cover fall back to the stock per-variable
``update_step``. ``fused_paths`` tells, per variable, which path the last
traced step took and why.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from fusedopt import _ops
from fusedopt.optimizers import clipping
from fusedopt.optimizers.arguments import ArgumentStructure
from fusedopt.optimizers.step_guard import StepGuard

FUSED = "fused"

# float16/bfloat16 variables (Keras "float16"/"bfloat16" policies; slots share
# the variable's dtype): the kernels compute in float32 and round on store.
_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _in_xla_context() -> bool:
    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def scalar(value, dtype) -> tf.Tensor:
    """A 0-d tensor of `dtype` holding `value` (number, tensor or variable).

    Python numbers are converted straight to `dtype` (not through float32,
    which would round a float64 hyperparameter).
    """
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype=dtype)


def decay_scalars(optimizer, lr, dtype, weight_decay: bool):
    """The (lr, weight_decay) pair the kernels use for p -= p * wd * lr.

    The kernels compute (p * wd) * lr, as the stock Keras code is written and
    runs eagerly. In a traced graph, Grappler's arithmetic optimizer rewrites
    the stock `variable * wd * lr` into `variable * (wd * lr)` (it hoists the
    scalar product to minimize broadcasts), which rounds differently; passing
    (wd * lr, 1) reproduces that exactly, since multiplying by 1 is exact.
    """
    if not weight_decay:
        return lr, tf.zeros([], dtype)
    # tf.cast, like the stock TF-backend decay (a Python float goes through
    # float32 there, and so here).
    wd = tf.cast(optimizer.weight_decay, dtype)
    if tf.executing_eagerly():
        return lr, wd
    return tf.ones([], dtype), wd * lr


class Optimizer(StepGuard, ArgumentStructure, keras.optimizers.Optimizer):
    """Base class of the fusedopt optimizers.

    The argument structure (hyperparameters, gradient transformers, state) is
    in `ArgumentStructure`; this class adds the fused update path. Subclasses
    list it before the stock class they extend
    (``class Adam(Optimizer, keras.optimizers.Adam)``) and implement
    ``_fused_unsupported_reason`` and ``_fused_update``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Filled at trace time: variable path -> FUSED or "fallback: <reason>".
        self._fused_paths = {}
        # Variable keys (``_var_key``) whose weight decay the fused op applies.
        self._pending_decay = set()
        # A built-in clip transformer the fused op applies (see clipping.py).
        self._pending_clip = None

    # ------------------------------------------------------------------ hooks

    def _fused_unsupported_reason(self) -> str | None:
        """Why no variable can take the fused path with this configuration."""
        return None

    def _fused_update(self, grads, variables, learning_rate, weight_decay: bool,
                      clip=clipping.NO_CLIP):
        """Updates `variables` (tf.Variables of one dtype and device) in one op.

        clip: (kind, clip_args) for the op's `clip` attribute and input.
        """
        raise NotImplementedError

    # ------------------------------------------------------------- inspection

    @property
    def fused_paths(self) -> dict:
        """Per variable path: "fused", or "fallback: <reason>" for the stock code.

        Recorded while the last update step was traced (or run eagerly).
        """
        return dict(self._fused_paths)

    # --------------------------------------------------------- the fused path

    def _apply_weight_decay(self, variables):
        # Called by Keras right before the update; the decay is folded into the
        # fused op (p -= p * wd * lr, before the update, like the stock code).
        # Variables that fall back get the stock decay in the update step.
        if self.weight_decay is None:
            self._pending_decay = set()
            return
        self._pending_decay = {
            self._var_key(v) for v in variables if self._use_weight_decay(v)
        }

    def _step_fallback_reason(self, distribution=None) -> str | None:
        """Why no variable can take the fused path in this step, or None."""
        if _ops.library() is None:
            return "fused TF ops unavailable (" + str(_ops.load_error()) + ")"
        reason = self._fused_unsupported_reason()
        if reason:
            return reason
        if _in_xla_context():
            return "inside an XLA cluster (jit_compile=True); the op has no XLA kernel"
        if tf.distribute.has_strategy() or (
                distribution is not None and distribution is not tf.distribute.get_strategy()):
            return "under a tf.distribute strategy"
        return None

    def _can_fold_clip(self) -> bool:
        """Whether a built-in clip can go into the fused op this step."""
        return self._step_fallback_reason() is None

    def _clip_gradients(self, grads):
        # Keras' clipvalue / clipnorm / global_clipnorm. Folded into the fused
        # op when nothing runs between them and the update; otherwise the
        # stock clipping.
        self._pending_clip = None
        clip = clipping.keras_clip(self)
        if clip is None or self.gradient_transformers or not self._can_fold_clip():
            return super()._clip_gradients(grads)
        self._pending_clip = clip
        return grads

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # After Keras' unscaling, accumulation and clipping; before the weight
        # decay (deferred into the update) and the update itself. A built-in
        # clip at the end of the chain is folded into the fused op.
        transformers = self.gradient_transformers
        if (transformers and clipping.is_foldable(transformers[-1])
                and self._can_fold_clip()):
            self._pending_clip = transformers[-1]
            transformers = transformers[:-1]
        if transformers:
            grads = self._apply_transformers(transformers, grads, trainable_variables)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _fallback_reason(self, distribution, grad, var) -> str | None:
        """Why this (grad, var) pair takes the stock update, or None."""
        reason = self._step_fallback_reason(distribution)
        if reason:
            return reason
        if isinstance(grad, tf.IndexedSlices):
            return "sparse (IndexedSlices) gradient"
        if var.dtype not in _FUSED_DTYPES:
            return f"dtype {var.dtype.name} (fused: float16, bfloat16, float32, float64)"
        if "GPU" in var.device.upper():
            return "variable on a GPU (the GPU kernels are not verified on a GPU yet)"
        return None

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        groups = {}
        fallback = []
        paths = {}
        for grad, var in grads_and_vars:
            reason = self._fallback_reason(distribution, grad, var)
            if reason is None:
                decay = self._var_key(var) in self._pending_decay
                groups.setdefault((var.dtype, var.device, decay), []).append((grad, var))
                paths[self._path(var)] = FUSED
            else:
                fallback.append((grad, var))
                paths[self._path(var)] = "fallback: " + reason

        groups = {key: [(tf.cast(g, key[0]), v) for g, v in pairs]
                  for key, pairs in groups.items()}
        clip_args = {}
        if self._pending_clip is not None:
            clip_args, fallback = clipping.fold(_ops.library(), self._pending_clip, groups,
                                                fallback, self.iterations)
            self._pending_clip = None

        for key, pairs in groups.items():
            with tf.device(key[1]):
                self._fused_update(
                    [g for g, _ in pairs],
                    [v for _, v in pairs],
                    learning_rate,
                    weight_decay=key[2],
                    clip=clip_args.get(key, clipping.NO_CLIP),
                )

        if fallback:
            decayed = [v for _, v in fallback if self._var_key(v) in self._pending_decay]
            if decayed:
                super()._apply_weight_decay(decayed)
            super()._distributed_tf_update_step(distribution, fallback, learning_rate)

        self._pending_decay = set()
        self._fused_paths = paths

    def _path(self, variable) -> str:
        """The Keras path ("dense/kernel") of a model variable's tf.Variable;
        for plain tf.Variables (whose names may repeat), name[index]."""
        index = self._get_variable_index(variable)
        tracked = self._trainable_variables[index]
        return getattr(tracked, "path", None) or f"{tracked.name}[{index}]"

    def _slot(self, slots, variable):
        """The tf.Variable of `variable`'s slot in the Keras list `slots`."""
        return slots[self._get_variable_index(variable)].value

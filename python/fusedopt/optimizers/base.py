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

Under MirroredStrategy and MultiWorkerMirroredStrategy, Keras calls the update
step once, in cross-replica context, with the all-reduced gradients; the
fused op then runs once per local device on that device's copies (see
``_mirrored_update_step``). Other strategies fall back.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.distribute import distribute_lib, mirrored_strategy

from fusedopt import _ops
from fusedopt.optimizers import clipping
from fusedopt.optimizers.arguments import ArgumentStructure
from fusedopt.optimizers.step_guard import StepGuard

FUSED = "fused"

# float16/bfloat16 variables (Keras "float16"/"bfloat16" policies; slots share
# the variable's dtype): the kernels compute in float32 and round on store.
_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


_in_xla_context = _ops.in_xla_context


def _is_mirrored(strategy) -> bool:
    """MirroredStrategy, or MultiWorkerMirroredStrategy (whose extended,
    CollectiveAllReduceExtended, subclasses MirroredExtended): every variable
    is a MirroredVariable with one copy per local device."""
    return isinstance(strategy.extended, mirrored_strategy.MirroredExtended)


def _strategy_reason(strategy) -> str | None:
    """Why the fused path does not run under `strategy`, or None."""
    name = type(strategy).__name__
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return f"under tf.distribute {name} (the fused ops have no TPU kernels)"
    if isinstance(strategy, (tf.distribute.ParameterServerStrategy,
                             tf.distribute.experimental.CentralStorageStrategy)):
        return (f"under tf.distribute {name} (variables live on parameter servers or "
                "one central device; fused: MirroredStrategy, MultiWorkerMirroredStrategy)")
    if _is_mirrored(strategy):
        return None
    return (f"under tf.distribute {name} (fused: MirroredStrategy, "
            "MultiWorkerMirroredStrategy)")


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
    if tf.executing_eagerly() or _in_xla_context():  # no Grappler inside XLA
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
                      clip=clipping.NO_CLIP, apply_if=None):
        """Updates `variables` (tf.Variables of one dtype and device) in one op.

        clip: (kind, clip_args) for the op's `clip` attribute and input.
        apply_if: None, or a bool scalar tensor for the op's `apply_if` input
        (the op writes nothing where it is false).
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

    def _fused_op_has_xla_kernel(self) -> bool:
        """Whether the fused op can run inside an XLA cluster (csrc/tf/xla_ops.cc)."""
        return _ops.xla_kernels()

    def _step_fallback_reason(self, distribution=None) -> str | None:
        """Why no variable can take the fused path in this step, or None."""
        if _ops.library() is None:
            return "fused TF ops unavailable (" + str(_ops.load_error()) + ")"
        reason = self._fused_unsupported_reason()
        if reason:
            return reason
        if _in_xla_context() and not self._fused_op_has_xla_kernel():
            return "inside an XLA cluster (jit_compile=True); the op has no XLA kernel"
        strategy = tf.distribute.get_strategy()
        if distribution is not None and distribution is not strategy:
            return ("the optimizer's tf.distribute strategy is not the one running the step "
                    "(create the optimizer under the strategy's scope)")
        if tf.distribute.has_strategy():
            return _strategy_reason(strategy)
        return None

    def _can_fold_clip(self) -> bool:
        """Whether a built-in clip can go into the fused op this step."""
        if self._step_fallback_reason() is not None:
            return False
        # Inside XLA the norms op has no XLA kernel and the XLA kernels take
        # no clip: the stock clipping runs, compiled as for the stock optimizer.
        if _in_xla_context():
            return False
        # Keras clips (and fusedopt runs the transformers on) each replica's
        # gradients before the cross-replica sum, and the update step sees
        # only the sum: a clip folded into it would clip the sum instead.
        # With one replica in sync the sum is the gradient itself.
        return tf.distribute.get_strategy().num_replicas_in_sync == 1

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
        if _in_xla_context() and var.dtype not in (tf.float32, tf.float64):
            # The CPU kernels' float32 arithmetic would not round like the
            # stock half-precision update compiled by XLA.
            return f"dtype {var.dtype.name} inside an XLA cluster (XLA kernels: float32, float64)"
        if "GPU" in var.device.upper():
            return "variable on a GPU (the GPU kernels are not verified on a GPU yet)"
        return None

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        if _is_mirrored(distribution) and tf.distribute.in_cross_replica_context():
            self._mirrored_update_step(distribution, grads_and_vars, learning_rate)
            return
        fused, fallback, paths = [], [], {}
        for grad, var in grads_and_vars:
            reason = self._fallback_reason(distribution, grad, var)
            (fallback if reason else fused).append((grad, var))
            paths[self._path(var)] = "fallback: " + reason if reason else FUSED
        clip, decay = self._take_pending()

        def stock_update(pairs, learning_rate):
            decayed = [v for _, v in pairs if self._var_key(v) in decay]
            if decayed:
                self._stock_weight_decay(distribution, decayed)
            super(Optimizer, self)._distributed_tf_update_step(distribution, pairs, learning_rate)

        self._update_pairs(fused, fallback, learning_rate, clip, decay, stock_update)
        self._fused_paths = paths

    def _mirrored_update_step(self, distribution, grads_and_vars, learning_rate):
        """The update under MirroredStrategy / MultiWorkerMirroredStrategy.

        Cross-replica context: the gradients are the all-reduced per-device
        values (PerReplica or Mirrored), the variables MirroredVariables with
        one copy per local device. `update_non_slot` calls `on_device` once
        per local device, inside that device's scope and UpdateContext, with
        the gradients and learning rate of that device (select_replica); it
        updates that device's copies, exactly as the stock per-variable
        `extended.update` would, but in one fused op per group.
        """
        devices = tuple(distribution.extended.worker_devices)
        fused, fallback, paths = [], [], {}
        for grad, var in grads_and_vars:
            reason = self._mirrored_fallback_reason(distribution, devices, grad, var)
            (fallback if reason else fused).append((grad, var))
            paths[self._path(var)] = "fallback: " + reason if reason else FUSED
        clip, decay = self._take_pending()

        def local(var):
            # This device's copy; inside the UpdateContext, `.handle` of a
            # MirroredVariable (the slots) resolves to the same device's copy.
            replica = distribute_lib.get_update_replica_id()
            return distribution.experimental_local_results(var)[replica]

        def stock_update(pairs, learning_rate):
            # What the stock update does per variable and device (the decay
            # as in the stock TF backend, then update_step on the copy).
            for grad, var in pairs:
                if self._var_key(var) in decay:
                    self._decay_variable(var)
                self.update_step(grad, var, learning_rate)

        def on_device(fused, fallback, learning_rate):
            self._update_pairs([(g, local(v)) for g, v in fused],
                               [(g, local(v)) for g, v in fallback],
                               learning_rate, clip, decay, stock_update)

        distribution.extended.update_non_slot(
            devices, on_device, args=(fused, fallback, learning_rate), group=False)
        self._fused_paths = paths

    def _mirrored_fallback_reason(self, distribution, devices, grad, var) -> str | None:
        """`_fallback_reason` for a MirroredVariable: the pair is fused only
        if it can be on every local device."""
        copies = distribution.experimental_local_results(var)
        grads = distribution.experimental_local_results(grad)
        if len(copies) != len(devices):
            return (f"variable has {len(copies)} copies for the strategy's {len(devices)} "
                    "local devices")
        if len(grads) == 1:
            grads = grads * len(devices)  # the same tensor for every device
        for g, v in zip(grads, copies):
            reason = self._fallback_reason(distribution, g, v)
            if reason:
                return reason
        return None

    def _clip_sees_apply_grads(self, clip) -> bool:
        """Whether the folded `clip` gets apply()'s gradients as they were
        passed (no loss-scale division, no transformer before it), so that
        its norm is finite exactly where they all are (or overflows)."""
        return (self.loss_scale_factor is None
                and all(t is clip for t in self.gradient_transformers))

    def _take_pending(self):
        """The clip and the weight-decay keys recorded for this step (reset)."""
        clip, decay = self._pending_clip, self._pending_decay
        self._pending_clip, self._pending_decay = None, set()
        return clip, decay

    def _update_pairs(self, fused, fallback, learning_rate, clip, decay, stock_update):
        """Fused op calls for `fused` (grouped by dtype, device, weight decay),
        with `clip` folded in; `stock_update(pairs, learning_rate)` for the rest.

        Under skip_nonfinite's predicate (StepGuard: `_step_predicate`) the
        fused ops take it as their `apply_if` input and the rest runs in a
        cond on it.
        """
        predicate = self._step_predicate
        groups = {}
        for grad, var in fused:
            key = (var.dtype, var.device, self._var_key(var) in decay)
            groups.setdefault(key, []).append((tf.cast(grad, var.dtype), var))

        clip_args = {}
        if clip is not None:
            clip_args, fallback, global_norm = clipping.fold(
                _ops.library(), clip, groups, fallback, self.iterations)
            norm_is_check = global_norm is not None and self._clip_sees_apply_grads(clip)
            if predicate is not None and norm_is_check:
                # The norm's pass read every gradient of the step: it is not
                # finite if any element is not (or if it overflows, when the
                # clipped step would write NaN everywhere). No second pass.
                predicate.provide(tf.math.is_finite(global_norm))
        apply_if = None if predicate is None else predicate.value()

        for key, pairs in groups.items():
            with tf.device(key[1]):
                self._fused_update(
                    [g for g, _ in pairs],
                    [v for _, v in pairs],
                    learning_rate,
                    weight_decay=key[2],
                    clip=clip_args.get(key, clipping.NO_CLIP),
                    apply_if=apply_if,
                )
        if fallback and apply_if is None:
            stock_update(fallback, learning_rate)
        elif fallback:
            tf.cond(apply_if, lambda: stock_update(fallback, learning_rate), lambda: None)

    def _stock_weight_decay(self, distribution, variables):
        """The stock decay of fallback variables. The stock method merge-calls,
        which needs a replica context; in cross-replica context (any strategy)
        it is the same per-variable `extended.update`, called directly."""
        if tf.distribute.in_cross_replica_context():
            for var in variables:
                distribution.extended.update(var, self._decay_variable, group=False)
        else:
            super()._apply_weight_decay(variables)

    def _decay_variable(self, variable):
        # The stock TF backend's weight_decay_fn, same ops in the same order.
        lr = tf.cast(self.learning_rate, variable.dtype)
        wd = tf.cast(self.weight_decay, variable.dtype)
        variable.assign_sub(variable * wd * lr)

    def _path(self, variable) -> str:
        """The Keras path ("dense/kernel") of a model variable's tf.Variable;
        for plain tf.Variables (whose names may repeat), name[index]."""
        index = self._get_variable_index(variable)
        tracked = self._trainable_variables[index]
        return getattr(tracked, "path", None) or f"{tracked.name}[{index}]"

    def _slot(self, slots, variable):
        """The tf.Variable of `variable`'s slot in the Keras list `slots`."""
        return slots[self._get_variable_index(variable)].value

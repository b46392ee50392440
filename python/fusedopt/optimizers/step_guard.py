"""What every fusedopt optimizer checks before a step writes anything.

Two guards around the stock ``apply``:

1. Argument checks. The gradients must pair up with the variables: as many
   gradients as variables, each a floating-point tensor (or IndexedSlices) of
   its variable's shape, no variable twice. Stock Keras finds some of these
   only while it updates variable after variable, so an eager step can fail
   half-way with some variables already written; here the whole step is
   refused before the first write.
2. ``skip_nonfinite=True``: one fused pass over all gradients
   (``FusedoptAllFinite``) decides whether the step runs at all; if any
   gradient element is Inf or NaN, no variable, slot, accumulator or
   ``iterations`` changes. Under a tf.distribute strategy every replica's
   gradients are checked and the step runs only if all of them are finite,
   so replicas stay identical.

   How the predicate gates the step, in a traced graph: where every write of
   the step is a fused op (no EMA, gradient accumulation, constraints,
   overwrite-with-gradient variables or gradient transformers other than
   the built-in ones, which may keep state), the ops take it as their ``apply_if``
   input and the pairs that fall back run in a cond; ``iterations``, which
   Keras increments unconditionally, is decremented again on a skipped step.
   With global-norm clipping folded into the ops, the norm's own pass over
   the gradients is the check (a non-finite norm: some element is not
   finite, or the norm overflows, when the clipped step would be NaN
   everywhere), so the check costs no extra pass.
   Otherwise the whole stock ``apply`` is the true branch of a cond, whose
   switch on every captured variable costs about a third of a small step
   (300 variables of 256 elements). Eagerly, the step runs or not in Python.
"""

from __future__ import annotations

import keras

from fusedopt import _tensors
from fusedopt.optimizers.arguments import _gradient_shape, _label


def _executor():
    """The backend's executor (its `all_finite`, `executing_eagerly`), or None."""
    from fusedopt.optimizers.base import _executor as executor

    return executor()


def check_apply_arguments(grads, variables, var_key) -> None:
    """Raises if `grads` cannot update `variables` (see the module docstring).

    Shapes are checked where they are known when the step is traced (always
    in model.fit); None gradients are allowed (Keras skips those variables).
    """
    if len(grads) != len(variables):
        raise ValueError(
            f"apply() got {len(grads)} gradients for {len(variables)} variables; "
            "pass one gradient (or None) per variable, in the same order"
        )
    seen = {}
    for i, var in enumerate(variables):
        key = var_key(var)
        if key in seen:
            raise ValueError(
                f"variable {_label(var)!r} is passed twice to apply() (positions "
                f"{seen[key]} and {i}); each variable takes one gradient per step"
            )
        seen[key] = i
    for i, (grad, var) in enumerate(zip(grads, variables)):
        if grad is None:
            continue
        if not (_tensors.is_tensor(grad) or _tensors.is_sparse(grad)
                or _tensors.is_variable(grad)):
            try:
                grad = keras.ops.convert_to_tensor(grad)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"gradient {i} (for variable {_label(var)!r}) must be a tensor or "
                    f"IndexedSlices; got {type(grad).__name__}"
                ) from e
        dtype = _tensors.dtype_name(grad.dtype)
        if not (_tensors.is_floating(dtype) or _tensors.is_complex(dtype)):
            raise TypeError(
                f"gradient {i} (for variable {_label(var)!r}) has dtype {dtype}; "
                "expected a floating-point (or complex) gradient"
            )
        shape = _gradient_shape(grad)
        if not _tensors.shapes_compatible(shape, tuple(var.shape)):
            raise ValueError(
                f"gradient {i} has shape {_tensors.shape_str(shape)} but its variable "
                f"{_label(var)!r} has shape {tuple(var.shape)}; nothing was updated"
            )


class StepGuard:
    """Mixin for fusedopt optimizers: argument checks and ``skip_nonfinite``."""

    def __init__(self, *args, skip_nonfinite=False, **kwargs):
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(
                f"skip_nonfinite must be True or False; got {type(skip_nonfinite).__name__} "
                f"{skip_nonfinite!r}"
            )
        super().__init__(*args, **kwargs)
        self._skip_nonfinite = skip_nonfinite

    @property
    def skip_nonfinite(self) -> bool:
        """Whether a step whose gradients hold an Inf or NaN is skipped whole."""
        return self._skip_nonfinite

    def get_config(self):
        config = super().get_config()
        # Only when set, so that default configs stay those of the stock class.
        if self._skip_nonfinite:
            config["skip_nonfinite"] = True
        return config

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            check_apply_arguments(grads, trainable_variables, self._var_key)
        elif self.built:
            check_apply_arguments(grads, self._trainable_variables, self._var_key)
        if not self._skip_nonfinite or not grads:
            return super().apply(grads, trainable_variables)

        # Variables cannot be created inside a cond branch: build first, as
        # the stock apply would.
        if not self.built:
            if trainable_variables is None:
                return super().apply(grads, trainable_variables)  # raises Keras' error
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True

        executor = _executor()
        if executor is None:
            raise NotImplementedError(
                f"skip_nonfinite=True is not available on the Keras "
                f"{keras.backend.backend()!r} backend yet (fusedopt has no executor there)")
        if executor.executing_eagerly():
            if bool(executor.all_finite(grads)):
                super().apply(grads, trainable_variables)
            return None
        if self._gated_by_inputs(trainable_variables):
            # The plan gates the step: the fused ops take the check as their
            # apply_if input (fusedopt.core.plan.step_gate).
            return super().apply(grads, trainable_variables)
        stock_apply = super().apply
        if keras.backend.backend() != "tensorflow":
            # A stateless step (JAX): both outcomes are values, one is kept.
            return executor.apply_if_finite(self, stock_apply, grads, trainable_variables)
        import tensorflow as tf

        all_finite = executor.all_finite
        if (tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()
                and not tf.__internal__.distribute.strategy_supports_no_merge_call()):
            tf.distribute.get_replica_context().merge_call(
                self._apply_if_finite_everywhere, args=(grads, trainable_variables))
            return None
        tf.cond(all_finite(grads), lambda: stock_apply(grads, trainable_variables), lambda: None)
        return None

    def _apply_if_finite_everywhere(self, distribution, grads, trainable_variables):
        # Cross-replica context: before the all-reduce each replica holds its
        # own gradients; the step runs only if all of them are finite.
        # (ReduceOp has SUM and MEAN only: count the replicas with a bad value.)
        import tensorflow as tf

        all_finite = _executor().all_finite
        per_replica = distribution.extended.call_for_each_replica(
            lambda g: tf.cast(tf.logical_not(all_finite(g)), tf.int32), args=(grads,))
        finite = distribution.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None) == 0
        stock_apply = super().apply

        def run():
            distribution.extended.call_for_each_replica(
                stock_apply, args=(grads, trainable_variables))

        tf.cond(finite, run, lambda: None)

    def _gated_by_inputs(self, trainable_variables) -> bool:
        """Whether every write of the step, other than the fused ops and the
        iteration count, is absent (see the module docstring), so that the
        step plan can gate it through the ops' apply_if input."""
        if not self._skip_nonfinite or self.use_ema or self.gradient_accumulation_steps:
            return False
        # A user's transformer may write state of its own; the built-ins do not.
        if not all(getattr(t, "foldable", False) for t in self.gradient_transformers):
            return False
        variables = (self._trainable_variables if trainable_variables is None
                     else trainable_variables)
        return not any(getattr(v, "constraint", None) is not None
                       or getattr(v, "overwrite_with_gradient", False) for v in variables)

"""The fused update path shared by every fusedopt optimizer.

A fusedopt optimizer is the stock Keras optimizer whose update goes through
a step plan (docs/design.md, "Plan, then execute"). Keras' ``apply`` runs as
usual (empty-gradient filtering, loss-scale unscaling, constraints, the
iteration counter); ``_backend_apply_gradients``, which Keras calls in
between, is Keras' own flow (gradient accumulation, EMA) with its update
(clip, weight decay, ``_backend_update_step``) replaced by
``_planned_update``:

1. decide the clip the kernels apply (``fusedopt.core.plan.fold_clip``) and
   how a non-finite step is skipped (``step_gate``);
2. run what stays outside the kernels: Keras' own ``_clip_gradients`` unless
   its clip is the folded one, and the gradient transformers but the folded
   one;
3. hand the pairs to the backend's executor, which plans the step (groups by
   dtype, device and weight decay; the pairs that fall back, and why) and
   runs it.

Everything is passed as arguments; the only state the step leaves behind is
the last plan, for ``fused_paths``. Keras' own methods (``_clip_gradients``,
``_apply_weight_decay``, ``update_step``, ...) are untouched and do what
they do in Keras when called.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from fusedopt import transformers as tr
from fusedopt.core import plan as plan_mod
from fusedopt.optimizers.arguments import ArgumentStructure
from fusedopt.optimizers.step_guard import StepGuard

FUSED = plan_mod.FUSED


def _executor():
    """The executor of the Keras backend in use, or None where fusedopt has
    none yet (the optimizers then run the stock update, with a warning)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from fusedopt.backends.tensorflow import executor

        return executor
    if backend == "torch":
        from fusedopt.backends.torch import executor

        return executor
    if backend == "jax":
        from fusedopt.backends.jax import executor

        return executor
    return None


_warned_backends = set()


def _warn_stock(backend):
    if backend not in _warned_backends:
        _warned_backends.add(backend)
        warnings.warn(
            f"fusedopt has no fused update for the Keras {backend!r} backend yet: fusedopt "
            "optimizers run the stock Keras update there (same results, not fused)",
            stacklevel=4)


class Optimizer(StepGuard, ArgumentStructure, keras.optimizers.Optimizer):
    """Base class of the fusedopt optimizers.

    The argument structure (hyperparameters, gradient transformers, state) is
    in `ArgumentStructure`, the apply-level checks and ``skip_nonfinite`` in
    `StepGuard`; this class plans the update. Subclasses list it before the
    stock class they extend (``class Adam(Optimizer, keras.optimizers.Adam)``)
    and define the rule's part: ``_fused_rule`` (the kernel), ``_fused_slots``
    and ``_fused_scalars``, and ``_fused_unsupported_reason``.
    """

    _fused_rule: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_plan = None

    # ---------------------------------------------------------- the rule

    def _fused_unsupported_reason(self) -> str | None:
        """Why no variable can take the fused path with this configuration."""
        return None

    def _fused_slots(self) -> tuple:
        """The Keras slot lists the kernel updates, in the kernel's order."""
        raise NotImplementedError

    def _fused_scalars(self, learning_rate, dtype) -> dict:
        """The rule's per-step scalars for variables of `dtype`, computed
        with the same ops as the stock update_step (numbers or tensors)."""
        raise NotImplementedError

    # ---------------------------------------------------------- inspection

    @property
    def fused_paths(self) -> dict:
        """Per variable path: "fused", or "fallback: <reason>" for the stock code.

        Recorded while the last update step was planned (traced or eager).
        """
        return {} if self._last_plan is None else self._last_plan.fused_paths

    # ------------------------------------------------------ Keras' flow

    def _backend_apply_gradients(self, grads, trainable_variables):
        # Keras' BaseOptimizer._backend_apply_gradients (Keras 3.15) with the
        # update (clip, weight decay, update step) replaced by the planned
        # update. Gradient accumulation and EMA are Keras' code, unchanged.
        executor = _executor()
        if executor is None:
            _warn_stock(keras.backend.backend())
            return super()._backend_apply_gradients(grads, trainable_variables)
        if hasattr(executor, "backend_apply_gradients"):
            # The backend's own flow (JAX: Keras' JaxOptimizer, stateless).
            return executor.backend_apply_gradients(self, grads, trainable_variables)
        if self.gradient_accumulation_steps:
            is_update_step = (self._iterations + 1) % self.gradient_accumulation_steps == 0
            # `trainable_variables` might have been filtered in previous
            # processing steps: map them to their accumulators.
            acc_grads = [self._accumulated_gradients[self._get_variable_index(v)]
                         for v in trainable_variables]

            def _update_step_fn(grads, trainable_variables):
                steps = self.gradient_accumulation_steps
                grads = [(g + acc_g) / steps for g, acc_g in zip(grads, acc_grads)]
                self._planned_update(executor, grads, trainable_variables)
                self._backend_reset_gradient_accumulators()

            ops.cond(
                is_update_step,
                lambda: _update_step_fn(grads, trainable_variables),
                lambda: self._backend_increment_gradient_accumulators(grads, acc_grads),
            )
        else:
            applied = self._planned_update(executor, grads, trainable_variables)
            if applied is not None:
                # Keras counts every step after this returns; a skipped one
                # is taken back here.
                self._iterations.assign_sub(
                    ops.cast(ops.logical_not(applied), self._iterations.dtype))

        if self.use_ema:
            self._update_model_variables_moving_average(self._trainable_variables)
            if self.ema_overwrite_frequency:
                should_overwrite_model_vars = (
                    self.iterations + 1) % self.ema_overwrite_frequency == 0
                ops.cond(
                    should_overwrite_model_vars,
                    lambda: self._overwrite_model_variables_with_average_value(
                        self._trainable_variables),
                    lambda: None,
                )

    def _planned_update(self, executor, grads, variables):
        """Clip, transformers, weight decay and update of one step (see the
        module docstring). Returns the skip predicate (a bool tensor: the
        step was applied) where the plan gates the step, else None."""
        transformers = self.gradient_transformers
        clip = plan_mod.fold_clip(tr.from_keras_arguments(self), transformers,
                                  can_fold=executor.can_fold_clip(self))
        gate = plan_mod.step_gate(
            skip_nonfinite=self.skip_nonfinite,
            gated_by_inputs=self._gated_by_inputs(variables) and not executor.executing_eagerly(),
            clip=clip,
            clip_sees_apply_grads=clip is not None and self._clip_sees_apply_grads(clip))
        check_grads = grads
        if clip is None or clip.source != "keras":
            grads = self._clip_gradients(grads)  # Keras' own clip arguments
        if clip is not None and clip.source == "transformer":
            transformers = transformers[:-1]
        if transformers:
            grads = self._apply_transformers(transformers, grads, variables)
        return executor.apply_plan(self, clip, gate, grads, variables, self.learning_rate,
                                   check_grads)

    def _clip_sees_apply_grads(self, clip) -> bool:
        """Whether the folded `clip` gets apply()'s gradients as they were
        passed (no loss-scale division, no transformer before it), so that
        its norm is finite exactly where they all are (or overflows)."""
        return (self.loss_scale_factor is None
                and (clip.source == "keras" or tr.from_keras_arguments(self) is None)
                and all(t is clip.transformer for t in self.gradient_transformers))

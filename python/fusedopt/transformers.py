"""Gradient transformers: callables on lists of (grad, var) pairs.

An optimizer's ``gradient_transformers=[f, g, ...]`` are applied in order to
the ``(gradient, variable)`` pairs of each step, after loss-scale unscaling,
gradient accumulation and Keras' own ``clipvalue``/``clipnorm``/
``global_clipnorm``, and before the weight decay and the update. Any callable
that takes and returns such a list works; the optimizer checks each result
(same pairs, same variables in the same order, gradients of the right shapes
and dtypes) and names the transformer when it is wrong.

The built-ins below are such callables too (usable on their own), and they are
also understood by the fused optimizers: a built-in at the end of the chain is
folded into the fused update kernel instead of running as separate TF ops.
Their thresholds accept a number, a 0-d tensor or variable, a
LearningRateSchedule (called with ``step``, which fusedopt optimizers pass as
their iteration count) or a zero-argument callable, read at every call.
"""

from __future__ import annotations

import keras
from keras import ops
import tensorflow as tf

from fusedopt import hyperparameters as hp

__all__ = ["BuiltinTransformer", "ClipByGlobalNorm", "ClipByNorm", "ClipByValue", "clip_by_global_norm",
           "clip_by_norm", "clip_by_value"]


def _checked(name, value, valid):
    return hp.check(name, value, valid)


def threshold(transformer, name, step):
    """Threshold `name` of `transformer` for this call; a schedule is called
    with `step` (the optimizer passes its iteration count)."""
    value = getattr(transformer, name)
    if isinstance(value, hp.Schedule) and step is None:
        raise TypeError(
            f"{transformer!r}: {name} is a LearningRateSchedule, which needs the step: "
            "call the transformer with step=... (fusedopt optimizers pass their "
            "iteration count)"
        )
    return hp.evaluate(value, step)


def _map_grads(fn, grads_and_vars):
    """Applies fn to every non-None gradient (IndexedSlices: to its values)."""
    out = []
    for grad, var in grads_and_vars:
        if isinstance(grad, tf.IndexedSlices):
            grad = tf.IndexedSlices(fn(grad.values), grad.indices, grad.dense_shape)
        elif grad is not None:
            grad = fn(grad)
        out.append((grad, var))
    return out


class BuiltinTransformer:
    """Shared plumbing: config round trip and a readable repr."""

    kind: str

    def _config_values(self) -> dict:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {k: hp.serialize(k, v) for k, v in self._config_values().items()}

    @classmethod
    def from_config(cls, config):
        return cls(**{k: hp.deserialize(v) for k, v in config.items()})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config_values().items())
        return f"{type(self).__name__}({args})"

    @property
    def __name__(self) -> str:  # errors name transformers by __name__
        return repr(self)


@keras.saving.register_keras_serializable(package="fusedopt")
class ClipByValue(BuiltinTransformer):
    """g <- clip(g, min_value, max_value), elementwise (Keras `clipvalue=v` is
    ClipByValue(-v, v))."""

    kind = "value"

    def __init__(self, min_value, max_value):
        self.min_value = _checked("min_value", min_value, hp.Range(-float("inf")))
        self.max_value = _checked("max_value", max_value, hp.Range(-float("inf")))
        if hp.is_number(self.min_value) and hp.is_number(self.max_value):
            if self.min_value > self.max_value:
                raise ValueError(
                    f"min_value must be <= max_value; got {self.min_value} > {self.max_value}"
                )

    def _config_values(self):
        return {"min_value": self.min_value, "max_value": self.max_value}

    def __call__(self, grads_and_vars, step=None):
        lo = threshold(self, "min_value", step)
        hi = threshold(self, "max_value", step)
        return _map_grads(lambda g: ops.clip(g, lo, hi), grads_and_vars)


@keras.saving.register_keras_serializable(package="fusedopt")
class ClipByNorm(BuiltinTransformer):
    """Per tensor: g <- g * max_norm / max(||g||_2, max_norm) (`tf.clip_by_norm`,
    what Keras `clipnorm=` does)."""

    kind = "norm"

    def __init__(self, max_norm):
        self.max_norm = _checked("max_norm", max_norm, hp.POSITIVE)

    def _config_values(self):
        return {"max_norm": self.max_norm}

    def __call__(self, grads_and_vars, step=None):
        max_norm = threshold(self, "max_norm", step)
        return _map_grads(lambda g: tf.clip_by_norm(g, tf.cast(max_norm, g.dtype)),
                          grads_and_vars)


@keras.saving.register_keras_serializable(package="fusedopt")
class ClipByGlobalNorm(BuiltinTransformer):
    """All tensors: g <- g * max_norm / max(global_norm, max_norm), with
    global_norm = sqrt(sum of every ||g||^2); a non-finite global norm makes
    every gradient NaN (what Keras `global_clipnorm=` does)."""

    kind = "global_norm"

    def __init__(self, max_norm):
        self.max_norm = _checked("max_norm", max_norm, hp.POSITIVE)

    def _config_values(self):
        return {"max_norm": self.max_norm}

    def __call__(self, grads_and_vars, step=None):
        grads_and_vars = list(grads_and_vars)
        values = [g.values if isinstance(g, tf.IndexedSlices) else g
                  for g, _ in grads_and_vars if g is not None]
        if not values:
            return grads_and_vars
        scale = global_norm_scale(values, threshold(self, "max_norm", step))
        return _map_grads(lambda g: g * ops.cast(scale, g.dtype), grads_and_vars)


def global_norm_scale(values, max_norm):
    """Keras' clip_by_global_norm factor, written the same way."""
    use_norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(v)) for v in values])))
    scale_for_finite = max_norm * ops.minimum(1.0 / use_norm, 1.0 / max_norm)
    return scale_for_finite + (use_norm - use_norm)


def clip_by_value(min_value, max_value) -> ClipByValue:
    """A transformer clipping every gradient element to [min_value, max_value]."""
    return ClipByValue(min_value, max_value)


def clip_by_norm(max_norm) -> ClipByNorm:
    """A transformer scaling each gradient tensor to an L2 norm <= max_norm."""
    return ClipByNorm(max_norm)


def clip_by_global_norm(max_norm) -> ClipByGlobalNorm:
    """A transformer scaling all gradients so their global L2 norm <= max_norm."""
    return ClipByGlobalNorm(max_norm)

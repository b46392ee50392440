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

import types
from typing import NamedTuple

import keras
from keras import ops
from keras.src.optimizers import base_optimizer

from fusedopt import hyperparameters as hp

__all__ = ["BuiltinTransformer", "ClipByGlobalNorm", "ClipByNorm", "ClipByValue", "KernelClip",
           "clip_by_global_norm", "clip_by_norm", "clip_by_value"]


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
        if _is_sparse(grad):
            grad = type(grad)(fn(grad.values), grad.indices, grad.dense_shape)
        elif grad is not None:
            grad = fn(grad)
        out.append((grad, var))
    return out


def _is_sparse(grad) -> bool:
    """An IndexedSlices gradient (TF's sparse gradients of embeddings)."""
    return hasattr(grad, "indices") and hasattr(grad, "values")


class KernelClip(NamedTuple):
    """A clip as the fused kernels take it (see csrc/kernels/clip.h): kind
    "value" with args (lo, hi), or "norm" / "global_norm" with (max_norm,);
    the values are this step's (numbers or 0-d tensors)."""

    kind: str
    args: tuple


class BuiltinTransformer:
    """Shared plumbing: config round trip, a readable repr, and folding.

    A built-in clip can be folded into the fused update (``foldable``): the
    optimizer asks it for ``kernel_clip(step)`` instead of calling it, and
    the kernels apply the clip inside their pass over the gradients. Called,
    it runs Keras' own clipping code with its threshold, exactly what the
    stock optimizer runs for the equivalent clip argument.
    """

    kind: str
    foldable = True

    def _config_values(self) -> dict:
        raise NotImplementedError

    def kernel_clip(self, step) -> KernelClip:
        """This clip for the fused kernels, with this step's thresholds."""
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

    def kernel_clip(self, step):
        return KernelClip("value", (threshold(self, "min_value", step),
                                    threshold(self, "max_value", step)))

    def __call__(self, grads_and_vars, step=None):
        lo, hi = self.kernel_clip(step).args
        return _map_grads(lambda g: ops.clip(g, lo, hi), grads_and_vars)


@keras.saving.register_keras_serializable(package="fusedopt")
class ClipByNorm(BuiltinTransformer):
    """Per tensor: g <- g * max_norm / max(||g||_2, max_norm) (`tf.clip_by_norm`,
    what Keras `clipnorm=` does)."""

    kind = "norm"

    def __init__(self, max_norm):
        self.max_norm = _checked("max_norm", max_norm, hp.RANGES["max_norm"])

    def _config_values(self):
        return {"max_norm": self.max_norm}

    def kernel_clip(self, step):
        return KernelClip("norm", (threshold(self, "max_norm", step),))

    def __call__(self, grads_and_vars, step=None):
        (max_norm,) = self.kernel_clip(step).args
        # The stock optimizer's own clip-by-norm (TF: tf.clip_by_norm), with
        # this threshold as its clipnorm.
        clip = keras.optimizers.Optimizer._clip_by_norm
        out = []
        for grad, var in grads_and_vars:
            if grad is not None:
                stock = types.SimpleNamespace(clipnorm=_in_dtype_of(max_norm, grad))
                grad = clip(stock, grad)
            out.append((grad, var))
        return out


@keras.saving.register_keras_serializable(package="fusedopt")
class ClipByGlobalNorm(BuiltinTransformer):
    """All tensors: g <- g * max_norm / max(global_norm, max_norm), with
    global_norm = sqrt(sum of every ||g||^2); a non-finite global norm makes
    every gradient NaN (what Keras `global_clipnorm=` does)."""

    kind = "global_norm"

    def __init__(self, max_norm):
        self.max_norm = _checked("max_norm", max_norm, hp.RANGES["max_norm"])

    def _config_values(self):
        return {"max_norm": self.max_norm}

    def kernel_clip(self, step):
        return KernelClip("global_norm", (threshold(self, "max_norm", step),))

    def __call__(self, grads_and_vars, step=None):
        grads_and_vars = list(grads_and_vars)
        present = [i for i, (g, _) in enumerate(grads_and_vars) if g is not None]
        if not present:
            return grads_and_vars
        (max_norm,) = self.kernel_clip(step).args
        # Keras' clip_by_global_norm (what global_clipnorm= runs), over the
        # gradients' values (IndexedSlices: their slices).
        values = [_values(grads_and_vars[i][0]) for i in present]
        clipped = dict(zip(present, base_optimizer.clip_by_global_norm(
            values, _in_dtype_of(max_norm, values[0]))))
        out = []
        for i, (grad, var) in enumerate(grads_and_vars):
            if i in clipped:
                grad = (type(grad)(clipped[i], grad.indices, grad.dense_shape)
                        if _is_sparse(grad) else clipped[i])
            out.append((grad, var))
        return out


def _values(grad):
    return grad.values if _is_sparse(grad) else grad


def _in_dtype_of(threshold_value, grad):
    """A threshold as the stock clip code takes it: numbers as they are (as
    Keras' clipnorm), tensors and variables cast to the gradient's dtype."""
    if hp.is_number(threshold_value):
        return threshold_value
    return ops.cast(threshold_value, _values(grad).dtype)


def clip_by_value(min_value, max_value) -> ClipByValue:
    """A transformer clipping every gradient element to [min_value, max_value]."""
    return ClipByValue(min_value, max_value)


def clip_by_norm(max_norm) -> ClipByNorm:
    """A transformer scaling each gradient tensor to an L2 norm <= max_norm."""
    return ClipByNorm(max_norm)


def clip_by_global_norm(max_norm) -> ClipByGlobalNorm:
    """A transformer scaling all gradients so their global L2 norm <= max_norm."""
    return ClipByGlobalNorm(max_norm)


def from_keras_arguments(optimizer) -> BuiltinTransformer | None:
    """The optimizer's clipnorm / global_clipnorm / clipvalue as the
    equivalent built-in (Keras applies the first one set, in that order)."""
    if optimizer.clipnorm:
        return ClipByNorm(optimizer.clipnorm)
    if optimizer.global_clipnorm:
        return ClipByGlobalNorm(optimizer.global_clipnorm)
    if optimizer.clipvalue:
        return ClipByValue(-optimizer.clipvalue, optimizer.clipvalue)
    return None

"""Folding a clip transformer into the fused update.

A built-in clip (fusedopt.transformers, or Keras' clipvalue / clipnorm /
global_clipnorm, which are the same transformations) is not run as TF ops on
the fused path. Instead:

- clip by value passes [lo, hi] to the update op;
- clip by norm and by global norm first compute every gradient's squared norm
  in one fused reduction per group (FusedoptSquaredNorms, deterministic), turn
  them into clip factors with the same TF ops tf.clip_by_norm / Keras'
  clip_by_global_norm use, and pass those to the update op,

which applies them to each gradient element inside its own pass. Gradients of
variables that fall back to the stock update (sparse, other dtypes) are clipped
with the transformer's own TF ops, with the global norm taken over all of them.
"""

from __future__ import annotations

import tensorflow as tf

from fusedopt import hyperparameters as hp
from fusedopt import transformers as tr

NO_CLIP = ("none", None)


def clip_args(clip, dtype):
    """The op's clip_args input for (kind, args); empty for no clipping."""
    return tf.zeros([0], dtype) if clip[1] is None else clip[1]


def keras_clip(optimizer):
    """Keras' own clip argument as the equivalent built-in, or None."""
    if optimizer.clipnorm:
        return tr.ClipByNorm(optimizer.clipnorm)
    if optimizer.global_clipnorm:
        return tr.ClipByGlobalNorm(optimizer.global_clipnorm)
    if optimizer.clipvalue:
        return tr.ClipByValue(-optimizer.clipvalue, optimizer.clipvalue)
    return None


def is_foldable(transformer) -> bool:
    return isinstance(transformer, tr.BuiltinTransformer)


def _grad_values(grad):
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def fold(lib, clip, groups, fallback, step):
    """Clip arguments per fused group, and the clipped fallback pairs.

    groups: {key: [(grad, var), ...]} of the fused path (dense, one dtype each).
    step: the optimizer's iteration count, for thresholds given as schedules.
    Returns ({key: (kind, clip_args)}, fallback pairs with clipped grads,
    the global norm for clip by global norm, else None).
    """
    if isinstance(clip, tr.ClipByValue):
        lo = tr.threshold(clip, "min_value", step)
        hi = tr.threshold(clip, "max_value", step)
        args = {key: ("value", tf.stack([_cast(lo, _dtype(pairs)), _cast(hi, _dtype(pairs))]))
                for key, pairs in groups.items()}
        return args, clip(fallback, step=step) if fallback else fallback, None

    squared = {key: lib.fusedopt_squared_norms([g for g, _ in pairs])
               for key, pairs in groups.items()}
    max_norm = tr.threshold(clip, "max_norm", step)

    if isinstance(clip, tr.ClipByNorm):
        args = {}
        for key, pairs in groups.items():
            dtype = _dtype(pairs)
            c = _cast(max_norm, dtype)
            # tf.clip_by_norm: the norm of an all-zero tensor is 0, and the
            # gradient is scaled by c / max(norm, c).
            l2sum = squared[key]
            positive = l2sum > 0
            l2norm = tf.where(positive, tf.sqrt(tf.where(positive, l2sum, tf.ones_like(l2sum))),
                              l2sum)
            args[key] = ("ratio", tf.concat([tf.reshape(c, [1]), tf.maximum(l2norm, c)], 0))
        return args, clip(fallback, step=step) if fallback else fallback, None

    # Global norm over every gradient, fused groups and fallback alike, with
    # Keras' formula: a non-finite norm makes the scale (and so every
    # gradient) NaN.
    dtype = _dtype(next(iter(groups.values()))) if groups else _grad_values(fallback[0][0]).dtype
    sums = [tf.cast(s, dtype) for s in squared.values()]
    sums += [tf.reshape(tf.cast(tf.reduce_sum(tf.square(_grad_values(g))), dtype), [1])
             for g, _ in fallback]
    use_norm = tf.sqrt(tf.reduce_sum(tf.concat(sums, 0)))
    max_norm = _cast(max_norm, dtype)
    scale = max_norm * tf.minimum(1.0 / use_norm, 1.0 / max_norm) + (use_norm - use_norm)
    args = {key: ("scale", tf.reshape(tf.cast(scale, _dtype(pairs)), [1]))
            for key, pairs in groups.items()}
    clipped = [(_scale(g, scale), v) for g, v in fallback]
    return args, clipped, use_norm


def _dtype(pairs):
    return pairs[0][1].dtype


def _cast(value, dtype):
    if hp.is_number(value):
        return tf.constant(value, dtype)
    if isinstance(value, hp.keras.Variable):
        value = value.value
    return tf.cast(value, dtype)


def _scale(grad, scale):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * tf.cast(scale, grad.dtype), grad.indices,
                                grad.dense_shape)
    return grad * tf.cast(scale, grad.dtype)

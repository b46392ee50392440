"""Checks on tensors, variables, dtypes and shapes that hold on every Keras backend.

The argument checks of the optimizers (`arguments`, `step_guard`,
`fusedopt.hyperparameters`) were written with TensorFlow's predicates
(`tf.is_tensor`, `tf.as_dtype(...).is_floating`, `tf.TensorShape`). These are
the same predicates without importing TensorFlow: on the TensorFlow backend
they give TF's answers (TensorFlow is imported by Keras there), on the others
Keras' (`keras.ops.is_tensor`, standardized dtype names), so that
`import fusedopt` and the optimizers work where TensorFlow is not installed.
"""

from __future__ import annotations

import sys

import keras
import numpy as np


def _tf():
    """TensorFlow on Keras' TensorFlow backend (which has imported it), else
    None: never imported from here. On the other backends TF values are not
    hyperparameters or gradients of theirs, and a TF call there would break a
    torch.compile graph even where some other code has imported TF."""
    if keras.backend.backend() != "tensorflow":
        return None
    tf = sys.modules.get("tensorflow")
    return tf if tf is not None and hasattr(tf, "is_tensor") else None


def is_tensor(value) -> bool:
    """A tensor of the backend in use (or a TF tensor, where TF is loaded)."""
    tf = _tf()
    if tf is not None and tf.is_tensor(value):
        return True
    return bool(keras.ops.is_tensor(value))


def is_variable(value) -> bool:
    """A keras.Variable (or a tf.Variable, where TF is loaded)."""
    if isinstance(value, keras.Variable):
        return True
    tf = _tf()
    return tf is not None and isinstance(value, tf.Variable)


def is_sparse(value) -> bool:
    """A tf.IndexedSlices (the sparse gradients of TF embeddings)."""
    tf = _tf()
    return tf is not None and isinstance(value, tf.IndexedSlices)


def dtype_name(dtype) -> str:
    """A dtype's standard name ("float32", "bfloat16", "int64", ...)."""
    return keras.backend.standardize_dtype(dtype)


def is_floating(name: str) -> bool:
    return name.startswith(("float", "bfloat"))


def is_complex(name: str) -> bool:
    return name.startswith("complex")


def is_integer(name: str) -> bool:
    return name.startswith(("int", "uint"))


def gradient_shape(grad):
    """The (dense) shape of a gradient as a tuple (None for a dimension the
    trace does not know), or None where not even the rank is known."""
    if is_sparse(grad):
        tf = _tf()
        static = None if grad.dense_shape is None else tf.get_static_value(grad.dense_shape)
        return None if static is None else tuple(int(d) for d in static)
    shape = grad.shape
    if getattr(shape, "rank", 0) is None:  # a tf.TensorShape of unknown rank
        return None
    as_list = getattr(shape, "as_list", None)
    return tuple(as_list()) if as_list is not None else tuple(shape)


def shape_str(shape) -> str:
    """A shape as TF prints its TensorShape: "(3, None)", "<unknown>"."""
    return "<unknown>" if shape is None else str(tuple(shape))


def shapes_compatible(shape, other) -> bool:
    """TF's TensorShape.is_compatible_with on tuples (None: unknown)."""
    if shape is None or other is None:
        return True
    if len(shape) != len(other):
        return False
    return all(a is None or b is None or a == b for a, b in zip(shape, other))


def current_value(value):
    """The number a 0-d tensor or variable holds now, or None where it holds
    none yet (a symbolic TF tensor in a graph, a traced JAX value)."""
    tf = _tf()
    if tf is not None and keras.backend.backend() == "tensorflow":
        if not tf.executing_eagerly():
            return None
        return float(value.numpy() if hasattr(value, "numpy") else value)
    try:
        return float(np.asarray(value))
    except Exception:  # noqa: BLE001 - a tracer (JAX raises its own error types)
        return None

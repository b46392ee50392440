"""Hyperparameters: the values an optimizer reads afresh at every step.

Every fusedopt hyperparameter (learning_rate, beta_1, beta_2, epsilon,
weight_decay, momentum, the transformers' clip thresholds) accepts:

- a Python number,
- a 0-d tensor or variable (`tf.Variable`, `keras.Variable`): read at every
  step, so assigning to the variable changes the next step, in graph mode too,
- a `keras.optimizers.schedules.LearningRateSchedule`, called with the
  optimizer's iteration count,
- a zero-argument callable, called at every step,
- a NumPy scalar or 0-d array: converted to a Python float at construction
  (so that it saves like the number it is).

`check` validates a value at construction (TypeError for a wrong kind,
ValueError for an out-of-range number) with a message naming the argument and
the accepted forms; `evaluate` turns it into a number or tensor for one step;
`serialize` / `deserialize` carry it through `get_config`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass


import keras
import numpy as np

from fusedopt import _C, _tensors

Schedule = keras.optimizers.schedules.LearningRateSchedule

FORMS = (
    "a number, a 0-d tensor or variable, a "
    "keras.optimizers.schedules.LearningRateSchedule, or a zero-argument callable"
)


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval, for messages and checks."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        high = "inf)" if math.isinf(self.high) else f"{self.high}{')' if self.high_open else ']'}"
        return f"{'(' if self.low_open else '['}{self.low}, {high}"


def _range(key: str) -> Range:
    """The range of hyperparameter `key` in the one table of them, which the
    kernels' own checks use too (csrc/python/arrays.cpp)."""
    low, low_open, high, high_open = _C.HYPERPARAMETER_RANGES[key]
    return Range(low, high, low_open, high_open)


# name -> Range of every hyperparameter the optimizers and transformers check.
RANGES = {
    "learning_rate": _range("lr"),
    "beta_1": _range("beta_1"),
    "beta_2": _range("beta_2"),
    "epsilon": _range("epsilon"),
    "weight_decay": _range("weight_decay"),
    "momentum": _range("momentum"),
    "max_norm": _range("clip_threshold"),
}


def is_variable(value) -> bool:
    return _tensors.is_variable(value)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_dynamic(value) -> bool:
    """Whether a (checked) hyperparameter can change while training runs: a
    variable, tensor, schedule or callable, as opposed to a number."""
    return value is not None and not is_number(value)


def _as_float(name: str, value: numbers.Real) -> float:
    try:
        return float(value)
    except OverflowError:  # a Python int beyond float range
        raise ValueError(
            f"{name} must be a number within float range; got an integer of "
            f"{len(str(abs(int(value))))} digits"
        ) from None


def check(name: str, value, valid: Range, allow_none: bool = False):
    """Validates one hyperparameter; returns it (numbers, NumPy scalars and 0-d
    arrays as Python floats)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be {FORMS}; got None")
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"{name} must be {FORMS}; got {type(value).__name__} {value!r}")
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf":
        # A 0-d array is a number: kept as an array it would train, then fail
        # to save (config entries must be numbers).
        value = value.item()
    if is_number(value):
        x = _as_float(name, value)
        _check_value(name, x, valid)
        return x
    if is_variable(value) or _tensors.is_tensor(value) or isinstance(value, np.ndarray):
        shape = tuple(value.shape)
        if shape != ():
            raise TypeError(f"{name} must be a scalar (0-d) tensor or variable; got shape {shape}")
        dtype = _tensors.dtype_name(value.dtype)
        if not (_tensors.is_floating(dtype) or _tensors.is_integer(dtype)):
            raise TypeError(f"{name} must have a real dtype; got {dtype}")
        if is_variable(value) and name != "learning_rate" and keras.backend.backend() == "jax":
            # Keras-JAX traces the step once: a variable outside the optimizer's
            # state would be read as a constant of the compiled step and never
            # again (the learning rate's variable is optimizer state).
            raise TypeError(
                f"{name}: on the JAX backend a hyperparameter cannot be a variable (the "
                "jitted step would read its value once, when traced, and ignore later "
                "assignments); pass a number or a LearningRateSchedule (learning_rate may be "
                "a keras.Variable)")
        current = _tensors.current_value(value)
        if current is not None:
            _check_value(name, current, valid)
        return value
    if isinstance(value, Schedule):
        return value
    if callable(value):
        try:
            inspect.signature(value).bind()
        except TypeError:
            raise TypeError(
                f"{name}: a callable hyperparameter must take no arguments "
                f"(use a LearningRateSchedule for a function of the step); got {value!r}"
            ) from None
        except ValueError:  # builtins without a signature: accept
            pass
        return value
    raise TypeError(f"{name} must be {FORMS}; got {type(value).__name__}")


def _check_value(name: str, x: float, valid: Range) -> None:
    if math.isnan(x) or x not in valid:
        raise ValueError(f"{name} must be in {valid}; got {x}")


def evaluate(value, iterations):
    """The value for one step: a number, or a tensor (read at run time)."""
    if isinstance(value, Schedule):
        return value(iterations)
    # Numbers first: no TF call on the common path (under torch.compile a
    # TF function is a graph break).
    if is_number(value) or value is None or is_variable(value) or _tensors.is_tensor(value):
        return value
    if callable(value):
        return value()
    return value


def serialize(name: str, value):
    """A config entry for `value`: numbers stay numbers, variables and tensors
    become their current value (as Keras does for learning_rate), schedules
    and registered callables serialize; other callables cannot be saved."""
    if value is None or is_number(value):
        return value
    if is_variable(value) or _tensors.is_tensor(value):
        if keras.backend.backend() == "tensorflow":
            return float(np.asarray(value))
        return float(keras.ops.convert_to_numpy(value))
    if isinstance(value, Schedule):
        return keras.optimizers.schedules.serialize(value)
    if callable(value):
        if not is_registered(value):
            raise TypeError(
                f"Cannot serialize {name}={value!r}: a callable hyperparameter must be "
                "registered with @keras.saving.register_keras_serializable() to be "
                "saved in a config or a .keras file"
            )
        return keras.saving.serialize_keras_object(value)
    raise TypeError(f"Cannot serialize {name}={value!r}")


def is_registered(obj) -> bool:
    """Whether `obj` (a function, or an object of a class) is registered with
    @keras.saving.register_keras_serializable(), so that it can be saved."""
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
    name = keras.saving.get_registered_name(target)
    return keras.saving.get_registered_object(name) is target


def deserialize(value):
    """Inverse of `serialize` for config entries."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value

"""Hyperparameters: the values an optimizer reads afresh at every step.

Every fusedopt hyperparameter (learning_rate, beta_1, beta_2, epsilon,
weight_decay, momentum, the transformers' clip thresholds) accepts:

- a Python number,
- a 0-d tensor or variable (`tf.Variable`, `keras.Variable`): read at every
  step, so assigning to the variable changes the next step, in graph mode too,
- a `keras.optimizers.schedules.LearningRateSchedule`, called with the
  optimizer's iteration count,
- a zero-argument callable, called at every step.

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
import tensorflow as tf

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


NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)
UNIT_OPEN = Range(0.0, 1.0)  # [0, 1)
UNIT_CLOSED = Range(0.0, 1.0, high_open=False)  # [0, 1]


def is_variable(value) -> bool:
    return isinstance(value, (tf.Variable, keras.Variable))


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check(name: str, value, valid: Range, allow_none: bool = False):
    """Validates one hyperparameter; returns it (ints become floats)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be {FORMS}; got None")
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be {FORMS}; got {type(value).__name__} {value!r}")
    if is_number(value):
        _check_value(name, float(value), valid)
        return float(value)
    if is_variable(value) or tf.is_tensor(value) or isinstance(value, np.ndarray):
        shape = tuple(value.shape)
        if shape != ():
            raise TypeError(f"{name} must be a scalar (0-d) tensor or variable; got shape {shape}")
        dtype = tf.as_dtype(value.dtype)
        if not (dtype.is_floating or dtype.is_integer):
            raise TypeError(f"{name} must have a real dtype; got {dtype.name}")
        if tf.executing_eagerly():
            current = value.numpy() if hasattr(value, "numpy") else value
            _check_value(name, float(current), valid)
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
    if is_number(value) or value is None or is_variable(value) or tf.is_tensor(value):
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
    if is_variable(value) or tf.is_tensor(value):
        return float(np.asarray(value))
    if isinstance(value, Schedule):
        return keras.optimizers.schedules.serialize(value)
    if callable(value):
        registered = keras.saving.get_registered_object(keras.saving.get_registered_name(value))
        if registered is None:
            raise TypeError(
                f"Cannot serialize {name}={value!r}: a callable hyperparameter must be "
                "registered with @keras.saving.register_keras_serializable() to be "
                "saved in a config or a .keras file"
            )
        return keras.saving.serialize_keras_object(value)
    raise TypeError(f"Cannot serialize {name}={value!r}")


def deserialize(value):
    """Inverse of `serialize` for config entries."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


class VariableRef:
    """A learning rate that reads a user's variable at every step.

    Stock Keras copies a number into a variable of its own; a variable passed
    as learning_rate must instead stay linked, so it is wrapped as the
    zero-argument callable Keras supports. `assign` lets the
    LearningRateScheduler callback (which sets `optimizer.learning_rate`) write
    through to the user's variable.
    """

    def __init__(self, variable):
        self.variable = variable

    def __call__(self):
        return self.variable

    def assign(self, value):
        self.variable.assign(value)

    def get_config(self) -> dict:
        # Only reached through the stock get_config, whose entry the fusedopt
        # optimizer replaces with the variable's current value.
        return {"value": float(np.asarray(self.variable))}

    def __repr__(self) -> str:
        return f"VariableRef({self.variable!r})"

"""The table of fusedopt optimizers that the generic optimizer tests run over.

In the manner of PyTorch's ``OptimizerInfo`` database
(torch/testing/_internal/common_optimizers.py): one `OptimizerInfo` per
optimizer variant says what the generic tests in tests/test_optimizer_table.py
need to know about it (the fused class and the stock class it must equal, the
op the traced step must contain, its slot names, its hyperparameters with a
valid value each), and lists its configurations (`Config`: constructor
arguments and the parity contract of each) and the bad arguments it must
refuse (`BadArgument`). A new optimizer, or a new case, is a new row here, not
a new test; a change of the parity contract is a change of a `Config`.

The table keeps what is specific to the TensorFlow backend (the op types in a
traced graph, tf.Variable as a hyperparameter form, tf.train.Checkpoint)
behind `BACKEND` (see `TensorFlowBackend`), and uses keras.ops / NumPy
elsewhere, so that it can run on Keras' other backends once fusedopt does.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import keras

import fusedopt
from fusedopt import transformers as T

import parity

# --------------------------------------------------------------------- backend


class TensorFlowBackend:
    """What the table needs that only the TensorFlow backend has."""

    name = "tensorflow"

    @staticmethod
    def variable_forms() -> dict:
        """Hyperparameter forms of this backend's own (beside keras.Variable)."""
        import tensorflow as tf

        return {"tf_variable": lambda value: tf.Variable(np.float32(value))}

    @staticmethod
    def traced_op_types(optimizer, variables) -> collections.Counter:
        """Op types, with their counts, of one traced `optimizer.apply` step
        on `variables` (everything the optimizer does in a train step: loss
        scale, accumulation, clipping, the update, EMA), nested functions
        (cond branches) included."""
        import tensorflow as tf

        grads = [tf.ones(v.shape, v.dtype) for v in variables]
        graph_def = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function(
            ).graph.as_graph_def()
        types = collections.Counter(node.op for node in graph_def.node)
        for function in graph_def.library.function:
            types.update(node.op for node in function.node_def)
        return types

    @staticmethod
    def save_checkpoint(model, prefix) -> str:
        import tensorflow as tf

        return tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(prefix)

    @staticmethod
    def restore_checkpoint(model, path) -> None:
        import tensorflow as tf

        tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(path).assert_consumed()


BACKEND = {"tensorflow": TensorFlowBackend}[keras.backend.backend()]

# ------------------------------------------------------ hyperparameter forms


@keras.saving.register_keras_serializable(package="fusedopt_tests")
class Constant:
    """A zero-argument callable hyperparameter that can be saved."""

    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value

    def get_config(self):
        return {"value": self.value}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _constant_schedule(value):
    # decay_rate 1: value * 1 ** (step / 1000) is `value` exactly, in float32.
    return keras.optimizers.schedules.ExponentialDecay(value, decay_steps=1000, decay_rate=1.0)


# Every form a hyperparameter takes (README, "Argument structure"), each made
# from a number. The values in the table are exact in float32 and dyadic, so
# that every form means the very same number (a float32 0.9 is not 0.9).
FORMS: dict[str, Callable] = {
    "number": float,
    "tensor": lambda value: keras.ops.convert_to_tensor(np.float32(value)),
    **BACKEND.variable_forms(),
    "keras_variable": lambda value: keras.Variable(np.float32(value)),
    "schedule": _constant_schedule,
    "callable": Constant,
    "numpy_scalar": np.float32,
    "numpy_0d": np.array,
}

# The forms of a hyperparameter that hold a tensor or variable.
TENSOR_FORMS = ("tensor", *BACKEND.variable_forms(), "keras_variable")

# Forms the stock classes take for learning_rate, which then have no
# learning-rate variable: fusedopt's optimizer has the variables of the stock
# optimizer given the same form. For every other form the stock optimizer
# given the number is the reference.
STOCK_LEARNING_RATE_FORMS = ("schedule", "callable")


def reference_value(name: str, form: str, value: float, made):
    """What the stock optimizer gets where fusedopt gets `made` (`value` in `form`)."""
    if name == "learning_rate" and form in STOCK_LEARNING_RATE_FORMS:
        return made
    return value


# ----------------------------------------------------------------------- table


@dataclass(frozen=True)
class Config:
    """One configuration: constructor arguments and the parity contract
    (docs/design.md, "Parity"; tests/parity.py: a bound in step ulps per step,
    parity.EXACT for bit for bit) in a traced graph and eagerly."""

    desc: str
    kwargs: dict = field(default_factory=dict)
    graph: int = parity.EXACT
    eager: int = parity.EXACT
    # Arguments only the fused optimizer gets (the stock class has no
    # gradient_transformers); they must not change the result.
    fused_only: dict = field(default_factory=dict)

    def contract(self, mode: str):
        return self.graph if mode == "graph" else self.eager


KERAS = "keras"  # a BadArgument the stock class refuses too


@dataclass(frozen=True)
class BadArgument:
    """Constructor arguments the optimizer must refuse at construction.

    error is KERAS where the stock class refuses them too: fusedopt raises
    the stock exception type, its message containing Keras' message. Where
    only fusedopt refuses them, the exception type. `words`: a pattern
    fusedopt's message must also contain (re.search).
    """

    desc: str
    kwargs: dict
    error: object = KERAS
    words: str = ""


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer variant and everything the generic tests need of it."""

    name: str
    fused: type
    stock: type
    base: dict                    # arguments of the variant (every config has them)
    op_types: tuple               # ops the traced step contains exactly once
    slots: dict                   # get_slot_names() -> the stock class's list of them
    hyperparameters: dict         # name -> a valid value, exact in float32
    configs: tuple
    bad_arguments: tuple = ()
    # Hyperparameters the stock class also takes as a tensor or variable, with
    # a value not exact in float32 (fusedopt must round as the stock class).
    stock_forms: dict = field(default_factory=dict)

    def kwargs(self, config: Config | None = None) -> dict:
        """The stock class's arguments for `config`."""
        return {**self.base, **(config.kwargs if config else {})}

    def make(self, config: Config | None = None, **overrides):
        """The fused optimizer for `config`."""
        return self.fused(**self.kwargs(config), **(config.fused_only if config else {}),
                          **overrides)

    def make_stock(self, config: Config | None = None, **overrides):
        return self.stock(**self.kwargs(config), **overrides)

    def config(self, desc: str) -> Config:
        return next(c for c in self.configs if c.desc == desc)

    def __repr__(self) -> str:
        return self.name


SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.7)
SGD_SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7)


@keras.saving.register_keras_serializable(package="fusedopt_tests")
def keep(pairs):
    """A gradient transformer that changes nothing: it keeps Keras' clipping
    as the stock TF ops (clipping is folded only when nothing runs between it
    and the update)."""
    return pairs


# The contract's exceptions (docs/design.md, "Parity"): a folded clip by norm
# (its norms summed in another order than TF's), in both modes; SGD whose
# gradient is a product (accumulation, a loss scale that is not a power of
# two, a global clip scale), whose `gradient * lr` Grappler rewrites in traced
# graphs.
NORM_CLIP = dict(graph=parity.NORM_CLIP, eager=parity.NORM_CLIP)
GRAPPLER_PRODUCT = dict(graph=parity.GRAPPLER_PRODUCT)

ADAM_CONFIGS = (
    Config("defaults"),
    Config("lr_schedule", dict(learning_rate=SCHEDULE)),
    Config("clipnorm", dict(learning_rate=0.01, clipnorm=0.05), **NORM_CLIP),
    Config("clipvalue", dict(learning_rate=0.01, clipvalue=0.01)),
    Config("global_clipnorm", dict(learning_rate=0.01, global_clipnorm=0.1), **NORM_CLIP),
    Config("weight_decay", dict(learning_rate=0.01, weight_decay=0.05)),
    Config("use_ema", dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9,
                           ema_overwrite_frequency=4)),
    Config("gradient_accumulation", dict(learning_rate=0.01, gradient_accumulation_steps=3)),
    Config("loss_scale_factor", dict(learning_rate=0.01, loss_scale_factor=128.0)),
    Config("betas_epsilon", dict(learning_rate=0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-4)),
)

_SGD_NORM_CASES = {
    "clipnorm": dict(learning_rate=0.05, clipnorm=0.05),
    "global_clipnorm": dict(learning_rate=0.05, global_clipnorm=0.1),
    "accumulation_and_global_clipnorm": dict(learning_rate=0.05, gradient_accumulation_steps=2,
                                             global_clipnorm=0.1),
}

SGD_CONFIGS = (
    Config("defaults"),
    Config("lr", dict(learning_rate=0.03)),
    Config("lr_schedule", dict(learning_rate=SGD_SCHEDULE)),
    *(Config(desc, kwargs, **NORM_CLIP) for desc, kwargs in _SGD_NORM_CASES.items()),
    Config("clipvalue", dict(learning_rate=0.05, clipvalue=0.01)),
    Config("weight_decay", dict(learning_rate=0.05, weight_decay=0.05)),
    Config("use_ema", dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9,
                           ema_overwrite_frequency=4)),
    Config("gradient_accumulation", dict(learning_rate=0.05, gradient_accumulation_steps=3),
           **GRAPPLER_PRODUCT),
    # 128 is a power of two: the product is exact.
    Config("loss_scale_factor", dict(learning_rate=0.05, loss_scale_factor=128.0)),
    # Not a power of two: x / 3 rounds, and Grappler turns it into x * (1/3).
    Config("loss_scale_factor_3", dict(learning_rate=0.05, loss_scale_factor=3.0),
           **GRAPPLER_PRODUCT),
    Config("accumulation_and_loss_scale", dict(learning_rate=0.05, gradient_accumulation_steps=3,
                                               loss_scale_factor=3.0, weight_decay=0.01),
           **GRAPPLER_PRODUCT),
    # With the stock clipping ops in front (a transformer after them keeps
    # the clip from being folded), the update itself is bit-exact eagerly; in
    # traced graphs Grappler computes the stock (g * scale) * lr of a global
    # clip as g * (scale * lr).
    Config("stock_clipnorm", _SGD_NORM_CASES["clipnorm"],
           fused_only=dict(gradient_transformers=[keep])),
    *(Config(f"stock_{desc}", _SGD_NORM_CASES[desc], **GRAPPLER_PRODUCT,
             fused_only=dict(gradient_transformers=[keep]))
      for desc in ("global_clipnorm", "accumulation_and_global_clipnorm")),
)

# Hyperparameter values exact in float32, so that every form is the same number.
ADAM_HYPERPARAMETERS = dict(learning_rate=2.0**-7, beta_1=0.875, beta_2=0.984375,
                            epsilon=2.0**-10, weight_decay=2.0**-4)
SGD_HYPERPARAMETERS = dict(learning_rate=2.0**-5, weight_decay=2.0**-4)
SGD_MOMENTUM_HYPERPARAMETERS = dict(SGD_HYPERPARAMETERS, momentum=0.875)
# The stock Adam classes read beta_1, beta_2 and epsilon given as tensors or
# variables too (keras.optimizers.SGD takes no momentum but a float).
ADAM_STOCK_FORMS = dict(beta_1=0.8, beta_2=0.99, epsilon=1e-3)


def _learning_rate_refusals():
    """learning_rate values both Keras and fusedopt refuse (Keras: not a
    float, a schedule or a callable)."""
    return (
        BadArgument("learning_rate_str", dict(learning_rate="0.1"), KERAS, "learning_rate must be"),
        BadArgument("learning_rate_none", dict(learning_rate=None)),
        BadArgument("learning_rate_list", dict(learning_rate=[0.1])),
        BadArgument("learning_rate_bool", dict(learning_rate=True)),
        BadArgument("learning_rate_vector", dict(learning_rate=np.array([0.1, 0.2]))),
        BadArgument("learning_rate_vector_tensor",
                    dict(learning_rate=keras.ops.convert_to_tensor([0.1, 0.2]))),
        BadArgument("learning_rate_huge_int", dict(learning_rate=10**400), KERAS,
                    "learning_rate must be a number within float range; got an integer of 401"),
        BadArgument("learning_rate_object", dict(learning_rate=object())),
    )


def _base_refusals():
    """Arguments of the base optimizer (every class)."""
    return (
        *_learning_rate_refusals(),
        BadArgument("unknown", dict(foo=1), KERAS, "unknown argument.*foo; valid arguments"),
        BadArgument("legacy_lr", dict(lr=0.1), KERAS, "passed as learning_rate="),
        BadArgument("clipnorm_and_clipvalue", dict(clipnorm=1.0, clipvalue=1.0)),
        BadArgument("clipnorm_and_global", dict(clipnorm=1.0, global_clipnorm=1.0)),
        BadArgument("clipvalue_and_global", dict(clipvalue=1.0, global_clipnorm=1.0)),
        # Two clips of which fusedopt refuses one (<= 0) on its own: Keras'
        # error still wins, as the stock class raises it.
        BadArgument("clipnorm_zero_and_clipvalue", dict(clipnorm=0.0, clipvalue=1.0)),
        BadArgument("accumulation_1", dict(gradient_accumulation_steps=1)),
        BadArgument("accumulation_negative", dict(gradient_accumulation_steps=-1)),
        BadArgument("accumulation_fraction", dict(gradient_accumulation_steps=1.5)),
        BadArgument("accumulation_str", dict(gradient_accumulation_steps="x")),
        BadArgument("ema_momentum_high", dict(use_ema=True, ema_momentum=1.5)),
        BadArgument("ema_momentum_negative", dict(use_ema=True, ema_momentum=-0.1)),
        BadArgument("ema_momentum_str", dict(use_ema=True, ema_momentum="x")),
        BadArgument("ema_overwrite_negative", dict(use_ema=True, ema_overwrite_frequency=-1)),
        BadArgument("ema_overwrite_fraction", dict(use_ema=True, ema_overwrite_frequency=1.5)),
        BadArgument("ema_overwrite_str", dict(use_ema=True, ema_overwrite_frequency="x")),
        BadArgument("name_int", dict(name=5)),
        BadArgument("name_slash", dict(name="a/b")),
        # Refused by fusedopt only (Keras takes them and trains wrongly, or
        # fails later):
        BadArgument("learning_rate_negative", dict(learning_rate=-0.1),
                    ValueError, "learning_rate must be in"),
        BadArgument("learning_rate_nan", dict(learning_rate=math.nan),
                    ValueError, "learning_rate must be in"),
        BadArgument("learning_rate_inf", dict(learning_rate=math.inf),
                    ValueError, "learning_rate must be in"),
        BadArgument("weight_decay_negative", dict(weight_decay=-0.1),
                    ValueError, "weight_decay must be in"),
        BadArgument("weight_decay_huge_int", dict(weight_decay=10**400),
                    ValueError, "weight_decay must be a number within float range"),
        BadArgument("weight_decay_bool", dict(weight_decay=np.bool_(True)),
                    TypeError, "weight_decay must be"),
        BadArgument("clipnorm_zero", dict(clipnorm=0.0), ValueError, "clipnorm must be > 0"),
        BadArgument("clipvalue_negative", dict(clipvalue=-1.0),
                    ValueError, "clipvalue must be > 0"),
        BadArgument("global_clipnorm_str", dict(global_clipnorm="1"),
                    TypeError, "global_clipnorm must be a number"),
        BadArgument("transformers_not_a_list", dict(gradient_transformers=T.clip_by_norm(1.0)),
                    TypeError, "gradient_transformers must be a list"),
        BadArgument("transformer_not_callable",
                    dict(gradient_transformers=[T.clip_by_norm(1.0), "clip"]),
                    TypeError, r"gradient_transformers\[1\]"),
        BadArgument("skip_nonfinite_str", dict(skip_nonfinite="yes"),
                    TypeError, "skip_nonfinite must be True or False"),
    )


def _adam_refusals():
    return (
        *_base_refusals(),
        BadArgument("momentum_argument", dict(momentum=0.9), KERAS, "momentum"),  # not Adam's
        BadArgument("beta_1_one", dict(beta_1=1.0), ValueError, r"beta_1 must be in \[0.0, 1.0\)"),
        BadArgument("beta_2_negative", dict(beta_2=-0.1), ValueError, "beta_2 must be in"),
        BadArgument("epsilon_negative", dict(epsilon=-1e-7), ValueError, "epsilon must be in"),
        BadArgument("beta_1_vector", dict(beta_1=keras.ops.convert_to_tensor([0.9, 0.9])),
                    TypeError, r"beta_1 must be a scalar \(0-d\)"),
        BadArgument("beta_1_numpy_vector", dict(beta_1=np.array([0.9])),
                    TypeError, r"beta_1 must be a scalar \(0-d\)"),
        BadArgument("beta_1_variable_out_of_range", dict(beta_1=keras.Variable(1.5)),
                    ValueError, "beta_1 must be in"),
        *(BadArgument(f"beta_1_{form}_out_of_range", dict(beta_1=make(1.5)),
                      ValueError, "beta_1 must be in")
          for form, make in BACKEND.variable_forms().items()),
        BadArgument("beta_1_huge_int", dict(beta_1=10**400),
                    ValueError, "beta_1 must be a number within float range"),
        BadArgument("beta_1_str", dict(beta_1="x"), TypeError, "beta_1 must be a number"),
        BadArgument("beta_1_none", dict(beta_1=None), TypeError, "beta_1 must be a number"),
        BadArgument("beta_2_step_function", dict(beta_2=lambda step: 0.9),
                    TypeError, "beta_2: a callable hyperparameter must take no arguments"),
        BadArgument("epsilon_list", dict(epsilon=[1e-7]), TypeError, "epsilon must be"),
    )


def _sgd_refusals():
    return (
        *_base_refusals(),
        BadArgument("momentum_negative_int", dict(momentum=-1)),
        BadArgument("momentum_negative", dict(momentum=-1.0)),
        BadArgument("momentum_slightly_negative", dict(momentum=-0.1), KERAS,
                    r"momentum must be in \[0.0, 1.0\]"),
        BadArgument("momentum_high", dict(momentum=1.5), KERAS, r"momentum must be in \[0.0, 1.0\]"),
        BadArgument("momentum_str", dict(momentum="high"), KERAS, "momentum must be"),
        BadArgument("momentum_none", dict(momentum=None)),
        BadArgument("momentum_bool", dict(momentum=True)),
        BadArgument("momentum_huge_int", dict(momentum=10**400), KERAS,
                    "momentum must be a number within float range"),
        BadArgument("momentum_list", dict(momentum=[0.9])),
        BadArgument("momentum_vector", dict(momentum=keras.ops.convert_to_tensor([0.9, 0.9]))),
        BadArgument("momentum_nan", dict(momentum=math.nan),
                    ValueError, r"momentum must be in \[0.0, 1.0\]"),
        # Keras takes no momentum but a float; fusedopt takes a variable in range.
        BadArgument("momentum_variable_out_of_range", dict(momentum=keras.Variable(1.5))),
    )


ADAM_SLOTS = {"momentum": "_momentums", "velocity": "_velocities"}
SGD_SLOTS = {"momentum": "momentums"}

TABLE = (
    OptimizerInfo(
        "Adam", fusedopt.Adam, keras.optimizers.Adam, base={},
        op_types=("FusedoptAdam",), slots=ADAM_SLOTS,
        hyperparameters=ADAM_HYPERPARAMETERS, configs=ADAM_CONFIGS,
        bad_arguments=_adam_refusals(), stock_forms=ADAM_STOCK_FORMS,
    ),
    OptimizerInfo(
        "AdamW", fusedopt.AdamW, keras.optimizers.AdamW, base={},
        op_types=("FusedoptAdam",), slots=ADAM_SLOTS,
        hyperparameters=ADAM_HYPERPARAMETERS, configs=ADAM_CONFIGS,
        bad_arguments=(*_adam_refusals(),
                       BadArgument("weight_decay_none", dict(weight_decay=None))),
        stock_forms=ADAM_STOCK_FORMS,
    ),
    # Plain SGD keeps no buffer, as in Keras. Its momentum is the number 0; a
    # momentum in another form always has buffers (sgd.py,
    # _momentum_is_dynamic), so it is a hyperparameter of the entries below.
    OptimizerInfo(
        "SGD", fusedopt.SGD, keras.optimizers.SGD, base={},
        op_types=("FusedoptSgd",), slots={},
        hyperparameters=SGD_HYPERPARAMETERS, configs=SGD_CONFIGS,
        bad_arguments=_sgd_refusals(),
    ),
    OptimizerInfo(
        "SGD-momentum", fusedopt.SGD, keras.optimizers.SGD, base=dict(momentum=0.9),
        op_types=("FusedoptSgd",), slots=SGD_SLOTS,
        hyperparameters=SGD_MOMENTUM_HYPERPARAMETERS, configs=SGD_CONFIGS,
    ),
    OptimizerInfo(
        "SGD-nesterov", fusedopt.SGD, keras.optimizers.SGD,
        base=dict(momentum=0.8, nesterov=True),
        op_types=("FusedoptSgd",), slots=SGD_SLOTS,
        hyperparameters=SGD_MOMENTUM_HYPERPARAMETERS, configs=SGD_CONFIGS,
    ),
)


def infos(*names):
    """The table's entries, or those named."""
    return [i for i in TABLE if not names or i.name in names]


def entries(*names):
    """`infos`, as pytest params with the entries' names as ids."""
    import pytest

    return [pytest.param(i, id=i.name) for i in infos(*names)]


def configs(*names):
    """Every (entry, config) pair, as pytest params with readable ids."""
    import pytest

    return [pytest.param(i, c, id=f"{i.name}-{c.desc}") for i in infos(*names) for c in i.configs]


def hyperparameter_forms(*names):
    """Every (entry, hyperparameter, form), as pytest params."""
    import pytest

    return [pytest.param(i, h, f, id=f"{i.name}-{h}-{f}")
            for i in infos(*names) for h in i.hyperparameters for f in FORMS]


def bad_arguments():
    """Every (class, BadArgument), once per fused class."""
    import pytest

    seen, params = set(), []
    for i in TABLE:
        if i.fused in seen and not i.bad_arguments:
            continue
        seen.add(i.fused)
        params += [pytest.param(i, b, id=f"{i.name}-{b.desc}") for b in i.bad_arguments]
    return params

"""The argument structure every fusedopt optimizer shares.

Three parts (see the README's "Argument structure" section and
docs/argument-structure.md):

1. Hyperparameters: each accepts a number, a NumPy scalar, a 0-d tensor or
   variable, a LearningRateSchedule or a zero-argument callable, is validated
   at construction and evaluated at every step (`fusedopt.hyperparameters`).
   Where the stock class refuses an argument, so does fusedopt, with the stock
   exception and message (`_argument_error`).
2. Gradient transformers: ``gradient_transformers=[f, ...]``, callables on
   lists of (grad, var) pairs, applied in order and checked after each.
3. State: ``get_slot_names()`` / ``get_slot(var, name)`` over the stock slot
   variables.

This mixin sits before the stock Keras class in the MRO. The optimizer
variables are those of the stock class given the numbers, whatever the form
of the hyperparameters (a learning-rate variable takes the place of the stock
one; no other hyperparameter is optimizer state), so files and checkpoints
interchange between the forms and with stock Keras.
"""

from __future__ import annotations

import inspect
import warnings

import keras

from fusedopt import _tensors
from fusedopt import hyperparameters as hp
from fusedopt import transformers as tr


class _Hyperparameter:
    """Class attribute for a hyperparameter: stores what the user gave,
    returns its value for the current step (numbers stay numbers, so the
    inherited stock code sees exactly what it would see without fusedopt)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            raw = obj.__dict__["_hyper_raw"][self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        return hp.evaluate(raw, obj.iterations)

    def __set__(self, obj, value):
        valid = obj._hyperparameter_ranges().get(self.name)
        if valid is not None:
            value = hp.check(self.name, value, valid, allow_none=self.name == "weight_decay")
        obj.__dict__.setdefault("_hyper_raw", {})[self.name] = value


def _linked_after_construction():
    """The learning rate the stock constructor gets where the user's variable
    is linked right after it (`_link_learning_rate`); never called."""
    raise RuntimeError("fusedopt: the learning-rate variable was not linked")


def _tf_variable(variable):
    """The tf.Variable of a keras.Variable (TF backend), or the variable itself."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _label(var) -> str:
    """A variable's name for messages: its Keras path, or its TF name."""
    return getattr(var, "path", None) or getattr(var, "name", None) or repr(var)


def _gradient_shape(grad):
    """The (dense) shape of a gradient (a tuple, None for a dimension the
    trace does not know), or None where its rank is unknown."""
    return _tensors.gradient_shape(grad)


def _transformer_name(fn) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


class ArgumentStructure:
    """Hyperparameters, gradient transformers and state for a Keras optimizer."""

    # Hyperparameters the stock classes store as plain attributes.
    weight_decay = _Hyperparameter()
    beta_1 = _Hyperparameter()
    beta_2 = _Hyperparameter()
    epsilon = _Hyperparameter()
    momentum = _Hyperparameter()


    @classmethod
    def _hyperparameter_ranges(cls) -> dict:
        """Valid values of every hyperparameter of this class."""
        return {"learning_rate": hp.RANGES["learning_rate"],
                "weight_decay": hp.RANGES["weight_decay"]}

    @classmethod
    def _stock_class(cls) -> type:
        """The Keras optimizer class this one extends (keras.optimizers.Adam, ...)."""
        for klass in cls.__mro__:
            if (issubclass(klass, keras.optimizers.Optimizer)
                    and not issubclass(klass, ArgumentStructure)):
                return klass
        raise TypeError(f"{cls.__name__} extends no Keras optimizer")

    def __init__(self, *args, gradient_transformers=None, **kwargs):
        signature = inspect.signature(super().__init__)
        params = signature.parameters
        call = {}
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            if params[name].kind is params[name].VAR_KEYWORD:
                call.update(value)
            else:
                call[name] = value
        keras_call, later, problems = self._translate_arguments(call, params)
        try:
            transformers = self._check_transformers(gradient_transformers)
        except TypeError as e:
            problems.append(((), e))
        if problems:
            raise self._argument_error(call, keras_call, *problems[0])

        super().__init__(**keras_call)
        learning_rate_variable = later.pop("learning_rate", None)
        for name, value in later.items():
            setattr(self, name, value)
        if learning_rate_variable is not None:
            self._link_learning_rate(learning_rate_variable)
        self._gradient_transformers = transformers

    def _translate_arguments(self, call, params):
        """Checks the constructor arguments; returns (keras_call, later, problems).

        keras_call: the arguments for the stock constructor, which only takes
        numbers for most hyperparameters (learning_rate: numbers, schedules
        and callables): every other form is replaced there by the default and
        kept in `later`, set once the stock constructor has run.
        problems: (argument names, exception) for every argument fusedopt
        refuses, in order.
        """
        keras_call, later, problems = dict(call), {}, []
        known = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
        unknown = tuple(sorted(set(call) - known - {"decay"}))
        if unknown:
            hint = ("the learning rate is passed as learning_rate= "
                    "(e.g. fusedopt.Adam(learning_rate=1e-3)); " if "lr" in unknown else "")
            valid = sorted(known | {"gradient_transformers", "skip_nonfinite"})
            problems.append((unknown, ValueError(
                f"{type(self).__name__} got unknown argument(s) {', '.join(unknown)}; "
                f"{hint}valid arguments: {', '.join(valid)}")))
        for name in ("clipnorm", "global_clipnorm", "clipvalue"):
            try:
                self._check_clip_argument(name, call.get(name))
            except (TypeError, ValueError) as e:
                problems.append(((name,), e))

        for name, valid in self._hyperparameter_ranges().items():
            if name not in params:
                continue
            default = params[name].default
            try:
                checked = hp.check(name, call.get(name, default), valid,
                                   allow_none=name == "weight_decay")
            except (TypeError, ValueError) as e:
                problems.append(((name,), e))
                continue
            if name == "learning_rate":
                if hp.is_variable(checked):
                    # The user's variable becomes the learning-rate variable
                    # once the stock constructor has run; a callable there
                    # keeps it from making one of its own.
                    later[name] = checked
                    checked = _linked_after_construction
                elif _tensors.is_tensor(checked):
                    checked = float(checked)
                keras_call[name] = checked
            elif checked is None or hp.is_number(checked):
                if name in call:
                    keras_call[name] = checked
            else:
                later[name] = checked
                keras_call[name] = default if default is not params[name].empty else 0.0
        return keras_call, later, problems

    def _argument_error(self, call, keras_call, names, error):
        """The exception for a refused argument.

        Where the stock class refuses it too, its exception: the same type,
        Keras' message, fusedopt's after it (code written for the stock class
        catches what it caught). Otherwise fusedopt's own.
        """
        stock_names = [n for n in names if n in call]
        if not stock_names:
            return error
        probe = {k: v for k, v in keras_call.items() if k not in names}
        probe.update({n: call[n] for n in stock_names})
        if probe.get("name") is None:
            probe["name"] = "fusedopt_argument_check"  # leave Keras' name counters alone
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. Keras' `decay` warning, given already
                self._stock_class()(**probe)
        except Exception as keras_error:  # noqa: BLE001 - re-raised as it is, with ours added
            try:
                return type(keras_error)(f"{keras_error} (fusedopt: {error})")
            except Exception:  # noqa: BLE001 - an exception type with another signature
                return keras_error
        return error

    def __setattr__(self, name, value):
        # A hyperparameter is the user's value, not optimizer state: it is
        # stored past Keras' variable tracker and TF's checkpoint dependencies,
        # which would make a keras.Variable / tf.Variable given as beta_1 an
        # optimizer variable or a checkpoint entry that the stock optimizer
        # given the number does not have (so files would not interchange).
        if isinstance(getattr(type(self), name, None), _Hyperparameter):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _link_learning_rate(self, variable):
        """Makes the user's learning-rate variable the optimizer's own.

        The stock optimizer keeps a learning rate given as a number in a
        variable of its own (`<name>/learning_rate`, second of its variables),
        which files and checkpoints save. A user's variable takes that place:
        a Keras variable of the same name and position whose storage is the
        user's tf.Variable. So the optimizer reads it at every step, assigning
        either one changes both, and saving and restoring the optimizer saves
        and restores it, with the variables of the stock optimizer given the
        number.
        """
        if keras.backend.backend() != "tensorflow":
            # No backend but TF can share storage between two variables; on JAX
            # the variable's value is state the jitted step takes and returns:
            # the user's keras.Variable itself is the optimizer's (tracked in the
            # same position, so files interchange with stock all the same).
            if not isinstance(variable, keras.Variable):
                raise TypeError(
                    f"learning_rate: on the {keras.backend.backend()} backend a variable "
                    f"learning rate must be a keras.Variable; got {type(variable).__name__}")
            self._learning_rate = variable
            return
        with keras.name_scope(self.name, caller=self):
            linked = keras.Variable(_tf_variable(variable), name="learning_rate",
                                    trainable=False, aggregation="only_first_replica")
        # Tracked on assignment, after the iteration count: where the stock
        # constructor puts its own.
        self._learning_rate = linked

    def _hyperparameter_argument(self, name):
        """A hyperparameter as it was given (number, variable, tensor,
        schedule or callable); None if unset."""
        return self.__dict__.get("_hyper_raw", {}).get(name)

    @property
    def gradient_transformers(self) -> tuple:
        """The gradient transformers, applied in order (see fusedopt.transformers)."""
        return self._gradient_transformers

    @staticmethod
    def _check_clip_argument(name, value):
        # Stock Keras silently ignores a clip threshold <= 0: refuse it.
        if value is None:
            return
        if not hp.is_number(value):
            raise TypeError(
                f"{name} must be a number; for a threshold that changes during "
                f"training use fusedopt.transformers (e.g. clip_by_norm(variable))"
            )
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value}")

    # ----------------------------------------------------------- transformers

    @staticmethod
    def _check_transformers(transformers):
        if transformers is None:
            return ()
        if not isinstance(transformers, (list, tuple)):
            raise TypeError(
                "gradient_transformers must be a list or tuple of callables taking and "
                f"returning a list of (gradient, variable) pairs; got {type(transformers).__name__}"
            )
        for i, fn in enumerate(transformers):
            if not callable(fn):
                raise TypeError(
                    f"gradient_transformers[{i}] must be a callable taking and returning "
                    f"a list of (gradient, variable) pairs; got {type(fn).__name__} {fn!r}"
                )
        return tuple(transformers)

    def _apply_transformers(self, transformers, grads, variables):
        """Runs `transformers` on (grad, var) pairs; returns the new grads.

        Each result is checked before the next transformer runs (and so before
        any variable is written): same number of pairs, the same variables in
        the same order, gradients of the variables' shapes and dtypes.
        """
        pairs = list(zip(grads, variables))
        for fn in transformers:
            name = _transformer_name(fn)
            # Built-ins get the step, for thresholds given as schedules.
            if isinstance(fn, tr.BuiltinTransformer):
                result = fn(list(pairs), step=self.iterations)
            else:
                result = fn(list(pairs))
            if not isinstance(result, (list, tuple)):
                raise TypeError(
                    f"gradient transformer {name} must return a list of (gradient, variable) "
                    f"pairs; it returned {type(result).__name__}"
                )
            result = list(result)
            if len(result) != len(pairs):
                raise ValueError(
                    f"gradient transformer {name} returned {len(result)} pairs for "
                    f"{len(pairs)} variables; it must return one (gradient, variable) pair "
                    "per variable, in order (did it drop or add pairs?)"
                )
            for i, (item, (old_grad, var)) in enumerate(zip(result, pairs)):
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    raise TypeError(
                        f"gradient transformer {name} returned {item!r} at position {i}; "
                        "expected a (gradient, variable) pair"
                    )
                grad, new_var = item
                if new_var is not var:
                    raise ValueError(
                        f"gradient transformer {name} returned variable "
                        f"{_label(new_var)!r} at position {i} where "
                        f"{_label(var)!r} was; it must keep the variables and their order"
                    )
                self._check_transformed_gradient(name, grad, old_grad, var)
            pairs = [(g, v) for g, v in result]
        return [g for g, _ in pairs]

    @staticmethod
    def _check_transformed_gradient(name, grad, old_grad, var):
        if grad is None:
            raise ValueError(f"gradient transformer {name} returned None for variable {_label(var)!r}")
        if _tensors.is_sparse(grad) or _tensors.is_tensor(grad) or hp.is_variable(grad):
            shape = _gradient_shape(grad)
        else:
            raise TypeError(
                f"gradient transformer {name} returned a {type(grad).__name__} for variable "
                f"{_label(var)!r}; expected a tensor"
            )
        if shape is not None and not _tensors.shapes_compatible(shape, tuple(var.shape)):
            raise ValueError(
                f"gradient transformer {name} returned a gradient of shape "
                f"{_tensors.shape_str(shape)} for variable {_label(var)!r} of shape "
                f"{tuple(var.shape)}"
            )
        dtype = _tensors.dtype_name(grad.dtype)
        if dtype not in (_tensors.dtype_name(var.dtype), _tensors.dtype_name(old_grad.dtype)):
            raise ValueError(
                f"gradient transformer {name} returned a {dtype} gradient for variable "
                f"{_label(var)!r} of dtype {_tensors.dtype_name(var.dtype)}"
            )

    # ------------------------------------------------------------------ state

    def __dir__(self):
        # tf.train.Checkpoint duck-types legacy (OptimizerV2) optimizers by
        # `"get_slot_names" in dir(obj)` and then saves their slots a second
        # time as "slot variables", which fails for Keras 3 optimizers (their
        # slots are ordinary tracked variables) and would change the checkpoint
        # layout. Hiding the name from dir() keeps checkpoints identical to the
        # stock optimizer's; the method itself works as usual.
        return [name for name in super().__dir__() if name != "get_slot_names"]

    def _slot_attributes(self) -> dict:
        """Slot name -> attribute holding the stock list of slot variables."""
        return {}

    def get_slot_names(self) -> list:
        """Names of the per-variable state slots (e.g. Adam: momentum, velocity)."""
        return list(self._slot_attributes())

    def get_slot(self, var, slot_name: str):
        """The slot variable `slot_name` of model variable `var`."""
        names = self.get_slot_names()
        if slot_name not in names:
            raise KeyError(
                f"{type(self).__name__} has no slot {slot_name!r}; its slots are "
                f"{', '.join(map(repr, names)) or 'none'}"
            )
        if not self.built:
            raise ValueError(f"{type(self).__name__} is not built yet: no slots exist")
        key = self._var_key(var)
        if key not in self._trainable_variables_indices:
            raise KeyError(f"{_label(var)!r} is not a variable of this optimizer")
        slots = getattr(self, self._slot_attributes()[slot_name])
        slot = slots[self._get_variable_index(var)]
        if slot is None:
            raise KeyError(f"variable {_label(var)!r} has no {slot_name!r} slot")
        return slot

    # ----------------------------------------------------------------- config

    def get_config(self):
        config = super().get_config()
        lr = self._learning_rate
        if callable(lr) and not isinstance(lr, hp.Schedule):
            config["learning_rate"] = hp.serialize("learning_rate", lr)
        raw = self.__dict__.get("_hyper_raw", {})
        for name in self._hyperparameter_ranges():
            if name != "learning_rate" and name in config:
                config[name] = hp.serialize(name, raw.get(name))
        if self.gradient_transformers:
            config["gradient_transformers"] = [
                _serialize_transformer(i, fn) for i, fn in enumerate(self.gradient_transformers)
            ]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for name in cls._hyperparameter_ranges():
            if name != "learning_rate" and isinstance(config.get(name), dict):
                config[name] = keras.saving.deserialize_keras_object(
                    config[name], custom_objects=custom_objects)
        if "gradient_transformers" in config:
            config["gradient_transformers"] = [
                keras.saving.deserialize_keras_object(t, custom_objects=custom_objects)
                for t in config["gradient_transformers"]
            ]
        return super().from_config(config, custom_objects=custom_objects)


def _serialize_transformer(index, fn):
    if not hp.is_registered(fn) and not hasattr(type(fn), "get_config"):
        raise TypeError(
            f"Cannot serialize gradient_transformers[{index}] = {_transformer_name(fn)}: a "
            "custom transformer must be registered with "
            "@keras.saving.register_keras_serializable() (functions) or be a registered "
            "class with get_config() to be saved in a config or a .keras file"
        )
    return keras.saving.serialize_keras_object(fn)

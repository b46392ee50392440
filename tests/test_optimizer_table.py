"""The generic optimizer tests, written once over the table of optimizers
(tests/optimizer_table.py).

Each test runs for every entry (or every entry and configuration, every
hyperparameter and form) of the table. Training parity with the stock Keras
optimizer is asserted by `parity.fit_parity` under the contract each
configuration states (docs/design.md, "Parity": bit for bit unless the table
says otherwise); saved and restored state bit for bit (`assert_same_state`).
Tests of one optimizer's own behaviour stay in tests/test_optimizers_*.py and
tests/test_argument_structure.py.
"""

import functools
import json
import re

import numpy as np
import pytest

import keras

import fusedopt
from fusedopt.hyperparameters import is_variable

from optimizer_table import (BACKEND, FORMS, KERAS, TENSOR_FORMS, bad_arguments, configs,
                             entries, hyperparameter_forms, infos, reference_value)
import parity
from training import assert_same_state, make_data, make_model, train

MODES = ("graph", "eager")


def assert_all_fused(opt):
    paths = opt.fused_paths
    assert paths, "no update step was recorded"
    assert set(paths.values()) == {"fused"}, paths


def layout(opt):
    """(path, shape, dtype) of every optimizer variable, the model's name
    (sequential_3 vs _4) left out."""
    return [(re.sub(r"sequential(_\d+)?_", "", v.path), tuple(v.shape), str(v.dtype))
            for v in opt.variables]


def built(opt, seed=1234):
    """A compiled model with `opt` built on its variables."""
    keras.utils.set_random_seed(seed)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    return model


def without(config, names):
    return {k: v for k, v in config.items() if k not in names}


# ------------------------------------------------------------ fit parity

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("info,config", configs())
def test_fit_matches_stock(info, config, mode):
    """model.fit with the fused optimizer equals the stock optimizer's under
    the configuration's contract (parity.fit_parity: three epochs bit for bit,
    or each step from the same state within the bound); every variable ran
    fused, and the traced step holds the fused op once."""
    fused = parity.fit_parity(lambda: info.make(config), lambda: info.make_stock(config),
                              config.contract(mode), run_eagerly=mode == "eager")
    assert_all_fused(fused.optimizer)
    if mode == "graph":
        types = BACKEND.traced_op_types(fused.optimizer, fused.trainable_variables)
        for op_type in info.op_types:
            assert types[op_type] == 1, (op_type, types[op_type])
        assert_all_fused(fused.optimizer)


# ------------------------------------------------- config and variables

@pytest.mark.parametrize("info,config", configs())
def test_config_and_variables_match_stock(info, config):
    fused, stock = info.make(config, name="opt"), info.make_stock(config, name="opt")
    assert isinstance(fused, info.stock) and isinstance(fused, fusedopt.Optimizer)
    assert without(fused.get_config(), config.fused_only) == stock.get_config()
    model = built(fused)
    stock.build(model.trainable_variables)
    assert layout(fused) == layout(stock)

    restored = keras.optimizers.deserialize(keras.optimizers.serialize(fused))
    assert type(restored) is info.fused
    assert restored.get_config() == fused.get_config()


# ----------------------------------------------------------------- slots

@pytest.mark.parametrize("info", entries())
def test_slots(info):
    opt = info.make()
    assert opt.get_slot_names() == list(info.slots)  # before build too
    model = train(opt, epochs=1, samples=64)
    assert opt.get_slot_names() == list(info.slots)
    kernel = model.trainable_variables[0]
    for name, attribute in info.slots.items():
        for i, var in enumerate(model.trainable_variables):
            slot = opt.get_slot(var, name)
            assert slot is getattr(opt, attribute)[i]
            assert tuple(slot.shape) == tuple(var.shape)
    # The first variable's slots follow the iteration count and the learning
    # rate, in the order of get_slot_names (as in the stock layout).
    first = [opt.get_slot(kernel, name) for name in info.slots]
    assert all(a is b for a, b in zip(first, opt.variables[2:2 + len(first)]))
    valid = ", ".join(map(repr, info.slots)) or "none"
    with pytest.raises(KeyError, match=f"no slot 'velocity_hat'; its slots are {valid}"):
        opt.get_slot(kernel, "velocity_hat")


# ------------------------------------------------ saving and checkpoints

# The configuration with the most optimizer variables of every entry: EMA
# averages beside the slots (and the iteration count it reads).
SAVED_CONFIG = "use_ema"


@pytest.mark.parametrize("info", entries())
def test_keras_file_round_trip(tmp_path, info):
    config = info.config(SAVED_CONFIG)
    model = train(info.make(config), epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered
    assert type(loaded.optimizer) is info.fused
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert_same_state(loaded, model)
    # Training on continues identically.
    x, y = make_data()
    for m in (model, loaded):
        m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_same_state(loaded, model)


@pytest.mark.parametrize("direction", ["fused-to-stock", "stock-to-fused"])
@pytest.mark.parametrize("info", entries())
def test_saved_state_loads_into_the_other_class(tmp_path, info, direction):
    """A .keras file, a .weights.h5 file (model.load_weights) and a
    tf.train.Checkpoint written with one class restore every variable into
    the other; training then continues identically."""
    config = info.config(SAVED_CONFIG)
    first, second = ((info.make, info.make_stock) if direction == "fused-to-stock"
                     else (info.make_stock, info.make))
    model = train(first(config), epochs=1, samples=64)
    model.save(tmp_path / "saved.keras")
    model.save_weights(tmp_path / "saved.weights.h5")
    prefix = BACKEND.save_checkpoint(model, str(tmp_path / "ckpt"))

    def fresh():
        return built(second(config), seed=99)  # another init, overwritten below

    for suffix in (".keras", ".weights.h5"):
        other = fresh()
        other.load_weights(tmp_path / f"saved{suffix}")
        assert_same_state(other, model)
    other = fresh()
    BACKEND.restore_checkpoint(other, prefix)
    assert_same_state(other, model)
    x, y = make_data(64)
    for m in (model, other):
        m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_same_state(other, model)


# ----------------------------------------------- other generic behaviour

@pytest.mark.parametrize("info", entries())
def test_learning_rate_scheduler_callback(info):
    def schedule(epoch, lr):
        return 0.02 if epoch == 0 else lr * 0.5

    def run(make):
        return train(make(learning_rate=0.01), epochs=4,
                     callbacks=[keras.callbacks.LearningRateScheduler(schedule)])

    fused, stock = run(info.make), run(info.make_stock)
    assert float(np.asarray(fused.optimizer.learning_rate)) == pytest.approx(0.02 * 0.125)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("info", entries())
def test_exclude_from_weight_decay(info):
    def run(make):
        opt = make(learning_rate=0.01, weight_decay=0.1)
        opt.exclude_from_weight_decay(var_names=["bias"])
        return train(opt)

    fused, stock = run(info.make), run(info.make_stock)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("info", entries())
def test_float64_model_matches_stock(info):
    def run(make):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([
            keras.Input((13,), dtype="float64"),
            keras.layers.Dense(29, activation="tanh", dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ])
        model.compile(optimizer=make(learning_rate=0.01, weight_decay=0.01), loss="mse")
        x, y = make_data()
        model.fit(x.astype("float64"), y.astype("float64"), batch_size=32, epochs=2,
                  shuffle=False, verbose=0)
        return model

    fused, stock = run(info.make), run(info.make_stock)
    assert fused.weights[0].dtype == "float64"
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("info", entries())
def test_apply_in_tf_function_groups_by_dtype(info):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    vars32 = [tf.Variable(rng.standard_normal(s).astype("float32")) for s in [(3,), (4, 5)]]
    vars64 = [tf.Variable(rng.standard_normal(s)) for s in [(7,), (2, 2)]]
    variables = vars32 + vars64
    grads = [tf.constant(rng.standard_normal(v.shape), dtype=v.dtype) for v in variables]
    opt = info.make(learning_rate=0.1)
    opt.build(variables)
    step = tf.function(lambda: opt.apply(grads, variables))
    graph = step.get_concrete_function().graph
    for op_type in info.op_types:  # one op call per dtype
        assert sum(op.type == op_type for op in graph.get_operations()) == 2
    before = [v.numpy() for v in variables]
    step()
    for b, v in zip(before, variables):
        assert not np.any(b == v.numpy())


# ------------------------------------------------- hyperparameter forms

def form_kwargs(info, form, names=None):
    """(fused kwargs, stock kwargs, made values): the hyperparameters `names`
    (default: all of the entry) in `form`, and what the stock optimizer gets
    for each (the number, or the same schedule / callable learning rate)."""
    fused, stock, made = dict(info.base), dict(info.base), {}
    for name, value in info.hyperparameters.items():
        if names is not None and name not in names:
            continue
        made[name] = FORMS[form](value)
        fused[name] = made[name]
        stock[name] = reference_value(name, form, value, made[name])
    return fused, stock, made


@functools.lru_cache(maxsize=None)
def _number_run(info_name, mode, learning_rate_form):
    info = infos(info_name)[0]
    _, stock, _ = form_kwargs(info, learning_rate_form)
    return train(info.stock(**stock), epochs=1, samples=64, run_eagerly=mode == "eager")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", list(FORMS))
# Nesterov SGD reads its hyperparameters as momentum SGD does.
@pytest.mark.parametrize("info", entries("Adam", "AdamW", "SGD", "SGD-momentum"))
def test_hyperparameter_form_trains_like_the_number(info, form, mode):
    """Every hyperparameter of the entry given in `form` trains bit for bit as
    the stock optimizer given the numbers, fused, in a traced graph and eagerly."""
    fused_kwargs, _, _ = form_kwargs(info, form)
    fused = train(info.fused(**fused_kwargs), epochs=1, samples=64, run_eagerly=mode == "eager")
    assert_all_fused(fused.optimizer)
    # The stock optimizer takes a schedule or callable learning rate itself
    # (and then has no learning-rate variable); the numbers otherwise.
    reference_form = form if form in ("schedule", "callable") else "number"
    assert_same_state(fused, _number_run(info.name, mode, reference_form))


@pytest.mark.parametrize("info,name,form", hyperparameter_forms())
def test_hyperparameter_form_has_the_stock_variables_and_config(info, name, form):
    """One hyperparameter in `form`: the optimizer variables (number, order,
    paths, shapes, dtypes) are those of the stock optimizer given the number
    (given the same schedule or callable, for learning_rate), none of them the
    user's value; the config is JSON and round-trips, and equals the stock
    config where the form saves as its number."""
    fused_kwargs, stock_kwargs, made = form_kwargs(info, form, [name])
    fused = info.fused(name="opt", **fused_kwargs)
    stock = info.stock(name="opt", **stock_kwargs)
    model = built(fused)
    stock.build(model.trainable_variables)
    assert layout(fused) == layout(stock)

    config = fused.get_config()
    json.dumps(config)  # what a .keras file needs
    assert type(fused).from_config(config).get_config() == config
    if form not in ("schedule", "callable"):
        assert config == stock.get_config()
    # The value is the one given, read at every step.
    value = getattr(fused, name)
    assert float(np.asarray(value)) == info.hyperparameters[name]


def model_and_slots(model, info):
    """The model's weights and the optimizer's slot variables (the stock
    lists `info.slots` names), not its other variables: the stock class
    tracks a keras.Variable given as beta_1 as one of them."""
    slots = [v for attribute in info.slots.values() for v in getattr(model.optimizer, attribute)]
    return [np.asarray(v) for v in model.weights + slots]


@pytest.mark.parametrize("form", TENSOR_FORMS)
@pytest.mark.parametrize("info", [e for e in entries() if e.values[0].stock_forms])
def test_forms_the_stock_class_takes_train_as_in_it(info, form):
    """Where the stock class takes a tensor or variable hyperparameter, the
    fused optimizer given the same tensors trains as it, bit for bit, with
    values that float32 rounds (a float32 0.8 is not 0.8)."""
    made = {name: FORMS[form](value) for name, value in info.stock_forms.items()}
    fused = train(info.make(**made), epochs=1)
    assert_all_fused(fused.optimizer)
    stock = train(info.make_stock(**made), epochs=1)
    parity.assert_within_ulps(model_and_slots(fused, info), model_and_slots(stock, info),
                              parity.EXACT, form)


def _set_state(model, seed):
    """Distinct values in every variable of the model and its optimizer."""
    rng = np.random.default_rng(seed)
    for v in model.weights + model.optimizer.variables:
        if v.dtype.startswith("int"):
            v.assign(int(rng.integers(1, 100)))
        else:
            v.assign(rng.uniform(0.5, 1.0, tuple(v.shape)).astype(v.dtype))


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("info", entries("Adam", "SGD", "SGD-momentum"))
def test_hyperparameter_form_state_interchanges(tmp_path, info, form):
    """With every hyperparameter in `form`, a weights file (model.save_weights
    / load_weights: the optimizer's save_own_variables, as in a .keras file)
    and a tf.train.Checkpoint restore every variable into the optimizer given
    the numbers, into the stock one, into another optimizer given `form`
    (a user's learning-rate variable gets the restored value), and back."""

    def make(kind):
        """A fresh optimizer (fresh user variables) and its `form` values."""
        fused, stock, made = form_kwargs(info, form)
        if kind == "stock":
            return info.stock(**stock), {}
        if kind == "number":
            # The stock optimizer's layout depends on the learning rate's
            # form only (schedule or callable: no learning-rate variable).
            number = dict(form_kwargs(info, "number")[0], learning_rate=stock["learning_rate"])
            return info.fused(**number), {}
        return info.fused(**fused), made

    readers = {"form": ("number", "stock", "form"), "number": ("form",), "stock": ("form",)}
    for writer, seed in zip(readers, (1, 2, 3)):
        model = built(make(writer)[0])
        _set_state(model, seed)
        weights = tmp_path / f"{writer}.weights.h5"
        model.save_weights(weights)
        prefix = BACKEND.save_checkpoint(model, str(tmp_path / f"{writer}-ckpt"))
        for reader in readers[writer]:
            for load in ("weights", "checkpoint"):
                opt, made = make(reader)
                other = built(opt, seed=99)
                if load == "weights":
                    other.load_weights(weights)
                else:
                    BACKEND.restore_checkpoint(other, prefix)
                assert_same_state(other, model)
                if is_variable(made.get("learning_rate")):
                    assert float(np.asarray(made["learning_rate"])) == float(
                        np.asarray(model.optimizer.learning_rate))


# ------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("info,bad", bad_arguments())
def test_bad_argument_is_refused_like_keras(info, bad):
    """Where the stock class refuses an argument, fusedopt raises the same
    exception type and its message contains Keras'; where only fusedopt
    refuses it, its own error names the argument."""
    if bad.error == KERAS:
        with pytest.raises(Exception) as stock_error:
            info.stock(**bad.kwargs)
        with pytest.raises(Exception) as fused_error:
            info.fused(**bad.kwargs)
        assert type(fused_error.value) is type(stock_error.value), fused_error.value
        assert str(stock_error.value) in str(fused_error.value)
    else:
        # The table is right that the stock class takes it.
        info.stock(**without(bad.kwargs, ("gradient_transformers", "skip_nonfinite")))
        with pytest.raises(bad.error) as fused_error:
            info.fused(**bad.kwargs)
    assert re.search(bad.words, str(fused_error.value)), fused_error.value

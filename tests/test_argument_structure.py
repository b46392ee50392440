"""The argument structure (hyperparameters, gradient transformers, state) of
fusedopt optimizers, and the article's three examples run with fusedopt.

Reference: ../shared/reference/optimizer-argument-structure.md.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import transformers as T

import parity
from training import (assert_same_state, make_data, make_model, state,
                      train)


def op_types(model, x, y):
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    return [op.type for op in graph.get_operations()]


def compiled(opt):
    keras.utils.set_random_seed(1234)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    return model


def snapshot(model):
    model.optimizer.build(model.trainable_variables)
    return state(model)


# --------------------------------------------------------------- hyperparameters

# The forms of every hyperparameter of every optimizer, against the numbers,
# and their variables, configs and saved state: tests/test_optimizer_table.py.


def _sgd_reference(p, m, grads, lr, momenta, nesterov):
    """Keras' SGD momentum rule in float32 NumPy, step by step (no fused
    multiply-add: each operation rounds once, as in the kernel and the stock
    ops)."""
    lr = np.float32(lr)
    for g, mu in zip(grads, momenta):
        mu = np.float32(mu)
        m = m * mu - g * lr
        p = p + (m * mu - g * lr if nesterov else m)
    return p, m


@pytest.mark.parametrize("path", ["fused", "stock"])
@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_momentum_variable_that_starts_at_zero_has_its_buffers(nesterov, mode, path,
                                                               monkeypatch):
    """A momentum variable at 0 when the optimizer is built still gets its
    buffers; assigned 0.875 later, it takes effect at the next step. The rule
    is the momentum rule at every step (at 0 it moves the parameters as plain
    SGD does), on the fused path and on the stock per-variable path alike."""
    if path == "stock":  # the whole step takes the per-variable update
        monkeypatch.setattr(fusedopt._ops, "library", lambda: None)
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(np.float32) for s in [(5,), (3, 4)]]
    grads = [[rng.standard_normal(x.shape).astype(np.float32) for x in start]
             for _ in range(5)]
    momenta = [0.0, 0.0, 0.875, 0.875, 0.875]

    momentum = tf.Variable(0.0)
    variables = [tf.Variable(x) for x in start]
    opt = fusedopt.SGD(learning_rate=0.05, momentum=momentum, nesterov=nesterov)
    step = opt.apply if mode == "eager" else tf.function(opt.apply)
    for g, mu in zip(grads, momenta):
        momentum.assign(mu)
        step([tf.constant(x) for x in g], variables)
    assert opt.get_slot_names() == ["momentum"]
    assert len(opt.momentums) == len(variables)
    expected = "fused" if path == "fused" else "fallback: fused TF ops unavailable"
    assert all(p.startswith(expected) for p in opt.fused_paths.values()), opt.fused_paths
    for i, v in enumerate(variables):
        p, m = _sgd_reference(start[i], np.zeros_like(start[i]), [g[i] for g in grads],
                              0.05, momenta, nesterov)
        np.testing.assert_array_equal(v.numpy(), p)
        np.testing.assert_array_equal(opt.get_slot(v, "momentum").numpy(), m)


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
def test_momentum_variable_assigned_during_fit(run_eagerly, monkeypatch):
    """model.fit with a momentum variable that starts at 0 and is set to 0.875
    after the first epoch: the fused run equals the stock per-variable run bit
    for bit, and differs from plain SGD (the momentum took effect)."""
    def run(momentum):
        assign = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: momentum.assign(0.875))
        return train(fusedopt.SGD(learning_rate=0.05, momentum=momentum), epochs=2,
                     run_eagerly=run_eagerly, callbacks=[assign])

    fused = run(tf.Variable(0.0))
    assert set(fused.optimizer.fused_paths.values()) == {"fused"}
    plain = train(keras.optimizers.SGD(learning_rate=0.05), epochs=2, run_eagerly=run_eagerly)
    for a, b in zip(fused.weights, plain.weights):
        assert not np.array_equal(a.numpy(), b.numpy())
    monkeypatch.setattr(fusedopt._ops, "library", lambda: None)
    stock_path = run(keras.Variable(0.0))
    assert all(p.startswith("fallback") for p in stock_path.optimizer.fused_paths.values())
    assert_same_state(fused, stock_path)


def test_momentum_number_zero_keeps_the_stock_rule():
    """The number 0 is plain SGD without buffers, as in Keras; any other form
    of momentum has them (its value can change)."""
    assert fusedopt.SGD(momentum=0.0).get_slot_names() == []
    for momentum in (tf.constant(0.0), tf.Variable(0.0), keras.Variable(0.0),
                     lambda: 0.0, keras.optimizers.schedules.ExponentialDecay(0.0, 10, 0.5)):
        opt = fusedopt.SGD(momentum=momentum)
        assert opt.get_slot_names() == ["momentum"]
        variables = [tf.Variable(np.ones(3, np.float32))]
        opt.build(variables)
        assert len(opt.momentums) == 1


@pytest.mark.parametrize("make", [tf.Variable, keras.Variable], ids=["tf", "keras"])
def test_learning_rate_variable_is_the_optimizer_variable(make, tmp_path):
    """A learning-rate variable takes the place of the stock optimizer's own
    (same path, same position): it is read at every step, assigning either
    side changes both (the LearningRateScheduler callback assigns the
    optimizer's), and restoring a checkpoint restores it."""
    lr = make(np.float32(0.01))
    opt = fusedopt.Adam(learning_rate=lr, name="opt")
    stock = keras.optimizers.Adam(learning_rate=0.01, name="opt")
    assert [v.path for v in opt.variables] == [v.path for v in stock.variables] == [
        "opt/iteration", "opt/learning_rate"]
    lr.assign(0.5)
    assert float(opt.learning_rate.numpy()) == 0.5
    assert opt.get_config()["learning_rate"] == 0.5
    opt.learning_rate = 0.25
    assert float(np.asarray(lr)) == 0.25

    checkpoint = tf.train.Checkpoint(optimizer=opt)
    prefix = checkpoint.save(str(tmp_path / "ckpt"))
    lr.assign(0.125)
    checkpoint.restore(prefix).assert_consumed()
    assert float(np.asarray(lr)) == 0.25


def test_numpy_hyperparameters_save_as_numbers(tmp_path):
    """NumPy scalars and 0-d arrays are numbers from construction on: the
    optimizer trains, saves to a .keras file and loads back (Keras opens the
    file before it serializes the config, so a failure here left it empty)."""
    opt = fusedopt.Adam(learning_rate=np.float64(0.01), beta_1=np.array(0.9),
                        beta_2=np.float32(0.5), epsilon=np.array(1e-7, np.float32),
                        weight_decay=np.int64(0))
    for name, value in [("beta_1", 0.9), ("beta_2", 0.5), ("weight_decay", 0.0)]:
        assert type(getattr(opt, name)) is float and getattr(opt, name) == value
    model = train(opt, epochs=1, samples=64)
    stock = train(keras.optimizers.Adam(learning_rate=0.01, beta_1=0.9, beta_2=0.5,
                                        epsilon=float(np.float32(1e-7)), weight_decay=0.0),
                  epochs=1, samples=64)
    assert_same_state(model, stock)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.beta_1 == 0.9
    assert_same_state(model, loaded)


def test_keras_variable_hyperparameters_are_not_optimizer_variables():
    """A keras.Variable given as beta_1 (or momentum, weight_decay) stays the
    user's: it is not tracked as an optimizer variable, as the stock class
    given a keras.Variable does, so the layout is that of the numbers."""
    beta_1 = keras.Variable(np.float32(0.875))
    opt = fusedopt.Adam(beta_1=beta_1, weight_decay=keras.Variable(np.float32(0.0625)))
    assert len(opt.variables) == len(keras.optimizers.Adam().variables) == 2
    opt.beta_1 = keras.Variable(np.float32(0.5))  # assigned later too
    assert len(opt.variables) == 2
    sgd = fusedopt.SGD(momentum=keras.Variable(np.float32(0.5)))
    assert len(sgd.variables) == 2


def test_variable_hyperparameters_take_effect_at_the_next_step_in_graph_mode():
    lr, beta_1 = tf.Variable(0.01), tf.Variable(0.9)
    stock_beta_1 = tf.Variable(0.9)  # stock Keras reads a tf.Variable beta too
    fused_model = compiled(fusedopt.Adam(learning_rate=lr, beta_1=beta_1))
    stock_model = compiled(keras.optimizers.Adam(learning_rate=0.01, beta_1=stock_beta_1))
    x, y = make_data(64)
    for step in range(4):
        fused_model.train_on_batch(x, y)
        stock_model.train_on_batch(x, y)
        lr.assign(lr * 0.5)
        beta_1.assign(0.5 + 0.1 * step)
        stock_model.optimizer.learning_rate = float(lr.numpy())
        stock_beta_1.assign(beta_1)
    # The user's learning-rate variable is the fused optimizer's own: every
    # variable (the learning rate's included) equals the stock optimizer's.
    assert_same_state(fused_model, stock_model)
    opt, stock_opt = fused_model.optimizer, stock_model.optimizer
    for i, var in enumerate(fused_model.trainable_variables):
        np.testing.assert_array_equal(opt.get_slot(var, "momentum").numpy(),
                                      stock_opt._momentums[i].numpy())
        np.testing.assert_array_equal(opt.get_slot(var, "velocity").numpy(),
                                      stock_opt._velocities[i].numpy())


def test_schedule_for_beta_is_called_with_the_step():
    beta = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.9, 0.5])
    fused = compiled(fusedopt.Adam(learning_rate=0.01, beta_1=beta))
    beta_var = tf.Variable(0.9)
    stock = compiled(keras.optimizers.Adam(learning_rate=0.01, beta_1=beta_var))
    x, y = make_data(64)
    for step in range(4):
        beta_var.assign(0.9 if step <= 1 else 0.5)
        fused.train_on_batch(x, y)
        stock.train_on_batch(x, y)
    assert_same_state(fused, stock)


def test_sgd_momentum_range_is_closed():
    # Refused values (1.5, "high", ...): the table's bad arguments.
    assert fusedopt.SGD(momentum=1.0).momentum == 1.0  # [0, 1] is closed


# ---------------------------------------------------------- gradient transformers

def clip_gradients(grads_and_vars):
    """The article's Example 2, verbatim."""
    clipped_grads_and_vars = [(tf.clip_by_value(grad, -1.0, 1.0), var)
                              for grad, var in grads_and_vars
                              if grad is not None]
    return clipped_grads_and_vars


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
def test_article_example_2_equals_clipvalue(run_eagerly):
    # A learning rate and targets large enough that gradients exceed 1.
    def run(opt):
        keras.utils.set_random_seed(5)
        model = make_model()
        model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly)
        x, y = make_data()
        model.fit(x, 30 * y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model

    example = run(fusedopt.Adam(learning_rate=0.001, gradient_transformers=[clip_gradients]))
    keras_arg = run(fusedopt.Adam(learning_rate=0.001, clipvalue=1.0))
    stock = run(keras.optimizers.Adam(learning_rate=0.001, clipvalue=1.0))
    assert_same_state(example, stock)
    assert_same_state(keras_arg, stock)


@pytest.mark.parametrize("builtin,keras_arg", [
    (T.clip_by_value(-0.01, 0.01), dict(clipvalue=0.01)),
    (T.clip_by_norm(0.05), dict(clipnorm=0.05)),
    (T.clip_by_global_norm(0.1), dict(global_clipnorm=0.1)),
], ids=["value", "norm", "global_norm"])
def test_builtins_match_keras_clip_arguments_and_run_fused(builtin, keras_arg):
    fused = parity.fit_parity(
        lambda: fusedopt.Adam(learning_rate=0.01, gradient_transformers=[builtin]),
        lambda: keras.optimizers.Adam(learning_rate=0.01, **keras_arg),
        parity.EXACT if builtin.kind == "value" else parity.NORM_CLIP)
    assert set(fused.optimizer.fused_paths.values()) == {"fused"}

    x, y = make_data(32)
    for opt in (fusedopt.Adam(gradient_transformers=[builtin]), fusedopt.Adam(**keras_arg)):
        types = op_types(compiled(opt), x, y)
        assert types.count("FusedoptAdam") == 1
        # Folded: no per-variable clip ops and no clip formula in TF ops (the
        # factors come from FusedoptClipFactors, csrc/kernels/clip.h), one
        # fused reduction for the norms.
        assert "ClipByValue" not in types and "Minimum" not in types
        assert types.count("FusedoptSquaredNorms") == (0 if builtin.kind == "value" else 1)
        assert types.count("FusedoptClipFactors") == (0 if builtin.kind == "value" else 1)


def test_global_norm_clipping_is_deterministic():
    runs = [state(train(fusedopt.Adam(learning_rate=0.01, global_clipnorm=0.1)))
            for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_builtins_work_on_their_own():
    rng = np.random.default_rng(0)
    var = [tf.Variable(rng.standard_normal(s).astype("float32")) for s in [(3, 4), (5,)]]
    grads = [tf.constant(4 * rng.standard_normal(v.shape).astype("float32")) for v in var]
    pairs = list(zip(grads, var))
    out = T.clip_by_value(-0.5, 0.5)(pairs)
    assert [v for _, v in out] == var
    np.testing.assert_array_equal(out[0][0], np.clip(grads[0], -0.5, 0.5))
    out = T.clip_by_norm(1.0)(pairs)
    np.testing.assert_allclose(np.linalg.norm(out[1][0]), 1.0, rtol=1e-6)
    out = T.clip_by_global_norm(1.0)(pairs)
    total = np.sqrt(sum(np.sum(np.square(g)) for g, _ in out))
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)


def test_transformers_run_in_order_after_keras_clipping():
    seen = []

    def record_max(grads_and_vars):
        seen.append(max(float(tf.reduce_max(tf.abs(g))) for g, _ in grads_and_vars))
        return grads_and_vars

    def halve(grads_and_vars):
        return [(g * 0.5, v) for g, v in grads_and_vars]

    model = compiled(fusedopt.Adam(clipvalue=0.001, gradient_transformers=[record_max, halve]))
    model.run_eagerly = True
    x, y = make_data(32)
    model.train_on_batch(x, 30 * y)
    assert seen and seen[-1] <= 0.001 + 1e-9

    # A custom transformer followed by a folded built-in: halve, then clip by
    # the global norm, equals stock Keras with the loss scaled by 1/2 (Keras
    # unscales before clipping).
    fused = parity.fit_parity(
        lambda: fusedopt.Adam(learning_rate=0.01,
                              gradient_transformers=[halve, T.clip_by_global_norm(0.02)]),
        lambda: keras.optimizers.Adam(learning_rate=0.01, global_clipnorm=0.02,
                                      loss_scale_factor=2.0),
        parity.NORM_CLIP)
    assert set(fused.optimizer.fused_paths.values()) == {"fused"}


def _drop_last(grads_and_vars):
    return grads_and_vars[:-1]


def _swap(grads_and_vars):
    return list(reversed(grads_and_vars))


def _reshape(grads_and_vars):
    (g, v), rest = grads_and_vars[0], grads_and_vars[1:]
    return [(tf.reshape(g, [-1]), v)] + rest


def _to_float64(grads_and_vars):
    return [(tf.cast(g, tf.float64), v) for g, v in grads_and_vars]


def _not_a_list(grads_and_vars):
    return {v.path: g for g, v in grads_and_vars}


class _Opaque:
    def __call__(self, grads_and_vars):
        return [(g, v) for g, v in grads_and_vars][:1]


@pytest.mark.parametrize("transformer,error,words", [
    (_drop_last, ValueError, "_drop_last returned 5 pairs for 6"),
    (_swap, ValueError, "_swap returned variable"),
    (_reshape, ValueError, "_reshape returned a gradient of shape"),
    (_to_float64, ValueError, "_to_float64 returned a float64 gradient"),
    (_not_a_list, TypeError, "_not_a_list must return a list"),
    (_Opaque(), ValueError, "_Opaque object"),
])
@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
def test_bad_transformer_output_is_named_and_nothing_is_written(transformer, error, words,
                                                                run_eagerly):
    model = compiled(fusedopt.Adam(gradient_transformers=[transformer]))
    model.run_eagerly = run_eagerly
    before = snapshot(model)
    x, y = make_data(32)
    with pytest.raises(error, match=words):
        model.train_on_batch(x, y)
    for a, b in zip(before, state(model)):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------- state


# ------------------------------------------------------------------ serialization

@keras.saving.register_keras_serializable(package="fusedopt_tests")
def double_gradients(grads_and_vars):
    return [(2.0 * g, v) for g, v in grads_and_vars]


def test_config_round_trip_with_transformers_and_hyperparameters():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)
    opt = fusedopt.Adam(learning_rate=schedule, beta_1=tf.Variable(0.8),
                        gradient_transformers=[double_gradients, T.clip_by_value(-1.0, 2.0),
                                               T.clip_by_global_norm(3.0)])
    config = opt.get_config()
    assert config["beta_1"] == pytest.approx(0.8)
    restored = fusedopt.Adam.from_config(config)
    assert restored.get_config() == config
    assert restored.gradient_transformers[0] is double_gradients
    assert repr(restored.gradient_transformers[1]) == "ClipByValue(min_value=-1.0, max_value=2.0)"
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is fusedopt.Adam and again.get_config() == config


def test_keras_file_round_trip_with_builtins(tmp_path):
    model = train(fusedopt.Adam(learning_rate=0.01,
                                gradient_transformers=[T.clip_by_norm(0.5)]), epochs=1)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert repr(loaded.optimizer.gradient_transformers[0]) == "ClipByNorm(max_norm=0.5)"
    assert_same_state(model, loaded)


def test_unregistered_callables_fail_clearly_at_save_time(tmp_path):
    model = compiled(fusedopt.Adam(gradient_transformers=[lambda gv: gv]))
    with pytest.raises(TypeError, match=r"gradient_transformers\[0\].*register_keras_serializable"):
        model.save(tmp_path / "m.keras")
    model = compiled(fusedopt.Adam(beta_1=lambda: 0.9))
    with pytest.raises(TypeError, match="beta_1.*register_keras_serializable"):
        model.save(tmp_path / "m2.keras")


# ------------------------------------------------------------ the article examples

def test_article_example_1():
    optimizer = fusedopt.Adam(learning_rate=0.001)
    model = compiled(optimizer)
    x, y = make_data()
    model.fit(x, y, epochs=1, verbose=0)
    assert optimizer.learning_rate.numpy() == pytest.approx(0.001)
    assert set(optimizer.fused_paths.values()) == {"fused"}


def test_article_example_3():
    # As written in the article, with fusedopt.Adam in place of
    # tf.keras.optimizers.experimental.Adam, and `model`, X_train, y_train defined.
    keras.utils.set_random_seed(0)
    model = make_model()
    X_train, y_train = make_data()

    def learning_rate_scheduler(epoch):
        # Example: Reduce learning rate by half every 10 epochs
        if epoch % 10 == 0 and epoch > 0:
            return 0.5 * tf.keras.backend.get_value(optimizer.learning_rate)
        return tf.keras.backend.get_value(optimizer.learning_rate)

    optimizer = fusedopt.Adam(learning_rate=0.01)
    lr_callback = tf.keras.callbacks.LearningRateScheduler(learning_rate_scheduler)
    model.compile(optimizer=optimizer, loss='mse')
    model.fit(X_train, y_train, epochs=21, callbacks=[lr_callback], verbose=0)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.0025)
    assert set(optimizer.fused_paths.values()) == {"fused"}


def test_plain_tf_variables_are_reported_and_named():
    variables = [tf.Variable(np.full(4, 1.0 + i, np.float32)) for i in range(3)]
    grads = [tf.constant(np.full(4, 0.5, np.float32)) for _ in variables]
    opt = fusedopt.Adam(clipnorm=1.0)
    opt.apply(grads, variables)
    assert opt.fused_paths == {f"Variable:0[{i}]": "fused" for i in range(3)}
    def to_square(grads_and_vars):
        return [(tf.reshape(g, [2, 2]), v) for g, v in grads_and_vars]

    bad = fusedopt.Adam(gradient_transformers=[to_square])
    with pytest.raises(ValueError, match=r"to_square returned a gradient of shape \(2, 2\) for "
                                         "variable 'Variable:0'"):
        bad.apply(grads, variables)


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "in_chain"])
def test_builtin_threshold_schedule_is_called_with_the_step(folded):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.02])
    variable = tf.Variable(0.1)
    # A transformer after the built-in keeps it from being folded.
    tail = [] if folded else [lambda gv: gv]
    scheduled = compiled(fusedopt.Adam(
        learning_rate=0.01, gradient_transformers=[T.clip_by_global_norm(schedule)] + tail))
    manual = compiled(fusedopt.Adam(
        learning_rate=0.01, gradient_transformers=[T.clip_by_global_norm(variable)] + tail))
    x, y = make_data(64)
    for step in range(4):
        variable.assign(0.1 if step <= 1 else 0.02)
        scheduled.train_on_batch(x, y)
        manual.train_on_batch(x, y)
    for a, b in zip(scheduled.weights, manual.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_builtin_with_a_schedule_needs_the_step_on_its_own():
    clip = T.clip_by_norm(keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5))
    var = tf.Variable(np.ones(3, np.float32))
    pairs = [(tf.constant(np.full(3, 5.0, np.float32)), var)]
    with pytest.raises(TypeError, match="needs the step"):
        clip(pairs)
    (grad, _), = clip(pairs, step=10)  # max_norm 0.5 at step 10
    np.testing.assert_allclose(np.linalg.norm(grad), 0.5, rtol=1e-6)

"""fusedopt.SGD: what is specific to it.

What every optimizer must do (fit parity with the stock class for every
configuration of plain, momentum and Nesterov SGD, config, variables, slots,
saving, checkpoints, every hyperparameter form, bad arguments) is tested once
for all of them over the table in tests/optimizer_table.py
(tests/test_optimizer_table.py). Here: the op calls of the traced step
(Grappler's products, attributes), runtime hyperparameters, plain SGD without
buffers, 16-bit variables.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt

from training import assert_same_state, make_data, make_model, train


def assert_all_fused(opt):
    paths = opt.fused_paths
    assert paths, "no update step was recorded"
    assert set(paths.values()) == {"fused"}, paths


def fused_ops(graph):
    return [op for op in graph.get_operations() if op.type == "FusedoptSgd"]


SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7)

VARIANTS = {
    "plain": dict(),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.8, nesterov=True),
}


def _keep(pairs):
    """A gradient transformer that changes nothing: it keeps Keras' clipping
    as the stock TF ops (clipping is folded only when nothing runs between it
    and the update)."""
    return pairs


@pytest.mark.parametrize("kwargs", [
    dict(global_clipnorm=0.1),
    dict(global_clipnorm=0.1, gradient_transformers=[_keep]),
    dict(gradient_accumulation_steps=3),
    dict(loss_scale_factor=3.0, momentum=0.9),
    dict(clipnorm=0.1, nesterov=True, momentum=0.9),
], ids=["global_clipnorm", "global_clipnorm_stock_clip", "accumulation", "loss_scale",
        "clipnorm"])
def test_products_take_one_op(kwargs):
    """Gradients that are products (clip scales, accumulation, loss scaling)
    still take one op call for all variables."""
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=fusedopt.SGD(learning_rate=0.05, **kwargs), loss="mse")
    x, y = make_data(32)
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    ops = [op for g in [graph] + [f.graph for f in graph._functions.values()]
           for op in fused_ops(g)]
    assert len(ops) == 1, [op.name for op in ops]
    assert_all_fused(model.optimizer)


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
def test_single_variable_with_schedule(run_eagerly):
    """One variable: the schedule's learning rate tensor has one consumer."""
    def run(cls):
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(3, use_bias=False)])
        opt = cls(learning_rate=SCHEDULE, momentum=0.5, gradient_accumulation_steps=2)
        model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly)
        x, y = make_data()
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model

    fused, stock = run(fusedopt.SGD), run(keras.optimizers.SGD)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_traced_train_step_contains_one_fused_op(variant):
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=fusedopt.SGD(**VARIANTS[variant]), loss="mse")
    x, y = make_data(32)
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    [op] = fused_ops(graph)
    n = len(model.trainable_variables)
    assert op.get_attr("N") == n
    assert op.get_attr("M") == (0 if variant == "plain" else n)
    assert op.get_attr("nesterov") == (variant == "nesterov")
    # No per-variable update ops are left: the stock step assigns every
    # variable (AssignSubVariableOp / AssignAddVariableOp) once.
    assign = {"AssignSubVariableOp", "AssignAddVariableOp"}
    assert not [o for o in graph.get_operations() if o.type in assign]
    assert_all_fused(model.optimizer)

    stock = make_model()
    stock.compile(optimizer=keras.optimizers.SGD(**VARIANTS[variant]), loss="mse")
    stock_graph = tf.function(stock.train_step).get_concrete_function((x, y)).graph
    assert not fused_ops(stock_graph)
    assert len([o for o in stock_graph.get_operations() if o.type in assign]) == n


def test_hyperparameters_are_runtime_inputs_not_attributes():
    """Changing the learning rate variable takes effect without retracing."""
    rng = np.random.default_rng(5)
    variables = [tf.Variable(rng.standard_normal(s).astype("float32")) for s in [(3,), (4, 5)]]
    grads = [tf.constant(rng.standard_normal(v.shape), dtype=v.dtype) for v in variables]
    opt = fusedopt.SGD(learning_rate=0.1, momentum=0.5)
    opt.build(variables)
    step = tf.function(lambda: opt.apply(grads, variables))
    before = [v.numpy() for v in variables]
    step()
    opt.learning_rate.assign(0.0)
    after_first = [v.numpy() for v in variables]
    moments = [m.numpy() for m in opt.momentums]
    step()  # lr = 0: m = m * 0.5, p += m
    assert step.experimental_get_tracing_count() == 1
    for b, a1, v, m in zip(before, after_first, variables, moments):
        assert not np.any(b == a1)
        np.testing.assert_array_equal(v.numpy(), a1 + m * np.float32(0.5))


def test_momentum_zero_has_no_slots_and_nesterov_zero_momentum_is_plain():
    for kwargs in (dict(), dict(nesterov=True)):
        fused = train(fusedopt.SGD(learning_rate=0.05, **kwargs), epochs=1)
        stock = train(keras.optimizers.SGD(learning_rate=0.05, **kwargs), epochs=1)
        assert fused.optimizer.momentums == []
        assert_all_fused(fused.optimizer)
        assert_same_state(fused, stock)


# Sparse (Embedding) gradients: tests/test_sparse.py; XLA: tests/test_xla.py.


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_float16_variables_fuse(variant):
    # float16/bfloat16 in depth: tests/test_mixed_precision.py.
    v = tf.Variable(np.ones(5, np.float16))
    opt = fusedopt.SGD(learning_rate=0.1, **VARIANTS[variant])
    opt.apply([tf.constant(np.full(5, 0.5, np.float16))], [v])
    assert list(opt.fused_paths.values()) == ["fused"]
    # m = -0.05; plain and momentum: p - 0.05; Nesterov: p + m * 0.8 - 0.05.
    expected = 0.91 if variant == "nesterov" else 0.95
    np.testing.assert_array_equal(v.numpy(), np.full(5, expected, np.float16))


def test_mixed_float16_and_float32_variables():
    rng = np.random.default_rng(6)
    values = [rng.standard_normal(4).astype(np.float16), rng.standard_normal(3).astype(np.float32)]
    grads = [tf.constant(rng.standard_normal(x.shape).astype(x.dtype)) for x in values]

    def run(cls):
        variables = [tf.Variable(x, name=f"v{i}") for i, x in enumerate(values)]
        opt = cls(learning_rate=0.1, momentum=0.9)
        for _ in range(3):
            opt.apply(grads, variables)
        return opt, [v.numpy() for v in variables]

    fused_opt, fused = run(fusedopt.SGD)
    _, stock = run(keras.optimizers.SGD)
    assert list(fused_opt.fused_paths.values()) == ["fused", "fused"]  # one op per dtype
    # float16: float32 math rounded once per value, where stock rounds every
    # op to float16 (tests/test_mixed_precision.py): a few float16 ulps of the
    # momentum and parameters (about 0.5 to 3).
    np.testing.assert_allclose(fused[0], stock[0], rtol=2 * 2**-10, atol=4 * 2**-11)
    np.testing.assert_array_equal(fused[1], stock[1])

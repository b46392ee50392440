"""fusedopt.SGD against the stock keras.optimizers.SGD in real training.

Parity is checked bit for bit (float32 and float64, CPU): the fused op
computes the same operations in the same order as
keras.optimizers.SGD.update_step. Every test also checks which path ran: the
fused op in the traced graph, or the stock fallback where the op does not
apply.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt

import parity
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

# Every stock argument the issue lists; each runs through model.fit with each
# variant.
CASES = {
    "defaults": dict(),
    "lr": dict(learning_rate=0.03),
    "lr_schedule": dict(learning_rate=SCHEDULE),
    "clipnorm": dict(learning_rate=0.05, clipnorm=0.05),
    "clipvalue": dict(learning_rate=0.05, clipvalue=0.01),
    "global_clipnorm": dict(learning_rate=0.05, global_clipnorm=0.1),
    "weight_decay": dict(learning_rate=0.05, weight_decay=0.05),
    "use_ema": dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9,
                    ema_overwrite_frequency=4),
    "gradient_accumulation": dict(learning_rate=0.05, gradient_accumulation_steps=3),
    "loss_scale_factor": dict(learning_rate=0.05, loss_scale_factor=128.0),
    # Not a power of two: x / 3 rounds, and Grappler turns it into x * (1/3).
    "loss_scale_factor_3": dict(learning_rate=0.05, loss_scale_factor=3.0),
    "accumulation_and_loss_scale": dict(learning_rate=0.05, gradient_accumulation_steps=3,
                                        loss_scale_factor=3.0, weight_decay=0.01),
    "accumulation_and_global_clipnorm": dict(learning_rate=0.05,
                                             gradient_accumulation_steps=2,
                                             global_clipnorm=0.1),
}

# Clipping by norm is folded into the fused op, whose squared-norm reduction
# sums in another order than TF's reduce_sum (parity.NORM_CLIP).
NORM_CLIP_CASES = {"clipnorm", "global_clipnorm", "accumulation_and_global_clipnorm"}
# Gradients that are products, whose `gradient * lr` Grappler rewrites in
# traced graphs (parity.GRAPPLER_PRODUCT); 128 is a power of two: exact.
PRODUCT_CASES = {"gradient_accumulation", "loss_scale_factor_3", "accumulation_and_loss_scale"}


def contract(case, run_eagerly):
    if case in NORM_CLIP_CASES:
        return parity.NORM_CLIP
    if case in PRODUCT_CASES and not run_eagerly:
        return parity.GRAPPLER_PRODUCT
    return parity.EXACT


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_stock_in_fit(variant, case, run_eagerly):
    kwargs = {**VARIANTS[variant], **CASES[case]}
    fused = parity.fit_parity(lambda: fusedopt.SGD(**kwargs),
                              lambda: keras.optimizers.SGD(**kwargs),
                              contract(case, run_eagerly), run_eagerly=run_eagerly)
    assert_all_fused(fused.optimizer)


def _keep(pairs):
    """A gradient transformer that changes nothing: it keeps Keras' clipping
    as the stock TF ops (clipping is folded only when nothing runs between it
    and the update)."""
    return pairs


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("case", sorted(NORM_CLIP_CASES))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stock_norm_clipping_then_fused_update(variant, case, run_eagerly):
    """With the stock clipping ops in front, the update itself is bit-exact
    eagerly; in traced graphs Grappler computes the stock (g * scale) * lr of
    a global clip as g * (scale * lr) (parity.GRAPPLER_PRODUCT)."""
    kwargs = {**VARIANTS[variant], **CASES[case]}
    product = "global_clipnorm" in case or "accumulation" in case
    fused = parity.fit_parity(
        lambda: fusedopt.SGD(**kwargs, gradient_transformers=[_keep]),
        lambda: keras.optimizers.SGD(**kwargs),
        parity.GRAPPLER_PRODUCT if product and not run_eagerly else parity.EXACT,
        run_eagerly=run_eagerly)
    assert_all_fused(fused.optimizer)


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
def test_weight_decay_with_excluded_variables(variant):
    def run(cls):
        opt = cls(learning_rate=0.05, weight_decay=0.1, **VARIANTS[variant])
        opt.exclude_from_weight_decay(var_names=["bias"])
        return train(opt)

    fused, stock = run(fusedopt.SGD), run(keras.optimizers.SGD)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


def test_learning_rate_scheduler_callback():
    def schedule(epoch, lr):
        return 0.05 if epoch == 0 else lr * 0.5

    def run(cls):
        return train(cls(learning_rate=0.01, momentum=0.9), epochs=4,
                     callbacks=[keras.callbacks.LearningRateScheduler(schedule)])

    fused, stock = run(fusedopt.SGD), run(keras.optimizers.SGD)
    assert float(fused.optimizer.learning_rate.numpy()) == pytest.approx(0.05 * 0.125)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_float64_model_matches_stock(variant):
    def run(cls):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([
            keras.Input((13,), dtype="float64"),
            keras.layers.Dense(29, activation="tanh", dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ])
        opt = cls(learning_rate=0.03, weight_decay=0.01, **VARIANTS[variant])
        model.compile(optimizer=opt, loss="mse")
        x, y = make_data()
        model.fit(x.astype("float64"), y.astype("float64"), batch_size=32, epochs=2,
                  shuffle=False, verbose=0)
        return model

    fused, stock = run(fusedopt.SGD), run(keras.optimizers.SGD)
    assert fused.weights[0].dtype == "float64"
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


def test_apply_in_tf_function_groups_by_dtype():
    rng = np.random.default_rng(5)
    vars32 = [tf.Variable(rng.standard_normal(s).astype("float32")) for s in [(3,), (4, 5)]]
    vars64 = [tf.Variable(rng.standard_normal(s)) for s in [(7,), (2, 2)]]
    variables = vars32 + vars64
    grads = [tf.constant(rng.standard_normal(v.shape), dtype=v.dtype) for v in variables]
    opt = fusedopt.SGD(learning_rate=0.1, momentum=0.9)
    opt.build(variables)
    step = tf.function(lambda: opt.apply(grads, variables))
    graph = step.get_concrete_function().graph
    assert len(fused_ops(graph)) == 2  # one per dtype
    before = [v.numpy() for v in variables]
    step()
    for b, v in zip(before, variables):
        assert not np.any(b == v.numpy())


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


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_and_variables_match_stock(variant):
    kwargs = dict(learning_rate=0.003, clipnorm=1.5, use_ema=True, **VARIANTS[variant])
    fused = fusedopt.SGD(name="opt", **kwargs)
    stock = keras.optimizers.SGD(name="opt", **kwargs)
    assert fused.get_config() == stock.get_config()
    assert isinstance(fused, keras.optimizers.SGD) and isinstance(fused, fusedopt.Optimizer)
    a, b = train(fused, epochs=1), train(stock, epochs=1)

    def layout(model):  # model names differ (sequential_3 vs _4): drop them
        return [(re.sub(r"sequential(_\d+)?_", "", v.path), v.shape)
                for v in model.optimizer.variables]

    assert layout(a) == layout(b)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(fused))
    assert type(restored) is fusedopt.SGD
    assert restored.get_config() == fused.get_config()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_keras_file_round_trip(tmp_path, variant):
    model = train(fusedopt.SGD(learning_rate=0.05, **VARIANTS[variant]), epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered
    assert type(loaded.optimizer) is fusedopt.SGD
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert_same_state(model, loaded)
    # Training on continues identically.
    x, y = make_data()
    for m in (model, loaded):
        m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_same_state(model, loaded)


@pytest.mark.parametrize("first,second", [(fusedopt.SGD, keras.optimizers.SGD),
                                          (keras.optimizers.SGD, fusedopt.SGD)],
                         ids=["fused-to-stock", "stock-to-fused"])
def test_checkpoint_interchanges_with_stock(tmp_path, first, second):
    x, y = make_data()
    keras.utils.set_random_seed(11)
    model = make_model()
    model.compile(optimizer=first(learning_rate=0.05, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt"))

    keras.utils.set_random_seed(99)  # different init: restore must overwrite it
    other = make_model()
    other.compile(optimizer=second(learning_rate=0.05, momentum=0.9), loss="mse")
    other.optimizer.build(other.trainable_variables)
    tf.train.Checkpoint(model=other, optimizer=other.optimizer).restore(prefix).assert_consumed()
    assert_same_state(model, other)
    for m in (model, other):
        m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_same_state(model, other)


def test_slots():
    fused = train(fusedopt.SGD(learning_rate=0.05, momentum=0.9), epochs=1)
    opt = fused.optimizer
    assert opt.get_slot_names() == ["momentum"]
    kernel = fused.trainable_variables[0]
    assert opt.get_slot(kernel, "momentum") is opt.momentums[0]
    with pytest.raises(KeyError, match="momentum"):
        opt.get_slot(kernel, "velocity")
    plain = train(fusedopt.SGD(learning_rate=0.05), epochs=1).optimizer
    assert plain.get_slot_names() == []
    assert fusedopt.SGD(momentum=0.5).get_slot_names() == ["momentum"]


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_momentum_out_of_range_is_refused(momentum):
    with pytest.raises(ValueError, match="momentum"):
        fusedopt.SGD(momentum=momentum)

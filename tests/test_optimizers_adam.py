"""fusedopt.Adam / AdamW against the stock Keras optimizers in real training.

Parity is the contract of docs/design.md (tests/parity.py): bit for bit
(float32, CPU), since the fused op computes the same operations in the same
order as keras.optimizers.Adam.update_step, except with a folded clip by norm. Every test
also checks which path ran: the fused op in the traced graph, or the stock
fallback where the op does not apply.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _build_config, _ops

import parity
from training import assert_same_state, make_data, make_model, train

STOCK = {fusedopt.Adam: keras.optimizers.Adam, fusedopt.AdamW: keras.optimizers.AdamW}


def assert_all_fused(opt):
    paths = opt.fused_paths
    assert paths, "no update step was recorded"
    assert set(paths.values()) == {"fused"}, paths


def fused_op_count(graph):
    return sum(op.type == "FusedoptAdam" for op in graph.get_operations())


SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.7)

# Every stock argument the issue lists; each runs through model.fit.
CASES = {
    "defaults": dict(),
    "lr_schedule": dict(learning_rate=SCHEDULE),
    "clipnorm": dict(learning_rate=0.01, clipnorm=0.05),
    "clipvalue": dict(learning_rate=0.01, clipvalue=0.01),
    "global_clipnorm": dict(learning_rate=0.01, global_clipnorm=0.1),
    "weight_decay": dict(learning_rate=0.01, weight_decay=0.05),
    "use_ema": dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9,
                    ema_overwrite_frequency=4),
    "gradient_accumulation": dict(learning_rate=0.01, gradient_accumulation_steps=3),
    "loss_scale_factor": dict(learning_rate=0.01, loss_scale_factor=128.0),
    "betas_epsilon": dict(learning_rate=0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-4),
}


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.AdamW], ids=["Adam", "AdamW"])
def test_matches_stock_in_fit(cls, case, run_eagerly):
    kwargs = CASES[case]
    bound = parity.NORM_CLIP if case in ("clipnorm", "global_clipnorm") else parity.EXACT
    fused = parity.fit_parity(lambda: cls(**kwargs), lambda: STOCK[cls](**kwargs), bound,
                              run_eagerly=run_eagerly)
    assert_all_fused(fused.optimizer)


def test_learning_rate_scheduler_callback():
    def schedule(epoch, lr):
        return 0.02 if epoch == 0 else lr * 0.5

    def run(cls):
        return train(cls(learning_rate=0.01), epochs=4,
                     callbacks=[keras.callbacks.LearningRateScheduler(schedule)])

    fused, stock = run(fusedopt.Adam), run(keras.optimizers.Adam)
    assert float(fused.optimizer.learning_rate.numpy()) == pytest.approx(0.02 * 0.125)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


def test_adamw_exclude_from_weight_decay():
    def run(cls):
        opt = cls(learning_rate=0.01, weight_decay=0.1)
        opt.exclude_from_weight_decay(var_names=["bias"])
        return train(opt)

    fused, stock = run(fusedopt.AdamW), run(keras.optimizers.AdamW)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


def test_float64_model_matches_stock():
    def run(cls):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([
            keras.Input((13,), dtype="float64"),
            keras.layers.Dense(29, activation="tanh", dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ])
        model.compile(optimizer=cls(learning_rate=0.01, weight_decay=0.01), loss="mse")
        x, y = make_data()
        model.fit(x.astype("float64"), y.astype("float64"), batch_size=32, epochs=2,
                  shuffle=False, verbose=0)
        return model

    fused, stock = run(fusedopt.Adam), run(keras.optimizers.Adam)
    assert fused.weights[0].dtype == "float64"
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


def test_traced_train_step_contains_one_fused_op():
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=fusedopt.Adam(), loss="mse")
    x, y = make_data(32)
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    assert fused_op_count(graph) == 1
    # The stock step has two Sqrt per variable (sqrt(v) and the bias
    # correction); the fused one computes only sqrt(1 - beta_2^t), once.
    assert sum(op.type == "Sqrt" for op in graph.get_operations()) == 1

    stock = make_model()
    stock.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    stock_graph = tf.function(stock.train_step).get_concrete_function((x, y)).graph
    assert fused_op_count(stock_graph) == 0
    assert sum(op.type == "Sqrt" for op in stock_graph.get_operations()) == 2 * len(stock.weights)


def test_apply_in_tf_function_groups_by_dtype():
    rng = np.random.default_rng(5)
    vars32 = [tf.Variable(rng.standard_normal(s).astype("float32")) for s in [(3,), (4, 5)]]
    vars64 = [tf.Variable(rng.standard_normal(s)) for s in [(7,), (2, 2)]]
    variables = vars32 + vars64
    grads = [tf.constant(rng.standard_normal(v.shape), dtype=v.dtype) for v in variables]
    opt = fusedopt.Adam(learning_rate=0.1)
    opt.build(variables)
    step = tf.function(lambda: opt.apply(grads, variables))
    graph = step.get_concrete_function().graph
    assert fused_op_count(graph) == 2  # one per dtype
    before = [v.numpy() for v in variables]
    step()
    for b, v in zip(before, variables):
        assert not np.any(b == v.numpy())


def run_fallback(cls_kwargs, build_model, data, jit_compile=False):
    """Trains with fusedopt.Adam and stock Adam; returns (fused, stock) models."""
    def run(cls):
        keras.utils.set_random_seed(7)
        model = build_model()
        model.compile(optimizer=cls(**cls_kwargs), loss="mse", jit_compile=jit_compile)
        model.fit(*data, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model

    return run(fusedopt.Adam), run(keras.optimizers.Adam)


def test_amsgrad_falls_back_to_stock():
    fused, stock = run_fallback(dict(amsgrad=True), make_model, make_data(64))
    assert all(p.startswith("fallback: amsgrad") for p in fused.optimizer.fused_paths.values())
    assert_same_state(fused, stock)


# Sparse (Embedding) gradients: tests/test_sparse.py; XLA: tests/test_xla.py.


def test_float16_variables_fuse():
    # float16/bfloat16 in depth: tests/test_mixed_precision.py.
    v = tf.Variable(np.ones(5, np.float16))
    opt = fusedopt.Adam()
    opt.apply([tf.constant(np.full(5, 0.5, np.float16))], [v])
    assert list(opt.fused_paths.values()) == ["fused"]
    # p - alpha * m / (sqrt(v) + eps) with m = 0.05, v = 0.00025: 1 - 0.001.
    np.testing.assert_array_equal(v.numpy(), np.full(5, np.float16(1 - 0.001)))


def test_version_mismatch_message_names_both_versions():
    msg = _ops.version_mismatch("2.20.1", "2.21.0")
    assert "2.20.1" in msg and "2.21.0" in msg
    assert _ops.version_mismatch("2.21.0", "2.21.3") is None
    assert _ops.version_mismatch(None, "2.21.0") is not None


def test_library_for_other_tf_version_is_refused_with_warning(monkeypatch):
    monkeypatch.setattr(_build_config, "TF_VERSION", "2.20.0")
    monkeypatch.setattr(_ops, "_state", {"tried": False, "library": None, "error": None})
    with pytest.warns(fusedopt.FusedOpsUnavailableWarning, match="2.20.0"):
        assert _ops.library() is None
    # The optimizer still trains, on the stock path, with the stock results.
    fused = train(fusedopt.Adam(learning_rate=0.01), epochs=1)
    stock = train(keras.optimizers.Adam(learning_rate=0.01), epochs=1)
    assert all(p.startswith("fallback: fused TF ops unavailable") for p in
               fused.optimizer.fused_paths.values())
    assert_same_state(fused, stock)


@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.AdamW], ids=["Adam", "AdamW"])
def test_config_and_variables_match_stock(cls):
    kwargs = dict(learning_rate=0.003, beta_1=0.8, clipnorm=1.5, use_ema=True)
    fused, stock = cls(name="opt", **kwargs), STOCK[cls](name="opt", **kwargs)
    assert fused.get_config() == stock.get_config()
    assert isinstance(fused, STOCK[cls]) and isinstance(fused, fusedopt.Optimizer)
    a, b = train(fused, epochs=1), train(stock, epochs=1)
    def layout(model):  # model names differ (sequential_3 vs _4): drop them
        return [(re.sub(r"sequential(_\d+)?_", "", v.path), v.shape)
                for v in model.optimizer.variables]

    assert layout(a) == layout(b)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(fused))
    assert type(restored) is cls
    assert restored.get_config() == fused.get_config()


def test_keras_file_round_trip(tmp_path):
    model = train(fusedopt.AdamW(learning_rate=0.01), epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered
    assert type(loaded.optimizer) is fusedopt.AdamW
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert_same_state(model, loaded)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
@pytest.mark.parametrize("first,second", [(fusedopt.AdamW, keras.optimizers.AdamW),
                                          (keras.optimizers.AdamW, fusedopt.AdamW)],
                         ids=["fused-to-stock", "stock-to-fused"])
def test_saved_file_loads_into_the_other_class(tmp_path, first, second, suffix):
    model = train(first(learning_rate=0.01), epochs=1)
    path = str(tmp_path / ("saved" + suffix))
    if suffix == ".keras":
        model.save(path)
    else:
        model.save_weights(path)
    keras.utils.set_random_seed(5)  # a different initialization, overwritten below
    other = make_model()
    other.compile(optimizer=second(learning_rate=0.01), loss="mse")
    other.optimizer.build(other.trainable_variables)
    other.load_weights(path)
    assert_same_state(model, other)


@pytest.mark.parametrize("first,second", [(fusedopt.Adam, keras.optimizers.Adam),
                                          (keras.optimizers.Adam, fusedopt.Adam)],
                         ids=["fused-to-stock", "stock-to-fused"])
def test_checkpoint_interchanges_with_stock(tmp_path, first, second):
    x, y = make_data()
    keras.utils.set_random_seed(11)
    model = make_model()
    model.compile(optimizer=first(learning_rate=0.01), loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt"))

    keras.utils.set_random_seed(99)  # different init: restore must overwrite it
    other = make_model()
    other.compile(optimizer=second(learning_rate=0.01), loss="mse")
    other.optimizer.build(other.trainable_variables)
    tf.train.Checkpoint(model=other, optimizer=other.optimizer).restore(prefix).assert_consumed()
    assert_same_state(model, other)
    # Training on continues identically.
    for m in (model, other):
        m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_same_state(model, other)


def test_build_info():
    info = fusedopt.build_info()
    assert isinstance(info["cuda"], bool)
    assert info["tensorflow"].split(".")[:2] == tf.__version__.split(".")[:2]
    assert info["tf_ops_loaded"] is True
    assert info["cpu_isa"] in info["cpu_isa_supported"]
    assert set(info["cpu_isa_supported"]) <= set(info["cpu_isa_compiled"])
    assert "baseline" in info["cpu_isa_compiled"]
    assert _build_config.TF_VERSION == info["tensorflow"]

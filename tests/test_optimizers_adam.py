"""fusedopt.Adam / AdamW: what is specific to them.

What every optimizer must do (fit parity with the stock class for every
configuration, config, variables, slots, saving, checkpoints, every
hyperparameter form, bad arguments) is tested once for all of them over the
table in tests/optimizer_table.py (tests/test_optimizer_table.py). Here: the
shape of the traced Adam step, the fallbacks, 16-bit variables, the op
library's version check and build_info.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _build_config, _ops

from training import assert_same_state, make_data, make_model, train

def fused_op_count(graph):
    return sum(op.type == "FusedoptAdam" for op in graph.get_operations())


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
    assert fusedopt.Adam(amsgrad=True).get_slot_names() == ["momentum", "velocity",
                                                             "velocity_hat"]
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


def test_build_info():
    info = fusedopt.build_info()
    assert isinstance(info["cuda"], bool)
    assert info["tensorflow"].split(".")[:2] == tf.__version__.split(".")[:2]
    assert info["tf_ops_loaded"] is True
    assert info["cpu_isa"] in info["cpu_isa_supported"]
    assert set(info["cpu_isa_supported"]) <= set(info["cpu_isa_compiled"])
    assert "baseline" in info["cpu_isa_compiled"]
    assert _build_config.TF_VERSION == info["tensorflow"]

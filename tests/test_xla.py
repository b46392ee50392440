"""XLA: model.fit(jit_compile=True) with every fusedopt optimizer.

Nothing can leave an XLA cluster (``jit_compile=True``, or Keras' ``"auto"``
on a single GPU), so a fused op runs there only with an XLA kernel.
FusedoptAdam has one (csrc/tf/xla_ops.cc, in ``_tf_xla_ops.so`` where the
build found XLA's headers): Adam and AdamW stay fused inside XLA, with the
stock clipping before the op. FusedoptSgd has none: the optimizer detects the
XLA context at trace time and runs the stock per-variable update, compiled by
XLA like the stock optimizer's. Either way the results are bit-identical to
the stock optimizer compiled the same way (checked here, not assumed), and
``fused_paths`` and the traced graph say which path ran.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _ops
from fusedopt import transformers as T

from training import make_data, make_model, state, train

XLA_FALLBACK = "fallback: inside an XLA cluster"

# Whether this build has the XLA kernel of FusedoptAdam (tested below that it
# does wherever TensorFlow ships the XLA headers).
XLA_KERNELS = _ops.xla_kernels()


def assert_xla_fallback(opt, n):
    paths = opt.fused_paths
    assert len(paths) == n and all(p.startswith(XLA_FALLBACK) for p in paths.values()), paths


def assert_path_under_xla(opt, n):
    """Adam fused (with the XLA kernel), SGD (no XLA kernel) on the stock path."""
    if XLA_KERNELS and isinstance(opt, (fusedopt.Adam, fusedopt.AdamW)):
        paths = opt.fused_paths
        assert len(paths) == n and set(paths.values()) == {"fused"}, paths
    else:
        assert_xla_fallback(opt, n)


def test_xla_kernels_are_built_where_tensorflow_has_the_headers():
    include = tf.sysconfig.get_include()
    if not os.path.exists(os.path.join(include, "tensorflow/compiler/tf2xla/xla_op_kernel.h")):
        pytest.skip("this TensorFlow ships no XLA headers")
    assert XLA_KERNELS, _ops.xla_error()
    assert fusedopt.build_info()["xla_kernels"] is True

SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.7)

# name: (fusedopt class, fusedopt kwargs, stock class, stock kwargs). Built-in
# transformers are compared with the Keras argument that does the same.
CASES = {
    "Adam": (fusedopt.Adam, dict(learning_rate=SCHEDULE), keras.optimizers.Adam, None),
    "Adam-clipnorm": (fusedopt.Adam, dict(learning_rate=0.01, clipnorm=0.05),
                      keras.optimizers.Adam, None),
    "Adam-clip_by_global_norm": (
        fusedopt.Adam, dict(learning_rate=0.01, gradient_transformers=[T.clip_by_global_norm(0.1)]),
        keras.optimizers.Adam, dict(learning_rate=0.01, global_clipnorm=0.1)),
    "AdamW": (fusedopt.AdamW, dict(learning_rate=0.01, weight_decay=0.05),
              keras.optimizers.AdamW, None),
    "SGD": (fusedopt.SGD, dict(learning_rate=0.05), keras.optimizers.SGD, None),
    "SGD-momentum-global_clipnorm": (
        fusedopt.SGD, dict(learning_rate=0.05, momentum=0.9, global_clipnorm=0.1),
        keras.optimizers.SGD, None),
    "SGD-nesterov-clip_by_value": (
        fusedopt.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                           gradient_transformers=[T.clip_by_value(-0.01, 0.01)]),
        keras.optimizers.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                                   clipvalue=0.01)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_with_jit_compile_matches_stock_compiled_the_same_way(case):
    cls, kwargs, stock_cls, stock_kwargs = CASES[case]
    fused = train(cls(**kwargs), epochs=2, jit_compile=True)
    stock = train(stock_cls(**(stock_kwargs or kwargs)), epochs=2, jit_compile=True)
    assert_path_under_xla(fused.optimizer, len(fused.trainable_variables))
    # Bit for bit: the XLA kernel is written with the stock update's ops, in
    # the same order; the fallback is the stock update itself.
    sf, ss = state(fused), state(stock)
    assert len(sf) == len(ss)
    for i, (a, b) in enumerate(zip(sf, ss)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")
    assert fused.optimizer.iterations.numpy() == 12


def _train_step_graph(opt, jit_compile):
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = make_data(32)
    fn = tf.function(model.train_step, jit_compile=jit_compile)
    return fn.get_concrete_function((x, y)).graph, model


def test_compiled_sgd_step_holds_no_fused_op_and_the_plain_step_does():
    graph, model = _train_step_graph(fusedopt.SGD(momentum=0.9), jit_compile=True)
    types = [op.type for op in graph.get_operations()]
    assert "FusedoptSgd" not in types and "FusedoptSquaredNorms" not in types
    assert_xla_fallback(model.optimizer, len(model.trainable_variables))
    # The same optimizer without XLA fuses: the detection, not the model,
    # decides.
    graph, model = _train_step_graph(fusedopt.SGD(momentum=0.9), jit_compile=False)
    assert [op.type for op in graph.get_operations()].count("FusedoptSgd") == 1
    assert set(model.optimizer.fused_paths.values()) == {"fused"}


@pytest.mark.skipif(not XLA_KERNELS, reason="no XLA kernels in this build")
@pytest.mark.parametrize("kwargs", [dict(), dict(global_clipnorm=0.1)], ids=["plain", "clip"])
def test_compiled_adam_step_holds_one_fused_op(kwargs):
    graph, model = _train_step_graph(fusedopt.AdamW(**kwargs), jit_compile=True)
    types = [op.type for op in graph.get_operations()]
    assert types.count("FusedoptAdam") == 1
    # No folded clipping inside XLA (its norms op has no XLA kernel): the
    # stock clipping's ops are there instead.
    assert "FusedoptSquaredNorms" not in types
    [op] = [o for o in graph.get_operations() if o.type == "FusedoptAdam"]
    assert op.get_attr("clip") == b"none" and op.get_attr("apply_weight_decay")
    assert set(model.optimizer.fused_paths.values()) == {"fused"}
    # And XLA really compiles it: the compiled HLO of the step, which fails
    # for an op without an XLA kernel (see the SGD test below).
    keras.utils.set_random_seed(0)
    x, y = make_data(32)
    fn = tf.function(model.train_step, jit_compile=True)
    hlo = fn.experimental_get_compiler_ir((x, y))(stage="hlo")
    assert "sqrt" in hlo


_LATE_SCRIPT = """
import numpy as np, tensorflow as tf
x = tf.Variable(np.ones(3, np.float32))
tf.function(lambda: x.assign(x * 2.0 + 1.0), jit_compile=True)()  # XLA registers its kernels
import keras, fusedopt  # the op library loads after that compilation

def run(cls):
    v = [tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32))]
    opt = cls(learning_rate=0.1)
    opt.build(v)
    step = tf.function(lambda: opt.apply([tf.constant(np.full(6, 0.5, np.float32))], v),
                       jit_compile=True)
    step()
    step()
    return v[0].numpy(), opt

fused, opt = run(fusedopt.Adam)
stock, _ = run(keras.optimizers.Adam)
assert list(opt.fused_paths.values()) == ["fused"], opt.fused_paths
np.testing.assert_array_equal(fused, stock)
print("OK")
"""


@pytest.mark.skipif(not XLA_KERNELS, reason="no XLA kernels in this build")
def test_kernel_registers_after_an_earlier_xla_compilation():
    """XLA turns XLA op registrations into JIT kernels once per process; the
    library registers its kernel itself when it loads after that."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _LATE_SCRIPT], capture_output=True,
                          text=True, timeout=240, env=env, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_without_xla_kernels_adam_falls_back_inside_xla(monkeypatch):
    """The detected fallback, for builds without the XLA kernels."""
    monkeypatch.setitem(_ops._state, "xla", False)
    assert not _ops.xla_kernels()
    kwargs = dict(learning_rate=0.01, weight_decay=0.05, clipnorm=0.05)
    fused = train(fusedopt.AdamW(**kwargs), epochs=1, jit_compile=True)
    stock = train(keras.optimizers.AdamW(**kwargs), epochs=1, jit_compile=True)
    assert_xla_fallback(fused.optimizer, len(fused.trainable_variables))
    for i, (a, b) in enumerate(zip(state(fused), state(stock))):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")


@pytest.mark.parametrize("cls,stock_cls", [(fusedopt.Adam, keras.optimizers.Adam),
                                           (fusedopt.SGD, keras.optimizers.SGD)])
def test_step_nested_in_an_xla_function_is_detected(cls, stock_cls):
    """apply() in an inner tf.function, called from a jit_compile=True one:
    the inner graph is in the XLA cluster too."""
    rng = np.random.default_rng(1)
    values = [rng.standard_normal((4, 3)).astype("float32"),
              rng.standard_normal(5).astype("float32")]
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32")) for v in values]

    def run(c):
        variables = [tf.Variable(v) for v in values]
        opt = c(learning_rate=0.1)
        opt.build(variables)

        @tf.function
        def inner():
            opt.apply(grads, variables)

        outer = tf.function(inner, jit_compile=True)
        outer()
        outer()
        return [v.numpy() for v in variables], opt

    fused, opt = run(cls)
    stock, _ = run(stock_cls)
    assert_path_under_xla(opt, 2)
    for a, b, v in zip(fused, stock, values):
        assert np.all(a != v)
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not XLA_KERNELS, reason="no XLA kernels in this build")
def test_half_precision_adam_falls_back_inside_xla():
    var = tf.Variable(np.ones(5, np.float16))
    opt = fusedopt.Adam()
    tf.function(lambda: opt.apply([tf.constant(np.full(5, 0.5, np.float16))], [var]),
                jit_compile=True)()
    [path] = opt.fused_paths.values()
    assert path.startswith("fallback: dtype float16 inside an XLA cluster"), path
    assert np.all(var.numpy() < 1)


def _raw_op_under_xla(op_name, clip="none", clip_args=()):
    var = tf.Variable(np.ones(4, np.float32))
    slot = tf.Variable(np.zeros(4, np.float32))
    grad = tf.constant(np.full(4, 0.5, np.float32))
    one = tf.constant(1.0)
    args = dict(grads=[grad], clip=clip, clip_args=tf.constant(clip_args, tf.float32))

    @tf.function(jit_compile=True)
    def raw():
        if op_name == "FusedoptSgd":
            _ops.library().fusedopt_sgd(
                params=[var.handle], momentums=[], lr=one, momentum=one, weight_decay=one,
                decay_lr=one, nesterov=False, apply_weight_decay=False, **args)
        else:
            _ops.library().fusedopt_adam(
                params=[var.handle], m=[slot.handle], v=[slot.handle], alpha=one,
                one_minus_beta_1=one, one_minus_beta_2=one, epsilon=one, lr=one,
                weight_decay=one, **args)

    return raw, var


def test_sgd_op_itself_cannot_run_under_xla():
    """Why the SGD fallback exists: the raw op inside a compiled function
    fails (no XLA kernel). If this ever passes, FusedoptSgd gained an XLA
    kernel and its fallback should be switched off."""
    raw, var = _raw_op_under_xla("FusedoptSgd")
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                        tf.errors.UnimplementedError), match="FusedoptSgd"):
        raw()
    np.testing.assert_array_equal(var.numpy(), np.ones(4, np.float32))


@pytest.mark.skipif(not XLA_KERNELS, reason="no XLA kernels in this build")
def test_adam_xla_kernel_refuses_folded_clipping():
    raw, var = _raw_op_under_xla("FusedoptAdam", clip="value", clip_args=(-1.0, 1.0))
    with pytest.raises(tf.errors.UnimplementedError, match="clip='none' only"):
        raw()
    np.testing.assert_array_equal(var.numpy(), np.ones(4, np.float32))

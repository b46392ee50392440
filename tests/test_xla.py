"""XLA: model.fit(jit_compile=True) with every fusedopt optimizer.

Nothing can leave an XLA cluster (``jit_compile=True``, or Keras' ``"auto"``
on a single GPU), so a fused op runs there only with an XLA kernel.
FusedoptAdam and FusedoptSgd have one (csrc/tf/xla_ops.cc, in
``_tf_xla_ops.so`` where the build found XLA's headers): the optimizers stay
fused inside XLA, with the stock clipping before the op. Where the kernels
are missing (a build without XLA headers; simulated here) the optimizers
detect the XLA context at trace time and run the stock per-variable update
instead. Either way the results are bit-identical to the stock optimizer
compiled the same way (checked here, not assumed), and ``fused_paths`` and the
traced graph say which path ran.
"""

import inspect
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

# Whether this build has the XLA kernels (tested below that it does wherever
# TensorFlow ships the XLA headers).
XLA_KERNELS = _ops.xla_kernels()
needs_xla_kernels = pytest.mark.skipif(not XLA_KERNELS, reason="no XLA kernels in this build")

OP_TYPE = {fusedopt.Adam: "FusedoptAdam", fusedopt.AdamW: "FusedoptAdam",
           fusedopt.SGD: "FusedoptSgd"}


def assert_xla_fallback(opt, n):
    paths = opt.fused_paths
    assert len(paths) == n and all(p.startswith(XLA_FALLBACK) for p in paths.values()), paths


def assert_path_under_xla(opt, n):
    """Fused with the XLA kernels; otherwise the detected fallback."""
    if XLA_KERNELS:
        paths = opt.fused_paths
        assert len(paths) == n and set(paths.values()) == {"fused"}, paths
    else:
        assert_xla_fallback(opt, n)


def assert_same(a, b):
    sa, sb = state(a), state(b)
    assert len(sa) == len(sb)
    for i, (x, y) in enumerate(zip(sa, sb)):
        np.testing.assert_array_equal(x, y, err_msg=f"variable {i}")


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
    # The update inside XLA conditionals (accumulation) and before the EMA.
    "Adam-accumulation-ema": (fusedopt.Adam, dict(learning_rate=0.01, gradient_accumulation_steps=3,
                                                  use_ema=True, ema_overwrite_frequency=2),
                              keras.optimizers.Adam, None),
    "SGD": (fusedopt.SGD, dict(learning_rate=0.05), keras.optimizers.SGD, None),
    "SGD-momentum-global_clipnorm": (
        fusedopt.SGD, dict(learning_rate=0.05, momentum=0.9, global_clipnorm=0.1),
        keras.optimizers.SGD, None),
    "SGD-nesterov-clip_by_value": (
        fusedopt.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                           gradient_transformers=[T.clip_by_value(-0.01, 0.01)]),
        keras.optimizers.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                                   clipvalue=0.01)),
    # Gradients that are products by scalars (what Grappler reorders in a
    # plain graph; inside XLA, XLA simplifies the op's HLO as the stock one).
    "SGD-accumulation-loss_scale-decay": (
        fusedopt.SGD, dict(learning_rate=0.05, momentum=0.9, gradient_accumulation_steps=2,
                           loss_scale_factor=3.0, weight_decay=0.01),
        keras.optimizers.SGD, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_with_jit_compile_matches_stock_compiled_the_same_way(case):
    cls, kwargs, stock_cls, stock_kwargs = CASES[case]
    fused = train(cls(**kwargs), epochs=2, jit_compile=True)
    stock = train(stock_cls(**(stock_kwargs or kwargs)), epochs=2, jit_compile=True)
    assert_path_under_xla(fused.optimizer, len(fused.trainable_variables))
    # Bit for bit: the XLA kernels are written with the stock update's ops,
    # in the same order; the fallback is the stock update itself.
    assert_same(fused, stock)
    assert fused.optimizer.iterations.numpy() == stock.optimizer.iterations.numpy() > 0


def test_loss_scale_optimizer_inside_xla():
    def lso(cls):
        return keras.optimizers.LossScaleOptimizer(cls(learning_rate=0.01, weight_decay=0.01))

    fused = train(lso(fusedopt.AdamW), epochs=2, jit_compile=True)
    stock = train(lso(keras.optimizers.AdamW), epochs=2, jit_compile=True)
    inner = fused.optimizer.inner_optimizer
    assert_path_under_xla(inner, len(fused.trainable_variables))
    assert_same(fused, stock)


@pytest.mark.parametrize("opt_cls,kwargs", [(fusedopt.AdamW, dict()),
                                            (fusedopt.SGD, dict(momentum=0.9))],
                         ids=["AdamW", "SGD"])
def test_without_xla_kernels_the_fallback_is_detected(monkeypatch, opt_cls, kwargs):
    """The detected fallback, for builds without the XLA kernels."""
    monkeypatch.setitem(_ops._state, "xla", False)
    assert not _ops.xla_kernels()
    kwargs = dict(learning_rate=0.01, weight_decay=0.05, clipnorm=0.05, **kwargs)
    fused = train(opt_cls(**kwargs), epochs=1, jit_compile=True)
    stock = train(getattr(keras.optimizers, opt_cls.__name__)(**kwargs), epochs=1,
                  jit_compile=True)
    assert_xla_fallback(fused.optimizer, len(fused.trainable_variables))
    assert_same(fused, stock)


@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.SGD])
def test_skip_nonfinite_inside_xla(cls):
    """The finiteness check compiles too (stock ops inside XLA): finite steps
    match the stock optimizer, a step with an Inf gradient writes nothing."""
    kwargs = dict(learning_rate=0.01)
    fused = train(cls(skip_nonfinite=True, **kwargs), epochs=1, jit_compile=True)
    stock = train(getattr(keras.optimizers, cls.__name__)(**kwargs), epochs=1,
                  jit_compile=True)
    assert_path_under_xla(fused.optimizer, len(fused.trainable_variables))
    assert_same(fused, stock)

    variables = [tf.Variable(np.ones(3, np.float32)), tf.Variable(np.ones(2, np.float32))]
    opt = cls(skip_nonfinite=True, **kwargs)
    opt.build(variables)
    grads = [tf.constant([0.5, np.inf, 0.5], tf.float32), tf.constant([0.5, 0.5], tf.float32)]
    tf.function(lambda: opt.apply(grads, variables), jit_compile=True)()
    for v in variables:
        np.testing.assert_array_equal(v.numpy(), np.ones(v.shape, np.float32))


def _train_step_graph(opt, jit_compile):
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = make_data(32)
    fn = tf.function(model.train_step, jit_compile=jit_compile)
    return fn, fn.get_concrete_function((x, y)).graph, model, (x, y)


@needs_xla_kernels
@pytest.mark.parametrize("opt", [
    lambda: fusedopt.AdamW(),
    lambda: fusedopt.Adam(global_clipnorm=0.1),
    lambda: fusedopt.SGD(),
    lambda: fusedopt.SGD(momentum=0.9, nesterov=True, clipnorm=0.1),
], ids=["AdamW", "Adam-clip", "SGD", "SGD-nesterov-clip"])
def test_compiled_step_holds_one_fused_op(opt):
    opt = opt()
    fn, graph, model, data = _train_step_graph(opt, jit_compile=True)
    ops = [o for o in graph.get_operations() if o.type == OP_TYPE[type(opt)]]
    assert len(ops) == 1
    assert ops[0].get_attr("N") == len(model.trainable_variables)
    # No folded clipping inside XLA (the norms op has no XLA kernel): the
    # stock clipping's ops run before the fused op instead.
    assert ops[0].get_attr("clip") == b"none"
    assert "FusedoptSquaredNorms" not in [o.type for o in graph.get_operations()]
    assert set(model.optimizer.fused_paths.values()) == {"fused"}
    # XLA compiles it (this fails for an op without an XLA kernel, see
    # test_raw_ops_need_the_xla_kernels).
    assert "HloModule" in fn.experimental_get_compiler_ir(data)(stage="hlo")


@needs_xla_kernels
@pytest.mark.parametrize("cls,stock_cls", [(fusedopt.Adam, keras.optimizers.Adam),
                                           (fusedopt.SGD, keras.optimizers.SGD)])
def test_step_nested_in_an_xla_function_is_compiled_too(cls, stock_cls):
    """apply() in an inner tf.function, called from a jit_compile=True one:
    the inner graph is in the XLA cluster too (no Grappler rewrites there)."""
    rng = np.random.default_rng(1)
    values = [rng.standard_normal((4, 3)).astype("float32"),
              rng.standard_normal(5).astype("float32")]
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32")) for v in values]

    def run(c):
        variables = [tf.Variable(v) for v in values]
        opt = c(learning_rate=0.1, weight_decay=0.1)
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


@needs_xla_kernels
@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.SGD])
def test_half_precision_falls_back_inside_xla(cls):
    var = tf.Variable(np.ones(5, np.float16))
    opt = cls()
    tf.function(lambda: opt.apply([tf.constant(np.full(5, 0.5, np.float16))], [var]),
                jit_compile=True)()
    [path] = opt.fused_paths.values()
    assert path.startswith("fallback: dtype float16 inside an XLA cluster"), path
    assert np.all(var.numpy() < 1)


_LATE_SCRIPT = """
import numpy as np, tensorflow as tf
x = tf.Variable(np.ones(3, np.float32))
tf.function(lambda: x.assign(x * 2.0 + 1.0), jit_compile=True)()  # XLA registers its kernels
import keras, fusedopt  # the op library loads after that compilation

def run(cls, **kwargs):
    v = [tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32))]
    opt = cls(learning_rate=0.1, **kwargs)
    opt.build(v)
    step = tf.function(lambda: opt.apply([tf.constant(np.full(6, 0.5, np.float32))], v),
                       jit_compile=True)
    step()
    step()
    return v[0].numpy(), opt

for cls, stock_cls, kwargs in [(fusedopt.Adam, keras.optimizers.Adam, {}),
                               (fusedopt.SGD, keras.optimizers.SGD, dict(momentum=0.9))]:
    fused, opt = run(cls, **kwargs)
    stock, _ = run(stock_cls, **kwargs)
    assert list(opt.fused_paths.values()) == ["fused"], opt.fused_paths
    np.testing.assert_array_equal(fused, stock)
print("OK")
"""


@needs_xla_kernels
def test_kernels_register_after_an_earlier_xla_compilation():
    """XLA turns XLA op registrations into JIT kernels once per process; the
    library registers its kernels itself when it loads after that."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _LATE_SCRIPT], capture_output=True,
                          text=True, timeout=240, env=env, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def _raw_op_under_xla(lib, op_name, clip="none", clip_args=()):
    """A jit_compile=True function calling the raw op on a [1, 1, 1, 1] variable."""
    var = tf.Variable(np.ones(4, np.float32))
    slot = tf.Variable(np.zeros(4, np.float32))
    grad = tf.constant(np.full(4, 0.5, np.float32))
    one = tf.constant(1.0)
    args = dict(grads=[grad], clip=clip, clip_args=tf.constant(clip_args, tf.float32))

    @tf.function(jit_compile=True)
    def raw():
        if op_name == "FusedoptSgd":
            lib.fusedopt_sgd(apply_if=[], params=[var.handle], momentums=[], lr=one, momentum=one,
                             weight_decay=one, decay_lr=one, **args)
        else:
            lib.fusedopt_adam(params=[var.handle], m=[slot.handle], v=[slot.handle], alpha=one,
                              apply_if=[],
                              one_minus_beta_1=one, one_minus_beta_2=one, epsilon=one, lr=one,
                              weight_decay=one, **args)

    return raw, var


_NO_XLA_SCRIPT = """
import importlib.util, os, numpy as np, tensorflow as tf
# The op library alone, without _tf_xla_ops.so (importing fusedopt would load
# both).
package = os.path.dirname(importlib.util.find_spec("fusedopt").origin)
lib = tf.load_op_library(os.path.join(package, "_tf_ops.so"))
{raw_op_under_xla}
for op in ("FusedoptAdam", "FusedoptSgd"):
    raw, var = _raw_op_under_xla(lib, op)
    try:
        raw()
    except tf.errors.InvalidArgumentError as e:
        assert "No registered '" + op + "' OpKernel for XLA_CPU_JIT" in str(e), str(e)
    else:
        raise AssertionError(op + " ran under XLA without its XLA kernel")
    assert np.all(var.numpy() == 1)
print("OK")
"""


def test_raw_ops_need_the_xla_kernels():
    """Why the fallback exists: without _tf_xla_ops.so the raw ops fail in a
    compiled function, and with it they run."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    script = _NO_XLA_SCRIPT.format(raw_op_under_xla=inspect.getsource(_raw_op_under_xla))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=240, env=env, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
    if XLA_KERNELS:
        raw, var = _raw_op_under_xla(_ops.library(), "FusedoptSgd")
        raw()
        np.testing.assert_array_equal(var.numpy(), np.full(4, 0.5, np.float32))


@needs_xla_kernels
@pytest.mark.parametrize("op_name", ["FusedoptAdam", "FusedoptSgd"])
def test_xla_kernels_refuse_folded_clipping(op_name):
    raw, var = _raw_op_under_xla(_ops.library(), op_name, clip="value", clip_args=(-1.0, 1.0))
    with pytest.raises(tf.errors.UnimplementedError, match="clip='none' only"):
        raw()
    np.testing.assert_array_equal(var.numpy(), np.ones(4, np.float32))

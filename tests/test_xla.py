"""XLA: model.fit(jit_compile=True) and apply() in a jit_compile=True
function with every fusedopt optimizer.

Nothing can leave an XLA cluster (``jit_compile=True``, or Keras' ``"auto"``
on a single GPU), so a fused op runs there only with an XLA kernel. The XLA
kernels (csrc/tf/xla_ops.cc, in ``_tf_xla_ops.so`` where the build found XLA's
headers) emit one custom call to fusedopt's FFI handler (csrc/ffi/), which
runs the CPU kernel: so under XLA the fused update gives the CPU kernel's
bits, the same as the stock update run eagerly (checked bit for bit below on
the same gradients). The stock update compiled by XLA rounds differently
(XLA rewrites it, e.g. contracting multiply-adds; docs/xla.md measures by how
much): fit-level comparisons with the stock optimizer under XLA are in step
ulps per step (tests/parity.py), within XLA_STEP_ULPS. Where the kernels are missing
(a build without XLA headers; simulated here) the optimizers detect the XLA
context at trace time and run the stock per-variable update instead, bit for
bit the stock optimizer under XLA. ``fused_paths``, the traced graph and the
compiled HLO say which path ran.
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

from parity import NORM_CLIP, per_step_ulps
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
                           loss_scale_factor=4.0, weight_decay=0.01),
        keras.optimizers.SGD, None),
}


# The fit-level contract under XLA, in step ulps per step (tests/parity.py,
# docs/design.md "Parity"): the fused update is the CPU kernel, the stock one
# XLA's rewrite of it (contracted multiply-adds), from the same state and the
# same XLA-computed gradients. Measured: at most 2 for every case below, 3
# for Adam in test_sparse's model (a contracted multiply-add in each moment
# and in the parameter's update, each within 1 ulp of its term).
# (With a loss scale that is not a power of two and gradient accumulation,
# XLA turns the stock `g / scale` into `g * (1 / scale)`, 1 ulp off, and the
# accumulated sum can cancel: 148 step ulps measured, which is why the case
# below scales by 4; docs/xla.md.)
XLA_STEP_ULPS = 4
# Clipping by norm and by global norm is folded inside XLA too: the norms
# come from FusedoptSquaredNorms (float64 sums in a fixed order), the stock
# ones from XLA's float32 reduction, so the clip factor differs in its last
# bits and the step is within the norm-clip contract of docs/design.md, as
# outside XLA (measured 6 for Adam-clip_by_global_norm).
NORM_CLIPPED = {"Adam-clipnorm", "Adam-clip_by_global_norm", "SGD-momentum-global_clipnorm"}


def _xla_models(make_fused, make_stock):
    models = []
    for make in (make_fused, make_stock):
        keras.utils.set_random_seed(1234)
        model = make_model()
        model.compile(optimizer=make(), loss="mse", jit_compile=True)
        models.append(model)
    x, y = make_data()
    return models, [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_with_jit_compile_is_fused_and_within_the_xla_contract(case):
    cls, kwargs, stock_cls, stock_kwargs = CASES[case]
    (fused, stock), batches = _xla_models(lambda: cls(**kwargs),
                                          lambda: stock_cls(**(stock_kwargs or kwargs)))
    worst = per_step_ulps(fused, stock, batches)
    bound = NORM_CLIP if case in NORM_CLIPPED else XLA_STEP_ULPS
    assert worst <= bound, f"{worst} step ulps"
    assert_path_under_xla(fused.optimizer, len(fused.trainable_variables))
    assert fused.optimizer.iterations.numpy() == stock.optimizer.iterations.numpy() > 0


def _apply_steps(opt, variables, grads_seq, jit_compile):
    """apply() once per gradient list (fed through variables, so one trace)."""
    opt.build(variables)
    feed = [tf.Variable(g) for g in grads_seq[0]]
    step = lambda: opt.apply([g.read_value() for g in feed], variables)  # noqa: E731
    if jit_compile is not None:
        step = tf.function(step, jit_compile=jit_compile)
    for grads in grads_seq:
        for f, g in zip(feed, grads):
            f.assign(g)
        step()
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]


# Cases whose whole step is the fused update and exact stock code around it
# (iteration count, bias-correction powers, elementwise clip by value): the
# fused update under XLA is the CPU kernel, so it equals the stock update run
# eagerly bit for bit. (Schedules, norms, accumulation and EMA are stock code
# that XLA compiles with its own rewrites in both.)
EXACT_CASES = {
    "Adam": (fusedopt.Adam, dict(learning_rate=0.01), keras.optimizers.Adam, None),
    "AdamW": (fusedopt.AdamW, dict(learning_rate=0.01, weight_decay=0.05),
              keras.optimizers.AdamW, None),
    "SGD": (fusedopt.SGD, dict(learning_rate=0.05), keras.optimizers.SGD, None),
    "SGD-momentum": (fusedopt.SGD, dict(learning_rate=0.05, momentum=0.9),
                     keras.optimizers.SGD, None),
    "SGD-nesterov-decay-clip_by_value": (
        fusedopt.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True, weight_decay=0.01,
                           gradient_transformers=[T.clip_by_value(-0.1, 0.1)]),
        keras.optimizers.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                                   weight_decay=0.01, clipvalue=0.1)),
}


@needs_xla_kernels
@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_fused_update_under_xla_equals_the_stock_update_run_eagerly(case):
    cls, kwargs, stock_cls, stock_kwargs = EXACT_CASES[case]
    rng = np.random.default_rng(0)
    shapes = [(13, 29), (29,), (7,), (100003,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads_seq = [[(0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
                 for _ in range(20)]
    opt = cls(**kwargs)
    fused = _apply_steps(opt, [tf.Variable(x) for x in init], grads_seq, jit_compile=True)
    stock = _apply_steps(stock_cls(**(stock_kwargs or kwargs)), [tf.Variable(x) for x in init],
                         grads_seq, jit_compile=None)
    assert_path_under_xla(opt, len(shapes))
    assert len(fused) == len(stock)
    for i, (a, b) in enumerate(zip(fused, stock)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")
    assert not np.array_equal(fused[3], init[3])


def test_loss_scale_optimizer_inside_xla():
    def lso(cls):
        return keras.optimizers.LossScaleOptimizer(cls(learning_rate=0.01, weight_decay=0.01))

    (fused, stock), batches = _xla_models(lambda: lso(fusedopt.AdamW),
                                          lambda: lso(keras.optimizers.AdamW))
    assert per_step_ulps(fused, stock, batches) <= XLA_STEP_ULPS
    assert_path_under_xla(fused.optimizer.inner_optimizer, len(fused.trainable_variables))


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
    """The finiteness check compiles too: finite steps are within the XLA
    contract of the stock optimizer, a step with an Inf gradient writes
    nothing."""
    kwargs = dict(learning_rate=0.01)
    (fused, stock), batches = _xla_models(
        lambda: cls(skip_nonfinite=True, **kwargs),
        lambda: getattr(keras.optimizers, cls.__name__)(**kwargs))
    assert per_step_ulps(fused, stock, batches) <= XLA_STEP_ULPS
    assert_path_under_xla(fused.optimizer, len(fused.trainable_variables))

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
    lambda: fusedopt.Adam(skip_nonfinite=True),
], ids=["AdamW", "Adam-clip", "SGD", "SGD-nesterov-clip", "Adam-skip_nonfinite"])
def test_compiled_step_holds_one_fused_op(opt):
    opt = opt()
    fn, graph, model, data = _train_step_graph(opt, jit_compile=True)
    ops = [o for o in graph.get_operations() if o.type == OP_TYPE[type(opt)]]
    assert len(ops) == 1
    assert ops[0].get_attr("N") == len(model.trainable_variables)
    assert set(model.optimizer.fused_paths.values()) == {"fused"}
    # XLA compiles it into one custom call to the fused kernel (this fails for
    # an op without an XLA kernel, see test_raw_ops_need_the_xla_kernels).
    hlo = fn.experimental_get_compiler_ir(data)(stage="optimized_hlo")
    target = {"FusedoptAdam": "fusedopt_adam", "FusedoptSgd": "fusedopt_sgd"}[ops[0].type]
    assert hlo.count(f'custom_call_target="{target}"') == 1
    # A clip by norm is folded inside XLA too: the norms and factors are one
    # custom call each, the update reads the factors (no stock clip ops).
    clipped = opt.clipnorm is not None or opt.global_clipnorm is not None
    for helper in ("fusedopt_squared_norms", "fusedopt_clip_factors"):
        assert hlo.count(f'custom_call_target="{helper}"') == (1 if clipped else 0), helper
    # And the skip_nonfinite check: one custom call over every gradient.
    checked = 1 if opt.skip_nonfinite else 0
    assert hlo.count('custom_call_target="fusedopt_all_finite"') == checked


@needs_xla_kernels
@pytest.mark.parametrize("cls,stock_cls", [(fusedopt.Adam, keras.optimizers.Adam),
                                           (fusedopt.SGD, keras.optimizers.SGD)])
def test_step_nested_in_an_xla_function_is_compiled_too(cls, stock_cls):
    """apply() in an inner tf.function, called from a jit_compile=True one:
    the inner graph is in the XLA cluster too (no Grappler rewrites there),
    and the fused update equals the stock one run eagerly."""
    rng = np.random.default_rng(1)
    values = [rng.standard_normal((4, 3)).astype("float32"),
              rng.standard_normal(5).astype("float32")]
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32")) for v in values]

    def run(c, compiled):
        variables = [tf.Variable(v) for v in values]
        opt = c(learning_rate=0.1, weight_decay=0.1)
        opt.build(variables)

        @tf.function
        def inner():
            opt.apply(grads, variables)

        if compiled:
            outer = tf.function(inner, jit_compile=True)
            outer()
            outer()
        else:
            opt.apply(grads, variables)
            opt.apply(grads, variables)
        return [v.numpy() for v in variables], opt

    fused, opt = run(cls, compiled=True)
    stock, _ = run(stock_cls, compiled=False)
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

def run(cls, jit_compile, **kwargs):
    v = [tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32))]
    opt = cls(learning_rate=0.1, **kwargs)
    opt.build(v)
    step = lambda: opt.apply([tf.constant(np.full(6, 0.5, np.float32))], v)
    if jit_compile:
        step = tf.function(step, jit_compile=True)
    step()
    step()
    return v[0].numpy(), opt

# Under XLA the fused update is the CPU kernel: the stock update run eagerly.
for cls, stock_cls, kwargs in [(fusedopt.Adam, keras.optimizers.Adam, {}),
                               (fusedopt.SGD, keras.optimizers.SGD, dict(momentum=0.9))]:
    fused, opt = run(cls, True, **kwargs)
    stock, _ = run(stock_cls, False, **kwargs)
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
import os, numpy as np, tensorflow as tf
# The op library alone, without _tf_xla_ops.so (importing fusedopt would load
# both); its folder comes from the test process (_ops._library_dir()).
lib = tf.load_op_library(os.path.join({lib_dir!r}, "_tf_ops.so"))
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
    script = _NO_XLA_SCRIPT.format(raw_op_under_xla=inspect.getsource(_raw_op_under_xla),
                                   lib_dir=_ops._library_dir())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=240, env=env, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
    if XLA_KERNELS:
        raw, var = _raw_op_under_xla(_ops.library(), "FusedoptSgd")
        raw()
        np.testing.assert_array_equal(var.numpy(), np.full(4, 0.5, np.float32))

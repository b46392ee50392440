"""XLA: model.fit(jit_compile=True) with every fusedopt optimizer.

fusedopt's ops have no XLA kernels, and nothing can leave an XLA cluster, so
inside one (``jit_compile=True``, or Keras' ``"auto"`` on a single GPU) the
optimizers detect the context at trace time and run the stock per-variable
update, compiled by XLA like the stock optimizer's. The results are therefore
bit-identical to the stock optimizer compiled the same way (checked here, not
assumed), and ``fused_paths`` says "fallback: inside an XLA cluster".
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _ops
from fusedopt import transformers as T

from training import make_data, make_model, state, train

XLA_FALLBACK = "fallback: inside an XLA cluster"


def assert_xla_fallback(opt, n):
    paths = opt.fused_paths
    assert len(paths) == n and all(p.startswith(XLA_FALLBACK) for p in paths.values()), paths

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
    assert_xla_fallback(fused.optimizer, len(fused.trainable_variables))
    # Bit for bit: inside XLA both run the same stock ops, compiled alike.
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


@pytest.mark.parametrize("cls,op_type", [(fusedopt.Adam, "FusedoptAdam"),
                                         (fusedopt.SGD, "FusedoptSgd")])
def test_compiled_step_holds_no_fused_op_and_the_plain_step_does(cls, op_type):
    graph, model = _train_step_graph(cls(momentum=0.9) if cls is fusedopt.SGD else cls(),
                                     jit_compile=True)
    types = [op.type for op in graph.get_operations()]
    assert op_type not in types and "FusedoptSquaredNorms" not in types
    assert_xla_fallback(model.optimizer, len(model.trainable_variables))
    # The same optimizer class without XLA fuses: the detection, not the
    # model, decides.
    graph, model = _train_step_graph(cls(), jit_compile=False)
    assert [op.type for op in graph.get_operations()].count(op_type) == 1
    assert set(model.optimizer.fused_paths.values()) == {"fused"}


def test_step_nested_in_an_xla_function_is_detected():
    """apply() in an inner tf.function, called from a jit_compile=True one:
    the inner graph is in the XLA cluster too."""
    rng = np.random.default_rng(1)
    variables = [tf.Variable(rng.standard_normal((4, 3)).astype("float32")),
                 tf.Variable(rng.standard_normal(5).astype("float32"))]
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32")) for v in variables]
    opt = fusedopt.Adam(learning_rate=0.1)
    opt.build(variables)
    before = [v.numpy() for v in variables]

    @tf.function
    def inner():
        opt.apply(grads, variables)

    tf.function(inner, jit_compile=True)()
    assert_xla_fallback(opt, 2)
    for b, v in zip(before, variables):
        assert np.all(b != v.numpy())


def test_the_fused_op_itself_cannot_run_under_xla():
    """Why the fallback exists: the raw op inside a compiled function fails
    (no XLA kernel). If this ever passes, the op gained an XLA kernel and the
    fallback should be switched off for it."""
    var = tf.Variable(np.ones(4, np.float32))
    grad = tf.constant(np.full(4, 0.5, np.float32))

    @tf.function(jit_compile=True)
    def raw():
        one = tf.constant(1.0)
        _ops.library().fusedopt_sgd(
            params=[var.handle], momentums=[], grads=[grad], lr=one, momentum=one,
            weight_decay=one, decay_lr=one, nesterov=False, apply_weight_decay=False,
            clip="none", clip_args=tf.zeros([0]))

    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                        tf.errors.UnimplementedError), match="FusedoptSgd"):
        raw()
    np.testing.assert_array_equal(var.numpy(), np.ones(4, np.float32))

"""skip_nonfinite: a step whose gradients hold an Inf or NaN is skipped whole.

At the kernel level (kernels.all_finite, kernels.adam/sgd(skip_nonfinite=True),
the FusedoptAllFinite op) against NumPy's isfinite; at the optimizer level in
model.fit: training with some poisoned batches and skip_nonfinite=True must
be bit-identical to stock training on the same data without those batches
(skipped steps change nothing, not even `iterations`).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _ops, kernels

from training import make_data, make_model, state

SIZES = [1, 17, 32768 * 2 + 5, 1000]  # across chunk boundaries (32K elements)
BAD = [np.inf, -np.inf, np.nan]


def random_arrays(rng, dtype, sizes=SIZES):
    return [rng.standard_normal(n).astype(dtype) for n in sizes]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_finite_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    arrays = random_arrays(rng, dtype)
    assert kernels.all_finite(arrays) is True
    for trial in range(40):
        arrays = random_arrays(rng, dtype)
        t = rng.integers(len(arrays))
        # The first and last element of a tensor and of a chunk, or anywhere.
        n = arrays[t].size
        k = rng.choice([0, n - 1, min(32767, n - 1), min(32768, n - 1), rng.integers(n)])
        arrays[t][k] = BAD[trial % 3]
        assert kernels.all_finite(arrays) is False, (t, k)
    # Finite extremes are finite; subnormals too.
    big = np.array([np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny / 4], dtype)
    assert kernels.all_finite([big]) is True
    assert kernels.all_finite([]) is True
    assert kernels.all_finite([np.zeros(0, dtype)]) is True


def test_all_finite_refuses_mixed_dtypes():
    with pytest.raises(TypeError, match=r"arrays\[1\].*float64.*float32"):
        kernels.all_finite([np.ones(3, "float32"), np.ones(3, "float64")])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_all_finite_op_matches_numpy(dtype):
    lib = _ops.library()
    rng = np.random.default_rng(1)
    for trial in range(12):
        values = [rng.standard_normal(n).astype("float32") for n in (3, 40000, 9)]
        if trial % 4:
            t = rng.integers(3)
            values[t][rng.integers(values[t].size)] = BAD[trial % 3]
        tensors = [tf.cast(tf.constant(v), dtype) for v in values]
        expected = all(np.isfinite(tf.cast(t, "float32").numpy()).all() for t in tensors)
        assert bool(lib.fusedopt_all_finite(tensors)) == expected


def adam_arrays(rng, dtype="float32"):
    p = random_arrays(rng, dtype)
    g = random_arrays(rng, dtype)
    m = random_arrays(rng, dtype)
    v = [np.abs(x) for x in random_arrays(rng, dtype)]
    return p, g, m, v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_adam_and_sgd_skip_whole_step(dtype):
    rng = np.random.default_rng(2)
    p, g, m, v = adam_arrays(rng, dtype)
    g[2][12345] = np.nan
    before = [x.copy() for x in p + m + v]
    assert kernels.adam(p, g, m, v, lr=0.1, step=3, skip_nonfinite=True) is False
    for b, a in zip(before, p + m + v):
        np.testing.assert_array_equal(a, b)
    assert kernels.sgd(p, g, m, lr=0.1, momentum=0.9, skip_nonfinite=True) is False
    assert kernels.sgd(p, g, None, lr=0.1, skip_nonfinite=True) is False
    for b, a in zip(before, p + m + v):
        np.testing.assert_array_equal(a, b)

    # Finite gradients: the same update as without the option.
    g[2][12345] = 0.5
    copies = [[x.copy() for x in group] for group in (p, m, v)]
    assert kernels.adam(p, g, m, v, lr=0.1, step=3, skip_nonfinite=True) is True
    assert kernels.adam(*[copies[0], g, copies[1], copies[2]], lr=0.1, step=3) is True
    for a, b in zip(p + m + v, copies[0] + copies[1] + copies[2]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(p[0], before[0])


CLIPS = [{}, {"clip_value": 0.1}, {"clip_norm": 1.0}, {"global_clip_norm": 1.0}]


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c), "no_clip"))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", BAD, ids=["inf", "-inf", "nan"])
def test_kernels_skip_with_clipping(clip, dtype, bad):
    # With clipping by norm the norms' pass is the check: every bad value in
    # any tensor, even in the last element of a chunk, must still skip.
    rng = np.random.default_rng(5)
    p, g, m, v = adam_arrays(rng, dtype)
    g[2][32767] = bad
    before = [x.copy() for x in p + m + v]
    assert kernels.adam(p, g, m, v, lr=0.1, step=3, skip_nonfinite=True, **clip) is False
    assert kernels.sgd(p, g, m, lr=0.1, momentum=0.9, skip_nonfinite=True, **clip) is False
    for b, a in zip(before, p + m + v):
        np.testing.assert_array_equal(a, b)
    g[2][32767] = 0.25
    copies = [x.copy() for x in p]
    assert kernels.sgd(p, g, None, lr=0.1, skip_nonfinite=True, **clip) is True
    kernels.sgd(copies, g, None, lr=0.1, **clip)
    for a, b in zip(p, copies):
        np.testing.assert_array_equal(a, b)


def test_kernels_float64_norm_overflow_with_finite_elements_is_not_skipped():
    # The squares of 1e200 overflow a float64 sum although every element is
    # finite: the element check decides, and the step runs (clip by norm
    # scales these gradients to zero).
    p = [np.ones(10), np.ones(3)]
    g = [np.full(10, 1e200), np.full(3, 0.5)]
    assert kernels.sgd(p, g, None, lr=0.1, clip_norm=1.0, skip_nonfinite=True) is True
    np.testing.assert_array_equal(p[0], np.ones(10))  # scaled by 1 / inf = 0
    assert not np.array_equal(p[1], np.ones(3))


def test_kernels_skip_nonfinite_must_be_bool():
    rng = np.random.default_rng(3)
    p, g, m, v = adam_arrays(rng)
    with pytest.raises(TypeError, match="skip_nonfinite must be a bool"):
        kernels.adam(p, g, m, v, lr=0.1, step=1, skip_nonfinite=1)


# ----------------------------------------------------------------- optimizers

BATCH = 32
POISONED = (1, 4)  # batch indices (of 6 per epoch) whose targets hold a NaN / Inf


def poisoned_data():
    x, y = make_data()
    bad_y = y.copy()
    bad_y[POISONED[0] * BATCH + 3, 1] = np.nan
    bad_y[POISONED[1] * BATCH + 30, 0] = np.inf
    keep = np.ones(len(x), bool)
    for b in POISONED:
        keep[b * BATCH:(b + 1) * BATCH] = False
    return x, bad_y, x[keep], y[keep]


def fit(opt, x, y, run_eagerly=False, epochs=3):
    keras.utils.set_random_seed(1234)
    model = make_model()
    model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model


CASES = {
    "Adam": (lambda **kw: fusedopt.Adam(0.01, **kw), lambda: keras.optimizers.Adam(0.01)),
    "AdamW_clip": (lambda **kw: fusedopt.AdamW(0.01, weight_decay=0.1, global_clipnorm=0.5, **kw),
                   lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1, global_clipnorm=0.5)),
    "SGD_nesterov": (lambda **kw: fusedopt.SGD(0.05, momentum=0.9, nesterov=True, **kw),
                     lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
    # Gated by a cond around the whole apply (writes outside the fused ops).
    "Adam_ema": (lambda **kw: fusedopt.Adam(0.01, use_ema=True, **kw),
                 lambda: keras.optimizers.Adam(0.01, use_ema=True)),
    "SGD_accumulate": (lambda **kw: fusedopt.SGD(0.05, gradient_accumulation_steps=2, **kw),
                       lambda: keras.optimizers.SGD(0.05, gradient_accumulation_steps=2)),
}


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_with_poisoned_batches_equals_stock_without_them(case, run_eagerly):
    make_fused, make_stock = CASES[case]
    x, bad_y, x_clean, y_clean = poisoned_data()
    fused = fit(make_fused(skip_nonfinite=True), x, bad_y, run_eagerly)
    stock = fit(make_stock(), x_clean, y_clean, run_eagerly)
    # 6 batches per epoch, 2 skipped: the iteration counter counts applied
    # steps (optimizer.iterations counts accumulated steps in Keras).
    assert int(fused.optimizer._iterations.numpy()) == 3 * 4
    assert int(fused.optimizer.iterations.numpy()) == int(stock.optimizer.iterations.numpy())
    for i, (a, b) in enumerate(zip(state(fused), state(stock))):
        if case == "AdamW_clip":
            # The fused global norm sums in another (fixed) order than TF's
            # reduce_sum: equal to float32 rounding (see training.assert_close_state).
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"variable {i}")
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")
    assert set(fused.optimizer.fused_paths.values()) == {"fused"}


def test_default_keeps_stock_behaviour_on_nonfinite_gradients():
    x, bad_y, _, _ = poisoned_data()
    fused = fit(fusedopt.Adam(0.01), x, bad_y, epochs=1)
    stock = fit(keras.optimizers.Adam(0.01), x, bad_y, epochs=1)
    assert np.isnan(fused.weights[0].numpy()).any()
    for i, (a, b) in enumerate(zip(state(fused), state(stock))):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")  # NaNs compare equal


def op_types(graph):
    """Op types in `graph` and in every function it calls (cond branches)."""
    types = [op.type for op in graph.get_operations()]
    for fn in graph.as_graph_def().library.function:
        types += [node.op for node in fn.node_def]
    return types


def _step_graph(opt):
    """The traced train step of a fresh model compiled with `opt`."""
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = make_data(32)
    return tf.function(model.train_step).get_concrete_function((x, y)).graph


def has_cond(graph) -> bool:
    """Whether `graph` itself (not a function it calls) holds a cond."""
    return bool({"If", "StatelessIf"} & {op.type for op in graph.get_operations()})


def the_adam_op(graph):
    (adam,) = [op for op in graph.get_operations() if op.type == "FusedoptAdam"]
    return adam


def test_traced_step_checks_with_one_fused_op_before_the_update():
    graph = _step_graph(fusedopt.Adam(skip_nonfinite=True))
    types = op_types(graph)
    assert types.count("FusedoptAllFinite") == 1
    assert types.count("FusedoptAdam") == 1
    assert "IsFinite" not in types  # no per-tensor stock checks
    # The check gates the fused op through its apply_if input, not a cond.
    adam = the_adam_op(graph)
    assert adam.get_attr("G") == 1
    assert adam.inputs[-1].op.type == "FusedoptAllFinite"
    assert not has_cond(graph)


def test_steps_with_other_writes_are_gated_by_a_cond():
    # EMA, accumulators and constraints are written by the stock apply
    # outside the fused ops: there the whole apply is a cond's true branch.
    graph = _step_graph(fusedopt.Adam(skip_nonfinite=True, use_ema=True))
    assert has_cond(graph)
    assert "FusedoptAdam" in op_types(graph)


def test_one_nonfinite_element_in_one_of_many_variables_skips_everything():
    rng = np.random.default_rng(4)
    variables = [tf.Variable(rng.standard_normal(s).astype("float32"))
                 for s in [(5,), (300, 200), (7, 3), (1,)]]
    variables.append(tf.Variable(rng.standard_normal((4,))))  # float64: another fused group
    opt = fusedopt.SGD(0.1, momentum=0.5, skip_nonfinite=True)
    opt.build(variables)
    step = tf.function(lambda grads: opt.apply(grads, variables))
    grads = [tf.constant(rng.standard_normal(v.shape), v.dtype) for v in variables]
    step(grads)
    before = [v.numpy() for v in variables + list(opt.variables)]
    for i, v in enumerate(variables):
        g = rng.standard_normal(v.shape)
        g.flat[rng.integers(g.size)] = BAD[i % 3]
        bad = [tf.constant(rng.standard_normal(w.shape), w.dtype) for w in variables]
        bad[i] = tf.constant(g, v.dtype)
        step(bad)
        for b, a in zip(before, variables + list(opt.variables)):
            np.testing.assert_array_equal(a.numpy(), b)


def test_sparse_and_none_gradients_are_checked_too():
    emb = tf.Variable(np.random.default_rng(5).standard_normal((10, 4)).astype("float32"))
    dense = tf.Variable(np.ones(3, "float32"))
    unused = tf.Variable(np.ones(2, "float32"))
    opt = fusedopt.Adam(0.1, skip_nonfinite=True)
    opt.build([emb, dense, unused])
    before = [v.numpy() for v in (emb, dense, unused)]
    bad_rows = tf.IndexedSlices(tf.constant([[1.0, np.nan, 0, 0]]), tf.constant([3]),
                                tf.constant([10, 4]))
    opt.apply([bad_rows, tf.ones(3), None], [emb, dense, unused])
    for b, v in zip(before, (emb, dense, unused)):
        np.testing.assert_array_equal(v.numpy(), b)
    assert int(opt.iterations.numpy()) == 0
    good_rows = tf.IndexedSlices(tf.constant([[1.0, 2, 0, 0]]), tf.constant([3]),
                                 tf.constant([10, 4]))
    opt.apply([good_rows, tf.ones(3), None], [emb, dense, unused])
    assert int(opt.iterations.numpy()) == 1
    assert not np.array_equal(emb.numpy()[3], before[0][3])


def test_config_round_trip_and_validation():
    opt = fusedopt.AdamW(skip_nonfinite=True)
    assert opt.get_config()["skip_nonfinite"] is True
    assert fusedopt.AdamW.from_config(opt.get_config()).skip_nonfinite is True
    # Off by default, and then absent from the config (identical to stock).
    assert "skip_nonfinite" not in fusedopt.SGD().get_config()
    with pytest.raises(TypeError, match="skip_nonfinite must be True or False"):
        fusedopt.Adam(skip_nonfinite="yes")


# ------------------------------------------------- the ops' apply_if input


def _op_call(lib, op_name, rng, dtype):
    """(variables, call(apply_if)) for one FusedoptAdam / FusedoptSgd (momentum)
    call over tensors that straddle the chunk size."""
    sizes = [(3,), (32768 * 2 + 5,), (40, 7)]
    params = [tf.Variable(rng.standard_normal(s).astype(dtype)) for s in sizes]
    slots = [tf.Variable(rng.standard_normal(s).astype(dtype)) for s in sizes]
    slots2 = [tf.Variable(rng.random(s).astype(dtype)) for s in sizes]
    grads = [tf.constant(rng.standard_normal(s).astype(dtype)) for s in sizes]
    c = lambda x: tf.constant(x, dtype)  # noqa: E731
    if op_name == "FusedoptAdam":
        variables = params + slots + slots2

        def call(apply_if):
            lib.fusedopt_adam(params=[v.handle for v in params], m=[v.handle for v in slots],
                              v=[v.handle for v in slots2], grads=grads, alpha=c(0.01),
                              one_minus_beta_1=c(0.1), one_minus_beta_2=c(0.001),
                              epsilon=c(1e-7), lr=c(0.01), weight_decay=c(0.1),
                              apply_weight_decay=True, clip_args=tf.zeros([0], dtype),
                              apply_if=apply_if)
    else:
        variables = params + slots

        def call(apply_if):
            lib.fusedopt_sgd(params=[v.handle for v in params],
                             momentums=[v.handle for v in slots], grads=grads, lr=c(0.1),
                             momentum=c(0.9), weight_decay=c(0.0), decay_lr=c(0.0),
                             nesterov=True, clip_args=tf.zeros([0], dtype), apply_if=apply_if)
    return variables, call


def _wrap(call, mode):
    if mode == "eager":
        return call
    return tf.function(call, jit_compile=(mode == "xla"))


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op_name", ["FusedoptAdam", "FusedoptSgd"])
def test_apply_if_false_writes_nothing_and_true_is_the_plain_update(op_name, dtype, mode):
    lib = _ops.library()
    if mode == "xla" and not _ops.xla_kernels():
        pytest.skip("no XLA kernels in this build")
    rng = np.random.default_rng(7)
    variables, call = _op_call(lib, op_name, rng, dtype)
    start = [v.numpy() for v in variables]
    gated = _wrap(lambda pred: call([pred]), mode)
    gated(tf.constant(False))
    for a, b in zip(variables, start):
        np.testing.assert_array_equal(a.numpy(), b)
    gated(tf.constant(True))
    applied = [v.numpy() for v in variables]
    assert not np.array_equal(applied[0], start[0])
    for v, b in zip(variables, start):
        v.assign(b)
    _wrap(lambda: call([]), mode)()
    for a, b in zip(variables, applied):
        np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize("op_name", ["FusedoptAdam", "FusedoptSgd"])
def test_apply_if_is_checked_and_a_false_one_still_validates(op_name):
    lib = _ops.library()
    variables, call = _op_call(lib, op_name, np.random.default_rng(8), "float32")
    start = [v.numpy() for v in variables]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="apply_if"):
        call([tf.constant(True), tf.constant(True)])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="apply_if"):
        tf.function(lambda p: call([p]))(tf.constant([True, False]))
    # A bad call fails whatever the predicate says.
    variables[0].assign(tf.zeros_like(variables[0]))  # value only: shape unchanged
    bad = tf.Variable(np.ones((2, 2), "float32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="shape"):
        if op_name == "FusedoptAdam":
            lib.fusedopt_adam(params=[bad.handle], m=[bad.handle], v=[bad.handle],
                              grads=[tf.ones(3)], alpha=1.0, one_minus_beta_1=1.0,
                              one_minus_beta_2=1.0, epsilon=1.0, lr=1.0, weight_decay=0.0,
                              clip_args=tf.zeros([0]), apply_if=[tf.constant(False)])
        else:
            lib.fusedopt_sgd(params=[bad.handle], momentums=[], grads=[tf.ones(3)], lr=1.0,
                             momentum=0.0, weight_decay=0.0, decay_lr=0.0,
                             clip_args=tf.zeros([0]), apply_if=[tf.constant(False)])
    for a, b in zip(variables[1:], start[1:]):
        np.testing.assert_array_equal(a.numpy(), b)


def test_traced_step_with_fallback_pairs_skips_them_too():
    # Sparse gradients take the stock update: under the apply_if gate they
    # run in a cond on the same predicate.
    emb = tf.Variable(np.random.default_rng(5).standard_normal((10, 4)).astype("float32"))
    dense = tf.Variable(np.ones(3, "float32"))
    opt = fusedopt.Adam(0.1, skip_nonfinite=True)
    opt.build([emb, dense])
    step = tf.function(lambda rows, g: opt.apply(
        [tf.IndexedSlices(rows, tf.constant([3]), tf.constant([10, 4])), g], [emb, dense]))
    before = [v.numpy() for v in [emb, dense] + list(opt.variables)]
    step(tf.constant([[1.0, 2, 0, 0]]), tf.constant([1.0, np.inf, 1.0]))
    step(tf.constant([[1.0, np.nan, 0, 0]]), tf.ones(3))
    for b, v in zip(before, [emb, dense] + list(opt.variables)):
        np.testing.assert_array_equal(v.numpy(), b)
    step(tf.constant([[1.0, 2, 0, 0]]), tf.ones(3))
    assert int(opt.iterations.numpy()) == 1
    assert list(opt.fused_paths.values())[1] == "fused"
    assert list(opt.fused_paths.values())[0].startswith("fallback")
    assert not np.array_equal(emb.numpy()[3], before[0][3])
    assert not np.array_equal(dense.numpy(), before[1])


# ------------------------- global-norm clipping: the norm's pass is the check


def test_folded_global_norm_clip_is_the_check():
    graph = _step_graph(fusedopt.Adam(global_clipnorm=1.0, skip_nonfinite=True))
    types = op_types(graph)
    assert "FusedoptAllFinite" not in types  # no second pass over the gradients
    assert types.count("FusedoptSquaredNorms") == 1
    adam = the_adam_op(graph)
    assert adam.get_attr("clip") == b"scale"
    # The factors op's `finite` output is the predicate.
    assert adam.inputs[-1].op.type == "FusedoptClipFactors"


def test_a_stateful_transformer_is_skipped_with_the_step():
    # A user's transformer may write state (here: a count of the steps it
    # saw); on a skipped step that write must not happen either, so the
    # whole apply runs in a cond.
    seen = tf.Variable(0)

    def counting(grads_and_vars):
        seen.assign_add(1)
        return grads_and_vars

    var = tf.Variable([1.0, 2.0])
    opt = fusedopt.SGD(0.1, skip_nonfinite=True, gradient_transformers=[counting])
    opt.build([var])
    step = tf.function(lambda g: opt.apply([g], [var]))
    step(tf.constant([1.0, np.nan]))
    step(tf.constant([1.0, 1.0]))
    assert int(seen.numpy()) == 1
    np.testing.assert_allclose(var.numpy(), [0.9, 1.9])
    assert int(opt.iterations.numpy()) == 1
    graph = step.get_concrete_function(tf.TensorSpec([2])).graph
    assert has_cond(graph)


def test_a_clip_of_rescaled_gradients_keeps_the_separate_check():
    # With loss_scale_factor the clip sees apply()'s gradients divided by the
    # scale (a scale below 1 can overflow a finite gradient), not apply()'s
    # own: the separate check reads those, and the fused op still takes it as
    # an input.
    graph = _step_graph(fusedopt.Adam(global_clipnorm=1.0, loss_scale_factor=4.0,
                                      skip_nonfinite=True))
    types = op_types(graph)
    assert types.count("FusedoptAllFinite") == 1
    assert types.count("FusedoptSquaredNorms") == 1
    adam = the_adam_op(graph)
    assert adam.inputs[-1].op.type == "FusedoptAllFinite"
    assert not has_cond(graph)


@pytest.mark.parametrize("bad", ["nan_in_sparse", "overflowing_norm"])
def test_global_norm_check_covers_fallback_pairs_and_overflow(bad):
    rng = np.random.default_rng(11)
    emb = tf.Variable(rng.standard_normal((10, 4)).astype("float32"))
    dense = tf.Variable(rng.standard_normal((3, 5)).astype("float32"))
    opt = fusedopt.Adam(0.1, global_clipnorm=1.0, skip_nonfinite=True)
    opt.build([emb, dense])
    step = tf.function(lambda rows, g: opt.apply(
        [tf.IndexedSlices(rows, tf.constant([3]), tf.constant([10, 4])), g], [emb, dense]))
    rows, g = rng.standard_normal((1, 4)), rng.standard_normal((3, 5))
    step(tf.constant(rows, tf.float32), tf.constant(g, tf.float32))
    before = [v.numpy() for v in [emb, dense] + list(opt.variables)]
    if bad == "nan_in_sparse":
        rows[0, 2] = np.nan
    else:
        # Every element finite, but the squares overflow float32: the stock
        # clip's global norm is Inf and its scale NaN, so the clipped step
        # would write NaN everywhere. Skipped as well.
        g[:] = 3e19
        stock = keras.optimizers.Adam(0.1, global_clipnorm=1.0)
        copy = tf.Variable(dense)
        stock.apply([tf.constant(g, tf.float32)], [copy])
        assert np.isnan(copy.numpy()).all()
    step(tf.constant(rows, tf.float32), tf.constant(g, tf.float32))
    for b, v in zip(before, [emb, dense] + list(opt.variables)):
        np.testing.assert_array_equal(v.numpy(), b)
    assert int(opt.iterations.numpy()) == 1
    assert list(opt.fused_paths.values())[1] == "fused"

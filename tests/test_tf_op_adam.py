"""The TF op FusedoptAdam on tf.Variables, called directly: against the float64
NumPy reference, bit for bit against the TF ops stock Keras Adam runs,
copy-on-write of buffers still read elsewhere, and validation (every bad call
raises InvalidArgumentError naming the input and leaves every variable as it
was), eagerly and inside tf.function.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import UninitializedVariable

from fusedopt import _ops

# The float64 reference and the random state in which one step moves every
# element live with the NumPy-kernel tests; the op must match them too.
from test_kernels_adam import (
    CHUNK,
    KERAS_DEFAULTS,
    LARGE_STEPS,
    ODD_SIZES,
    assert_updated,
    gradient_for,
    random_state,
    reference_adam,
)

MODES = ["eager", "function"]
SCALAR_NAMES = ["alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon", "lr",
                "weight_decay"]


@pytest.fixture(scope="module")
def lib():
    library = _ops.library()
    assert library is not None, _ops.load_error()
    return library


# ----------------------------------------------------------------------------
# Helpers


def handle(x):
    """The resource handle of a tf.Variable, or x itself if it is one already."""
    return x.handle if hasattr(x, "handle") else x


def keras_scalars(dtype, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0):
    """The op's scalar inputs, computed with the TF ops of keras Adam.update_step
    (plus an empty clip_args: no clipping)."""
    lr_t = tf.constant(lr, dtype)
    local_step = tf.cast(step, dtype)
    beta_1_power = tf.pow(tf.constant(beta_1, dtype), local_step)
    beta_2_power = tf.pow(tf.constant(beta_2, dtype), local_step)
    return dict(
        alpha=lr_t * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power),
        one_minus_beta_1=tf.constant(1 - beta_1, dtype),
        one_minus_beta_2=tf.constant(1 - beta_2, dtype),
        epsilon=tf.constant(epsilon, dtype),
        lr=lr_t,
        weight_decay=tf.constant(weight_decay, dtype),
        clip_args=tf.zeros([0], dtype),
    )


def keras_update(p, g, m, v, scalars, apply_weight_decay):
    """One variable's update with the ops stock Keras Adam/AdamW runs."""
    if apply_weight_decay:
        p.assign(p - p * scalars["weight_decay"] * scalars["lr"])
    m.assign_add((g - m) * scalars["one_minus_beta_1"])
    v.assign_add((tf.square(g) - v) * scalars["one_minus_beta_2"])
    p.assign_sub((m * scalars["alpha"]) / (tf.sqrt(v) + scalars["epsilon"]))


def fused_update(lib, mode, params, grads, m, v, scalars, apply_weight_decay):
    """One FusedoptAdam call, eagerly or as a freshly traced tf.function.

    Returns the tf.function (None when eager).
    """

    def run(scalars):
        lib.fusedopt_adam(
            apply_if=[],
            params=[handle(x) for x in params], m=[handle(x) for x in m],
            v=[handle(x) for x in v], grads=list(grads),
            apply_weight_decay=apply_weight_decay, **scalars)

    if mode == "eager":
        run(scalars)
        return None
    # Hyperparameters of unknown shape: scalar checks then happen at run time.
    specs = {k: tf.TensorSpec(None, s.dtype) for k, s in scalars.items()}
    fn = tf.function(lambda **kw: run(kw)).get_concrete_function(**specs)
    fn(**scalars)
    return fn


def make_variables(rng, shapes, dtype):
    """Variables p, m, v and gradient tensors g, from random_state."""
    states = [random_state(rng, s, dtype) for s in shapes]
    p = [tf.Variable(s[0]) for s in states]
    g = [tf.constant(s[1]) for s in states]
    m = [tf.Variable(s[2]) for s in states]
    v = [tf.Variable(s[3]) for s in states]
    return p, g, m, v


def values(variables):
    return [x.numpy() for x in variables]


def op_types(concrete_function):
    return {op.type for op in concrete_function.graph.get_operations()}


# ----------------------------------------------------------------------------
# Against the float64 reference


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_matches_reference_for_odd_sizes(lib, mode, dtype, weight_decay):
    rng = np.random.default_rng(11)
    shapes = [(n,) for n in ODD_SIZES] + [(), (3, 5, 7), (0,), (2, CHUNK + 1)]
    p, g, m, v = make_variables(rng, shapes, dtype)
    old_p, old_m, old_v = values(p), values(m), values(v)
    hyper = dict(step=4, weight_decay=weight_decay, **LARGE_STEPS)
    fused_update(lib, mode, p, g, m, v, keras_scalars(dtype, **hyper),
                 apply_weight_decay=weight_decay != 0.0)
    for i in range(len(shapes)):
        ref_p, ref_m, ref_v = reference_adam(old_p[i], g[i].numpy(), old_m[i], old_v[i],
                                             **hyper)
        assert_updated(f"params[{i}]", old_p[i], p[i].numpy(), ref_p, dtype)
        assert_updated(f"m[{i}]", old_m[i], m[i].numpy(), ref_m, dtype)
        assert_updated(f"v[{i}]", old_v[i], v[i].numpy(), ref_v, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_weight_decay_input_is_ignored_without_the_attribute(lib, mode):
    rng = np.random.default_rng(12)
    p, g, m, v = make_variables(rng, [(33,), (1000,)], np.float64)
    old = [values(x) for x in (p, m, v)]
    hyper = dict(step=2, **LARGE_STEPS)
    scalars = keras_scalars(np.float64, weight_decay=0.5, **hyper)
    fused_update(lib, mode, p, g, m, v, scalars, apply_weight_decay=False)
    for i in range(2):
        ref_p, _, _ = reference_adam(old[0][i], g[i].numpy(), old[1][i], old[2][i], **hyper)
        assert_updated(f"params[{i}]", old[0][i], p[i].numpy(), ref_p, np.float64)


def test_graph_contains_the_fused_op(lib):
    rng = np.random.default_rng(13)
    p, g, m, v = make_variables(rng, [(3,), (4,)], np.float32)
    fn = fused_update(lib, "function", p, g, m, v,
                      keras_scalars(np.float32, step=1, **KERAS_DEFAULTS), False)
    types = op_types(fn)
    assert "FusedoptAdam" in types, sorted(types)
    # One op for all variables, no per-variable stock update.
    assert sum(op.type == "FusedoptAdam" for op in fn.graph.get_operations()) == 1
    assert "ResourceApplyAdam" not in types


# ----------------------------------------------------------------------------
# Bit for bit against the stock Keras math (float32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.004])
@pytest.mark.parametrize("hyper", [KERAS_DEFAULTS, LARGE_STEPS], ids=["keras", "large"])
def test_bit_exact_against_keras_ops(lib, mode, weight_decay, hyper):
    rng = np.random.default_rng(14)
    shapes = [(1,), (7,), (33,), (1023,), (CHUNK + 1,), (16, 17)]
    p, g, m, v = make_variables(rng, shapes, np.float32)
    # The stock path runs on copies of the same variables.
    kp, km, kv = ([tf.Variable(x.numpy()) for x in lst] for lst in (p, m, v))
    for step in range(1, 4):
        g = [tf.constant(gradient_for(rng, x.numpy(), np.float32)) for x in m]
        scalars = keras_scalars(np.float32, step=step, weight_decay=weight_decay, **hyper)
        decay = weight_decay != 0.0
        for i in range(len(shapes)):
            keras_update(kp[i], g[i], km[i], kv[i], scalars, decay)
        old_p = values(p)
        fused_update(lib, mode, p, g, m, v, scalars, decay)
        for name, fused, stock in (("params", p, kp), ("m", m, km), ("v", v, kv)):
            for i in range(len(shapes)):
                a, b = fused[i].numpy(), stock[i].numpy()
                assert np.array_equal(a, b), (
                    f"step {step}: {name}[{i}] differs from Keras in "
                    f"{np.count_nonzero(a != b)} of {a.size} elements")
        assert all(np.all(x != y) for x, y in zip(old_p, values(p)))


# ----------------------------------------------------------------------------
# Copy-on-write: tensors read before the op keep their values


@pytest.mark.parametrize("read", ["read_value", "identity", "convert"])
def test_eager_reads_before_the_op_keep_old_values(lib, read):
    readers = {
        "read_value": lambda x: x.read_value(),
        "identity": tf.identity,
        "convert": tf.convert_to_tensor,
    }
    rng = np.random.default_rng(15)
    p, g, m, v = make_variables(rng, [(1000,), (CHUNK + 1,)], np.float32)
    old = [values(x) for x in (p, m, v)]
    before = [[readers[read](x) for x in lst] for lst in (p, m, v)]
    fused_update(lib, "eager", p, g, m, v,
                 keras_scalars(np.float32, step=1, **KERAS_DEFAULTS), False)
    for lst, tensors, expected in zip((p, m, v), before, old):
        for x, t, e in zip(lst, tensors, expected):
            np.testing.assert_array_equal(t.numpy(), e)
            assert np.all(x.numpy() != e)  # while the variable itself moved


def test_function_read_before_the_op_keeps_old_values(lib):
    rng = np.random.default_rng(16)
    p, g, m, v = make_variables(rng, [(100,), (CHUNK + 1,)], np.float32)
    old_p = values(p)
    scalars = keras_scalars(np.float32, step=1, **KERAS_DEFAULTS)

    @tf.function
    def step():
        before = [x.read_value() for x in p]
        lib.fusedopt_adam(apply_if=[], params=[x.handle for x in p], m=[x.handle for x in m],
                          v=[x.handle for x in v], grads=g, **scalars)
        after = [x.read_value() for x in p]
        return before, after

    before, after = step()
    for i in range(2):
        np.testing.assert_array_equal(before[i].numpy(), old_p[i])
        assert np.all(after[i].numpy() != old_p[i])
        np.testing.assert_array_equal(after[i].numpy(), p[i].numpy())


@pytest.mark.parametrize("mode", MODES)
def test_gradient_read_from_an_updated_variable_keeps_its_old_value(lib, mode):
    """grads[i] shares v[i]'s buffer: the op must copy v before writing it."""
    rng = np.random.default_rng(17)
    p, _, m, v = make_variables(rng, [(33,), (CHUNK + 1,)], np.float64)
    g = [x.read_value() for x in v]
    old = [values(x) for x in (p, m, v)]
    hyper = dict(step=2, **LARGE_STEPS)
    fused_update(lib, mode, p, g, m, v, keras_scalars(np.float64, **hyper), False)
    for i in range(2):
        np.testing.assert_array_equal(g[i].numpy(), old[2][i])
        assert np.all(v[i].numpy() != old[2][i])
        ref = reference_adam(old[0][i], old[2][i], old[1][i], old[2][i], **hyper)
        for name, x, r in zip(("params", "m", "v"), (p, m, v), ref):
            np.testing.assert_allclose(x[i].numpy(), r, rtol=1e-12, err_msg=f"{name}[{i}]")


# ----------------------------------------------------------------------------
# Bad input: InvalidArgumentError naming the input, no variable modified


def _base_call(rng):
    """A valid float32 call over three variables, as a mutable dict."""
    p, g, m, v = make_variables(rng, [(2, 3), (2, 3), (5,)], np.float32)
    return dict(params=p, grads=g, m=m, v=v,
                scalars=keras_scalars(np.float32, step=1, **KERAS_DEFAULTS))


def _replace(key, index, make):
    def mutate(call):
        call[key][index] = make(call)
    return mutate


def _scalar(name, value):
    def mutate(call):
        call["scalars"][name] = tf.constant(value, tf.float32)
    return mutate


def _unassigned_handle(_):
    return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[2, 3],
                                  shared_name="fusedopt_test_never_assigned")


BAD_CALLS = {
    "grads_shape": (_replace("grads", 1, lambda c: tf.ones([3, 2])),
                    r"params\[1\].*grads\[1\] has shape \[3,2\]"),
    "grads_rank": (_replace("grads", 2, lambda c: tf.ones([5, 1])), r"grads\[2\]"),
    "v_shape": (_replace("v", 1, lambda c: tf.Variable(tf.ones([6]))), r"v\[1\].*shape"),
    "m_float64": (_replace("m", 1, lambda c: tf.Variable(tf.ones([2, 3], tf.float64))),
                  r"m\[1\].*double"),
    "params_float64": (_replace("params", 2, lambda c: tf.Variable(tf.ones([5], tf.float64))),
                       r"params\[2\].*double"),
    "v_int32": (_replace("v", 1, lambda c: tf.Variable(tf.ones([2, 3], tf.int32))),
                r"v\[1\].*int32"),
    "m_uninitialized": (_replace("m", 1, lambda c: UninitializedVariable(
        shape=[2, 3], dtype=tf.float32)), r"m\[1\].*not initialized"),
    "v_never_assigned": (_replace("v", 1, _unassigned_handle), r"v\[1\].*not initialized"),
    "params_0_as_m_1": (_replace("m", 1, lambda c: c["params"][0]),
                        r"m\[1\].*params\[0\].*same variable"),
    "m_1_as_v_1": (_replace("v", 1, lambda c: c["m"][1]), r"v\[1\].*m\[1\].*same variable"),
    "params_twice": (_replace("params", 1, lambda c: c["params"][0]),
                     r"params\[1\].*params\[0\].*same variable"),
    "alpha_vector": (_scalar("alpha", [1e-3]), r"alpha must be a scalar"),
    "lr_matrix": (_scalar("lr", [[1e-3, 1e-3]]), r"\blr must be a scalar"),
    "epsilon_empty": (_scalar("epsilon", np.zeros([0], np.float32)), r"epsilon must be"),
    "weight_decay_vector": (_scalar("weight_decay", [0.0, 0.0]), r"weight_decay must be"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_and_writes_nothing(lib, mode, case):
    mutate, pattern = BAD_CALLS[case]
    call = _base_call(np.random.default_rng(18))
    variables = call["params"] + call["m"] + call["v"]
    before = values(variables)
    mutate(call)
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        fused_update(lib, mode, call["params"], call["grads"], call["m"], call["v"],
                     call["scalars"], apply_weight_decay=True)
    for i, (x, b) in enumerate(zip(variables, before)):
        np.testing.assert_array_equal(x.numpy(), b, err_msg=f"{case}: variable {i} changed")


@pytest.mark.parametrize("mode", MODES)
def test_base_call_of_the_bad_input_table_is_valid(lib, mode):
    call = _base_call(np.random.default_rng(18))
    before = values(call["params"] + call["m"] + call["v"])
    fused_update(lib, mode, call["params"], call["grads"], call["m"], call["v"],
                 call["scalars"], apply_weight_decay=True)
    after = values(call["params"] + call["m"] + call["v"])
    assert all(np.all(a != b) for a, b in zip(after, before))


def test_non_scalar_hyperparameter_of_known_shape_fails_at_trace_time(lib):
    call = _base_call(np.random.default_rng(19))
    call["scalars"]["alpha"] = tf.constant([1e-3])
    before = values(call["params"] + call["m"] + call["v"])

    @tf.function
    def step():
        lib.fusedopt_adam(apply_if=[], params=[x.handle for x in call["params"]],
                          m=[x.handle for x in call["m"]], v=[x.handle for x in call["v"]],
                          grads=call["grads"], **call["scalars"])

    with pytest.raises(ValueError, match="rank 0"):
        step()
    for x, b in zip(call["params"] + call["m"] + call["v"], before):
        np.testing.assert_array_equal(x.numpy(), b)


def test_lists_of_different_lengths_are_rejected(lib):
    call = _base_call(np.random.default_rng(20))
    before = values(call["params"] + call["m"] + call["v"])
    with pytest.raises(tf.errors.InvalidArgumentError):
        lib.fusedopt_adam(apply_if=[], params=[x.handle for x in call["params"]],
                          m=[x.handle for x in call["m"][:2]],
                          v=[x.handle for x in call["v"]],
                          grads=call["grads"], **call["scalars"])
    for x, b in zip(call["params"] + call["m"] + call["v"], before):
        np.testing.assert_array_equal(x.numpy(), b)

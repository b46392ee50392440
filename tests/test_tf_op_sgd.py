"""The TF op FusedoptSgd on tf.Variables, called directly: against the NumPy
references of the kernel tests, bit for bit against the TF ops stock Keras SGD
runs, copy-on-write, and validation (every bad call raises
InvalidArgumentError naming the input and leaves every variable as it was),
eagerly and inside tf.function.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import UninitializedVariable

from fusedopt import _ops

from test_kernels_sgd import CHUNK, ODD_SIZES, assert_updated, random_state, reference_sgd

MODES = ["eager", "function"]
VARIANTS = {  # (momentum, nesterov, lr); momentum None: plain SGD (M = 0)
    "plain": (None, False, 0.05),
    "momentum": (0.9, False, 0.1),
    "nesterov": (0.5, True, 0.2),
}


@pytest.fixture(scope="module")
def lib():
    library = _ops.library()
    assert library is not None, _ops.load_error()
    return library


def make_variables(rng, shapes, dtype):
    """Variables p, m and gradient tensors g, from the kernel tests' random_state."""
    states = [random_state(rng, s, dtype) for s in shapes]
    return ([tf.Variable(s[0]) for s in states], [tf.constant(s[1]) for s in states],
            [tf.Variable(s[2]) for s in states])


def values(variables):
    return [x.numpy() for x in variables]


def scalars(dtype, lr, momentum=0.0, weight_decay=0.0):
    return dict(lr=tf.constant(lr, dtype), momentum=tf.constant(momentum, dtype),
                weight_decay=tf.constant(weight_decay, dtype),
                decay_lr=tf.constant(lr, dtype), clip_args=tf.zeros([0], dtype))


def fused_update(lib, mode, params, grads, momentums, scalar_inputs, nesterov=False,
                 apply_weight_decay=False):
    """One FusedoptSgd call, eagerly or as a freshly traced tf.function."""

    def run(s):
        lib.fusedopt_sgd(apply_if=[], params=[getattr(x, "handle", x) for x in params],
                         momentums=[getattr(x, "handle", x) for x in momentums],
                         grads=list(grads), nesterov=nesterov,
                         apply_weight_decay=apply_weight_decay, **s)

    if mode == "eager":
        run(scalar_inputs)
        return None
    # Hyperparameters of unknown shape: scalar checks then happen at run time.
    specs = {k: tf.TensorSpec(None, s.dtype) for k, s in scalar_inputs.items()}
    fn = tf.function(lambda **kw: run(kw)).get_concrete_function(**specs)
    fn(**scalar_inputs)
    return fn


# ----------------------------------------------------------------------------
# Against the references


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_matches_reference_for_odd_sizes(lib, mode, dtype, variant, weight_decay):
    momentum, nesterov, lr = VARIANTS[variant]
    rng = np.random.default_rng(11)
    shapes = [(n,) for n in ODD_SIZES] + [(), (3, 5, 7), (0,), (2, CHUNK + 1)]
    p, g, m = make_variables(rng, shapes, dtype)
    old_p, old_m = values(p), values(m)
    buffers = m if momentum is not None else []
    hyper = dict(lr=lr, momentum=momentum or 0.0, nesterov=nesterov, weight_decay=weight_decay)
    fused_update(lib, mode, p, g, buffers, scalars(dtype, lr, momentum or 0.0, weight_decay),
                 nesterov=nesterov, apply_weight_decay=weight_decay != 0.0)
    for i in range(len(shapes)):
        m_i = old_m[i] if momentum is not None else None
        exact = reference_sgd(old_p[i], g[i].numpy(), m_i, dtype=dtype, **hyper)
        ref = reference_sgd(old_p[i], g[i].numpy(), m_i, **hyper)
        assert_updated(f"params[{i}]", old_p[i], p[i].numpy(), exact[0], ref[0], dtype)
        if momentum is None:
            np.testing.assert_array_equal(m[i].numpy(), old_m[i])  # not an input
        else:
            assert_updated(f"momentums[{i}]", old_m[i], m[i].numpy(), exact[1], ref[1], dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.004])
def test_bit_exact_against_keras_ops(lib, mode, variant, weight_decay):
    """The ops of keras.optimizers.SGD.update_step (eagerly, no Grappler) and
    of the stock decay, variable by variable, over several steps."""
    momentum, nesterov, lr = VARIANTS[variant]
    rng = np.random.default_rng(14)
    shapes = [(1,), (7,), (33,), (1023,), (CHUNK + 1,), (16, 17)]
    p, _, m = make_variables(rng, shapes, np.float32)
    kp, km = [tf.Variable(x.numpy()) for x in p], [tf.Variable(x.numpy()) for x in m]
    s = scalars(np.float32, lr, momentum or 0.0, weight_decay)
    for step in range(3):
        g = [tf.constant(-np.sign(x.numpy()) * rng.uniform(1.5, 2.5, x.shape), tf.float32)
             for x in m]
        for i in range(len(shapes)):
            if weight_decay:
                kp[i].assign(kp[i] - kp[i] * s["weight_decay"] * s["lr"])
            if momentum is None:
                kp[i].assign_sub(g[i] * s["lr"])
                continue
            km[i].assign(km[i] * s["momentum"] - g[i] * s["lr"])
            if nesterov:
                kp[i].assign_add(km[i] * s["momentum"] - g[i] * s["lr"])
            else:
                kp[i].assign_add(km[i])
        fused_update(lib, mode, p, g, m if momentum is not None else [], s,
                     nesterov=nesterov, apply_weight_decay=weight_decay != 0.0)
        for name, fused, stock in (("params", p, kp), ("momentums", m, km)):
            if name == "momentums" and momentum is None:
                continue
            for i in range(len(shapes)):
                a, b = fused[i].numpy(), stock[i].numpy()
                assert np.array_equal(a, b), (
                    f"step {step}: {name}[{i}] differs from Keras in "
                    f"{np.count_nonzero(a != b)} of {a.size} elements")


def test_graph_contains_one_fused_op(lib):
    rng = np.random.default_rng(13)
    p, g, m = make_variables(rng, [(3,), (4,)], np.float32)
    fn = fused_update(lib, "function", p, g, m, scalars(np.float32, 0.1, 0.9), nesterov=True)
    ops = [op for op in fn.graph.get_operations() if op.type == "FusedoptSgd"]
    assert len(ops) == 1
    assert (ops[0].get_attr("N"), ops[0].get_attr("M"), ops[0].get_attr("nesterov")) == (
        2, 2, True)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_read_from_an_updated_variable_keeps_its_old_value(lib, mode):
    """grads[i] shares momentums[i]'s buffer: the op must copy m before writing it."""
    rng = np.random.default_rng(17)
    p, _, m = make_variables(rng, [(33,), (CHUNK + 1,)], np.float64)
    g = [x.read_value() for x in m]
    old_p, old_m = values(p), values(m)
    fused_update(lib, mode, p, g, m, scalars(np.float64, 0.1, 0.9))
    for i in range(2):
        np.testing.assert_array_equal(g[i].numpy(), old_m[i])
        ref_p, ref_m = reference_sgd(old_p[i], old_m[i], old_m[i], lr=0.1, momentum=0.9)
        np.testing.assert_allclose(p[i].numpy(), ref_p, rtol=1e-12)
        np.testing.assert_allclose(m[i].numpy(), ref_m, rtol=1e-12)


# ----------------------------------------------------------------------------
# Bad input: InvalidArgumentError naming the input, no variable modified


def _base_call(rng):
    """A valid float32 momentum call over three variables, as a mutable dict."""
    p, g, m = make_variables(rng, [(2, 3), (2, 3), (5,)], np.float32)
    return dict(params=p, grads=g, momentums=m, scalars=scalars(np.float32, 0.1, 0.9))


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
                                  shared_name="fusedopt_sgd_test_never_assigned")


BAD_CALLS = {
    "grads_shape": (_replace("grads", 1, lambda c: tf.ones([3, 2])),
                    r"params\[1\].*grads\[1\] has shape \[3,2\]"),
    "momentums_shape": (_replace("momentums", 1, lambda c: tf.Variable(tf.ones([6]))),
                        r"momentums\[1\].*shape"),
    "momentums_float64": (
        _replace("momentums", 1, lambda c: tf.Variable(tf.ones([2, 3], tf.float64))),
        r"momentums\[1\].*double"),
    "params_int32": (_replace("params", 2, lambda c: tf.Variable(tf.ones([5], tf.int32))),
                     r"params\[2\].*int32"),
    "momentums_uninitialized": (_replace("momentums", 1, lambda c: UninitializedVariable(
        shape=[2, 3], dtype=tf.float32)), r"momentums\[1\].*not initialized"),
    "params_never_assigned": (_replace("params", 1, _unassigned_handle),
                              r"params\[1\].*not initialized"),
    "params_0_as_momentums_1": (_replace("momentums", 1, lambda c: c["params"][0]),
                                r"momentums\[1\].*params\[0\].*same variable"),
    "params_twice": (_replace("params", 1, lambda c: c["params"][0]),
                     r"params\[1\].*params\[0\].*same variable"),
    "lr_vector": (_scalar("lr", [0.1]), r"\blr must be a scalar"),
    "momentum_matrix": (_scalar("momentum", [[0.9]]), r"momentum must be a scalar"),
    "decay_lr_empty": (_scalar("decay_lr", np.zeros([0], np.float32)), r"decay_lr must be"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_and_writes_nothing(lib, mode, case):
    mutate, pattern = BAD_CALLS[case]
    call = _base_call(np.random.default_rng(18))
    variables = call["params"] + call["momentums"]
    before = values(variables)
    mutate(call)
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        fused_update(lib, mode, call["params"], call["grads"], call["momentums"],
                     call["scalars"], nesterov=True, apply_weight_decay=True)
    for i, (x, b) in enumerate(zip(variables, before)):
        np.testing.assert_array_equal(x.numpy(), b, err_msg=f"{case}: variable {i} changed")


@pytest.mark.parametrize("mode", MODES)
def test_base_call_of_the_bad_input_table_is_valid(lib, mode):
    call = _base_call(np.random.default_rng(18))
    before = values(call["params"] + call["momentums"])
    fused_update(lib, mode, call["params"], call["grads"], call["momentums"],
                 call["scalars"], nesterov=True, apply_weight_decay=True)
    after = values(call["params"] + call["momentums"])
    assert all(np.all(a != b) for a, b in zip(after, before))


@pytest.mark.parametrize("count", [1, 2, 4])
def test_momentum_list_must_be_empty_or_one_per_param(lib, count):
    call = _base_call(np.random.default_rng(20))
    call["momentums"] += [tf.Variable(tf.ones([5]))]  # 4 buffers for 3 params
    before = values(call["params"] + call["momentums"])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="momentums has"):
        lib.fusedopt_sgd(apply_if=[], params=[x.handle for x in call["params"]],
                         momentums=[x.handle for x in call["momentums"][:count]],
                         grads=call["grads"], **call["scalars"])
    for x, b in zip(call["params"] + call["momentums"], before):
        np.testing.assert_array_equal(x.numpy(), b)

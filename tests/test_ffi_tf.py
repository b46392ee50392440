"""The fused ops inside TensorFlow's XLA (tf.function(jit_compile=True)): each
XLA kernel (csrc/tf/xla_ops.cc) emits one typed-FFI custom call to the
handler of csrc/ffi/, which runs the CPU driver. So under XLA every op gives
the bits of its CPU kernel (run eagerly here), clipping and apply_if
included; the update writes the variables' buffers in place.

The CPU kernels themselves are checked against float64 references in the
test_tf_op_* and test_kernels_* files; here the subject is the XLA path.
"""

import ctypes
import re

import numpy as np
import pytest
import tensorflow as tf

from fusedopt import _ops

from test_kernels_adam import CHUNK, ODD_SIZES, random_lists
from test_kernels_sgd import random_lists as sgd_random_lists

LIB = _ops.library()
pytestmark = pytest.mark.skipif(not _ops.xla_kernels(), reason="no XLA kernels in this build")

DTYPES = [np.float16, tf.bfloat16.as_numpy_dtype, np.float32, np.float64]
ADAM_SCALARS = ("alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon", "lr",
                "weight_decay")
SGD_SCALARS = ("lr", "momentum", "weight_decay", "decay_lr")


def bits(x):
    x = np.asarray(x)
    return x.view(np.uint8)


def assert_bits(name, got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape, name
    np.testing.assert_array_equal(bits(got), bits(expected), err_msg=name)


def under_xla_and_eagerly(make_call):
    """Runs make_call() -> fn twice on fresh state: fn compiled with XLA, and fn
    eagerly (the CPU kernels). Returns both results (NumPy)."""
    results = []
    for jit in (True, False):
        fn, read = make_call()
        if jit:
            out = tf.function(fn, jit_compile=True)()
        else:
            out = fn()
        results.append(read(out))
    return results


def adam_call(lists, dtype, scalars, decay=False, clip="none", clip_args=(), apply_if=None):
    def make():
        variables = [[tf.Variable(a) for a in lst] for lst in (lists[0], lists[2], lists[3])]
        grads = [tf.constant(g) for g in lists[1]]
        # The clip arguments and the predicate as runtime values (variables),
        # not constants XLA could fold.
        args = tf.Variable(np.asarray(clip_args, dtype).reshape(-1))
        pred = None if apply_if is None else tf.Variable(apply_if)

        def fn():
            LIB.fusedopt_adam(
                params=[v.handle for v in variables[0]], m=[v.handle for v in variables[1]],
                v=[v.handle for v in variables[2]], grads=grads,
                **{k: tf.constant(x, dtype) for k, x in zip(ADAM_SCALARS, scalars)},
                clip=clip, clip_args=args.read_value(),
                apply_if=[] if pred is None else [pred.read_value()],
                apply_weight_decay=decay)

        return fn, lambda _: [[v.numpy() for v in lst] for lst in variables]

    return make


def sgd_call(lists, dtype, scalars, variant, decay=False, clip="none", clip_args=(),
             apply_if=None):
    def make():
        params = [tf.Variable(a) for a in lists[0]]
        momentums = [] if variant == "plain" else [tf.Variable(a) for a in lists[2]]
        grads = [tf.constant(g) for g in lists[1]]
        args = tf.Variable(np.asarray(clip_args, dtype).reshape(-1))
        pred = None if apply_if is None else tf.Variable(apply_if)

        def fn():
            LIB.fusedopt_sgd(
                params=[v.handle for v in params], momentums=[v.handle for v in momentums],
                grads=grads, **{k: tf.constant(x, dtype) for k, x in zip(SGD_SCALARS, scalars)},
                clip=clip, clip_args=args.read_value(),
                apply_if=[] if pred is None else [pred.read_value()],
                nesterov=variant == "nesterov", apply_weight_decay=decay)

        return fn, lambda _: [[v.numpy() for v in lst] for lst in (params, momentums)]

    return make


def assert_same_lists(xla, eager, old=None, every_element=True):
    """xla equals eager bit for bit; with `old`, every element moved (or,
    where clipping or 16-bit rounding may leave some as they were, most of
    every list did)."""
    for k, (a, b) in enumerate(zip(xla, eager)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bits(f"list {k}[{i}]", x, y)
            if old is not None and every_element and x.size:
                assert np.all(x != old[k][i]), f"list {k}[{i}]: not every element moved"
        if old is not None and not every_element:
            moved = sum(np.count_nonzero(x != o) for x, o in zip(a, old[k]))
            assert moved >= 0.5 * sum(x.size for x in a), f"list {k}: most elements kept"


# ----------------------------------------------------------------------------
# The updates: the CPU kernel's bits under XLA


CLIPS = {
    "none": lambda n: (),
    "value": lambda n: (-2.0, 2.0),
    "ratio": lambda n: [3.0] + list(np.linspace(3.0, 12.0, n)),
    "scale": lambda n: (0.5,),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_adam_under_xla_is_the_cpu_kernel(dtype, clip):
    rng = np.random.default_rng(1)
    shapes = [(s,) for s in ODD_SIZES] + [(3, 5, 7), (0,), ()]
    lists = [[a.astype(dtype) for a in lst] for lst in random_lists(rng, shapes, np.float32)]
    # beta_2 = 0.99: 0.999 is 1 in bfloat16.
    scalars = (0.05, 0.1, 0.01, 1e-3, 0.01, 0.1)
    xla, eager = under_xla_and_eagerly(adam_call(lists, dtype, scalars, decay=True, clip=clip,
                                                 clip_args=CLIPS[clip](len(shapes))))
    assert_same_lists(xla, eager, [lists[0], lists[2], lists[3]],
                      every_element=clip == "none" and np.dtype(dtype).itemsize >= 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("clip", ["none", "ratio"])
def test_sgd_under_xla_is_the_cpu_kernel(dtype, variant, clip):
    rng = np.random.default_rng(2)
    shapes = [(s,) for s in ODD_SIZES] + [(4, 9), (0,)]
    lists = [[a.astype(dtype) for a in lst] for lst in sgd_random_lists(rng, shapes, np.float32)]
    scalars = (0.1, 0.9, 0.01, 0.1)
    xla, eager = under_xla_and_eagerly(sgd_call(lists, dtype, scalars, variant, decay=True,
                                                clip=clip, clip_args=CLIPS[clip](len(shapes))))
    assert_same_lists(xla, eager, [lists[0], lists[2]], every_element=False)
    assert len(xla[1]) == (0 if variant == "plain" else len(shapes))


@pytest.mark.parametrize("op", ["adam", "sgd"])
@pytest.mark.parametrize("apply", [True, False])
def test_apply_if_under_xla(op, apply):
    rng = np.random.default_rng(3)
    lists = random_lists(rng, [(33,), (CHUNK + 1,)], np.float32)
    if op == "adam":
        make = adam_call(lists, np.float32, (0.01, 0.1, 0.001, 1e-7, 0.01, 0.0),
                         apply_if=apply)
        old = [lists[0], lists[2], lists[3]]
    else:
        make = sgd_call(lists, np.float32, (0.1, 0.9, 0.0, 0.1), "momentum", apply_if=apply)
        old = [lists[0], lists[2]]
    xla, eager = under_xla_and_eagerly(make)
    assert_same_lists(xla, eager)
    for k in range(len(old)):
        for i in range(2):
            assert np.array_equal(xla[k][i], old[k][i]) == (not apply)


def test_one_compiled_function_takes_new_values_without_recompiling():
    """Scalars, clip arguments and the predicate are operands of the custom
    call, not attributes: new values reach the same executable."""
    var = tf.Variable(np.ones(5, np.float32))
    lr = tf.Variable(0.5)
    pred = tf.Variable(True)
    scale = tf.Variable([1.0])

    @tf.function(jit_compile=True)
    def step():
        LIB.fusedopt_sgd(params=[var.handle], momentums=[], grads=[tf.ones(5)],
                         lr=lr.read_value(), momentum=0.0, weight_decay=0.0, decay_lr=0.0,
                         clip="scale", clip_args=scale.read_value(),
                         apply_if=[pred.read_value()])

    step()
    np.testing.assert_array_equal(var.numpy(), np.full(5, 0.5, np.float32))
    lr.assign(0.25)
    scale.assign([2.0])
    step()
    np.testing.assert_array_equal(var.numpy(), np.zeros(5, np.float32))
    pred.assign(False)
    step()
    np.testing.assert_array_equal(var.numpy(), np.zeros(5, np.float32))
    assert step.experimental_get_tracing_count() == 1


# ----------------------------------------------------------------------------
# Norms, clip factors, the finite check


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_squared_norms_clip_factors_all_finite_under_xla(dtype):
    rng = np.random.default_rng(4)
    xs = [(0.3 * rng.standard_normal(s)).astype(dtype) for s in ODD_SIZES] + [np.zeros(0, dtype)]

    def make():
        tensors = [tf.constant(x) for x in xs]

        def fn():
            sq = LIB.fusedopt_squared_norms(x=tensors)
            ratio, ratio_ok = LIB.fusedopt_clip_factors(
                squared_norms=[sq], max_norm=tf.constant(2.0, dtype), kind="norm")
            scale, scale_ok = LIB.fusedopt_clip_factors(
                squared_norms=[sq, tf.constant([1.5], tf.float64)],
                max_norm=tf.constant(3.0, dtype), kind="global_norm")
            return sq, ratio, ratio_ok, scale, scale_ok, LIB.fusedopt_all_finite(x=tensors)

        return fn, lambda out: [t.numpy() for t in out]

    xla, eager = under_xla_and_eagerly(make)
    for name, a, b in zip(("squared_norms", "ratio args", "ratio finite", "scale args",
                           "scale finite", "all_finite"), xla, eager):
        assert_bits(name, a, b)
    assert xla[5] and xla[2] and xla[4]
    np.testing.assert_allclose(xla[0].astype(np.float64),
                               [np.sum(np.asarray(x, np.float64) ** 2) for x in xs],
                               rtol=1e-2 if np.dtype(dtype).itemsize == 2 else 1e-6)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_values_under_xla(bad):
    xs = [np.ones(5, np.float32), np.ones(CHUNK + 2, np.float32)]
    xs[1][CHUNK + 1] = bad

    @tf.function(jit_compile=True)
    def check():
        sq = LIB.fusedopt_squared_norms(x=xs)
        _, finite = LIB.fusedopt_clip_factors(squared_norms=[sq], max_norm=1.0,
                                              kind="global_norm")
        return LIB.fusedopt_all_finite(x=xs), finite

    all_finite, norm_finite = check()
    assert not all_finite.numpy() and not norm_finite.numpy()


# ----------------------------------------------------------------------------
# The compiled program


def _adam_step(n, size):
    variables = [[tf.Variable(np.ones(size, np.float32)) for _ in range(n)] for _ in range(3)]
    grads = [tf.constant(np.full(size, 0.5, np.float32)) for _ in range(n)]

    @tf.function(jit_compile=True)
    def step():
        LIB.fusedopt_adam(params=[v.handle for v in variables[0]],
                          m=[v.handle for v in variables[1]], v=[v.handle for v in variables[2]],
                          grads=grads, **{k: tf.constant(0.1) for k in ADAM_SCALARS},
                          clip="none", clip_args=tf.zeros([0]), apply_if=[])

    return step, variables


def test_compiled_update_is_one_aliased_custom_call_and_no_copy():
    step, _ = _adam_step(20, 1000)
    hlo = step.experimental_get_compiler_ir()(stage="optimized_hlo")
    calls = [line for line in hlo.splitlines() if "custom-call(" in line]
    assert len(calls) == 1 and 'custom_call_target="fusedopt_adam"' in calls[0], calls
    assert "api_version=API_VERSION_TYPED_FFI" in calls[0]
    assert "output_to_operand_aliasing={" + ", ".join(
        f"{{{j}}}: ({j}, {{}})" for j in range(60)) + "}" in calls[0]
    assert [line for line in hlo.splitlines() if " copy(" in line and "f32[1000]" in line] == []
    # The cluster's outputs may alias its inputs: the variables' buffers are
    # donated to the executable (docs/xla.md).
    aliases = re.search(r"input_output_alias=\{([^}]*(\}[^}]*)*?)\s\}", hlo)
    assert aliases is not None and aliases.group(0).count("may-alias") == 60


def _address(variable):
    """The address of the variable's buffer (through DLPack, which shares it;
    .numpy() would copy)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsule = tf.experimental.dlpack.to_dlpack(variable.value())
    # DLManagedTensor starts with DLTensor, which starts with `void* data`.
    return ctypes.c_void_p.from_address(get(capsule, b"dltensor")).value


def test_variables_are_updated_in_place():
    """From the second step on every variable keeps its buffer. (The first
    step may give a new one to a variable whose initial buffer TF shares with
    the NumPy array it was made from.)"""
    step, variables = _adam_step(4, 100003)
    step()
    before = [_address(v) for lst in variables for v in lst]
    for _ in range(3):
        step()
    assert [_address(v) for lst in variables for v in lst] == before
    assert not np.all(variables[0][0].numpy() == 1.0)


def test_a_variable_whose_buffer_is_held_elsewhere_gets_a_new_one():
    """Why in place is not guaranteed: TF donates a variable's buffer to the
    cluster only when nothing else holds it; otherwise XLA writes the result
    to a new buffer (docs/xla.md: what that costs). The held value stays as
    it was."""
    step, variables = _adam_step(2, 1000)
    step()
    held = variables[0][1].value()
    expected = held.numpy().copy()
    before = [_address(v) for lst in variables for v in lst]
    step()
    after = [_address(v) for lst in variables for v in lst]
    moved = [a != b for a, b in zip(before, after)]
    assert moved == [False, True, False, False, False, False]
    np.testing.assert_array_equal(held.numpy(), expected)


# ----------------------------------------------------------------------------
# Bad calls


def test_bad_clip_values_fail_at_run_time_and_write_nothing():
    rng = np.random.default_rng(5)
    lists = random_lists(rng, [(3,), (4,)], np.float32)
    make = adam_call(lists, np.float32, (0.01, 0.1, 0.001, 1e-7, 0.01, 0.0), clip="ratio",
                     clip_args=(1.0, 2.0, 0.0))
    fn, read = make()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"clip_args\[2\].*must be > 0"):
        tf.function(fn, jit_compile=True)()
    for k, lst in enumerate(read(None)):
        for i, x in enumerate(lst):
            assert_bits(f"list {k}[{i}]", x, [lists[0], lists[2], lists[3]][k][i])


def test_wrong_clip_args_length_fails_at_compile_time():
    rng = np.random.default_rng(6)
    lists = random_lists(rng, [(3,), (4,)], np.float32)
    fn, _ = adam_call(lists, np.float32, (0.01, 0.1, 0.001, 1e-7, 0.01, 0.0), clip="ratio",
                      clip_args=(1.0, 2.0))()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"clip_args must be a vector of 3 values for clip='ratio'"):
        tf.function(fn, jit_compile=True)()


def test_one_variable_twice_is_refused_at_compile_time():
    var = tf.Variable(np.ones(3, np.float32))
    slot = tf.Variable(np.zeros(3, np.float32))

    @tf.function(jit_compile=True)
    def step():
        LIB.fusedopt_adam(params=[var.handle], m=[slot.handle], v=[slot.handle],
                          grads=[tf.ones(3)], **{k: tf.constant(0.1) for k in ADAM_SCALARS},
                          clip="none", clip_args=tf.zeros([0]), apply_if=[])

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"v\[0\] .* and m\[0\] .* are the same variable"):
        step()
    np.testing.assert_array_equal(var.numpy(), np.ones(3, np.float32))

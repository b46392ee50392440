"""fusedopt.kernels.adam (the C++ kernels on NumPy arrays) against a float64
NumPy reference, across sizes, shapes, dtypes, instruction sets and thread
counts, and its argument validation.

The update is in place, so every test starts from random state (never zeros)
in which every element of params, m and v must move: an element the kernel
never wrote keeps its old value and fails the check.
"""

import hashlib
import textwrap

import numpy as np
import pytest

from fusedopt import kernels

import isa_variants

# Per-dtype tolerances of one step against the float64 reference.
TOLERANCES = {
    np.float32: dict(rtol=1e-6, atol=1e-7),
    np.float64: dict(rtol=1e-12, atol=1e-15),
}

KERAS_DEFAULTS = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
LARGE_STEPS = dict(lr=0.1, beta_1=0.5, beta_2=0.6, epsilon=1e-3)
NO_MOMENTUM = dict(lr=0.01, beta_1=0.0, beta_2=0.9, epsilon=0.0)

# kChunkElements in csrc/cpu/multi_tensor.h, and sizes around vector widths
# (4/8/16 lanes) and chunk boundaries.
CHUNK = 32768
ODD_SIZES = [1, 3, 7, 15, 17, 31, 33, 1023, CHUNK - 1, CHUNK, CHUNK + 1, 100003]


# ----------------------------------------------------------------------------
# Helpers


def reference_adam(p, g, m, v, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0):
    """One Adam/AdamW step in float64, from kernels.adam's docstring.

    Returns new (p, m, v) as float64 arrays; the inputs are not modified.
    """
    p, g, m, v = (np.asarray(x, dtype=np.float64) for x in (p, g, m, v))
    alpha = lr * np.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
    if weight_decay != 0.0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * (1.0 - beta_1)
    v = v + (g * g - v) * (1.0 - beta_2)
    p = p - alpha * m / (np.sqrt(v) + epsilon)
    return p, m, v


def random_sign(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def gradient_for(rng, m, dtype):
    """A gradient with the sign of m and |g| in [1.5, 2.5].

    With |m| < 1.5 this keeps g - m, and the new m (which moves from m towards
    g), away from 0, so one step changes m and p by far more than an ulp.
    """
    return np.ascontiguousarray(np.sign(m) * rng.uniform(1.5, 2.5, m.shape), dtype=dtype)


def random_state(rng, shape, dtype):
    """(p, g, m, v) of `shape`, none zero, in which one step moves every element.

    |m| in [0.05, 0.5] with g from gradient_for; v in [0.5, 2] < g**2 keeps
    g**2 - v >= 0.25 so v moves too.
    """
    p = random_sign(rng, shape) * rng.uniform(0.5, 2.0, shape)
    m = np.asarray(random_sign(rng, shape) * rng.uniform(0.05, 0.5, shape), dtype=dtype)
    g = gradient_for(rng, m, dtype)
    v = rng.uniform(0.5, 2.0, shape)
    return tuple(np.ascontiguousarray(x, dtype=dtype) for x in (p, g, m, v))


def random_lists(rng, shapes, dtype):
    """Lists params, grads, m, v with one random_state per shape."""
    states = [random_state(rng, s, dtype) for s in shapes]
    return tuple([s[k] for s in states] for k in range(4))


def copies(*lists):
    return [[a.copy() for a in lst] for lst in lists]


def assert_updated(name, old, new, expected, dtype):
    """new matches the float64 `expected`, and no element kept its old value."""
    if new.size:
        unchanged = np.count_nonzero(new == old)
        assert unchanged == 0, f"{name}: {unchanged} of {new.size} elements were not written"
    np.testing.assert_allclose(new, expected, err_msg=name, **TOLERANCES[dtype])


def step_and_check(params, grads, m, v, dtype, **hyper):
    """Runs kernels.adam once and checks every array against the reference."""
    old_p, old_g, old_m, old_v = copies(params, grads, m, v)
    kernels.adam(params, grads, m, v, **hyper)
    for i in range(len(params)):
        ref_p, ref_m, ref_v = reference_adam(old_p[i], old_g[i], old_m[i], old_v[i], **hyper)
        assert_updated(f"params[{i}]", old_p[i], params[i], ref_p, dtype)
        assert_updated(f"m[{i}]", old_m[i], m[i], ref_m, dtype)
        assert_updated(f"v[{i}]", old_v[i], v[i], ref_v, dtype)
        np.testing.assert_array_equal(grads[i], old_g[i], err_msg=f"grads[{i}] was modified")


# ----------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "hyper",
    [KERAS_DEFAULTS, LARGE_STEPS, NO_MOMENTUM],
    ids=["keras_defaults", "large_steps", "beta_1=0,epsilon=0"],
)
@pytest.mark.parametrize("step", [1, 10, 1000])
def test_matches_reference(dtype, hyper, step):
    rng = np.random.default_rng(step)
    lists = random_lists(rng, [(5,), (CHUNK + 3,), (64, 33)], dtype)
    step_and_check(*lists, dtype, step=step, **hyper)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", ODD_SIZES)
def test_every_element_written_for_odd_sizes(dtype, size):
    rng = np.random.default_rng(size)
    step_and_check(*random_lists(rng, [(size,)], dtype), dtype, step=3, **KERAS_DEFAULTS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odd_sizes_in_one_call(dtype):
    rng = np.random.default_rng(1)
    step_and_check(*random_lists(rng, [(n,) for n in ODD_SIZES], dtype), dtype,
                   step=2, **LARGE_STEPS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_small_and_a_few_big_tensors(dtype):
    rng = np.random.default_rng(2)
    shapes = [(int(n),) for n in rng.integers(1, 70, size=1000)]
    shapes[500:500] = [(100003,), (CHUNK + 1,), (3, CHUNK)]
    step_and_check(*random_lists(rng, shapes, dtype), dtype, step=7, **KERAS_DEFAULTS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multidimensional_shapes(dtype):
    rng = np.random.default_rng(3)
    shapes = [(), (1,), (3, 5, 7), (2, 1, 33), (128, 257), (4, 3, 2, 5, 3)]
    step_and_check(*random_lists(rng, shapes, dtype), dtype, step=4, **LARGE_STEPS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_tensors_among_others(dtype):
    rng = np.random.default_rng(4)
    shapes = [(0,), (17,), (3, 0), (0, 5, 2), (CHUNK + 1,), (0,)]
    step_and_check(*random_lists(rng, shapes, dtype), dtype, step=1, **KERAS_DEFAULTS)


@pytest.mark.parametrize("container", [list, tuple])
def test_empty_list_is_a_no_op(container):
    assert kernels.adam(container(), container(), container(), container(),
                        step=1, **KERAS_DEFAULTS) is True  # "applied": nothing to do


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.004, 0.5])
def test_weight_decay_is_decoupled_and_applied_first(dtype, weight_decay):
    rng = np.random.default_rng(5)
    # Decay after the update instead of before would move p by
    # lr * weight_decay * |update| (lr = 0.1 here), far above the tolerance.
    lists = random_lists(rng, [(33,), (CHUNK + 5,)], dtype)
    step_and_check(*lists, dtype, step=3, weight_decay=weight_decay, **LARGE_STEPS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_consecutive_steps(dtype, weight_decay):
    """Steps 1..8, each checked against the reference from the previous state,
    so that the bias correction of every step count is checked on its own."""
    rng = np.random.default_rng(6)
    lists = random_lists(rng, [(7,), (1023,), (CHUNK + 1,)], dtype)
    for step in range(1, 9):
        # Fresh gradients with the sign of m each step: m keeps its sign and
        # |m| >= 0.05, and with beta_2 = 0.999 v stays below 2.25 <= g**2, so
        # every element keeps moving.
        lists[1][:] = [gradient_for(rng, m, dtype) for m in lists[2]]
        step_and_check(*lists, dtype, step=step, weight_decay=weight_decay, **KERAS_DEFAULTS)


def test_learning_rate_zero_leaves_params_bit_identical():
    rng = np.random.default_rng(7)
    params, grads, m, v = random_lists(rng, [(31,), (CHUNK + 1,)], np.float32)
    old_p, old_m = copies(params, m)
    kernels.adam(params, grads, m, v, lr=0.0, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 step=1, weight_decay=0.1)
    for i in range(2):
        np.testing.assert_array_equal(params[i], old_p[i])
        assert np.all(m[i] != old_m[i])


def test_numpy_scalars_tuples_and_shared_readonly_grads_are_accepted():
    rng = np.random.default_rng(8)
    params, grads, m, v = random_lists(rng, [(100,), (100,)], np.float64)
    grads[1] = grads[0]  # the same gradient for two parameters: only read
    grads[0].setflags(write=False)
    step_and_check(tuple(params), tuple(grads), m, tuple(v), np.float64,
                   lr=np.float32(0.01), beta_1=np.float64(0.9), beta_2=0.99,
                   epsilon=np.float16(1e-3), step=np.int64(5), weight_decay=np.int32(1))


# ----------------------------------------------------------------------------
# Instruction sets and thread counts give the same bits

_HASH_SCRIPT = textwrap.dedent(
    """
    import hashlib, json
    import numpy as np
    import fusedopt
    from fusedopt import kernels

    digest = hashlib.sha256()
    rng = np.random.default_rng(42)
    sizes = [1, 3, 7, 15, 17, 31, 33, 1023, 32767, 32768, 32769, 100003]
    sizes += [int(n) for n in rng.integers(1, 100, size=200)]
    for dtype in (np.float32, np.float64):
        state = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(4)]
        state[3] = [np.abs(x) + dtype(0.01) for x in state[3]]
        for step, decay in ((1, 0.0), (2, 0.01), (3, 0.0)):
            kernels.adam(*state, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                         step=step, weight_decay=decay)
        for lst in state:
            for x in lst:
                digest.update(x.tobytes())
    info = fusedopt.build_info()
    print(json.dumps({"isa": info["cpu_isa"], "threads": info["num_threads"],
                      "sha256": digest.hexdigest()}))
    """
)


def test_instruction_sets_and_thread_counts_are_bit_identical():
    results = isa_variants.digests(_HASH_SCRIPT)
    assert len(set(results.values())) == 1, results


def test_hash_script_detects_a_one_ulp_change():
    """The digest above is sensitive to a single bit of a single element."""
    a = np.ones(1000, np.float32)
    b = a.copy()
    b[999] = np.nextafter(b[999], np.float32(2))
    assert hashlib.sha256(a.tobytes()).hexdigest() != hashlib.sha256(b.tobytes()).hexdigest()


# ----------------------------------------------------------------------------
# Bad input: a clear error naming the argument, and nothing written


def _base_call(rng):
    """A valid call (two float32 tensors), as a mutable dict."""
    params, grads, m, v = random_lists(rng, [(5,), (2, 3)], np.float32)
    return dict(params=params, grads=grads, m=m, v=v, step=1, **KERAS_DEFAULTS)


def _set(key, value):
    def mutate(call):
        call[key] = value
    return mutate


def _set_item(key, index, make):
    """Replaces call[key][index] with make(call[key][index], call)."""
    def mutate(call):
        call[key][index] = make(call[key][index], call)
    return mutate


def _readonly(a, _):
    a.setflags(write=False)
    return a


def _non_contiguous(a, _):
    wide = np.repeat(a, 2, axis=-1)
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    return view


def _overlapping_views(call):
    base = np.random.default_rng(0).uniform(0.5, 1.0, 20).astype(np.float32)
    call["m"][1] = base[0:6].reshape(2, 3)
    call["v"][1] = base[3:9].reshape(2, 3)


def _grad_aliasing_param(call):
    call["grads"][1] = call["params"][1]


def _same_array_in_params_and_m(call):
    call["m"][1] = call["params"][1]


def _same_array_in_m_and_v(call):
    call["v"][1] = call["m"][1]


BAD_CALLS = {
    # list structure
    "grads_shorter": (lambda c: c["grads"].pop(), ValueError,
                      r"\bgrads has 1 arrays but params has 2"),
    "m_empty_list": (_set("m", []), ValueError, r"\bm has 0 arrays"),
    "v_longer": (lambda c: c["v"].append(c["v"][0].copy()), ValueError, r"\bv has 3 arrays"),
    "params_not_a_list": (lambda c: c.update(params=c["params"][0]), TypeError, r"params"),
    "grads_a_dict": (lambda c: c.update(grads={0: c["grads"][0]}), TypeError, r"grads"),
    "m_item_a_list": (_set_item("m", 1, lambda a, c: a.tolist()), TypeError, r"m\[1\]"),
    # shapes and dtypes
    "v_transposed_shape": (_set_item("v", 1, lambda a, c: np.ascontiguousarray(a.T)),
                           ValueError, r"v\[1\]"),
    "grads_same_size_other_shape": (_set_item("grads", 1, lambda a, c: a.reshape(6)),
                                    ValueError, r"grads\[1\]"),
    "m_float64_in_float32_call": (_set_item("m", 1, lambda a, c: a.astype(np.float64)),
                                  TypeError, r"m\[1\]"),
    "params_mixed_dtypes": (
        lambda c: [c[k].__setitem__(1, c[k][1].astype(np.float64))
                   for k in ("params", "grads", "m", "v")],
        TypeError, r"params\[1\]"),
    "grads_int32": (_set_item("grads", 1, lambda a, c: a.astype(np.int32)),
                    TypeError, r"grads\[1\]"),
    "params_int64": (lambda c: [c[k].__setitem__(1, c[k][1].astype(np.int64))
                                for k in ("params", "grads", "m", "v")],
                     TypeError, r"params\[1\]"),
    "v_float16": (_set_item("v", 1, lambda a, c: a.astype(np.float16)), TypeError, r"v\[1\]"),
    # writability, layout, aliasing
    "m_read_only": (_set_item("m", 1, _readonly), ValueError, r"m\[1\]"),
    "params_read_only": (_set_item("params", 1, _readonly), ValueError, r"params\[1\]"),
    "v_non_contiguous": (_set_item("v", 1, _non_contiguous), ValueError, r"v\[1\]"),
    "params_fortran_order": (_set_item("params", 1, lambda a, c: np.asfortranarray(a)),
                             ValueError, r"params\[1\]"),
    "same_array_params_and_m": (_same_array_in_params_and_m, ValueError,
                                r"(params\[1\] and m\[1\]|m\[1\] and params\[1\])"),
    "same_array_m_and_v": (_same_array_in_m_and_v, ValueError,
                           r"(m\[1\] and v\[1\]|v\[1\] and m\[1\])"),
    "overlapping_views_m_v": (_overlapping_views, ValueError,
                              r"(m\[1\] and v\[1\]|v\[1\] and m\[1\])"),
    "grad_is_param": (_grad_aliasing_param, ValueError,
                      r"(params\[1\] and grads\[1\]|grads\[1\] and params\[1\])"),
    # hyperparameters
    "lr_negative": (_set("lr", -1e-3), ValueError, r"\blr\b"),
    "lr_nan": (_set("lr", float("nan")), ValueError, r"\blr\b"),
    "lr_inf": (_set("lr", float("inf")), ValueError, r"\blr\b"),
    "lr_string": (_set("lr", "0.001"), TypeError, r"\blr\b"),
    "lr_none": (_set("lr", None), TypeError, r"\blr\b"),
    "lr_bool": (_set("lr", True), TypeError, r"\blr\b"),
    "lr_array": (_set("lr", np.array([1e-3, 1e-3])), TypeError, r"\blr\b"),
    "beta_1_one": (_set("beta_1", 1.0), ValueError, r"beta_1"),
    "beta_1_negative": (_set("beta_1", -0.1), ValueError, r"beta_1"),
    "beta_1_list": (_set("beta_1", [0.9]), TypeError, r"beta_1"),
    "beta_2_one": (_set("beta_2", 1.0), ValueError, r"beta_2"),
    "beta_2_above_one": (_set("beta_2", 1.5), ValueError, r"beta_2"),
    "beta_2_nan": (_set("beta_2", float("nan")), ValueError, r"beta_2"),
    "epsilon_negative": (_set("epsilon", -1e-8), ValueError, r"epsilon"),
    "weight_decay_negative": (_set("weight_decay", -0.01), ValueError, r"weight_decay"),
    "weight_decay_string": (_set("weight_decay", "0"), TypeError, r"weight_decay"),
    "step_zero": (_set("step", 0), ValueError, r"\bstep\b"),
    "step_negative": (_set("step", -3), ValueError, r"\bstep\b"),
    "step_float": (_set("step", 1.0), TypeError, r"\bstep\b"),
    "step_bool": (_set("step", True), TypeError, r"\bstep\b"),
    "step_string": (_set("step", "1"), TypeError, r"\bstep\b"),
    "step_too_large": (_set("step", 2**70), ValueError, r"\bstep\b"),
}


def _arrays_in(call):
    arrays = []
    for key in ("params", "grads", "m", "v"):
        value = call[key]
        items = value if isinstance(value, (list, tuple)) else (
            value.values() if isinstance(value, dict) else [value])
        arrays += [a for a in items if isinstance(a, np.ndarray)]
    return arrays


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_and_writes_nothing(case):
    mutate, error, pattern = BAD_CALLS[case]
    call = _base_call(np.random.default_rng(9))
    mutate(call)
    arrays = _arrays_in(call)
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=pattern):
        kernels.adam(**call)
    for i, (a, b) in enumerate(zip(arrays, before)):
        np.testing.assert_array_equal(a, b, err_msg=f"{case}: array {i} was modified")


def test_bad_calls_are_valid_without_their_mutation():
    """The base call of the table above succeeds, so each failure is the
    mutation's doing (and writes every element)."""
    call = _base_call(np.random.default_rng(9))
    step_and_check(call.pop("params"), call.pop("grads"), call.pop("m"), call.pop("v"),
                   np.float32, **call)


def test_hyperparameters_are_validated_even_for_an_empty_list():
    with pytest.raises(ValueError, match=r"\blr\b"):
        kernels.adam([], [], [], [], lr=-1.0, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)

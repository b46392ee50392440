"""fusedopt.kernels.sgd (the C++ kernels on NumPy arrays) against NumPy
references, across variants (plain, momentum, Nesterov), sizes, shapes,
dtypes, instruction sets and thread counts, and its argument validation.

Two references: the rule in float64 (a tolerance per dtype), and the same rule
written operation by operation in the arrays' own dtype, which the kernel
(built with -ffp-contract=off) must match bit for bit.

The update is in place, so every test starts from random state (never zeros)
in which every element of params and momentums must move: an element the
kernel never wrote keeps its old value and fails the check.
"""

import hashlib
import textwrap

import numpy as np
import pytest

from fusedopt import kernels

import isa_variants

TOLERANCES = {
    np.float32: dict(rtol=1e-6, atol=1e-6),
    np.float64: dict(rtol=1e-12, atol=1e-14),
}

# Hyperparameters with which one step moves every element of random_state:
# |m| in [0.15, 0.5] and |g| in [1.5, 2.5] with the opposite sign, so that
# |g * lr| > |m * (1 - momentum)| (m moves) and p moves by at least |g * lr|.
VARIANTS = {
    "plain": dict(lr=0.05, momentum=0.0, nesterov=False, buffers=False),
    "keras_defaults": dict(lr=0.01, momentum=0.0, nesterov=False, buffers=False),
    "momentum": dict(lr=0.1, momentum=0.9, nesterov=False, buffers=True),
    "momentum_0.5": dict(lr=0.2, momentum=0.5, nesterov=False, buffers=True),
    "momentum_1": dict(lr=0.1, momentum=1.0, nesterov=False, buffers=True),
    "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True, buffers=True),
    "nesterov_0.5": dict(lr=0.2, momentum=0.5, nesterov=True, buffers=True),
    "buffers_with_momentum_0": dict(lr=0.05, momentum=0.0, nesterov=False, buffers=True),
}
MAIN_VARIANTS = ["plain", "momentum", "nesterov"]

# kChunkElements in csrc/cpu/multi_tensor.h, and sizes around vector widths
# (4/8/16 lanes) and chunk boundaries.
CHUNK = 32768
ODD_SIZES = [1, 3, 7, 15, 17, 31, 33, 1023, CHUNK - 1, CHUNK, CHUNK + 1, 100003]


# ----------------------------------------------------------------------------
# Helpers


def reference_sgd(p, g, m, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                  dtype=np.float64):
    """One SGD step from kernels.sgd's docstring, computed in `dtype`
    operation by operation (the kernel's order). m is None for plain SGD.

    Returns new (p, m); the inputs are not modified.
    """
    p, g = (np.asarray(x, dtype=dtype) for x in (p, g))
    lr_, momentum_, wd = (dtype(x) for x in (lr, momentum, weight_decay))
    if weight_decay != 0.0:
        p = p - p * wd * lr_
    if m is None:
        return p - g * lr_, None
    m = np.asarray(m, dtype=dtype) * momentum_ - g * lr_
    if nesterov:
        return p + (m * momentum_ - g * lr_), m
    return p + m, m


def random_sign(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def random_state(rng, shape, dtype):
    """(p, g, m) of `shape`, none zero, in which one step moves every element
    (see VARIANTS)."""
    p = random_sign(rng, shape) * rng.uniform(0.5, 2.0, shape)
    m = random_sign(rng, shape) * rng.uniform(0.15, 0.5, shape)
    g = -np.sign(m) * rng.uniform(1.5, 2.5, shape)
    return tuple(np.ascontiguousarray(x, dtype=dtype) for x in (p, g, m))


def random_lists(rng, shapes, dtype):
    """Lists params, grads, momentums with one random_state per shape."""
    states = [random_state(rng, s, dtype) for s in shapes]
    return tuple([s[k] for s in states] for k in range(3))


def copies(*lists):
    return [None if lst is None else [a.copy() for a in lst] for lst in lists]


def assert_updated(name, old, new, exact, reference, dtype):
    """new equals the same-dtype rule bit for bit, matches the float64 one, and
    no element kept its old value."""
    if new.size:
        unchanged = np.count_nonzero(new == old)
        assert unchanged == 0, f"{name}: {unchanged} of {new.size} elements were not written"
    np.testing.assert_array_equal(new, exact, err_msg=f"{name} (same-dtype rule)")
    np.testing.assert_allclose(new, reference, err_msg=f"{name} (float64)", **TOLERANCES[dtype])


def hyper_of(variant, **extra):
    h = dict(VARIANTS[variant])
    h.pop("buffers")
    h.update(extra)
    return h


def step_and_check(params, grads, momentums, dtype, **hyper):
    """Runs kernels.sgd once and checks every array against the references."""
    old_p, old_g, old_m = copies(params, grads, momentums)
    kernels.sgd(params, grads, momentums, **hyper)
    for i in range(len(params)):
        m_i = None if old_m is None else old_m[i]
        exact_p, exact_m = reference_sgd(old_p[i], old_g[i], m_i, **hyper, dtype=dtype)
        ref_p, ref_m = reference_sgd(old_p[i], old_g[i], m_i, **hyper)
        assert_updated(f"params[{i}]", old_p[i], params[i], exact_p, ref_p, dtype)
        if momentums is not None:
            assert_updated(f"momentums[{i}]", old_m[i], momentums[i], exact_m, ref_m, dtype)
        np.testing.assert_array_equal(grads[i], old_g[i], err_msg=f"grads[{i}] was modified")


def run_variant(rng, shapes, dtype, variant, **extra):
    params, grads, m = random_lists(rng, shapes, dtype)
    momentums = m if VARIANTS[variant]["buffers"] else None
    step_and_check(params, grads, momentums, dtype, **hyper_of(variant, **extra))


# ----------------------------------------------------------------------------
# Against the references


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_reference(dtype, variant):
    rng = np.random.default_rng(len(variant))
    run_variant(rng, [(5,), (CHUNK + 3,), (64, 33)], dtype, variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@pytest.mark.parametrize("size", ODD_SIZES)
def test_every_element_written_for_odd_sizes(dtype, variant, size):
    run_variant(np.random.default_rng(size), [(size,)], dtype, variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_odd_sizes_in_one_call(dtype, variant):
    run_variant(np.random.default_rng(1), [(n,) for n in ODD_SIZES], dtype, variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_many_small_and_a_few_big_tensors(dtype, variant):
    rng = np.random.default_rng(2)
    shapes = [(int(n),) for n in rng.integers(1, 70, size=1000)]
    shapes[500:500] = [(100003,), (CHUNK + 1,), (3, CHUNK)]
    run_variant(rng, shapes, dtype, variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_multidimensional_shapes(dtype, variant):
    rng = np.random.default_rng(3)
    shapes = [(), (1,), (3, 5, 7), (2, 1, 33), (128, 257), (4, 3, 2, 5, 3)]
    run_variant(rng, shapes, dtype, variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_empty_tensors_among_others(dtype, variant):
    rng = np.random.default_rng(4)
    shapes = [(0,), (17,), (3, 0), (0, 5, 2), (CHUNK + 1,), (0,)]
    run_variant(rng, shapes, dtype, variant)


@pytest.mark.parametrize("container", [list, tuple])
@pytest.mark.parametrize("momentums", [None, "empty"])
def test_empty_list_is_a_no_op(container, momentums):
    m = None if momentums is None else container()
    assert kernels.sgd(container(), container(), m, lr=0.1, momentum=0.9 if m is not None
                       else 0.0) is True  # "applied": nothing to do


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", MAIN_VARIANTS)
@pytest.mark.parametrize("weight_decay", [0.004, 0.5])
def test_weight_decay_is_applied_first(dtype, variant, weight_decay):
    # Decay after the update instead of before would move p by about
    # weight_decay * lr * |update|, far above the tolerance.
    run_variant(np.random.default_rng(5), [(33,), (CHUNK + 5,)], dtype, variant,
                weight_decay=weight_decay)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["momentum", "nesterov"])
def test_consecutive_steps(dtype, variant):
    """Several steps, each checked against the reference from the previous
    state: the momentum buffer carries over."""
    rng = np.random.default_rng(6)
    params, grads, m = random_lists(rng, [(7,), (1023,), (CHUNK + 1,)], dtype)
    for _ in range(6):
        # Fresh gradients against the sign of m keep every element moving.
        grads[:] = [np.ascontiguousarray(-np.sign(x) * rng.uniform(1.5, 2.5, x.shape),
                                         dtype=dtype) for x in m]
        step_and_check(params, grads, m, dtype, **hyper_of(variant, weight_decay=0.01))


def test_momentum_zero_with_buffers_gives_plain_params():
    """Buffers given with momentum 0 are updated (to -g * lr) and params end
    up exactly where plain SGD puts them."""
    rng = np.random.default_rng(7)
    params, grads, m = random_lists(rng, [(31,), (CHUNK + 1,)], np.float32)
    plain = [x.copy() for x in params]
    kernels.sgd(plain, grads, None, lr=0.05)
    for nesterov in (False, True):
        p = [x.copy() for x in params]
        buffers = [x.copy() for x in m]
        kernels.sgd(p, grads, buffers, lr=0.05, momentum=0.0, nesterov=nesterov)
        for a, b, mm, g in zip(p, plain, buffers, grads):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(mm, -(g * np.float32(0.05)))


def test_nesterov_is_ignored_without_buffers():
    rng = np.random.default_rng(8)
    params, grads, _ = random_lists(rng, [(100,)], np.float64)
    a, b = [params[0].copy()], [params[0].copy()]
    kernels.sgd(a, grads, None, lr=0.1, nesterov=True)
    kernels.sgd(b, grads, None, lr=0.1, nesterov=False)
    np.testing.assert_array_equal(a[0], b[0])


def test_learning_rate_zero():
    """lr = 0: params keep their bits (plain), momentum just decays."""
    rng = np.random.default_rng(9)
    params, grads, m = random_lists(rng, [(31,), (CHUNK + 1,)], np.float32)
    old_p, old_m = copies(params, m)
    kernels.sgd(params, grads, None, lr=0.0, weight_decay=0.1)
    for i in range(2):
        np.testing.assert_array_equal(params[i], old_p[i])
    kernels.sgd(params, grads, m, lr=0.0, momentum=0.5)
    for i in range(2):
        np.testing.assert_array_equal(m[i], old_m[i] * np.float32(0.5))
        np.testing.assert_array_equal(params[i], old_p[i] + m[i])


def test_numpy_scalars_tuples_and_shared_readonly_grads_are_accepted():
    rng = np.random.default_rng(10)
    params, grads, m = random_lists(rng, [(100,), (100,)], np.float64)
    grads[1] = grads[0]  # the same gradient for two parameters: only read
    grads[0].setflags(write=False)
    step_and_check(tuple(params), tuple(grads), tuple(m), np.float64,
                   lr=np.float32(0.1), momentum=np.float64(0.9), nesterov=np.bool_(True),
                   weight_decay=np.int32(1))


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
        p, g, m = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(3)]
        for momentum, nesterov, decay in ((0.0, False, 0.0), (0.0, False, 0.01),
                                          (0.9, False, 0.0), (0.9, True, 0.0),
                                          (0.8, True, 0.01), (0.9, False, 0.01)):
            kernels.sgd(p, g, m if momentum else None, lr=0.01, momentum=momentum,
                        nesterov=nesterov, weight_decay=decay)
        for lst in (p, m):
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
    a = np.ones(1000, np.float32)
    b = a.copy()
    b[999] = np.nextafter(b[999], np.float32(2))
    assert hashlib.sha256(a.tobytes()).hexdigest() != hashlib.sha256(b.tobytes()).hexdigest()


# ----------------------------------------------------------------------------
# Bad input: a clear error naming the argument, and nothing written


def _base_call(rng):
    """A valid call (two float32 tensors, Nesterov momentum), as a mutable dict."""
    params, grads, m = random_lists(rng, [(5,), (2, 3)], np.float32)
    return dict(params=params, grads=grads, momentums=m, lr=0.1, momentum=0.9,
                nesterov=True, weight_decay=0.01)


def _set(key, value):
    def mutate(call):
        call[key] = value
    return mutate


def _set_item(key, index, make):
    """Replaces call[key][index] with make(call[key][index])."""
    def mutate(call):
        call[key][index] = make(call[key][index])
    return mutate


def _readonly(a):
    a.setflags(write=False)
    return a


def _non_contiguous(a):
    view = np.repeat(a, 2, axis=-1)[..., ::2]
    assert not view.flags.c_contiguous
    return view


def _overlapping_views(call):
    base = np.random.default_rng(0).uniform(0.5, 1.0, 20).astype(np.float32)
    call["params"][1] = base[0:6].reshape(2, 3)
    call["momentums"][1] = base[3:9].reshape(2, 3)


def _same_param_twice(call):
    call["params"][0] = call["params"][1]
    call["grads"][0] = call["grads"][1].copy()
    call["momentums"][0] = call["momentums"][1].copy()


def _all_float64(index):
    def mutate(call):
        for k in ("params", "grads", "momentums"):
            call[k][index] = call[k][index].astype(np.float64)
    return mutate


BAD_CALLS = {
    # list structure
    "grads_shorter": (lambda c: c["grads"].pop(), ValueError,
                      r"\bgrads has 1 arrays but params has 2"),
    "momentums_empty_list": (_set("momentums", []), ValueError, r"\bmomentums has 0 arrays"),
    "momentums_longer": (lambda c: c["momentums"].append(c["momentums"][0].copy()),
                         ValueError, r"\bmomentums has 3 arrays"),
    "momentums_none_with_momentum": (_set("momentums", None), ValueError,
                                     r"momentums is None but momentum is 0.9"),
    "params_not_a_list": (lambda c: c.update(params=c["params"][0]), TypeError, r"params"),
    "grads_a_dict": (lambda c: c.update(grads={0: c["grads"][0]}), TypeError, r"grads"),
    "momentums_an_array": (lambda c: c.update(momentums=c["momentums"][0]), TypeError,
                           r"momentums"),
    "momentums_item_a_list": (_set_item("momentums", 1, lambda a: a.tolist()), TypeError,
                              r"momentums\[1\]"),
    # shapes and dtypes
    "momentums_transposed_shape": (
        _set_item("momentums", 1, lambda a: np.ascontiguousarray(a.T)), ValueError,
        r"momentums\[1\]"),
    "grads_same_size_other_shape": (_set_item("grads", 1, lambda a: a.reshape(6)),
                                    ValueError, r"grads\[1\]"),
    "momentums_float64_in_float32_call": (
        _set_item("momentums", 1, lambda a: a.astype(np.float64)), TypeError,
        r"momentums\[1\]"),
    "params_mixed_dtypes": (_all_float64(1), TypeError, r"params\[1\]"),
    "grads_int32": (_set_item("grads", 1, lambda a: a.astype(np.int32)), TypeError,
                    r"grads\[1\]"),
    "params_float16": (_set_item("params", 0, lambda a: a.astype(np.float16)), TypeError,
                       r"params\[0\]"),
    # writability, layout, aliasing
    "momentums_read_only": (_set_item("momentums", 1, _readonly), ValueError,
                            r"momentums\[1\]"),
    "params_read_only": (_set_item("params", 1, _readonly), ValueError, r"params\[1\]"),
    "momentums_non_contiguous": (_set_item("momentums", 1, _non_contiguous), ValueError,
                                 r"momentums\[1\]"),
    "params_fortran_order": (_set_item("params", 1, np.asfortranarray), ValueError,
                             r"params\[1\]"),
    "same_array_params_and_momentums": (
        lambda c: c["momentums"].__setitem__(1, c["params"][1]), ValueError,
        r"(params\[1\] and momentums\[1\]|momentums\[1\] and params\[1\])"),
    "overlapping_views_params_momentums": (
        _overlapping_views, ValueError,
        r"(params\[1\] and momentums\[1\]|momentums\[1\] and params\[1\])"),
    "grad_is_param": (lambda c: c["grads"].__setitem__(1, c["params"][1]), ValueError,
                      r"(params\[1\] and grads\[1\]|grads\[1\] and params\[1\])"),
    "same_param_twice": (_same_param_twice, ValueError,
                         r"(params\[0\] and params\[1\]|params\[1\] and params\[0\])"),
    # hyperparameters
    "lr_negative": (_set("lr", -1e-3), ValueError, r"\blr\b"),
    "lr_nan": (_set("lr", float("nan")), ValueError, r"\blr\b"),
    "lr_inf": (_set("lr", float("inf")), ValueError, r"\blr\b"),
    "lr_string": (_set("lr", "0.1"), TypeError, r"\blr\b"),
    "lr_none": (_set("lr", None), TypeError, r"\blr\b"),
    "lr_bool": (_set("lr", True), TypeError, r"\blr\b"),
    "lr_array": (_set("lr", np.array([0.1, 0.1])), TypeError, r"\blr\b"),
    "momentum_above_one": (_set("momentum", 1.5), ValueError, r"\bmomentum\b"),
    "momentum_negative": (_set("momentum", -0.1), ValueError, r"\bmomentum\b"),
    "momentum_nan": (_set("momentum", float("nan")), ValueError, r"\bmomentum\b"),
    "momentum_string": (_set("momentum", "0.9"), TypeError, r"\bmomentum\b"),
    "momentum_list": (_set("momentum", [0.9]), TypeError, r"\bmomentum\b"),
    "nesterov_int": (_set("nesterov", 1), TypeError, r"\bnesterov\b"),
    "nesterov_string": (_set("nesterov", "yes"), TypeError, r"\bnesterov\b"),
    "nesterov_none": (_set("nesterov", None), TypeError, r"\bnesterov\b"),
    "weight_decay_negative": (_set("weight_decay", -0.01), ValueError, r"weight_decay"),
    "weight_decay_string": (_set("weight_decay", "0"), TypeError, r"weight_decay"),
}


def _arrays_in(call):
    arrays = []
    for key in ("params", "grads", "momentums"):
        value = call[key]
        items = value if isinstance(value, (list, tuple)) else (
            value.values() if isinstance(value, dict) else [value])
        arrays += [a for a in items if isinstance(a, np.ndarray)]
    return arrays


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_and_writes_nothing(case):
    mutate, error, pattern = BAD_CALLS[case]
    call = _base_call(np.random.default_rng(11))
    mutate(call)
    arrays = _arrays_in(call)
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=pattern):
        kernels.sgd(**call)
    for i, (a, b) in enumerate(zip(arrays, before)):
        np.testing.assert_array_equal(a, b, err_msg=f"{case}: array {i} was modified")


def test_bad_calls_are_valid_without_their_mutation():
    """The base call of the table above succeeds, so each failure is the
    mutation's doing (and writes every element)."""
    call = _base_call(np.random.default_rng(11))
    step_and_check(call.pop("params"), call.pop("grads"), call.pop("momentums"),
                   np.float32, **call)


def test_hyperparameters_are_validated_even_for_an_empty_list():
    with pytest.raises(ValueError, match=r"\blr\b"):
        kernels.sgd([], [], None, lr=-1.0)
    with pytest.raises(ValueError, match=r"\bmomentum\b"):
        kernels.sgd([], [], [], lr=0.1, momentum=2.0)


def test_docstring_documents_the_rule():
    doc = kernels.sgd.__doc__
    for text in ("m = m * momentum - g * lr", "p -= g * lr", "p += m * momentum - g * lr",
                 "p -= p * weight_decay * lr"):
        assert text in doc

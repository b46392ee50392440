"""Bad input at the low-level entry points: nothing is lost.

Every row of the tables below is one bad call of `fusedopt.kernels.adam/sgd/
global_norm` (NumPy) or of the TF ops FusedoptAdam / FusedoptSgd /
FusedoptSquaredNorms called directly. Each must raise the stated error with a
message naming the argument, and leave every array, variable and slot of the
call bit for bit as it was (compared with copies taken before the call).

The cases already covered by test_kernels_adam/sgd/clip.py and
test_tf_op_adam/sgd.py (list lengths, shapes, dtypes, read-only, Fortran
order, plain aliasing, uninitialized variables, non-scalar hyperparameters,
out-of-range numbers) are not repeated here; these are the rest: views and
aliasing in every combination, misaligned / masked / byte-swapped arrays,
arrays that are not NumPy arrays (CUDA arrays in a CPU build, TF tensors),
non-finite hyperparameters of NumPy and TF scalar types, the clip arguments,
and the valid edge cases (empty tensors, read-only gradients, shared
gradients, boundary hyperparameters) that must *not* be refused.

Choices (see also kernels.py): the NumPy API refuses non-finite
hyperparameters and those out of range (lr, epsilon, weight_decay >= 0; betas
in [0, 1); momentum in [0, 1]) but accepts the boundaries (lr = 0, beta = 0,
epsilon = 0, momentum = 1). The TF ops check shapes, dtypes, initialization
and aliasing but not the values of the scalar hyperparameters: they are the
backend of the Keras optimizers, which pass non-finite values through exactly
where stock Keras does (a NaN global-norm scale folded into SGD's lr), so a
NaN propagates as in Keras; the clip arguments are checked for values no
caller means (clip by value with lo > hi, a clip-by-norm denominator <= 0).
"""

import numpy as np
import pytest

import fusedopt
from fusedopt import kernels

SHAPES = [(2, 3), (2, 3), (5,)]


# ----------------------------------------------------------------------------
# Helpers


def random_arrays(rng, dtype=np.float32, shapes=SHAPES, positive=False):
    out = []
    for s in shapes:
        a = rng.uniform(0.5, 1.5, s) if positive else rng.standard_normal(s)
        out.append(np.asarray(a, dtype))
    return out


def misaligned(a):
    """A C-contiguous, writeable copy of `a` at an odd byte offset."""
    buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
    view = buf[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


def views_of_one_buffer(a, b, overlap):
    """Copies of a and b (same size) in one buffer, b starting `overlap`
    elements before a ends."""
    buf = np.empty(a.size + b.size - overlap, a.dtype)
    x = buf[:a.size].reshape(a.shape)
    y = buf[a.size - overlap:].reshape(b.shape)
    x[...] = a
    y[...] = b
    return x, y


class FakeCudaArray:
    """Looks like a CUDA array (__cuda_array_interface__) without any GPU."""

    def __init__(self, like):
        self.__cuda_array_interface__ = {
            "shape": like.shape, "typestr": like.dtype.str, "data": (0x1000, False),
            "version": 3, "strides": None}


def all_arrays(obj):
    """Every NumPy array reachable from a call's arguments (with the buffers
    that views belong to)."""
    found = []
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, np.ndarray):
            found.append(x)
            if isinstance(x.base, np.ndarray):
                found.append(x.base)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return found


def snapshot(arrays):
    # np.array (not .copy()) also copies masked arrays' data without the mask.
    return [np.array(np.asarray(a), copy=True) for a in arrays]


def set_item(key, index, make):
    def mutate(call):
        call[key][index] = make(call[key][index], call)
    return mutate


def set_arg(key, value):
    def mutate(call):
        call[key] = value
    return mutate


def both(*mutations):
    def mutate(call):
        for m in mutations:
            m(call)
    return mutate


# ----------------------------------------------------------------------------
# NumPy kernels


def adam_call(rng):
    p, g, m = random_arrays(rng), random_arrays(rng), random_arrays(rng)
    v = random_arrays(rng, positive=True)
    return dict(params=p, grads=g, m=m, v=v, lr=1e-3, beta_1=0.9, beta_2=0.999,
                epsilon=1e-7, step=3, weight_decay=0.01)


def sgd_call(rng):
    p, g, mom = random_arrays(rng), random_arrays(rng), random_arrays(rng)
    return dict(params=p, grads=g, momentums=mom, lr=0.1, momentum=0.9, nesterov=True,
                weight_decay=0.01)


def norm_call(rng):
    return dict(arrays=random_arrays(rng))


def _overlap(key_a, i, key_b, j, overlap=1):
    """key_a[i] and key_b[j] become views of one buffer, overlapping."""
    def mutate(call):
        call[key_a][i], call[key_b][j] = views_of_one_buffer(call[key_a][i], call[key_b][j],
                                                             overlap)
    return mutate


def _same(key_a, i, key_b, j):
    def mutate(call):
        call[key_b][j] = call[key_a][i]
    return mutate


def _pair(a, b):
    """Matches a message naming a and b, in either order."""
    a, b = (x.replace("[", r"\[").replace("]", r"\]") for x in (a, b))
    return rf"({a} and {b}|{b} and {a})"


_CPU_BUILD = not fusedopt.build_info()["cuda"]
_no_cuda = pytest.mark.skipif(not _CPU_BUILD, reason="CPU-build message (no CUDA kernels)")
NO_CUDA = "no CUDA kernels"
_cuda_without_device = pytest.mark.skipif(
    _CPU_BUILD or fusedopt._C.cuda_problem() is None,
    reason="a CUDA build in a process that sees no usable CUDA device")

# name: (function, base call, mutation, error, pattern naming the argument)
KERNEL_CASES = {
    # -- the same buffer twice, and overlapping views
    "adam_params_twice": ("adam", _same("params", 0, "params", 1), ValueError,
                          _pair("params[0]", "params[1]")),
    "adam_m_twice": ("adam", _same("m", 0, "m", 1), ValueError, _pair("m[0]", "m[1]")),
    "adam_v_is_other_m": ("adam", _same("m", 0, "v", 1), ValueError, _pair("m[0]", "v[1]")),
    "adam_grad_is_other_v": ("adam", _same("v", 2, "grads", 2), ValueError,
                             _pair("v[2]", "grads[2]")),
    "adam_params_overlap_by_one": ("adam", _overlap("params", 0, "params", 1), ValueError,
                                   _pair("params[0]", "params[1]")),
    "adam_m_overlaps_v": ("adam", _overlap("m", 1, "v", 1, overlap=3), ValueError,
                          _pair("m[1]", "v[1]")),
    "adam_grads_overlap_params": ("adam", _overlap("grads", 0, "params", 1), ValueError,
                                  _pair("grads[0]", "params[1]")),
    "sgd_momentums_twice": ("sgd", _same("momentums", 0, "momentums", 1), ValueError,
                            _pair("momentums[0]", "momentums[1]")),
    "sgd_params_overlap_momentums": ("sgd", _overlap("params", 1, "momentums", 0), ValueError,
                                     _pair("params[1]", "momentums[0]")),
    "sgd_grads_overlap_momentums": ("sgd", _overlap("grads", 0, "momentums", 1), ValueError,
                                    _pair("grads[0]", "momentums[1]")),
    # -- layouts the kernels cannot read as one aligned, native block
    "adam_params_misaligned": ("adam", set_item("params", 1, lambda a, c: misaligned(a)),
                               ValueError, r"params\[1\].*aligned"),
    "adam_grads_misaligned": ("adam", set_item("grads", 2, lambda a, c: misaligned(a)),
                              ValueError, r"grads\[2\].*aligned"),
    "sgd_momentums_misaligned": ("sgd", set_item("momentums", 0, lambda a, c: misaligned(a)),
                                 ValueError, r"momentums\[0\].*aligned"),
    "norm_misaligned": ("global_norm", set_item("arrays", 1, lambda a, c: misaligned(a)),
                        ValueError, r"arrays\[1\].*aligned"),
    "adam_grads_masked": ("adam", set_item("grads", 0, lambda a, c: np.ma.masked_less(a, 0)),
                          ValueError, r"grads\[0\].*masked"),
    "sgd_params_masked": ("sgd", set_item("params", 2, lambda a, c: np.ma.masked_array(a)),
                          ValueError, r"params\[2\].*masked"),
    "norm_masked": ("global_norm", set_item("arrays", 0, lambda a, c: np.ma.masked_less(a, 0)),
                    ValueError, r"arrays\[0\].*masked"),
    "adam_v_big_endian": ("adam", set_item("v", 1, lambda a, c: a.astype(">f4")), TypeError,
                          r"v\[1\].*float32 or float64"),
    "sgd_grads_big_endian": ("sgd", set_item("grads", 0, lambda a, c: a.astype(">f4")),
                             TypeError, r"grads\[0\].*float32 or float64"),
    "adam_params_reversed": ("adam", set_item("params", 2, lambda a, c: a[::-1]), ValueError,
                             r"params\[2\].*C-contiguous"),
    "adam_m_every_other": ("adam", set_item("m", 0, lambda a, c: np.repeat(a, 2, 1)[:, ::2]),
                           ValueError, r"m\[0\].*C-contiguous"),
    "norm_non_contiguous": ("global_norm", set_item("arrays", 0, lambda a, c: a.T),
                            ValueError, r"arrays\[0\].*C-contiguous"),
    "norm_int64": ("global_norm", set_item("arrays", 2, lambda a, c: a.astype(np.int64)),
                   TypeError, r"arrays\[2\].*float32 or float64"),
    "norm_item_a_list": ("global_norm", set_item("arrays", 1, lambda a, c: a.tolist()),
                         TypeError, r"arrays\[1\].*NumPy array"),
    "norm_not_a_list": ("global_norm", lambda c: c.update(arrays=c["arrays"][0]), TypeError,
                        r"\barrays must be a list"),
    "norm_a_generator": ("global_norm", lambda c: c.update(arrays=iter(c["arrays"])),
                         TypeError, r"\barrays must be a list"),
    # -- arrays that are not NumPy arrays
    "adam_grads_tf_tensor": ("adam", set_item("grads", 1, lambda a, c: _tf().constant(a)),
                             TypeError, r"grads\[1\].*NumPy array.*EagerTensor"),
    "sgd_params_a_memoryview": ("sgd", set_item("params", 0, lambda a, c: memoryview(a)),
                                TypeError, r"params\[0\].*NumPy array"),
    # Every kernel takes CUDA arrays (docs/gpu.md): refused in a CPU build,
    # and in a CUDA build where no device can be used.
    "sgd_grads_cuda_array": pytest.param(
        "sgd", set_item("grads", 1, lambda a, c: FakeCudaArray(a)), RuntimeError,
        rf"grads\[1\] is a CUDA array.*{NO_CUDA}", marks=_no_cuda),
    "norm_cuda_array": pytest.param(
        "global_norm", set_item("arrays", 0, lambda a, c: FakeCudaArray(a)), RuntimeError,
        rf"arrays\[0\] is a CUDA array.*{NO_CUDA}", marks=_no_cuda),
    "sgd_grads_cuda_array_no_device": pytest.param(
        "sgd", set_item("grads", 1, lambda a, c: FakeCudaArray(a)), RuntimeError,
        r"grads\[1\]: cannot query its CUDA memory.*no usable CUDA device",
        marks=_cuda_without_device),
    "norm_cuda_array_no_device": pytest.param(
        "global_norm", set_item("arrays", 0, lambda a, c: FakeCudaArray(a)), RuntimeError,
        r"arrays\[0\]: cannot query its CUDA memory.*no usable CUDA device",
        marks=_cuda_without_device),
    "adam_grads_cuda_array": pytest.param(
        "adam", set_item("grads", 1, lambda a, c: FakeCudaArray(a)), RuntimeError,
        rf"grads\[1\] is a CUDA array.*{NO_CUDA}", marks=_no_cuda),
    "adam_lr_cuda_array": pytest.param(
        "adam", set_arg("lr", FakeCudaArray(np.zeros((), np.float32))), RuntimeError,
        rf"\blr is a CUDA array.*{NO_CUDA}", marks=_no_cuda),
    "adam_stream_with_numpy": pytest.param(
        "adam", set_arg("stream", 0), RuntimeError, rf"stream= was given.*{NO_CUDA}",
        marks=_no_cuda),
    # -- hyperparameters: non-finite, of NumPy and TF scalar types
    "adam_lr_numpy_nan": ("adam", set_arg("lr", np.float32("nan")), ValueError,
                          r"\blr must be finite"),
    "adam_lr_tf_inf": ("adam", lambda c: c.update(lr=_tf().constant(np.inf)), ValueError,
                       r"\blr must be finite"),
    "adam_beta_1_nan": ("adam", set_arg("beta_1", float("nan")), ValueError,
                        r"\bbeta_1 must be finite"),
    "adam_epsilon_inf": ("adam", set_arg("epsilon", float("inf")), ValueError,
                         r"\bepsilon must be finite"),
    "adam_weight_decay_inf": ("adam", set_arg("weight_decay", np.float64("inf")), ValueError,
                              r"\bweight_decay must be finite"),
    "adam_weight_decay_minus_inf": ("adam", set_arg("weight_decay", -np.inf), ValueError,
                                    r"\bweight_decay must be finite"),
    "adam_beta_2_numpy_vector": ("adam", set_arg("beta_2", np.array([0.999, 0.999])),
                                 TypeError, r"\bbeta_2 must be a real number"),
    "adam_lr_one_element_list": ("adam", set_arg("lr", [1e-3]), TypeError,
                                 r"\blr must be a real number"),
    "adam_lr_numpy_bool": ("adam", set_arg("lr", np.True_), TypeError,
                           r"\blr must be a real number, got bool"),
    "sgd_weight_decay_bool_array": ("sgd", set_arg("weight_decay", np.array(False)), TypeError,
                                    r"\bweight_decay must be a real number"),
    "adam_lr_complex": ("adam", set_arg("lr", 1e-3 + 0j), TypeError,
                        r"\blr must be a real number"),
    "adam_step_numpy_float": ("adam", set_arg("step", np.float64(3.0)), TypeError,
                              r"\bstep must be an integer"),
    "adam_step_uint64_max": ("adam", set_arg("step", np.uint64(2**64 - 1)), ValueError,
                             r"\bstep\b"),
    "adam_step_numpy_zero": ("adam", set_arg("step", np.int64(0)), ValueError,
                             r"\bstep must be >= 1"),
    "sgd_momentum_inf": ("sgd", set_arg("momentum", float("inf")), ValueError,
                         r"\bmomentum must be finite"),
    "sgd_momentum_just_above_one": ("sgd", set_arg("momentum", np.nextafter(1.0, 2.0)),
                                    ValueError, r"\bmomentum must be in \[0, 1\]"),
    "sgd_lr_tf_nan": ("sgd", lambda c: c.update(lr=_tf().constant(float("nan"))), ValueError,
                      r"\blr must be finite"),
    "sgd_lr_negative_zero_point": ("sgd", set_arg("lr", -1e-30), ValueError,
                                   r"\blr must be in \[0, inf\)"),
    "sgd_nesterov_numpy_int": ("sgd", set_arg("nesterov", np.int64(1)), TypeError,
                               r"\bnesterov must be a bool"),
    "sgd_momentum_without_buffers": ("sgd", set_arg("momentums", None), ValueError,
                                     r"\bmomentums is None but momentum"),
    # -- clip options
    "adam_clip_norm_inf": ("adam", set_arg("clip_norm", float("inf")), ValueError,
                           r"\bclip_norm must be finite"),
    "adam_clip_value_negative": ("adam", set_arg("clip_value", -1.0), ValueError,
                                 r"\bclip_value must be in \(0, inf\)"),
    "sgd_global_clip_norm_nan": ("sgd", set_arg("global_clip_norm", float("nan")), ValueError,
                                 r"\bglobal_clip_norm must be finite"),
    "sgd_global_clip_norm_zero": ("sgd", set_arg("global_clip_norm", 0), ValueError,
                                  r"\bglobal_clip_norm must be in \(0, inf\)"),
    "sgd_two_clips": ("sgd", both(set_arg("clip_norm", 1.0), set_arg("global_clip_norm", 1.0)),
                      ValueError, r"at most one.*clip_norm and global_clip_norm"),
    # -- a bad argument after valid ones: still checked before any write
    "adam_last_array_bad": ("adam", set_item("v", 2, lambda a, c: a.astype(np.float64)),
                            TypeError, r"v\[2\]"),
}

_BASE_CALLS = {"adam": adam_call, "sgd": sgd_call, "global_norm": norm_call}


def _tf():
    import tensorflow as tf
    return tf


def _case_params(cases):
    out = []
    for name, case in cases.items():
        if hasattr(case, "marks"):  # a pytest.param
            out.append(pytest.param(*case.values, marks=case.marks, id=name))
        else:
            out.append(pytest.param(*case, id=name))
    return out


@pytest.mark.parametrize("function,mutate,error,pattern", _case_params(KERNEL_CASES))
def test_kernel_bad_input_raises_and_writes_nothing(function, mutate, error, pattern):
    call = _BASE_CALLS[function](np.random.default_rng(7))
    mutate(call)
    arrays = all_arrays(call)
    before = snapshot(arrays)
    with pytest.raises(error, match=pattern):
        getattr(kernels, function)(**call)
    for i, (a, b) in enumerate(zip(arrays, before)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"array {i} was modified")
        assert np.asarray(a).tobytes() == b.tobytes(), f"array {i}: bits changed"


@pytest.mark.parametrize("function", sorted(_BASE_CALLS))
def test_kernel_base_calls_are_valid(function):
    """Without its mutation each table call succeeds and writes every updated
    array: a row's failure is its mutation's doing."""
    call = _BASE_CALLS[function](np.random.default_rng(7))
    written = {"adam": ("params", "m", "v"), "sgd": ("params", "momentums"),
               "global_norm": ()}[function]
    before = {k: snapshot(call[k]) for k in written}
    result = getattr(kernels, function)(**call)
    for k in written:
        for i, (a, b) in enumerate(zip(call[k], before[k])):
            assert np.all(a != b), f"{function}: {k}[{i}] not updated everywhere"
    if function == "global_norm":
        expected = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in call["arrays"]))
        np.testing.assert_allclose(result, expected, rtol=1e-12)


# ----------------------------------------------------------------------------
# NumPy kernels: valid edge cases that must not be refused


def _adam_reference(p, g, m, v, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0):
    p, g, m, v = (np.asarray(x, np.float64) for x in (p, g, m, v))
    p = p - p * weight_decay * lr
    m = m + (g - m) * (1 - beta_1)
    v = v + (g * g - v) * (1 - beta_2)
    alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    return p - alpha * m / (np.sqrt(v) + epsilon), m, v


def test_empty_arrays_are_valid_and_left_alone():
    rng = np.random.default_rng(1)
    shapes = [(0,), (4, 5), (3, 0, 2), (7,)]
    p, g, m = (random_arrays(rng, np.float64, shapes) for _ in range(3))
    v = random_arrays(rng, np.float64, shapes, positive=True)
    old = snapshot(p + m + v)
    hyper = dict(lr=1e-2, beta_1=0.8, beta_2=0.9, epsilon=1e-6, step=2)
    kernels.adam(p, g, m, v, **hyper)
    for i, shape in enumerate(shapes):
        assert p[i].shape == shape and m[i].shape == shape and v[i].shape == shape
        ref = _adam_reference(old[i], g[i], old[4 + i], old[8 + i], **hyper)
        for name, got, r in zip(("params", "m", "v"), (p[i], m[i], v[i]), ref):
            np.testing.assert_allclose(got, r, rtol=1e-12, err_msg=f"{name}[{i}]")
    # All empty, and empty lists: nothing to do, no error.
    kernels.adam([np.zeros(0, np.float32)], [np.zeros(0, np.float32)],
                 [np.zeros(0, np.float32)], [np.zeros(0, np.float32)], **hyper)
    kernels.adam([], [], [], [], **hyper)
    kernels.sgd([np.zeros((0, 3))], [np.zeros((0, 3))], None, lr=0.1)
    kernels.sgd([], [], [], lr=0.1, momentum=0.9)
    assert kernels.global_norm([np.zeros(0, np.float32)]) == 0.0
    assert kernels.global_norm([np.zeros(0), np.full(4, 2.0)]) == 4.0


def test_empty_arrays_may_share_an_address():
    """Zero-size arrays have no elements to clash: two empty views at one
    address (and an empty view inside a parameter) are fine."""
    buf = np.arange(6, dtype=np.float32) + 1
    p = [buf[:3], buf[3:3], buf[3:]]
    g = [np.ones(3, np.float32), np.zeros(0, np.float32), np.ones(3, np.float32)]
    m = [np.zeros(3, np.float32), buf[3:3], np.zeros(3, np.float32)]
    kernels.sgd(p, g, m, lr=0.5, momentum=0.5)
    np.testing.assert_array_equal(buf, np.arange(6, dtype=np.float32) + 0.5)


def test_read_only_and_shared_gradients_are_valid():
    rng = np.random.default_rng(2)
    p = random_arrays(rng, shapes=[(6,), (6,)])
    g = rng.standard_normal(6).astype(np.float32)
    g.flags.writeable = False
    old = snapshot(p)
    kernels.sgd(p, [g, g], None, lr=0.25)  # one gradient for two parameters
    for i in range(2):
        np.testing.assert_array_equal(p[i], old[i] - g * np.float32(0.25))


@pytest.mark.parametrize("hyper", [
    dict(lr=0.0), dict(beta_1=0.0, beta_2=0.0), dict(epsilon=0.0), dict(weight_decay=0.0),
    dict(lr=np.float32(1e-2), beta_1=np.float64(0.5), step=np.int32(7)),
    dict(lr=np.array(1e-2), epsilon=np.array(1e-3, np.float32)),
], ids=["lr_0", "betas_0", "epsilon_0", "weight_decay_0", "numpy_scalars", "0d_arrays"])
def test_boundary_and_numpy_hyperparameters_are_valid(hyper):
    """The boundaries of the documented ranges, and NumPy scalar types, are
    accepted and give the reference result (lr = 0: parameters unchanged)."""
    rng = np.random.default_rng(3)
    p, g, m = (random_arrays(rng, dtype=np.float64) for _ in range(3))
    v = random_arrays(rng, dtype=np.float64, positive=True)
    full = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3, weight_decay=0.1)
    full.update(hyper)
    old = snapshot(p + m + v)
    kernels.adam(p, g, m, v, **full)
    ref_hyper = {k: float(x) if k != "step" else int(x) for k, x in full.items()}
    for i in range(len(p)):
        ref = _adam_reference(old[i], g[i], old[3 + i], old[6 + i], **ref_hyper)
        for name, got, r in zip(("params", "m", "v"), (p[i], m[i], v[i]), ref):
            np.testing.assert_allclose(got, r, rtol=1e-12, atol=1e-300, err_msg=f"{name}[{i}]")
        if full["lr"] == 0:
            np.testing.assert_array_equal(p[i], old[i])


def test_momentum_one_is_valid():
    p = [np.array([1.0, 2.0])]
    m = [np.array([0.5, -0.5])]
    kernels.sgd(p, [np.array([1.0, 1.0])], m, lr=0.5, momentum=1.0)
    np.testing.assert_array_equal(m[0], [0.0, -1.0])
    np.testing.assert_array_equal(p[0], [1.0, 1.0])


def test_arrays_stay_alive_while_the_kernel_runs_without_the_gil():
    """The kernel holds its own references: a thread that empties the caller's
    lists while the update runs (GIL released) cannot free the arrays under
    it (with borrowed references, a write after free: a crash here, or a
    report under AddressSanitizer)."""

    import threading
    import time

    n = 1 << 21  # 8 MB arrays: freed with munmap, so a write after free faults
    for _ in range(3):
        params = [np.ones(n, np.float32) for _ in range(4)]
        grads = [np.ones(n, np.float32) for _ in range(4)]

        def clear():
            time.sleep(0.002)  # the kernel (~10 ms) has started by then
            params.clear()
            grads.clear()

        t = threading.Thread(target=clear)
        t.start()
        try:
            kernels.sgd(params, grads, None, lr=0.5)
        except ValueError:
            pass  # emptied between the checks of params and grads: refused, fine
        finally:
            t.join()


# ----------------------------------------------------------------------------
# TF ops, called directly


@pytest.fixture(scope="module")
def lib():
    from fusedopt import _ops

    library = _ops.library()
    assert library is not None, _ops.load_error()
    return library


def _variables(rng, dtype=np.float32, shapes=SHAPES, positive=False):
    tf = _tf()
    return [tf.Variable(a) for a in random_arrays(rng, dtype, shapes, positive)]


def tf_adam_call(rng):
    tf = _tf()
    p, m = _variables(rng), _variables(rng)
    v = _variables(rng, positive=True)
    g = [tf.constant(a) for a in random_arrays(rng)]
    c = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    return dict(params=p, m=m, v=v, grads=g, alpha=c(1e-3), one_minus_beta_1=c(0.1),
                one_minus_beta_2=c(0.001), epsilon=c(1e-7), lr=c(1e-3), weight_decay=c(0.01),
                clip_args=tf.zeros([0]), apply_weight_decay=True, apply_if=[])


def tf_sgd_call(rng):
    tf = _tf()
    p, mom = _variables(rng), _variables(rng)
    g = [tf.constant(a) for a in random_arrays(rng)]
    c = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    return dict(params=p, momentums=mom, grads=g, lr=c(0.1), momentum=c(0.9),
                weight_decay=c(0.01), decay_lr=c(0.1), clip_args=tf.zeros([0]),
                nesterov=True, apply_weight_decay=True, apply_if=[])


def tf_norms_call(rng):
    tf = _tf()
    return dict(x=[tf.constant(a) for a in random_arrays(rng)])


_TF_BASE = {"adam": tf_adam_call, "sgd": tf_sgd_call, "squared_norms": tf_norms_call}
_TF_VARIABLE_LISTS = {"adam": ("params", "m", "v"), "sgd": ("params", "momentums"),
                      "squared_norms": ()}


def _run_op(lib, function, call, mode):
    tf = _tf()
    op = getattr(lib, "fusedopt_" + function)

    def run(**tensors):
        kwargs = dict(call)
        for k in _TF_VARIABLE_LISTS[function]:
            kwargs[k] = [x.handle if hasattr(x, "handle") else x for x in call[k]]
        kwargs.update(tensors)
        out = op(**kwargs)
        return out if isinstance(out, tf.Tensor) else None  # the update ops: no output

    if mode == "eager":
        return run()
    # The scalar and clip inputs as arguments of unknown shape, so that the
    # checks run in the kernel (not at trace time).
    tensors = {k: x for k, x in call.items() if isinstance(x, tf.Tensor)}
    specs = {k: tf.TensorSpec(None, x.dtype) for k, x in tensors.items()}
    return tf.function(run).get_concrete_function(**specs)(**tensors)


def _set_tf(key, make):
    def mutate(call):
        call[key] = make(call)
    return mutate


def _tf_item(key, index, make):
    def mutate(call):
        call[key][index] = make(call)
    return mutate


def _clip(kind, values):
    def mutate(call):
        call["clip"] = kind
        call["clip_args"] = _tf().constant(values, _tf().float32)
    return mutate


TF_ERROR = "InvalidArgumentError"  # resolved to tf.errors.InvalidArgumentError

# name: (op, mutation, error, pattern)
TF_CASES = {
    # -- the same variable twice
    "adam_v_twice": ("adam", _tf_item("v", 1, lambda c: c["v"][0]), TF_ERROR,
                     r"v\[1\].*v\[0\].*same variable"),
    "adam_m_is_other_params": ("adam", _tf_item("m", 0, lambda c: c["params"][1]), TF_ERROR,
                               r"m\[0\].*params\[1\].*same variable"),
    "sgd_momentums_twice": ("sgd", _tf_item("momentums", 1, lambda c: c["momentums"][0]),
                            TF_ERROR, r"momentums\[1\].*momentums\[0\].*same variable"),
    "sgd_params_is_momentum": ("sgd", _tf_item("params", 2, lambda c: c["momentums"][2]),
                               TF_ERROR, r"momentums\[2\].*params\[2\].*same variable"),
    # -- variables of another dtype or shape, uninitialized
    "sgd_params_float64": ("sgd", _tf_item("params", 1, lambda c: _tf().Variable(
        np.ones((2, 3)))), TF_ERROR, r"params\[1\].*double.*T=float"),
    "adam_v_shape_transposed": ("adam", _tf_item("v", 0, lambda c: _tf().Variable(
        np.ones((3, 2), np.float32))), TF_ERROR, r"v\[0\].*shape \[3,2\]"),
    "sgd_momentums_scalar_shape": ("sgd", _tf_item("momentums", 2, lambda c: _tf().Variable(
        np.float32(1))), TF_ERROR, r"momentums\[2\].*shape \[\]"),
    # -- gradients: dtypes are the op's type T, checked by TensorFlow before
    # the kernel runs (in a graph naming the list; eagerly only its flat
    # input index: TF's message, not ours)
    "adam_grads_float64": ("adam", _tf_item("grads", 1, lambda c: _tf().ones((2, 3),
                                                                          _tf().float64)),
                           (TypeError, TF_ERROR), r"'grads'|input #10\b.*double"),
    "norms_mixed_dtypes": ("squared_norms", _tf_item("x", 2, lambda c: _tf().ones(
        5, _tf().float64)), (TypeError, TF_ERROR), r"'x'|input #2\b.*double"),
    "norms_int32": ("squared_norms", _set_tf("x", lambda c: [_tf().ones(3, _tf().int32)]),
                    (TypeError, TF_ERROR), r"\bT\b|int32"),
    # -- scalar hyperparameters of other shapes
    "sgd_momentum_vector": ("sgd", _set_tf("momentum", lambda c: _tf().constant([0.9])),
                            TF_ERROR, r"\bmomentum must be a scalar"),
    "adam_one_minus_beta_2_matrix": ("adam", _set_tf("one_minus_beta_2", lambda c: _tf().zeros(
        (1, 1))), TF_ERROR, r"one_minus_beta_2 must be a scalar"),
    # -- clip arguments
    "adam_clip_value_three_args": ("adam", _clip("value", [-1.0, 0.0, 1.0]), TF_ERROR,
                                   r"clip_args must be a vector of 2"),
    "sgd_clip_ratio_too_few": ("sgd", _clip("ratio", [1.0, 2.0, 2.0]), TF_ERROR,
                               r"clip_args must be a vector of 4"),
    "adam_clip_scale_scalar": ("adam", _clip("scale", 1.0), TF_ERROR,
                               r"clip_args must be a vector of 1 values.*shape \[\]"),
    "adam_clip_value_lo_above_hi": ("adam", _clip("value", [1.0, -1.0]), TF_ERROR,
                                    r"clip_args.*lo <= hi"),
    "sgd_clip_ratio_zero_denominator": ("sgd", _clip("ratio", [1.0, 2.0, 0.0, 2.0]), TF_ERROR,
                                        r"clip_args\[2\].*grads\[1\].*> 0"),
    "adam_clip_ratio_negative_denominator": ("adam", _clip("ratio", [1.0, 2.0, 2.0, -3.0]),
                                             TF_ERROR, r"clip_args\[3\].*grads\[2\]"),
    "sgd_clip_unknown_kind": ("sgd", _clip("norm", [1.0]), (TypeError, ValueError, TF_ERROR),
                              r"clip"),
}


def _errors(error):
    tf = _tf()
    errors = error if isinstance(error, tuple) else (error,)
    return tuple(tf.errors.InvalidArgumentError if e == TF_ERROR else e for e in errors)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("op,mutate,error,pattern", _case_params(TF_CASES))
def test_tf_op_bad_input_raises_and_writes_nothing(lib, mode, op, mutate, error, pattern):
    call = _TF_BASE[op](np.random.default_rng(8))
    variables = [x for k in _TF_VARIABLE_LISTS[op] for x in call[k]]
    before = [x.numpy() for x in variables]
    mutate(call)
    with pytest.raises(_errors(error), match=pattern):
        _run_op(lib, op, call, mode)
    for i, (x, b) in enumerate(zip(variables, before)):
        assert x.numpy().tobytes() == b.tobytes(), f"variable {i} was modified"


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("op", sorted(_TF_BASE))
def test_tf_op_base_calls_are_valid(lib, mode, op):
    call = _TF_BASE[op](np.random.default_rng(8))
    variables = [x for k in _TF_VARIABLE_LISTS[op] for x in call[k]]
    before = [x.numpy() for x in variables]
    out = _run_op(lib, op, call, mode)
    for i, (x, b) in enumerate(zip(variables, before)):
        assert np.all(x.numpy() != b), f"{op}: variable {i} not updated everywhere"
    if op == "squared_norms":
        expected = [np.sum(x.numpy().astype(np.float64) ** 2) for x in call["x"]]
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_tf_ops_accept_empty_variables(lib, mode):
    """A zero-size variable is valid: nothing to do for it, the others are
    updated, and its norm is 0."""
    tf = _tf()
    rng = np.random.default_rng(4)
    call = tf_sgd_call(rng)
    empty_p, empty_m = tf.Variable(np.zeros((0, 4), np.float32)), tf.Variable(
        np.zeros((0, 4), np.float32))
    call["params"].insert(1, empty_p)
    call["momentums"].insert(1, empty_m)
    call["grads"].insert(1, tf.zeros((0, 4)))
    before = [x.numpy() for x in call["params"]]
    _run_op(lib, "sgd", call, mode)
    assert empty_p.shape == (0, 4) and empty_m.shape == (0, 4)
    for i in (0, 2, 3):
        assert np.all(call["params"][i].numpy() != before[i])
    norms = _run_op(lib, "squared_norms", dict(x=[tf.zeros((0,)), tf.ones((3,))]), mode)
    np.testing.assert_array_equal(norms.numpy(), [0.0, 3.0])


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_tf_ops_pass_non_finite_hyperparameters_through_like_keras(lib, mode):
    """The ops do not judge hyperparameter values: a NaN learning rate gives
    the NaN that stock Keras' SGD computes (`p - g * lr`), rather than an
    error where Keras has none (the fused SGD folds a NaN global-norm scale
    into lr exactly where Keras' gradients are NaN)."""
    tf = _tf()
    call = tf_sgd_call(np.random.default_rng(5))
    call["momentums"] = []
    call["apply_weight_decay"] = False
    call["lr"] = tf.constant(float("nan"))
    _run_op(lib, "sgd", call, mode)
    for x in call["params"]:
        assert np.all(np.isnan(x.numpy()))


_TWO_DEVICES_SCRIPT = r"""
import numpy as np, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from fusedopt import _ops
lib = _ops.library()
with tf.device("/CPU:0"):
    a = tf.Variable(np.full(4, 3.0, np.float32))
with tf.device("/CPU:1"):
    b = tf.Variable(np.full(4, 5.0, np.float32))
z, one = tf.constant(0.0), tf.constant(1.0)
def call():
    lib.fusedopt_sgd(params=[a.handle, b.handle], momentums=[], grads=[tf.ones(4), tf.ones(4)],
                     apply_if=[],
                     lr=one, momentum=z, weight_decay=z, decay_lr=z, clip_args=tf.zeros([0]))
for run in (call, tf.function(call)):
    try:
        run()
    except tf.errors.InvalidArgumentError as e:
        assert "incompatible assigned devices" in str(e) and "params_1" in str(e), str(e)
    else:
        raise AssertionError("variables on two devices were accepted")
    assert np.all(a.numpy() == 3.0) and np.all(b.numpy() == 5.0)
print("ok")
"""


def test_tf_op_refuses_variables_on_two_devices():
    """Two logical CPU devices (configured before TensorFlow starts, so in a
    subprocess): variables of one call on different devices are refused by
    TensorFlow's placer, naming the input (params_1), before the op runs."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _TWO_DEVICES_SCRIPT], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


# ------------------------------------------ one table of hyperparameter ranges

# Each hyperparameter as fusedopt.kernels and a Keras optimizer name it, and a
# call of each with that value.
_ARRAYS = lambda: [np.zeros(3, np.float32)]  # noqa: E731
RANGE_CALLS = {
    "lr": (lambda x: kernels.adam(_ARRAYS(), _ARRAYS(), _ARRAYS(), _ARRAYS(), lr=x, step=1),
           lambda x: fusedopt.Adam(learning_rate=x)),
    "beta_1": (lambda x: kernels.adam(_ARRAYS(), _ARRAYS(), _ARRAYS(), _ARRAYS(), lr=0.1,
                                      beta_1=x, step=1),
               lambda x: fusedopt.Adam(beta_1=x)),
    "beta_2": (lambda x: kernels.adam(_ARRAYS(), _ARRAYS(), _ARRAYS(), _ARRAYS(), lr=0.1,
                                      beta_2=x, step=1),
               lambda x: fusedopt.Adam(beta_2=x)),
    "epsilon": (lambda x: kernels.adam(_ARRAYS(), _ARRAYS(), _ARRAYS(), _ARRAYS(), lr=0.1,
                                       epsilon=x, step=1),
                lambda x: fusedopt.Adam(epsilon=x)),
    "weight_decay": (lambda x: kernels.sgd(_ARRAYS(), _ARRAYS(), None, lr=0.1, weight_decay=x),
                     lambda x: fusedopt.SGD(weight_decay=x)),
    "momentum": (lambda x: kernels.sgd(_ARRAYS(), _ARRAYS(), _ARRAYS(), lr=0.1, momentum=x),
                 lambda x: fusedopt.SGD(momentum=x)),
    "clip_threshold": (lambda x: kernels.sgd(_ARRAYS(), _ARRAYS(), None, lr=0.1, clip_norm=x),
                       lambda x: fusedopt.transformers.clip_by_global_norm(x)),
}


def _accepted(call, x) -> bool:
    try:
        call(x)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(RANGE_CALLS))
def test_kernels_and_optimizers_check_one_range(name):
    """Every hyperparameter's range is written once (_C.HYPERPARAMETER_RANGES):
    the NumPy kernels and the Keras optimizers (or transformers) accept and
    refuse the same values at and around both ends."""
    from fusedopt import _C

    low, low_open, high, high_open = _C.HYPERPARAMETER_RANGES[name]
    kernel_call, keras_call = RANGE_CALLS[name]
    below, above = np.nextafter(low, -np.inf), np.nextafter(high, np.inf)
    expected = {low: not low_open, below: False}
    if np.isfinite(high):
        expected.update({high: not high_open, above: False, (low + high) / 2: True})
    else:
        expected[1e30] = True
    for x, ok in expected.items():
        assert _accepted(kernel_call, x) is ok, (name, x, "fusedopt.kernels")
        assert _accepted(keras_call, x) is ok, (name, x, "optimizer")
    assert set(RANGE_CALLS) == set(_C.HYPERPARAMETER_RANGES)

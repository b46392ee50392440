"""The FusedoptAdam op's GPU kernel (csrc/tf/adam_op_gpu.cc): the same bits as
its CPU kernel, copy-on-write of buffers read before the op, and bad input
that leaves every variable as it was.

Runs where TensorFlow sees a GPU and fusedopt was built with CUDA; skips
otherwise (the GPU machine has no TensorFlow, so today this runs nowhere we
have; keep the GPU OpKernel thin).
"""

import inspect

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import fusedopt  # noqa: E402
from fusedopt import _ops  # noqa: E402

if not fusedopt.build_info()["cuda"]:
    pytest.skip("fusedopt was built without CUDA", allow_module_level=True)
if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

SHAPES = [(3,), (65537,), (2, 5), (1,), (1000, 7)]


def _scalars(dtype, **hyper):
    lr, b1, b2, eps, step = hyper["lr"], hyper["beta_1"], hyper["beta_2"], hyper["epsilon"], 3
    alpha = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
    values = dict(alpha=alpha, one_minus_beta_1=1 - b1, one_minus_beta_2=1 - b2, epsilon=eps,
                  lr=lr, weight_decay=hyper.get("weight_decay", 0.0))
    return {k: tf.constant(v, dtype) for k, v in values.items()}


def _call_kwargs(lib, dtype=np.float32):
    """Inputs the op gained later (clip_args, apply_if) get their 'off' values."""
    kw = {}
    parameters = inspect.signature(lib.fusedopt_adam).parameters
    if "clip_args" in parameters:
        kw["clip_args"] = tf.zeros([0], dtype)
    if "apply_if" in parameters:
        kw["apply_if"] = []
    return kw


def _state(device, dtype, seed):
    rng = np.random.default_rng(seed)
    with tf.device(device):
        p = [tf.Variable(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
        m = [tf.Variable((0.1 * rng.standard_normal(s)).astype(dtype)) for s in SHAPES]
        v = [tf.Variable((0.01 * np.abs(rng.standard_normal(s)) + 1e-6).astype(dtype))
             for s in SHAPES]
        g = [tf.constant(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    return p, m, v, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_gpu_kernel_matches_cpu_kernel(dtype, weight_decay):
    lib = _ops.library()
    hyper = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=weight_decay)
    results = {}
    for device in ("/CPU:0", "/GPU:0"):
        p, m, v, g = _state(device, dtype, seed=1)
        with tf.device(device):
            lib.fusedopt_adam(params=[x.handle for x in p], m=[x.handle for x in m],
                              v=[x.handle for x in v], grads=g,
                              apply_weight_decay=weight_decay != 0.0,
                              **_scalars(dtype, **hyper), **_call_kwargs(lib, dtype))
        results[device] = [x.numpy() for x in p + m + v]
    for a, b in zip(results["/CPU:0"], results["/GPU:0"]):
        np.testing.assert_array_equal(a, b)


def test_copy_on_write_keeps_earlier_reads():
    lib = _ops.library()
    hyper = _scalars(np.float32, lr=1e-2, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    updated = {}
    for device in ("/CPU:0", "/GPU:0"):
        p, m, v, g = _state(device, np.float32, seed=2)
        with tf.device(device):
            before = [x.read_value() for x in p]  # a reader holds the buffers
            old = [b.numpy() for b in before]
            lib.fusedopt_adam(params=[x.handle for x in p], m=[x.handle for x in m],
                              v=[x.handle for x in v], grads=g, **hyper, **_call_kwargs(lib))
        for b, o in zip(before, old):
            np.testing.assert_array_equal(b.numpy(), o)
        updated[device] = old, [x.numpy() for x in p]
    # The variables hold the update (the CPU kernel's bits; an element whose
    # step rounds away may keep its value), the earlier reads the old values.
    old, gpu = updated["/GPU:0"]
    for o, cpu_p, gpu_p in zip(old, updated["/CPU:0"][1], gpu):
        np.testing.assert_array_equal(gpu_p, cpu_p)
        assert not np.array_equal(gpu_p, o)


def test_bad_input_writes_nothing():
    lib = _ops.library()
    p, m, v, g = _state("/GPU:0", np.float32, seed=3)
    before = [x.numpy() for x in p + m + v]
    bad = list(g)
    bad[1] = tf.zeros([4], tf.float32)
    with tf.device("/GPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=r"grads\[1\]"):
        lib.fusedopt_adam(params=[x.handle for x in p], m=[x.handle for x in m],
                          v=[x.handle for x in v], grads=bad,
                          **_scalars(np.float32, lr=1e-3, beta_1=0.9, beta_2=0.999,
                                     epsilon=1e-7), **_call_kwargs(lib))
    for x, b in zip(p + m + v, before):
        np.testing.assert_array_equal(x.numpy(), b)

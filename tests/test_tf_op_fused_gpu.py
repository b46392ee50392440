"""The GPU kernels of every fused TF op (csrc/tf/*_gpu.cc): registered for
every dtype with nothing in host memory (checked here, no GPU needed), and on
a GPU the same results as the CPU kernels: bit for bit for the updates (same
scalars, clip arguments and predicate), the clip factors and the finite
check; within rounding for the squared norms (another fixed order), the same
bits on every run.

The GPU part runs where TensorFlow sees a GPU and fusedopt was built with
CUDA; no machine we have has both (the GPU machine has no TensorFlow), so it
waits for one: python -m pytest tests/test_tf_op_fused_gpu.py tests/test_tf_op_adam_gpu.py
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import fusedopt  # noqa: E402
from fusedopt import _ops  # noqa: E402

if not fusedopt.build_info()["cuda"]:
    pytest.skip("fusedopt was built without CUDA", allow_module_level=True)

OPS = ["FusedoptAdam", "FusedoptSgd", "FusedoptSquaredNorms", "FusedoptClipFactors",
       "FusedoptAllFinite"]
DTYPES = {tf.float16, tf.bfloat16, tf.float32, tf.float64}
CHUNK = 65536
SHAPES = [(3,), (CHUNK + 1,), (2, 5), (1,), (1000, 7), (0,)]


@pytest.fixture(scope="module")
def lib():
    library = _ops.library()
    if library is None:
        pytest.skip(f"fused TF ops unavailable: {_ops.load_error()}")
    return library


@pytest.mark.parametrize("op", OPS)
def test_gpu_kernels_registered_without_host_memory(lib, op):
    """One GPU kernel per dtype, and no input in host memory: clip_args,
    apply_if and the hyperparameters are read by the kernels on the device
    (a HostMemory input would make TF copy it to the host, a synchronization
    in every step)."""
    from tensorflow.python.framework import kernels

    gpu = [k for k in kernels.get_registered_kernels_for_op(op).kernel if k.device_type == "GPU"]
    dtypes = set()
    for k in gpu:
        for c in k.constraint:
            if c.name == "T":
                dtypes.update(tf.as_dtype(t) for t in c.allowed_values.list.type)
        assert not list(k.host_memory_arg), f"{op}: host memory {list(k.host_memory_arg)}"
    assert dtypes == DTYPES, f"{op}: GPU kernels for {sorted(d.name for d in dtypes)}"


# ----------------------------------------------------------------------------
# On a GPU

needs_gpu = pytest.mark.skipif(not tf.config.list_physical_devices("GPU"),
                               reason="TensorFlow sees no GPU")
FLOAT_TYPES = [np.float32, np.float64]
ALL_TYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def _tensor(rng, shape, dtype, scale=1.0, positive=False):
    x = rng.standard_normal(shape) * scale
    if positive:
        x = np.abs(x) + 1e-3
    return tf.cast(tf.constant(x, tf.float64), dtype)


def _variables(device, tensors):
    with tf.device(device):
        return [tf.Variable(t) for t in tensors]


def _clip_args(kind, dtype, n):
    if kind == "value":
        return tf.constant([-0.5, 0.6], dtype)
    if kind == "ratio":
        return tf.cast(tf.constant([1.5] + [2.0 + i for i in range(n)], tf.float64), dtype)
    if kind == "scale":
        return tf.constant([0.4], dtype)
    return tf.zeros([0], dtype)


def _sgd_on(device, lib, state, dtype, variant, clip, apply_if, decay):
    p0, g, m0 = state
    params = _variables(device, p0)
    moms = _variables(device, m0) if variant != "plain" else []
    with tf.device(device):
        lib.fusedopt_sgd(
            params=[v.handle for v in params], momentums=[v.handle for v in moms],
            grads=[tf.identity(x) for x in g], lr=tf.constant(0.05, dtype),
            momentum=tf.constant(0.9, dtype), weight_decay=tf.constant(0.01, dtype),
            decay_lr=tf.constant(0.05, dtype), clip_args=_clip_args(clip, dtype, len(g)),
            apply_if=apply_if(), clip=clip, nesterov=variant == "nesterov",
            apply_weight_decay=decay)
    return [v.numpy() for v in params + moms]


def _adam_on(device, lib, state, dtype, clip, apply_if, decay):
    p0, g, m0, v0 = state
    params, m, v = _variables(device, p0), _variables(device, m0), _variables(device, v0)
    s = dict(alpha=0.01, one_minus_beta_1=0.1, one_minus_beta_2=0.01, epsilon=1e-3, lr=0.01,
             weight_decay=0.004)
    with tf.device(device):
        lib.fusedopt_adam(
            params=[x.handle for x in params], m=[x.handle for x in m], v=[x.handle for x in v],
            grads=[tf.identity(x) for x in g], clip_args=_clip_args(clip, dtype, len(g)),
            apply_if=apply_if(), clip=clip, apply_weight_decay=decay,
            **{k: tf.constant(x, dtype) for k, x in s.items()})
    return [x.numpy() for x in params + m + v]


def _same(a, b):
    """Bit for bit, NaN matching NaN (the GPU writes CUDA's canonical NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        both_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
        a, b = np.where(both_nan, 0, a), np.where(both_nan, 0, b)
    np.testing.assert_array_equal(a, b)


@needs_gpu
@pytest.mark.parametrize("dtype", ALL_TYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("clip", ["none", "value", "ratio", "scale"])
def test_sgd_gpu_matches_cpu(lib, dtype, variant, clip):
    rng = np.random.default_rng(1)
    state = ([_tensor(rng, s, dtype) for s in SHAPES], [_tensor(rng, s, dtype) for s in SHAPES],
             [_tensor(rng, s, dtype, 0.1) for s in SHAPES])
    results = {d: _sgd_on(d, lib, state, dtype, variant, clip, lambda: [], decay=True)
               for d in ("/CPU:0", "/GPU:0")}
    for a, b in zip(results["/CPU:0"], results["/GPU:0"]):
        _same(a, b)


@needs_gpu
@pytest.mark.parametrize("dtype", ALL_TYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("clip", ["none", "value", "ratio", "scale"])
def test_adam_gpu_matches_cpu(lib, dtype, clip):
    rng = np.random.default_rng(2)
    state = ([_tensor(rng, s, dtype) for s in SHAPES], [_tensor(rng, s, dtype) for s in SHAPES],
             [_tensor(rng, s, dtype, 0.1) for s in SHAPES],
             [_tensor(rng, s, dtype, 0.01, positive=True) for s in SHAPES])
    results = {d: _adam_on(d, lib, state, dtype, clip, lambda: [], decay=clip != "none")
               for d in ("/CPU:0", "/GPU:0")}
    for a, b in zip(results["/CPU:0"], results["/GPU:0"]):
        _same(a, b)


@needs_gpu
@pytest.mark.parametrize("finite", [True, False])
def test_apply_if_from_the_gpu_finite_check(lib, finite):
    """FusedoptAllFinite's GPU output (device memory) as apply_if: a false
    predicate writes nothing."""
    rng = np.random.default_rng(3)
    g = [_tensor(rng, s, tf.float32) for s in SHAPES]
    if not finite:
        g[1] = tf.tensor_scatter_nd_update(g[1], [[5]], [np.inf])
    state = ([_tensor(rng, s, tf.float32) for s in SHAPES], g,
             [_tensor(rng, s, tf.float32, 0.1) for s in SHAPES])

    def predicate():
        with tf.device("/GPU:0"):
            ok = lib.fusedopt_all_finite(g)
        assert "GPU" in ok.device
        return [ok]

    got = _sgd_on("/GPU:0", lib, state, tf.float32, "momentum", "none", predicate, decay=False)
    if finite:
        want = _sgd_on("/CPU:0", lib, state, tf.float32, "momentum", "none", lambda: [], False)
    else:
        want = [x.numpy() for x in state[0] + state[2]]
    for a, b in zip(got, want):
        _same(a, b)


@needs_gpu
@pytest.mark.parametrize("dtype", ALL_TYPES, ids=lambda d: d.name)
def test_squared_norms_and_clip_factors_gpu(lib, dtype):
    rng = np.random.default_rng(4)
    x = [_tensor(rng, s, dtype, 0.1) for s in SHAPES]
    with tf.device("/GPU:0"):
        gpu = lib.fusedopt_squared_norms(x)
        again = lib.fusedopt_squared_norms(x)
    with tf.device("/CPU:0"):
        cpu = lib.fusedopt_squared_norms(x)
    assert "GPU" in gpu.device
    _same(gpu.numpy(), again.numpy())
    rtol = {tf.float16: 2e-3, tf.bfloat16: 1e-2}.get(dtype, 1e-6 if dtype == tf.float32 else 1e-12)
    np.testing.assert_allclose(gpu.numpy().astype(np.float64), cpu.numpy().astype(np.float64),
                               rtol=rtol)
    # The factors from the same squared norms: bit for bit (at most 256 of them).
    for kind in ("norm", "global_norm"):
        out = {}
        for d in ("/CPU:0", "/GPU:0"):
            with tf.device(d):
                out[d] = lib.fusedopt_clip_factors([cpu], tf.constant(1.5, dtype), kind=kind)
        _same(out["/CPU:0"][0].numpy(), out["/GPU:0"][0].numpy())
        assert bool(out["/CPU:0"][1]) == bool(out["/GPU:0"][1])


@needs_gpu
@pytest.mark.parametrize("dtype", ALL_TYPES, ids=lambda d: d.name)
def test_all_finite_gpu(lib, dtype):
    rng = np.random.default_rng(5)
    x = [_tensor(rng, s, dtype) for s in SHAPES]
    for bad in (None, np.inf, np.nan):
        y = list(x)
        if bad is not None:
            y[4] = tf.tensor_scatter_nd_update(y[4], [[999, 6]], tf.cast([bad], dtype))
        with tf.device("/GPU:0"):
            got = lib.fusedopt_all_finite(y)
        assert bool(got) == (bad is None)

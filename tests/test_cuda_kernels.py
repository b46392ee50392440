"""fusedopt.kernels on CUDA arrays: the CUDA kernels against a float64 NumPy
reference and against the CPU kernels (bit for bit), across sizes, layouts,
array exports, launches, streams and device hyperparameters; and bad calls
that must leave every array as it was.

Runs on CUDA arrays where fusedopt was built with CUDA, a CUDA device is
visible and PyTorch or CuPy is installed. On the GPU machine:

    python -m pytest tests/test_cuda_kernels.py tests/test_cuda_bindings.py -q

FUSEDOPT_CUDA_TEST_BACKEND=torch|cupy picks the array library (and skips the
module where it has no device); FUSEDOPT_CUDA_TEST_BACKEND=numpy runs the
same tests on NumPy arrays (the CPU kernels), a self-test of this file. With
the variable unset and no CUDA arrays at hand, the self-test runs (CI does
this; the tests that need CUDA arrays skip).

Every tensor lies in one flat buffer per list, between guard elements holding
a sentinel: after a step the guards must be intact (no write outside a
tensor) and grads untouched. Initial state is random (never zeros), so an
element the kernel skipped fails the reference check.
"""

import os

import numpy as np
import pytest
from cuda_helpers import import_fusedopt

fusedopt, kernels = import_fusedopt()

# ----------------------------------------------------------------------------
# Array libraries


class DLPackOnly:
    """Exports `x` through DLPack only (no __cuda_array_interface__)."""

    def __init__(self, x):
        self._x = x

    def __dlpack__(self, *args, **kwargs):
        return self._x.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._x.__dlpack_device__()


class CAIOnly:
    """Exports `x` through __cuda_array_interface__ only, optionally read-only."""

    def __init__(self, x, readonly=None):
        self._x, self._readonly = x, readonly

    @property
    def __cuda_array_interface__(self):
        d = dict(self._x.__cuda_array_interface__)
        if self._readonly is not None:
            d["data"] = (d["data"][0], self._readonly)
        return d


class TorchBackend:
    name = "torch"
    on_device = True

    def __init__(self):
        import torch

        self.torch = torch
        self.dev = torch.device("cuda", 0)
        self._dt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                    np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}

    def from_numpy(self, a, device=None):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(device or self.dev)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def bfloat16_from_numpy(self, a):
        """float32 values -> bfloat16 on the device (round to nearest even)."""
        return self.torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.torch.bfloat16).to(self.dev)

    def bfloat16_to_numpy(self, x):
        return x.detach().float().cpu().numpy()

    def round_bfloat16(self, a):
        """float32 -> the nearest bfloat16 values, as float32 (round to nearest even)."""
        return self.torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.torch.bfloat16).float().numpy()

    def view(self, flat, offset, shape):
        return flat[offset:offset + int(np.prod(shape, dtype=np.int64))].view(shape)

    def strided(self, flat, n):
        return flat[: 2 * n : 2]

    def full(self, n, value, dtype):
        return self.torch.full((n,), value, dtype=self._dt[np.dtype(dtype)], device=self.dev)

    def all_equal(self, x, value):
        return bool((x == value).all().item())

    def scalar(self, value, dtype, n=1):
        return self.torch.full((n,), value, dtype=self._dt[np.dtype(dtype)], device=self.dev)

    def fill(self, x, value):
        x.fill_(value)

    def synchronize(self):
        self.torch.cuda.synchronize()

    def new_stream(self):
        return self.torch.cuda.Stream()

    def stream_handle(self, s):
        return s.cuda_stream

    def current_stream(self, s):
        return self.torch.cuda.stream(s)

    def stream_done(self, s):
        return s.query()

    def flat_copy(self, dst, src):
        dst.copy_(src)

    def free_bytes(self):
        return self.torch.cuda.mem_get_info()[0]

    def device_count(self):
        return self.torch.cuda.device_count()


class CupyBackend:
    name = "cupy"
    on_device = True

    def __init__(self):
        import cupy

        self.cp = cupy

    def from_numpy(self, a, device=None):
        with self.cp.cuda.Device(device or 0):
            return self.cp.asarray(np.ascontiguousarray(a))

    def to_numpy(self, x):
        return self.cp.asnumpy(x)

    def view(self, flat, offset, shape):
        return flat[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def strided(self, flat, n):
        return flat[: 2 * n : 2]

    def full(self, n, value, dtype):
        return self.cp.full((n,), value, dtype=dtype)

    def all_equal(self, x, value):
        return bool((x == value).all())

    def scalar(self, value, dtype, n=1):
        return self.cp.full((n,), value, dtype=dtype)

    def fill(self, x, value):
        x.fill(value)

    def synchronize(self):
        self.cp.cuda.runtime.deviceSynchronize()

    def new_stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def stream_handle(self, s):
        return s.ptr

    def current_stream(self, s):
        return s

    def stream_done(self, s):
        return s.done

    def free_bytes(self):
        return self.cp.cuda.runtime.memGetInfo()[0]

    def device_count(self):
        return self.cp.cuda.runtime.getDeviceCount()


class NumpyBackend:
    """The CPU kernels on NumPy arrays: a self-test of this file."""

    name = "numpy"
    on_device = False

    def from_numpy(self, a, device=None):
        return np.array(a, copy=True)

    def to_numpy(self, x):
        return np.array(x, copy=True)

    def view(self, flat, offset, shape):
        return flat[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def strided(self, flat, n):
        return flat[: 2 * n : 2]

    def full(self, n, value, dtype):
        return np.full((n,), value, dtype=dtype)

    def all_equal(self, x, value):
        return bool((x == value).all())

    def synchronize(self):
        pass

    def free_bytes(self):
        return 0

    def device_count(self):
        return 0


def _backend():
    wanted = os.environ.get("FUSEDOPT_CUDA_TEST_BACKEND")
    cuda_build = fusedopt.build_info()["cuda"]
    if wanted == "numpy" or (not wanted and not cuda_build):
        return NumpyBackend(), None
    if not cuda_build:
        return None, "fusedopt was built without CUDA (build_info()['cuda'] is False)"
    errors = []
    for name, cls in (("torch", TorchBackend), ("cupy", CupyBackend)):
        if wanted and wanted != name:
            continue
        try:
            be = cls()
            if be.device_count() > 0:
                return be, None
            errors.append(f"{name}: no CUDA device")
        except Exception as e:  # ImportError, or a library without a working CUDA
            errors.append(f"{name}: {type(e).__name__}: {e}")
    if not wanted:
        return NumpyBackend(), None  # the self-test: ``errors`` says why no CUDA arrays
    return None, "no CUDA device with PyTorch or CuPy (" + "; ".join(errors) + ")"


BE, _REASON = _backend()
if BE is None:
    pytest.skip(_REASON, allow_module_level=True)

device_only = pytest.mark.skipif(not BE.on_device, reason="needs CUDA arrays")
torch_only = pytest.mark.skipif(BE.name != "torch", reason="needs PyTorch")

# ----------------------------------------------------------------------------
# Reference and layout

TOLERANCES = {
    np.float32: dict(rtol=1e-6, atol=1e-7),
    np.float64: dict(rtol=1e-12, atol=1e-15),
}
KERAS_DEFAULTS = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
LARGE_STEPS = dict(lr=0.1, beta_1=0.5, beta_2=0.6, epsilon=1e-3)
NO_MOMENTUM = dict(lr=0.01, beta_1=0.0, beta_2=0.9, epsilon=0.0)

CHUNK = 65536  # kChunkElements in csrc/cuda/multi_tensor_apply.cuh
ODD_SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 1023, 1025, 4096, CHUNK - 1, CHUNK,
             CHUNK + 1, 2 * CHUNK + 3, 1_000_003]
GUARD = 8
# Exact in float16 and bfloat16 as well (-7777 rounds to -7776 in both, so a
# guard check on 16-bit buffers would fail whatever the kernel did).
SENTINEL = -7776.0
LISTS = ("params", "grads", "m", "v")
SGD_LISTS = ("params", "grads", "momentums")
# Initial values per list: never zeros (an element the kernel skipped then
# fails the reference check).
INIT = {
    "params": lambda rng, n: rng.standard_normal(n),
    "grads": lambda rng, n: rng.standard_normal(n),
    "m": lambda rng, n: 0.1 * rng.standard_normal(n),
    "momentums": lambda rng, n: 0.1 * rng.standard_normal(n),
    "v": lambda rng, n: 0.01 * np.abs(rng.standard_normal(n)) + 1e-6,
}


def reference_adam(p, g, m, v, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0):
    """One Adam/AdamW step in float64 (kernels.adam's docstring)."""
    p, g, m, v = (np.asarray(x, dtype=np.float64) for x in (p, g, m, v))
    alpha = lr * np.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
    if weight_decay != 0.0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * (1.0 - beta_1)
    v = v + (g * g - v) * (1.0 - beta_2)
    p = p - alpha * m / (np.sqrt(v) + epsilon)
    return p, m, v


class Lists:
    """The lists `names` (default params, grads, m, v) of `shapes`, each list
    in one flat buffer with guard elements around every tensor.

    layout: "aligned" (every tensor starts 16-byte aligned: the vector path),
    "unaligned" (one element off: the scalar path) or "mixed" (odd tensors
    unaligned). export: "native" (the library's own arrays), "dlpack" or
    "cai" (wrappers that offer only that protocol).
    """

    def __init__(self, shapes, dtype=np.float32, *, layout="aligned", export="native", seed=0,
                 names=LISTS):
        self.shapes, self.dtype, self.names = [tuple(s) for s in shapes], np.dtype(dtype), names
        rng = np.random.default_rng(seed)
        align = 16 // self.dtype.itemsize
        self.offsets, pos = [], GUARD
        for i, shape in enumerate(self.shapes):
            pos = -(-pos // align) * align
            if layout == "unaligned" or (layout == "mixed" and i % 2 == 1):
                pos += 1
            self.offsets.append(pos)
            pos += int(np.prod(shape, dtype=np.int64)) + GUARD
        total = pos + GUARD
        n = sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)
        self.initial = {k: INIT[k](rng, n).astype(self.dtype) for k in names}
        self.host_flat, self.flat, self.arrays = {}, {}, {}
        for name in names:
            flat = np.full(total, SENTINEL, dtype=self.dtype)
            for x, off in zip(self._split(self.initial[name]), self.offsets):
                flat[off:off + x.size] = x
            self.host_flat[name] = flat
            self.flat[name] = BE.from_numpy(flat)
            views = [BE.view(self.flat[name], off, shape)
                     for off, shape in zip(self.offsets, self.shapes)]
            if export == "dlpack":
                views = [DLPackOnly(x) for x in views]
            elif export == "cai":
                views = [CAIOnly(x) for x in views]
            self.arrays[name] = views

    def _split(self, x):
        out, pos = [], 0
        for s in self.shapes:
            k = int(np.prod(s, dtype=np.int64))
            out.append(x[pos:pos + k])
            pos += k
        return out

    def args(self):
        return [self.arrays[name] for name in self.names]

    def snapshot(self):
        BE.synchronize()
        return {name: BE.to_numpy(self.flat[name]) for name in self.names}

    def poison_grad(self, tensor, index, value):
        """Sets one gradient element (on the device and in the initial copy)."""
        off = self.offsets[tensor] + index
        self.host_flat["grads"][off] = value
        self.initial["grads"][sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes[:tensor]) + index] = value
        self.flat["grads"] = BE.from_numpy(self.host_flat["grads"])
        views = [BE.view(self.flat["grads"], o, shape) for o, shape in zip(self.offsets, self.shapes)]
        self.arrays["grads"] = views

    def results(self):
        """The tensors after the step, concatenated per list; checks the guards."""
        flats = self.snapshot()
        inside = np.zeros(flats["params"].size, dtype=bool)
        for off, s in zip(self.offsets, self.shapes):
            inside[off:off + int(np.prod(s, dtype=np.int64))] = True
        for name in self.names:
            guards = flats[name][~inside]
            assert (guards == SENTINEL).all(), f"{name}: a write outside its tensors"
        np.testing.assert_array_equal(flats["grads"], self.host_flat["grads"],
                                      err_msg="grads were written")
        return {name: (np.concatenate([flats[name][off:off + int(np.prod(s, dtype=np.int64))]
                                       for off, s in zip(self.offsets, self.shapes)])
                       if self.shapes else np.zeros(0, self.dtype))
                for name in self.names}


def cpu_adam(initial, **hyper):
    """The CPU kernel on one tensor holding every element (it is element-wise)."""
    p, g, m, v = (np.array(initial[name], copy=True) for name in LISTS)
    kernels.adam([p], [g], [m], [v], **hyper)
    return {"params": p, "m": m, "v": v}


def check(lists, hyper, *, exact_cpu=True):
    """The step's results against the float64 reference and the CPU kernel."""
    got = lists.results()
    init = lists.initial
    ref = reference_adam(init["params"], init["grads"], init["m"], init["v"], **hyper)
    tol = TOLERANCES[lists.dtype.type]
    for name, r in zip(("params", "m", "v"), ref):
        np.testing.assert_allclose(got[name], r, err_msg=name, **tol)
    if exact_cpu:
        cpu = cpu_adam(init, **hyper)
        for name in ("params", "m", "v"):
            np.testing.assert_array_equal(got[name], cpu[name],
                                          err_msg=f"{name}: GPU and CPU kernels differ")
    return got


# ----------------------------------------------------------------------------
# Correctness


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["aligned", "unaligned", "mixed"])
@pytest.mark.parametrize("export", ["native", "dlpack", "cai"])
def test_odd_sizes_layouts_and_exports(dtype, layout, export):
    if export != "native" and not BE.on_device:
        pytest.skip("CUDA array exports")
    lists = Lists([(n,) for n in ODD_SIZES], dtype, layout=layout, export=export, seed=1)
    hyper = dict(KERAS_DEFAULTS, step=3)
    kernels.adam(*lists.args(), **hyper)
    check(lists, hyper)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hyper", [KERAS_DEFAULTS, LARGE_STEPS, NO_MOMENTUM])
@pytest.mark.parametrize("step", [1, 10, 1000])
@pytest.mark.parametrize("weight_decay", [0.0, 0.004])
def test_hyperparameters(dtype, hyper, step, weight_decay):
    lists = Lists([(3,), (CHUNK + 7,), (1000,)], dtype, layout="mixed", seed=step)
    h = dict(hyper, step=step, weight_decay=weight_decay)
    kernels.adam(*lists.args(), **h)
    check(lists, h)


def test_shapes_and_empty_tensors():
    shapes = [(), (0,), (1,), (2, 3), (3, 0), (4, 5, 6), (7, CHUNK + 1), (1, 1, 1)]
    lists = Lists(shapes, np.float32, seed=2)
    hyper = dict(KERAS_DEFAULTS, step=5)
    kernels.adam(*lists.args(), **hyper)
    check(lists, hyper)


def test_empty_lists():
    kernels.adam([], [], [], [], lr=1e-3, step=1)


def test_thousands_of_tensors():
    rng = np.random.default_rng(3)
    sizes = list(rng.integers(1, 3000, size=3000)) + [CHUNK + 5, 3 * CHUNK, 1]
    rng.shuffle(sizes)
    lists = Lists([(int(n),) for n in sizes], np.float32, layout="mixed", seed=3)
    hyper = dict(KERAS_DEFAULTS, step=2, weight_decay=0.01)
    kernels.adam(*lists.args(), **hyper)
    check(lists, hyper)


def test_tensor_of_many_chunks():
    lists = Lists([(9 * CHUNK + 3,), (5,), (70 * CHUNK - 1,)], np.float32, layout="mixed",
                  seed=4)
    hyper = dict(LARGE_STEPS, step=4)
    kernels.adam(*lists.args(), **hyper)
    check(lists, hyper)


@pytest.mark.parametrize("limits", ["1,1", "3,5", "2,1000", "1000,3"])
def test_tensors_continuing_across_launches(monkeypatch, limits):
    """Few tensors per launch (FUSEDOPT_CUDA_LAUNCH_LIMITS="tensors,blocks"):
    many launches, tensors cut between them."""
    monkeypatch.setenv("FUSEDOPT_CUDA_LAUNCH_LIMITS", limits)
    sizes = [1, 3 * CHUNK + 1, 5, 7 * CHUNK, 2, CHUNK + 1, CHUNK]
    lists = Lists([(n,) for n in sizes], np.float32, layout="mixed", seed=5)
    hyper = dict(KERAS_DEFAULTS, step=9)
    kernels.adam(*lists.args(), **hyper)
    check(lists, hyper)


@device_only
def test_more_than_2_31_elements():
    """64-bit indexing: one float32 tensor of 2^31 + 2 chunks + 3 elements
    (about 34 GB for params, grads, m, v), then a small one after it in the
    same call. Constant inputs make every element's result the same, known
    value (from the CPU kernel): a skipped, repeated or misplaced chunk shows."""
    n = 2**31 + 2 * CHUNK + 3
    need = 4 * n * 4 + (4 << 30)
    if BE.free_bytes() < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    hyper = dict(KERAS_DEFAULTS, step=3, weight_decay=0.01)
    init = dict(params=0.75, grads=0.5, m=0.125, v=0.25)
    expected = cpu_adam({k: np.full(1, x, np.float32) for k, x in init.items()}, **hyper)
    big = {k: BE.full(n, x, np.float32) for k, x in init.items()}
    small = {k: BE.full(5, x, np.float32) for k, x in init.items()}
    kernels.adam(*[[big[k], small[k]] for k in LISTS], **hyper)
    BE.synchronize()
    for k in ("params", "m", "v"):
        assert BE.all_equal(big[k], float(expected[k][0])), k
        assert BE.all_equal(small[k], float(expected[k][0])), k
    assert BE.all_equal(big["grads"], 0.5)
    del big, small


def test_determinism():
    """Two runs from the same state give the same bits."""
    sizes = [CHUNK * 3 + 11, 4097, 1, 1_000_003]
    hyper = dict(LARGE_STEPS, step=2, weight_decay=0.001)
    a = Lists([(n,) for n in sizes], np.float32, layout="mixed", seed=6)
    b = Lists([(n,) for n in sizes], np.float32, layout="mixed", seed=6)
    kernels.adam(*a.args(), **hyper)
    kernels.adam(*b.args(), **hyper)
    ra, rb = a.results(), b.results()
    for name in LISTS:
        np.testing.assert_array_equal(ra[name], rb[name])


def test_several_steps_match_the_cpu_kernel():
    lists = Lists([(CHUNK + 3,), (17,)], np.float32, seed=7)
    state = {k: np.array(x, copy=True) for k, x in lists.initial.items()}
    for step in range(1, 6):
        hyper = dict(KERAS_DEFAULTS, step=step, weight_decay=0.002)
        kernels.adam(*lists.args(), **hyper)
        kernels.adam([state["params"]], [state["grads"]], [state["m"]], [state["v"]], **hyper)
    got = lists.results()
    for name in ("params", "m", "v"):
        np.testing.assert_array_equal(got[name], state[name])


@device_only
@pytest.mark.parametrize("pdtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["aligned", "unaligned"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.004])
def test_16bit_params_with_float32_state(pdtype, layout, weight_decay):
    """float16/bfloat16 params and grads, float32 m and v: the rule in float32,
    so the result is the CPU float32 kernel's on the upcast inputs, params
    rounded to nearest; bit for bit."""
    if pdtype == "bfloat16" and BE.name != "torch":
        pytest.skip("bfloat16 arrays need PyTorch")
    rng = np.random.default_rng(15)
    sizes = [1, 3, 4, 5, 7, 8, 9, 1023, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 3]
    n = sum(sizes)
    if pdtype == "float16":
        to16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
        upload = lambda a: BE.from_numpy(np.asarray(a, np.float32).astype(np.float16))  # noqa: E731
        download = lambda x: BE.to_numpy(x).astype(np.float32)  # noqa: E731
    else:
        to16, upload, download = BE.round_bfloat16, BE.bfloat16_from_numpy, BE.bfloat16_to_numpy
    init = {
        "params": to16(rng.standard_normal(n)),
        "grads": to16(rng.standard_normal(n)),
        "m": (0.1 * rng.standard_normal(n)).astype(np.float32),
        "v": (0.01 * np.abs(rng.standard_normal(n)) + 1e-6).astype(np.float32),
    }
    # One flat buffer per list, guards around each tensor; offsets in
    # elements, 4-aligned (float32 16 bytes, 16-bit 8 bytes: the vector path)
    # or one element off (the scalar path).
    offsets, pos = [], GUARD
    for k in sizes:
        pos = -(-pos // 4) * 4 + (1 if layout == "unaligned" else 0)
        offsets.append(pos)
        pos += k + GUARD
    total = pos + GUARD
    flats, views = {}, {}
    for name in LISTS:
        flat = np.full(total, SENTINEL, np.float32)
        start = 0
        for off, k in zip(offsets, sizes):
            flat[off:off + k] = init[name][start:start + k]
            start += k
        flats[name] = upload(flat) if name in ("params", "grads") else BE.from_numpy(flat)
        views[name] = [BE.view(flats[name], off, (k,)) for off, k in zip(offsets, sizes)]
    hyper = dict(KERAS_DEFAULTS, step=4, weight_decay=weight_decay)
    kernels.adam(*[views[name] for name in LISTS], **hyper)
    BE.synchronize()

    cpu = cpu_adam(init, **hyper)  # float32 on the upcast 16-bit values
    cpu["params"] = to16(cpu["params"])
    inside = np.zeros(total, bool)
    for off, k in zip(offsets, sizes):
        inside[off:off + k] = True
    for name in LISTS:
        after = download(flats[name]) if name in ("params", "grads") else BE.to_numpy(flats[name])
        assert (after[~inside] == SENTINEL).all(), f"{name}: a write outside its tensors"
        got = after[inside]
        want = init["grads"] if name == "grads" else cpu[name]
        np.testing.assert_array_equal(got, want, err_msg=f"{pdtype} {name}")
    # And near the float64 reference (16-bit rounding of params).
    ref = reference_adam(init["params"], init["grads"], init["m"], init["v"], **hyper)
    p_got = download(flats["params"])[inside]
    np.testing.assert_allclose(p_got, ref[0], rtol=2**-7 if pdtype == "bfloat16" else 2**-10,
                               atol=1e-6)


@device_only
def test_16bit_params_need_float32_state():
    p = [BE.from_numpy(np.ones(8, np.float16))]
    g = [BE.from_numpy(np.ones(8, np.float16))]
    m16 = [BE.from_numpy(np.zeros(8, np.float16))]
    v = [BE.from_numpy(np.zeros(8, np.float32))]
    with pytest.raises(TypeError, match=r"m\[0\] must have dtype float32 or float64, got float16"):
        kernels.adam(p, g, m16, v, lr=1e-3, step=1)
    g32 = [BE.from_numpy(np.ones(8, np.float32))]
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32 but params\[0\] has float16"):
        kernels.adam(p, g32, [BE.from_numpy(np.zeros(8, np.float32))], v, lr=1e-3, step=1)
    m64 = [BE.from_numpy(np.zeros(8, np.float64))]
    with pytest.raises(TypeError, match=r"m\[0\] has dtype float64 but params\[0\] has float16"):
        kernels.adam(p, g, m64, v, lr=1e-3, step=1)
    np.testing.assert_array_equal(BE.to_numpy(p[0]), np.ones(8, np.float16))


# ----------------------------------------------------------------------------
# Device hyperparameters, streams, graphs

# Values exact in float32, so float32 and float64 device copies hold the
# same numbers as the host floats.
DYADIC = dict(lr=2.0**-9, beta_1=0.875, beta_2=1 - 2.0**-7, epsilon=2.0**-20,
              weight_decay=2.0**-6)


def _max_ulp(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return int(np.max(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))))


@device_only
@pytest.mark.parametrize("scalar_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step_dtype", [np.int32, np.int64, np.float32, np.float64])
def test_device_hyperparameters(scalar_dtype, step_dtype):
    """All six on the device: make_adam_scalars runs in the kernel (its double
    pow may differ from the host's by an ulp: params within 2 ulp)."""
    step = 7
    host = Lists([(CHUNK + 9,), (33,)], np.float32, seed=8)
    dev = Lists([(CHUNK + 9,), (33,)], np.float32, seed=8)
    kernels.adam(*host.args(), **DYADIC, step=step)
    device = {k: BE.scalar(x, scalar_dtype) for k, x in DYADIC.items()}
    kernels.adam(*dev.args(), **device, step=BE.scalar(step, step_dtype))
    h, d = host.results(), dev.results()
    np.testing.assert_array_equal(d["m"], h["m"])
    np.testing.assert_array_equal(d["v"], h["v"])
    assert _max_ulp(d["params"], h["params"]) <= 2


@device_only
def test_device_epsilon_and_weight_decay_only():
    """The precomputed path with device epsilon and weight_decay: exact."""
    lists = Lists([(1000,), (CHUNK * 2,)], np.float32, seed=9)
    hyper = dict(DYADIC, step=3)
    kernels.adam(*lists.args(), lr=hyper["lr"], beta_1=hyper["beta_1"], beta_2=hyper["beta_2"],
                 epsilon=BE.scalar(hyper["epsilon"], np.float32),
                 weight_decay=BE.scalar(hyper["weight_decay"], np.float64), step=3)
    check(lists, hyper)


@device_only
def test_device_weight_decay_zero_is_adam():
    lists = Lists([(4099,)], np.float32, seed=10)
    hyper = dict(KERAS_DEFAULTS, step=2)
    kernels.adam(*lists.args(), **hyper, weight_decay=BE.scalar(0.0, np.float32))
    check(lists, hyper)


def _busy_producer(producer_stream, lists, values):
    """On `producer_stream`: a kernel that keeps the GPU busy for a while, then
    the new gradient values written into lists' grads. A consumer that does
    not wait for this stream reads the old gradients."""
    if BE.name == "torch":
        torch = BE.torch
        new = torch.from_numpy(values).to(BE.dev)
        BE.synchronize()  # `new` is ready; only the producer's work below is pending
        with torch.cuda.stream(producer_stream):
            torch.cuda._sleep(200_000_000)  # cycles: ~0.1 s
            BE.flat_copy(lists.flat["grads"], new)
    else:
        cp = BE.cp
        spin = cp.RawKernel(r"""
            extern "C" __global__ void spin(long long cycles) {
              long long start = clock64();
              while (clock64() - start < cycles) {}
            }""", "spin")
        new = cp.asarray(values)
        BE.synchronize()
        with producer_stream:
            spin((1,), (1,), (np.int64(200_000_000),))
            lists.flat["grads"][...] = new


@device_only
@pytest.mark.parametrize("form", ["object", "int"])
def test_stream_argument(form):
    """The update runs on `stream` after the arrays' producer finished: the
    gradients are written by a producer stream still busy when the call is
    made (no synchronization first), so a kernel that did not wait would read
    the old gradients. DLPack's stream argument is the handshake (PyTorch's
    and CuPy's __dlpack__ make our stream wait for their current stream)."""
    consumer = BE.new_stream()
    producer = BE.new_stream()
    lists = Lists([(CHUNK + 1,), (3,)], np.float32, seed=11)
    BE.synchronize()
    new_grads = np.random.default_rng(99).standard_normal(lists.host_flat["grads"].size)
    new_grads = new_grads.astype(np.float32)
    inside = np.zeros(new_grads.size, bool)
    for off, s in zip(lists.offsets, lists.shapes):
        inside[off:off + int(np.prod(s))] = True
    new_grads[~inside] = SENTINEL
    hyper = dict(KERAS_DEFAULTS, step=1)
    _busy_producer(producer, lists, new_grads)
    with BE.current_stream(producer):  # the producer's stream is current during the call
        kernels.adam(*lists.args(), **hyper,
                     stream=consumer if form == "object" else BE.stream_handle(consumer))
    assert not BE.stream_done(consumer), "the update should be waiting for the producer"
    consumer.synchronize()
    lists.host_flat["grads"] = new_grads
    lists.initial["grads"] = np.concatenate(
        [new_grads[o:o + int(np.prod(s))] for o, s in zip(lists.offsets, lists.shapes)])
    check(lists, hyper)


@torch_only
@pytest.mark.parametrize("export", ["native", "dlpack"])
def test_cuda_graph_capture_with_device_hyperparameters(export):
    """A captured step replays with the learning rate and step held on the
    device: no host synchronization inside the call."""
    torch = BE.torch
    lists = Lists([(CHUNK + 5,), (100,)], np.float32, export=export, seed=12)
    lr = BE.scalar(0.0, np.float32)
    step = BE.scalar(0, np.int64)
    BE.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.adam(*lists.args(), lr=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=step,
                     stream=torch.cuda.current_stream())
    state = {k: np.array(x, copy=True) for k, x in lists.initial.items()}
    for t, rate in [(1, 1e-3), (2, 5e-4), (3, 2.5e-4)]:
        lr.fill_(rate)
        step.fill_(t)
        graph.replay()
        kernels.adam([state["params"]], [state["grads"]], [state["m"]], [state["v"]],
                     lr=float(np.float32(rate)), step=t)
    got = lists.results()
    np.testing.assert_array_equal(got["m"], state["m"])
    np.testing.assert_array_equal(got["v"], state["v"])
    assert _max_ulp(got["params"], state["params"]) <= 2


# ----------------------------------------------------------------------------
# SGD, clipping, skip_nonfinite, the norm and the finite check


def reference_sgd(p, g, m, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One SGD step in float64 (kernels.sgd's docstring); m is None for plain SGD."""
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    if weight_decay != 0.0:
        p = p - p * weight_decay * lr
    if m is None:
        return p - g * lr, None
    m = np.asarray(m, np.float64) * momentum - g * lr
    return (p + (m * momentum - g * lr) if nesterov else p + m), m


def cpu_sgd(initial, momentums, **hyper):
    p, g = (np.array(initial[k], copy=True) for k in ("params", "grads"))
    m = np.array(initial["momentums"], copy=True) if momentums else None
    kernels.sgd([p], [g], None if m is None else [m], **hyper)
    return {"params": p, "momentums": m}


SGD_VARIANTS = {"plain": dict(momentum=0.0), "momentum": dict(momentum=0.9),
                "nesterov": dict(momentum=0.9, nesterov=True)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(SGD_VARIANTS))
@pytest.mark.parametrize("layout", ["aligned", "mixed"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.004])
def test_sgd(dtype, variant, layout, weight_decay):
    """Every variant against the float64 reference and the CPU kernel, bit
    for bit, over the odd sizes."""
    plain = variant == "plain"
    names = SGD_LISTS[:2] if plain else SGD_LISTS
    lists = Lists([(n,) for n in ODD_SIZES], dtype, layout=layout, seed=20, names=names)
    hyper = dict(lr=0.01, weight_decay=weight_decay, **SGD_VARIANTS[variant])
    args = lists.args()
    kernels.sgd(args[0], args[1], None if plain else args[2], **hyper)
    got = lists.results()
    init = lists.initial
    ref_p, ref_m = reference_sgd(init["params"], init["grads"], None if plain else init["momentums"],
                                 **hyper)
    tol = TOLERANCES[lists.dtype.type]
    np.testing.assert_allclose(got["params"], ref_p, **tol)
    cpu = cpu_sgd(init, not plain, **hyper)
    np.testing.assert_array_equal(got["params"], cpu["params"])
    if not plain:
        np.testing.assert_allclose(got["momentums"], ref_m, **tol)
        np.testing.assert_array_equal(got["momentums"], cpu["momentums"])


@device_only
@pytest.mark.parametrize("pdtype", ["float16", "bfloat16"])
def test_sgd_16bit_params_with_float32_momentum(pdtype):
    if pdtype == "bfloat16" and BE.name != "torch":
        pytest.skip("bfloat16 arrays need PyTorch")
    rng = np.random.default_rng(21)
    sizes = [1, 7, 1025, CHUNK + 1]
    if pdtype == "float16":
        to16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
        up = lambda a: BE.from_numpy(np.asarray(a, np.float32).astype(np.float16))  # noqa: E731
        down = lambda x: BE.to_numpy(x).astype(np.float32)  # noqa: E731
    else:
        to16, up, down = BE.round_bfloat16, BE.bfloat16_from_numpy, BE.bfloat16_to_numpy
    p0 = [to16(rng.standard_normal(n)) for n in sizes]
    g0 = [to16(rng.standard_normal(n)) for n in sizes]
    m0 = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in sizes]
    p, g, m = [up(x) for x in p0], [up(x) for x in g0], [BE.from_numpy(x) for x in m0]
    hyper = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.001)
    kernels.sgd(p, g, m, **hyper)
    BE.synchronize()
    for i in range(len(sizes)):
        cp, cg, cm = p0[i].copy(), g0[i].copy(), m0[i].copy()
        kernels.sgd([cp], [cg], [cm], **hyper)  # float32 on the upcast values
        np.testing.assert_array_equal(down(p[i]), to16(cp))
        np.testing.assert_array_equal(BE.to_numpy(m[i]), cm)


def _clipped_reference(init, clip):
    """The gradients clipped as kernels.* define it, in float64 (None for the
    per-tensor clip_norm)."""
    g = np.asarray(init["grads"], np.float64)
    kind, c = clip
    if kind == "clip_value":
        return np.minimum(np.maximum(g, -c), c)
    if kind == "global_clip_norm":
        norm = np.sqrt(np.sum(g * g))
        return g * (c / max(norm, c))
    return None  # per tensor: done by the caller


CLIPS = [("clip_value", 0.5), ("clip_norm", 3.0), ("global_clip_norm", 10.0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", CLIPS, ids=[c[0] for c in CLIPS])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_clip_options(dtype, clip, opt):
    """Clipping inside the update, against the float64 reference and the CPU
    kernel: clip_value bit for bit; the norm clips within the rounding of
    the norms (the device sums in another fixed order)."""
    shapes = [(3,), (CHUNK + 7,), (1000,), (0,), (17,)]
    names = LISTS if opt == "adam" else SGD_LISTS
    # Gradients ~ N(0, 1): each clip acts on the large tensor (clip_norm not
    # on the 3-element one, whose norm is below 3).
    lists = Lists(shapes, dtype, layout="mixed", seed=22, names=names)
    kw = {clip[0]: clip[1]}
    if opt == "adam":
        hyper = dict(LARGE_STEPS, step=2, weight_decay=0.001)
        kernels.adam(*lists.args(), **hyper, **kw)
    else:
        hyper = dict(lr=0.05, momentum=0.9, weight_decay=0.001)
        kernels.sgd(*lists.args(), **hyper, **kw)
    got = lists.results()
    init = dict(lists.initial)
    # The reference on clipped gradients.
    g = _clipped_reference(init, clip)
    if g is None:
        parts, pos = [], 0
        for s in shapes:
            n = int(np.prod(s))
            x = np.asarray(init["grads"][pos:pos + n], np.float64)
            parts.append(x * (clip[1] / max(np.sqrt(np.sum(x * x)), clip[1])))
            pos += n
        g = np.concatenate(parts)
    if opt == "adam":
        ref = dict(zip(("params", "m", "v"), reference_adam(init["params"], g, init["m"], init["v"], **hyper)))
    else:
        rp, rm = reference_sgd(init["params"], g, init["momentums"], **hyper)
        ref = {"params": rp, "momentums": rm}
    tol = TOLERANCES[lists.dtype.type]
    for name, r in ref.items():
        np.testing.assert_allclose(got[name], r, err_msg=name, rtol=4 * tol["rtol"], atol=tol["atol"])
    # And the CPU kernel on the same tensors (the clip norms are per tensor).
    cpu_lists = [[np.array(x, copy=True) for x in _split(init[k], shapes)] for k in names]
    if opt == "adam":
        kernels.adam(*cpu_lists, **hyper, **kw)
    else:
        kernels.sgd(*cpu_lists, **hyper, **kw)
    for k, name in enumerate(names):
        if name == "grads":
            continue
        want = np.concatenate([x.ravel() for x in cpu_lists[k]])
        if clip[0] == "clip_value" or not BE.on_device:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want, err_msg=name, rtol=tol["rtol"],
                                       atol=tol["atol"])


def _split(flat, shapes):
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(np.asarray(flat[pos:pos + n]).reshape(s))
        pos += n
    return out


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("clip", [None, *CLIPS], ids=["none"] + [c[0] for c in CLIPS])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_skip_nonfinite(opt, clip, bad):
    """A non-finite gradient element: nothing is written (None on CUDA
    arrays, where the check runs on the device; False on NumPy). Finite
    gradients: the same result as without the check."""
    shapes = [(5,), (CHUNK + 3,), (100,)]
    names = LISTS if opt == "adam" else SGD_LISTS
    kw = {} if clip is None else {clip[0]: clip[1]}
    hyper = dict(KERAS_DEFAULTS, step=1) if opt == "adam" else dict(lr=0.01, momentum=0.9)
    call = kernels.adam if opt == "adam" else kernels.sgd
    skipped = None if BE.on_device else False
    applied = None if BE.on_device else True

    lists = Lists(shapes, np.float32, layout="mixed", seed=23, names=names)
    lists.poison_grad(1, CHUNK + 1, bad)
    before = lists.snapshot()
    assert call(*lists.args(), **hyper, **kw, skip_nonfinite=True) is skipped
    after = lists.snapshot()
    for name in names:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    a = Lists(shapes, np.float32, layout="mixed", seed=24, names=names)
    b = Lists(shapes, np.float32, layout="mixed", seed=24, names=names)
    assert call(*a.args(), **hyper, **kw, skip_nonfinite=True) is applied
    call(*b.args(), **hyper, **kw)
    ra, rb = a.results(), b.results()
    for name in names:
        np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)


def test_skip_nonfinite_float64_norm_overflow():
    """float64 gradients whose squared norm overflows with every element
    finite: the step runs (the element check decides, as on the CPU)."""
    lists = Lists([(64,)], np.float64, seed=25)
    big = 1e300
    for i in range(4):
        lists.poison_grad(0, i, big)
    r = kernels.adam(*lists.args(), lr=1e-3, step=1, clip_norm=1.0, skip_nonfinite=True)
    assert r is (None if BE.on_device else True)
    got = lists.results()
    assert not np.array_equal(got["m"], lists.initial["m"]), "the step must have run"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm(dtype):
    """Against the float64 norm; the same bits on every run; out= gives the
    returned value without a synchronization."""
    lists = Lists([(n,) for n in ODD_SIZES], dtype, layout="mixed", seed=26)
    g = lists.arrays["grads"]
    want = np.sqrt(np.sum(np.asarray(lists.initial["grads"], np.float64) ** 2))
    got = kernels.global_norm(g)
    assert abs(got - want) <= 1e-12 * want
    assert kernels.global_norm(g) == got
    cpu = kernels.global_norm([np.asarray(lists.initial["grads"])])
    assert abs(cpu - got) <= 1e-13 * want
    if BE.on_device:
        for out_dtype in (np.float32, np.float64):
            out = BE.scalar(0.0, out_dtype)
            assert kernels.global_norm(g, out=out) is None
            assert BE.to_numpy(out)[0] == out_dtype(got)
    assert kernels.global_norm([]) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite(dtype):
    lists = Lists([(n,) for n in ODD_SIZES], dtype, layout="mixed", seed=27)
    assert kernels.all_finite(lists.arrays["grads"]) is True
    lists.poison_grad(len(ODD_SIZES) - 1, 2 * CHUNK + 2, np.inf)
    assert kernels.all_finite(lists.arrays["grads"]) is False
    if BE.on_device:
        out = BE.full(1, 7, np.uint8)
        assert kernels.all_finite(lists.arrays["grads"], out=out) is None
        assert int(BE.to_numpy(out)[0]) == 0
        fine = Lists([(5,), (CHUNK + 1,)], dtype, seed=28)
        assert kernels.all_finite(fine.arrays["grads"], out=out) is None
        assert int(BE.to_numpy(out)[0]) == 1


@torch_only
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_cuda_graph_capture_with_clip_and_skip(opt):
    """global_clip_norm and skip_nonfinite with every hyperparameter on the
    device, captured in a CUDA graph: the norms, the clip factor and the check
    stay on the device (a host synchronization would fail the capture).
    Replays with finite gradients update; a replay after an Inf was written
    into the gradients updates nothing."""
    torch = BE.torch
    names = LISTS if opt == "adam" else SGD_LISTS
    lists = Lists([(CHUNK + 5,), (100,)], np.float32, seed=29, names=names)
    lr = BE.scalar(1e-3, np.float32)
    BE.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if opt == "adam":
            kernels.adam(*lists.args(), lr=lr, step=BE.scalar(1, np.int64), global_clip_norm=1.0,
                         skip_nonfinite=True, stream=torch.cuda.current_stream())
        else:
            kernels.sgd(*lists.args(), lr=lr, momentum=0.9, global_clip_norm=1.0,
                        skip_nonfinite=True, stream=torch.cuda.current_stream())
    state = {k: np.array(x, copy=True) for k, x in lists.initial.items()}
    graph.replay()
    host = [[state[k]] for k in names]
    if opt == "adam":
        kernels.adam(*host, lr=float(np.float32(1e-3)), step=1, global_clip_norm=1.0)
    else:
        kernels.sgd(*host, lr=float(np.float32(1e-3)), momentum=0.9, global_clip_norm=1.0)
    results = lists.results()
    for k in names:
        if k != "grads":
            np.testing.assert_allclose(results[k], state[k], rtol=1e-6, atol=1e-7, err_msg=k)
    lists.flat["grads"][lists.offsets[1] + 3] = float("inf")  # in place: the graph reads it
    before = lists.snapshot()
    graph.replay()
    after = lists.snapshot()
    for k in names:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


# ----------------------------------------------------------------------------
# Bad calls: an exception, and every array as it was


def _bad_calls(lists):
    p, g, m, v = lists.args()
    host = [np.zeros(s, lists.dtype) for s in lists.shapes]
    other_dtype = [BE.from_numpy(np.zeros(s, np.float64)) for s in lists.shapes]
    wrong_shape = [BE.from_numpy(np.zeros((s[0] + 1,), lists.dtype)) for s in lists.shapes]
    hyper = dict(lr=1e-3, step=1)
    overlap = BE.view(lists.flat["params"], lists.offsets[1] + 2, lists.shapes[0])
    calls = [
        ("same buffer twice", ValueError, r"share memory", lambda: kernels.adam(p, g, p, v, **hyper)),
        ("grads[0] overlaps params[1]", ValueError, r"share memory",
         lambda: kernels.adam(p, [overlap, g[1]], m, v, **hyper)),
        ("one list short", ValueError, r"has 1 arrays but params has 2",
         lambda: kernels.adam(p, g, m, v[:1], **hyper)),
        ("wrong shape", ValueError, r"m\[0\] has shape",
         lambda: kernels.adam(p, g, wrong_shape, v, **hyper)),
        ("mixed dtypes", TypeError, r"v\[0\] has dtype float64",
         lambda: kernels.adam(p, g, m, other_dtype, **hyper)),
        ("negative lr", ValueError, r"lr must be in", lambda: kernels.adam(p, g, m, v, lr=-1e-3, step=1)),
        ("beta_2 = 1", ValueError, r"beta_2 must be in",
         lambda: kernels.adam(p, g, m, v, lr=1e-3, beta_2=1.0, step=1)),
        ("step 0", ValueError, r"step must be >= 1", lambda: kernels.adam(p, g, m, v, lr=1e-3, step=0)),
        ("not a list", TypeError, r"params must be a list",
         lambda: kernels.adam(p[0], g, m, v, **hyper)),
    ]
    if BE.on_device:
        strided = BE.strided(lists.flat["m"], 4)
        calls += [
            ("NumPy grads", ValueError, r"grads\[0\] is in host memory but params\[0\] is on cuda:0",
             lambda: kernels.adam(p, host, m, v, **hyper)),
            ("NumPy params", ValueError, r"grads\[0\] is on cuda:0 but params\[0\] is in host memory",
             lambda: kernels.adam(host, g, m, v, **hyper)),
            ("read-only params", ValueError, r"params\[1\] is read-only",
             lambda: kernels.adam([p[0], CAIOnly(p[1], readonly=True)], g, m, v, **hyper)),
            ("non-contiguous", ValueError, r"params\[0\] must be C-contiguous",
             lambda: kernels.adam([strided], [g[0]], [m[0]], [v[0]], **hyper)),
            ("lr of two elements", ValueError, r"one-element CUDA array",
             lambda: kernels.adam(p, g, m, v, lr=BE.scalar(1e-3, np.float32, n=2), step=1)),
            ("int lr", TypeError, r"lr on the device must have dtype",
             lambda: kernels.adam(p, g, m, v, lr=BE.scalar(1, np.int32), step=1)),
            ("bad stream", TypeError, r"stream must be",
             lambda: kernels.adam(p, g, m, v, **hyper, stream="default")),
        ]
    return calls


def test_bad_calls_write_nothing():
    lists = Lists([(5,), (CHUNK + 3,)], np.float32, seed=13)
    before = lists.snapshot()
    for what, error, match, call in _bad_calls(lists):
        with pytest.raises(error, match=match):
            call()
        after = lists.snapshot()
        for name in LISTS:
            np.testing.assert_array_equal(after[name], before[name], err_msg=f"{what}: {name}")


@device_only
def test_arrays_on_two_devices():
    if BE.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    lists = Lists([(10,)], np.float32, seed=14)
    p, g, m, v = lists.args()
    m1 = [BE.from_numpy(np.zeros(10, np.float32), device=1 if BE.name == "cupy" else "cuda:1")]
    before = lists.snapshot()
    with pytest.raises(ValueError, match=r"m\[0\] is on cuda:1 but params\[0\] is on cuda:0"):
        kernels.adam(p, g, m1, v, lr=1e-3, step=1)
    after = lists.snapshot()
    for name in LISTS:
        np.testing.assert_array_equal(after[name], before[name])

"""fusedopt.kernels' handling of CUDA arrays that needs no GPU.

Fake DLPack producers claim CUDA memory at addresses nothing is launched on:
every call here must fail validation before any launch (and so runs the same
on machines with and without a GPU). In a build without CUDA, CUDA arrays
must raise a clear error. The kernels themselves on a GPU are
test_cuda_kernels.py.
"""

import ctypes

import numpy as np
import pytest
from cuda_helpers import import_fusedopt

fusedopt, kernels = import_fusedopt()

CUDA_BUILD = bool(fusedopt.build_info()["cuda"])

# ----------------------------------------------------------------------------
# A DLPack producer in ctypes (the ABI of dlpack.h, read by csrc/python/
# cuda_arrays.cpp).


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", _DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
# Capsule names must outlive the capsules.
_NAME = b"dltensor"
_NAME_VERSIONED = b"dltensor_versioned"

_DTYPES = {"float16": (2, 16), "float32": (2, 32), "float64": (2, 64), "int32": (0, 32),
           "int64": (0, 64), "uint8": (1, 8), "bool": (6, 8)}
FAKE_BASE = 0x7F0000000000  # never dereferenced


class FakeCudaArray:
    """Claims `shape` elements of `dtype` at `data` on cuda:`device_id`."""

    def __init__(self, shape, dtype="float32", *, device_id=0, data=FAKE_BASE, strides=None,
                 flags=0, device_type=2):
        self.shape, self.dtype, self.device_id = tuple(shape), dtype, device_id
        self.data, self.strides, self.flags, self.device_type = data, strides, flags, device_type
        self.streams = []
        self._keep = []

    def __dlpack_device__(self):
        return (self.device_type, self.device_id)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self.streams.append(stream)
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        strides = None
        if self.strides is not None:
            strides = (ctypes.c_int64 * max(ndim, 1))(*self.strides)
        code, bits = _DTYPES[self.dtype]
        t = _DLTensor(ctypes.c_void_p(self.data), _DLDevice(self.device_type, self.device_id),
                      ndim, _DLDataType(code, bits, 1), shape, strides, 0)
        if max_version is not None and max_version[0] >= 1:
            m = _DLManagedTensorVersioned(_DLPackVersion(1, 0), None, None, self.flags, t)
            name = _NAME_VERSIONED
        else:
            m = _DLManagedTensor(t, None, None)
            name = _NAME
        self._keep += [shape, strides, m]
        return _PyCapsule_New(ctypes.addressof(m), name, None)


class LegacyFakeCudaArray(FakeCudaArray):
    """A DLPack < 1.0 producer: __dlpack__ takes no max_version."""

    def __dlpack__(self, *, stream=None):
        return super().__dlpack__(stream=stream)


def adam_lists(**kw):
    """params, grads, m, v: one fake array each, in separate buffers."""
    return tuple([FakeCudaArray((4,), data=FAKE_BASE + k * 4096, **kw)] for k in range(4))


HYPER = dict(lr=1e-3, step=1)

# ----------------------------------------------------------------------------
# Builds without CUDA


@pytest.mark.skipif(CUDA_BUILD, reason="this build has CUDA")
def test_cuda_arrays_without_cuda_build_raise_a_clear_error():
    p, g, m, v = adam_lists()
    g = [np.ones(4, np.float32)]
    with pytest.raises(RuntimeError, match=r"params\[0\] is a CUDA array.*no CUDA kernels"):
        kernels.adam(p, g, m, v, **HYPER)
    ps = [np.ones(4, np.float32)]
    with pytest.raises(RuntimeError, match=r"grads\[0\] is a CUDA array.*no CUDA kernels"):
        kernels.adam(ps, [FakeCudaArray((4,))], [np.zeros(4, np.float32)],
                     [np.zeros(4, np.float32)], **HYPER)
    with pytest.raises(RuntimeError, match=r"lr is a CUDA array.*no CUDA kernels"):
        kernels.adam(ps, [np.ones(4, np.float32)], [np.zeros(4, np.float32)],
                     [np.zeros(4, np.float32)], lr=FakeCudaArray((1,)), step=1)
    with pytest.raises(RuntimeError, match=r"stream= was given.*no CUDA kernels"):
        kernels.adam(ps, [np.ones(4, np.float32)], [np.zeros(4, np.float32)],
                     [np.zeros(4, np.float32)], stream=0, **HYPER)
    np.testing.assert_array_equal(ps[0], np.ones(4, np.float32))


# ----------------------------------------------------------------------------
# CUDA builds: every case fails validation, before any launch.

cuda_build = pytest.mark.skipif(not CUDA_BUILD, reason="this build has no CUDA kernels")


@cuda_build
def test_build_info_reports_cuda():
    info = fusedopt.build_info()
    assert info["cuda"] is True
    archs = info["cuda_architectures"]
    assert archs and all(a.split("-")[0].isdigit() for a in archs.split(";")), archs


@cuda_build
def test_numpy_and_cuda_arrays_in_one_call():
    p, g, m, v = adam_lists()
    host = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"grads\[0\] is in host memory but params\[0\] is on cuda:0"):
        kernels.adam(p, [host], m, v, **HYPER)
    with pytest.raises(ValueError, match=r"grads\[0\] is on cuda:0 but params\[0\] is in host memory"):
        kernels.adam([host], g, [np.zeros(4, np.float32)], [np.zeros(4, np.float32)], **HYPER)
    with pytest.raises(ValueError, match=r"lr is on cuda:0 but params\[0\] is in host memory"):
        kernels.adam([host], [np.ones(4, np.float32)], [np.zeros(4, np.float32)],
                     [np.zeros(4, np.float32)], lr=FakeCudaArray((1,)), step=1)
    np.testing.assert_array_equal(host, np.ones(4, np.float32))


@cuda_build
def test_arrays_on_two_devices():
    p, g, m, v = adam_lists()
    m = [FakeCudaArray((4,), device_id=1, data=FAKE_BASE + 9 * 4096)]
    with pytest.raises(ValueError, match=r"m\[0\] is on cuda:1 but params\[0\] is on cuda:0"):
        kernels.adam(p, g, m, v, **HYPER)
    with pytest.raises(ValueError, match=r"step is on cuda:1 but params\[0\] is on cuda:0"):
        kernels.adam(*adam_lists(), lr=1e-3, step=FakeCudaArray((1,), "int64", device_id=1))


@cuda_build
def test_numpy_arrays_with_stream():
    p = [np.ones(4, np.float32)]
    with pytest.raises(ValueError, match=r"stream= applies to CUDA arrays.*params\[0\]"):
        kernels.adam(p, [np.ones(4, np.float32)], [np.zeros(4, np.float32)],
                     [np.zeros(4, np.float32)], stream=0, **HYPER)
    np.testing.assert_array_equal(p[0], np.ones(4, np.float32))


@cuda_build
@pytest.mark.parametrize("producer", [FakeCudaArray, LegacyFakeCudaArray])
def test_dtypes(producer):
    p, g, m, v = adam_lists()
    with pytest.raises(TypeError, match=r"grads\[0\] must have dtype float16, bfloat16, "
                                        r"float32 or float64, got int32"):
        kernels.adam(p, [producer((4,), "int32", data=FAKE_BASE + 8 * 4096)], m, v, **HYPER)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float16 but params\[0\] has float32"):
        kernels.adam(p, [producer((4,), "float16", data=FAKE_BASE + 8 * 4096)], m, v, **HYPER)
    with pytest.raises(TypeError, match=r"m\[0\] must have dtype float32 or float64, got float16"):
        kernels.adam(p, g, [producer((4,), "float16", data=FAKE_BASE + 8 * 4096)], v, **HYPER)
    p16 = [producer((4,), "float16", data=FAKE_BASE + 8 * 4096)]
    g16 = [producer((4,), "float16", data=FAKE_BASE + 9 * 4096)]
    with pytest.raises(TypeError, match=r"m\[0\] has dtype float64 but params\[0\] has float16; "
                                        r"16-bit parameters take float32 m and v"):
        kernels.adam(p16, g16, [producer((4,), "float64", data=FAKE_BASE + 10 * 4096)], v, **HYPER)
    with pytest.raises(ValueError, match=r"v\[0\] and params\[0\] have different shapes"):
        kernels.adam(p16, g16, m, [producer((5,), data=FAKE_BASE + 10 * 4096)], **HYPER)
    f64 = [producer((4,), "float64", data=FAKE_BASE + 8 * 4096)]
    with pytest.raises(TypeError, match=r"m\[0\] has dtype float64 but params\[0\] has float32"):
        kernels.adam(p, g, f64, v, **HYPER)


@cuda_build
def test_layout_checks():
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"v\[0\] has shape \(5,\) but params\[0\] has shape \(4,\)"):
        kernels.adam(p, g, m, [FakeCudaArray((5,), data=FAKE_BASE + 8 * 4096)], **HYPER)
    with pytest.raises(ValueError, match=r"has 2 arrays but params has 1"):
        kernels.adam(p, g + g, m, v, **HYPER)
    strided = FakeCudaArray((4, 2), data=FAKE_BASE + 8 * 4096, strides=(4, 2))
    with pytest.raises(ValueError, match=r"params\[0\] must be C-contiguous"):
        kernels.adam([strided], *[[FakeCudaArray((4, 2), data=FAKE_BASE + k * 4096)]
                                  for k in range(1, 4)], **HYPER)


@cuda_build
def test_same_buffer_twice():
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"share memory"):
        kernels.adam(p, g, p, v, **HYPER)
    overlapping = [FakeCudaArray((4,), data=FAKE_BASE + 8)]  # inside params[0]
    with pytest.raises(ValueError, match=r"share memory"):
        kernels.adam(p, overlapping, m, v, **HYPER)


@cuda_build
def test_read_only_and_copied_exports():
    p, g, m, v = adam_lists()
    ro = [FakeCudaArray((4,), data=FAKE_BASE + 8 * 4096, flags=1)]
    with pytest.raises(ValueError, match=r"m\[0\] is read-only"):
        kernels.adam(p, g, ro, v, **HYPER)
    copied = [FakeCudaArray((4,), data=FAKE_BASE + 8 * 4096, flags=2)]
    with pytest.raises(ValueError, match=r"v\[0\] was exported as a copy"):
        kernels.adam(p, g, m, copied, **HYPER)


@cuda_build
def test_not_a_cuda_device():
    pinned = [FakeCudaArray((4,), data=FAKE_BASE + 8 * 4096, device_type=3)]  # kDLCUDAHost
    p, g, m, v = adam_lists()
    with pytest.raises((TypeError, ValueError), match=r"grads\[0\]"):
        kernels.adam(p, pinned, m, v, **HYPER)


@cuda_build
def test_hyperparameters():
    lists = adam_lists()
    with pytest.raises(ValueError, match=r"lr must be in \[0"):
        kernels.adam(*lists, lr=-1.0, step=1)
    with pytest.raises(ValueError, match=r"beta_1 must be in \[0"):
        kernels.adam(*lists, lr=1e-3, beta_1=1.0, step=1)
    with pytest.raises(ValueError, match=r"step must be >= 1"):
        kernels.adam(*lists, lr=1e-3, step=0)
    with pytest.raises(ValueError, match=r"lr must be a number or a one-element CUDA array"):
        kernels.adam(*lists, lr=FakeCudaArray((2,), data=FAKE_BASE + 20 * 4096), step=1)
    with pytest.raises(TypeError, match=r"lr on the device must have dtype float32 or float64"):
        kernels.adam(*lists, lr=FakeCudaArray((1,), "int32", data=FAKE_BASE + 20 * 4096),
                     step=1)
    with pytest.raises(TypeError, match=r"step on the device must have dtype int32, int64"):
        kernels.adam(*lists, lr=1e-3, step=FakeCudaArray((1,), "float16"))


@cuda_build
def test_stream_argument_types():
    lists = adam_lists()
    with pytest.raises(TypeError, match=r"stream must be None"):
        kernels.adam(*lists, lr=-1.0, step=1, stream="default")
    with pytest.raises(ValueError, match=r"stream must be a cudaStream_t handle >= 0"):
        kernels.adam(*lists, lr=-1.0, step=1, stream=-5)


@cuda_build
def test_dlpack_gets_the_consumer_stream():
    """DLPack's stream: 1 for the legacy default stream (0 is not allowed),
    else the handle given as stream=."""
    p, g, m, v = adam_lists()
    with pytest.raises(ValueError, match=r"lr must be in"):
        kernels.adam(p, g, m, v, lr=-1.0, step=1)
    assert p[0].streams == [1]
    p, g, m, v = adam_lists()

    class TorchLikeStream:
        cuda_stream = 0x1234

    with pytest.raises(ValueError, match=r"lr must be in"):
        kernels.adam(p, g, m, v, lr=-1.0, step=1, stream=TorchLikeStream())
    assert p[0].streams == [0x1234]


@cuda_build
def test_dlpack_is_preferred_over_the_array_interface():
    """An object with both: DLPack is used (its stream handshake), the array
    interface (PyTorch's carries no stream) is not read."""

    class Both(FakeCudaArray):
        cai_reads = 0

        @property
        def __cuda_array_interface__(self):
            Both.cai_reads += 1
            return {"shape": self.shape, "typestr": "<f4", "data": (self.data, False),
                    "version": 2}

    p = [Both((4,), data=FAKE_BASE)]
    g, m, v = ([FakeCudaArray((4,), data=FAKE_BASE + k * 4096)] for k in (1, 2, 3))
    with pytest.raises(ValueError, match=r"lr must be in"):
        kernels.adam(p, g, m, v, lr=-1.0, step=1)
    assert p[0].streams == [1], "DLPack export with the consumer's stream"
    assert Both.cai_reads == 0


@cuda_build
def test_sgd_checks():
    p, g, m = ([FakeCudaArray((4,), data=FAKE_BASE + k * 4096)] for k in range(3))
    with pytest.raises(ValueError, match=r"momentums is None but momentum is 0.9"):
        kernels.sgd(p, g, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentums is None but momentum is a CUDA array"):
        kernels.sgd(p, g, None, lr=0.1, momentum=FakeCudaArray((1,), data=FAKE_BASE + 9 * 4096))
    with pytest.raises(ValueError, match=r"lr must be in \[0"):
        kernels.sgd(p, g, m, lr=-0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        kernels.sgd(p, g, m, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match=r"share memory"):
        kernels.sgd(p, g, p, lr=0.1, momentum=0.9)
    p16 = [FakeCudaArray((4,), "float16", data=FAKE_BASE + 10 * 4096)]
    g16 = [FakeCudaArray((4,), "float16", data=FAKE_BASE + 11 * 4096)]
    m64 = [FakeCudaArray((4,), "float64", data=FAKE_BASE + 12 * 4096)]
    with pytest.raises(TypeError, match=r"momentums\[0\] has dtype float64 but params\[0\] has "
                                        r"float16; 16-bit parameters take float32 momentums"):
        kernels.sgd(p16, g16, m64, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"stream must be None"):
        kernels.sgd(p, g, m, lr=-0.1, stream="default")
    host = [np.ones(4, np.float32)]
    with pytest.raises(ValueError, match=r"grads\[0\] is in host memory but params\[0\] is on cuda:0"):
        kernels.sgd(p, host, m, lr=0.1, momentum=0.9)


@cuda_build
def test_clip_and_skip_options_are_checked_on_cuda_arrays():
    lists = adam_lists()
    with pytest.raises(ValueError, match=r"pass at most one of clip_value, clip_norm"):
        kernels.adam(*lists, lr=1e-3, step=1, clip_value=1.0, clip_norm=1.0)
    with pytest.raises(ValueError, match=r"clip_norm must be in"):
        kernels.adam(*lists, lr=1e-3, step=1, clip_norm=0.0)
    with pytest.raises(TypeError, match=r"skip_nonfinite must be a bool"):
        kernels.adam(*lists, lr=1e-3, step=1, skip_nonfinite="yes")
    with pytest.raises(ValueError, match=r"lr must be in"):  # the options pass, lr does not
        kernels.adam(*lists, lr=-1.0, step=1, global_clip_norm=1.0, skip_nonfinite=True)


@cuda_build
@pytest.mark.parametrize("fn", ["all_finite", "global_norm"])
def test_out_argument_checks(fn):
    call = getattr(kernels, fn)
    x = [FakeCudaArray((4,), data=FAKE_BASE)]
    right = "uint8" if fn == "all_finite" else "float32"
    wrong = "float32" if fn == "all_finite" else "int32"
    with pytest.raises(ValueError, match=r"out must be a one-element CUDA array, got shape \(2,\)"):
        call(x, out=FakeCudaArray((2,), right, data=FAKE_BASE + 4096))
    with pytest.raises(TypeError, match=r"out must have dtype"):
        call(x, out=FakeCudaArray((1,), wrong, data=FAKE_BASE + 4096))
    with pytest.raises(ValueError, match=r"out is read-only"):
        call(x, out=FakeCudaArray((1,), right, data=FAKE_BASE + 4096, flags=1))
    with pytest.raises(ValueError, match=r"out is on cuda:1 but arrays\[0\] is on cuda:0"):
        call(x, out=FakeCudaArray((1,), right, data=FAKE_BASE + 4096, device_id=1))
    with pytest.raises(TypeError, match=r"out must be None or a one-element CUDA array"):
        call(x, out=np.zeros(1, np.float32))
    with pytest.raises(TypeError, match=r"out= takes a CUDA array"):
        call([np.ones(3, np.float32)], out=np.zeros(1, np.float32))
    with pytest.raises(TypeError, match=r"arrays\[1\] has dtype float64"):
        call([x[0], FakeCudaArray((4,), "float64", data=FAKE_BASE + 8192)])


def test_cuda_problem():
    """None where the GPU paths can run; else a message (no CUDA build, no
    driver, a driver older than the runtime, no device)."""
    from fusedopt import _C

    problem = _C.cuda_problem()
    assert fusedopt.build_info()["cuda_problem"] == problem
    if not CUDA_BUILD:
        assert "no CUDA kernels" in problem
    elif problem is not None:
        assert "CUDA" in problem or "driver" in problem, problem

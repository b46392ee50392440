#include "python/cuda_arrays.h"

#include <pybind11/numpy.h>

#include <cstring>
#include <sstream>

#if defined(FUSEDOPT_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fusedopt {
namespace {

// The DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html), the parts
// read here: a capsule named "dltensor" holds a DLManagedTensor, one named
// "dltensor_versioned" (DLPack >= 1.0) a DLManagedTensorVersioned.
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr int32_t kDLCUDAManaged = 13;
constexpr uint8_t kDLInt = 0;
constexpr uint8_t kDLUInt = 1;
constexpr uint8_t kDLFloat = 2;
constexpr uint8_t kDLBfloat = 4;
constexpr uint8_t kDLBool = 6;
constexpr uint64_t kDLFlagReadOnly = 1ull << 0;
constexpr uint64_t kDLFlagIsCopied = 1ull << 1;

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};

std::string where(int device) {
  return device < 0 ? std::string("in host memory") : "on cuda:" + std::to_string(device);
}

// What an argument is, before any check.
enum class Kind { kNumpy, kCudaArrayInterface, kDlpackCuda, kDlpackHost, kOther };

Kind classify(py::handle obj) {
  if (py::isinstance<py::array>(obj)) return Kind::kNumpy;
  // DLPack first where an object offers both: its __dlpack__(stream=) makes
  // our stream wait for the producer's, while PyTorch's
  // __cuda_array_interface__ carries no stream (a kernel could read before
  // the producer's stream wrote); the array interface is not even looked at
  // then. hasattr swallows the errors of objects that refuse an interface (a
  // PyTorch CPU tensor, or one that requires grad); DLPack then explains.
  const auto cai_or = [&](Kind otherwise) {
    return py::hasattr(obj, "__cuda_array_interface__") ? Kind::kCudaArrayInterface : otherwise;
  };
  if (py::hasattr(obj, "__dlpack__") && py::hasattr(obj, "__dlpack_device__")) {
    try {
      py::tuple dev = obj.attr("__dlpack_device__")();
      const int type = dev[0].cast<int>();
      if (type == kDLCUDA || type == kDLCUDAManaged) return Kind::kDlpackCuda;
      return cai_or(Kind::kDlpackHost);
    } catch (py::error_already_set&) {
      return cai_or(Kind::kOther);
    } catch (py::cast_error&) {
      return cai_or(Kind::kOther);
    }
  }
  return cai_or(Kind::kOther);
}

bool is_cuda(py::handle obj) {
  const Kind k = classify(obj);
  return k == Kind::kCudaArrayInterface || k == Kind::kDlpackCuda;
}

bool is_list(py::handle obj) {
  return py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj);
}

// The stream= argument as a cudaStream_t value (0: the legacy default stream).
uintptr_t parse_stream(py::handle s) {
  if (s.is_none()) return 0;
  py::object handle;
  if (py::isinstance<py::int_>(s) && !py::isinstance<py::bool_>(s)) {
    handle = py::reinterpret_borrow<py::object>(s);
  } else if (py::hasattr(s, "__cuda_stream__")) {  // the CUDA Python stream protocol
    py::tuple t = s.attr("__cuda_stream__")();
    handle = t[1];
  } else if (py::hasattr(s, "cuda_stream")) {  // torch.cuda.Stream
    handle = s.attr("cuda_stream");
  } else if (py::hasattr(s, "ptr")) {  // cupy.cuda.Stream
    handle = s.attr("ptr");
  } else {
    throw py::type_error(
        "stream must be None (the legacy default stream), an int (a cudaStream_t "
        "handle) or a stream object (torch.cuda.Stream, cupy.cuda.Stream, or one with "
        "__cuda_stream__), got " + type_name(s));
  }
  const long long value = handle.cast<long long>();
  if (value < 0) throw py::value_error("stream must be a cudaStream_t handle >= 0");
  return static_cast<uintptr_t>(value);
}

// Streams 0 (the NULL stream) and 1 (cudaStreamLegacy) are the same stream.
bool same_stream(uintptr_t a, uintptr_t b) {
  const auto norm = [](uintptr_t s) { return s == 0 ? uintptr_t{1} : s; };
  return norm(a) == norm(b);
}

// An array as its producer describes it, not yet checked.
struct RawArray {
  uintptr_t data = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements; empty: C-contiguous
  // 'f' float, 'b' bfloat, 'i' signed and 'u' unsigned integer, 'B' bool, '?' other
  char kind = 0;
  int bits = 0;
  bool readonly = false;
  bool copied = false;
  int device = -1;          // DLPack: the device id; CAI: from the pointer
  bool has_stream = false;  // CAI v3: the stream the producer used
  uintptr_t stream = 0;

  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  bool c_contiguous() const {
    if (strides.empty() || size() == 0) return true;
    int64_t expected = 1;
    for (size_t d = shape.size(); d-- > 0;) {
      if (shape[d] != 1 && strides[d] != expected) return false;
      expected *= shape[d];
    }
    return true;
  }
  std::string dtype_str() const {
    if (kind == 'f') return "float" + std::to_string(bits);
    if (kind == 'b') return "bfloat" + std::to_string(bits);
    if (kind == 'i') return "int" + std::to_string(bits);
    if (kind == 'u') return "uint" + std::to_string(bits);
    if (kind == 'B') return "bool";
    return "an unsupported dtype";
  }
};

#if defined(FUSEDOPT_WITH_CUDA)
std::string cuda_error(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// The device of a CUDA pointer from __cuda_array_interface__ (which does not
// say): device or managed memory only.
int device_of_pointer(uintptr_t ptr, const std::string& name) {
  cudaPointerAttributes attr;
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it
    const bool no_gpu = err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver;
    throw std::runtime_error(name + ": cannot query its CUDA memory (" + cuda_error(err) + ")" +
                             (no_gpu ? "; this process sees no usable CUDA device" : ""));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw py::value_error(name + " is not in CUDA device memory (its "
                                 "__cuda_array_interface__ points to host memory)");
  }
  return attr.device;
}
#endif

RawArray from_cuda_array_interface(py::handle obj, const std::string& name) {
  py::dict cai = obj.attr("__cuda_array_interface__");
  RawArray a;
  for (py::handle d : py::tuple(cai["shape"])) a.shape.push_back(d.cast<int64_t>());
  const std::string typestr = py::str(cai["typestr"]);
  if (typestr.size() >= 3 && (typestr[0] == '<' || typestr[0] == '|' || typestr[0] == '=')) {
    const char c = typestr[1];
    a.kind = c == 'f' ? 'f' : c == 'i' ? 'i' : c == 'u' ? 'u' : c == 'b' ? 'B' : '?';
    a.bits = 8 * std::atoi(typestr.c_str() + 2);
  } else {
    a.kind = '?';
  }
  py::tuple data = cai["data"];
  a.data = data[0].cast<uintptr_t>();
  a.readonly = data[1].cast<bool>();
  if (cai.contains("mask") && !cai["mask"].is_none()) {
    throw py::value_error(name + " is a masked array; masks are not supported");
  }
  if (cai.contains("strides") && !cai["strides"].is_none() && a.bits > 0) {
    for (py::handle s : py::tuple(cai["strides"])) {
      const int64_t bytes = s.cast<int64_t>();
      a.strides.push_back(bytes % (a.bits / 8) == 0 ? bytes / (a.bits / 8) : -1);
    }
  }
  if (cai.contains("stream") && !cai["stream"].is_none()) {
    a.has_stream = true;
    a.stream = cai["stream"].cast<uintptr_t>();
  }
#if defined(FUSEDOPT_WITH_CUDA)
  a.device = a.size() > 0 ? device_of_pointer(a.data, name) : -2;
#endif
  return a;
}

// DLPack's stream argument for our stream: 1 is the legacy default stream
// (0 is not allowed), 2 the per-thread one, anything else a handle.
py::int_ dlpack_stream(uintptr_t stream) {
  return py::int_(stream == 0 ? uintptr_t{1} : stream);
}

RawArray from_dlpack(py::handle obj, const std::string& name, uintptr_t stream,
                     std::vector<py::object>& keep_alive) {
  py::object fn = obj.attr("__dlpack__");
  py::object capsule;
  try {
    capsule = fn(py::arg("stream") = dlpack_stream(stream),
                 py::arg("max_version") = py::make_tuple(1, 1));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    capsule = fn(py::arg("stream") = dlpack_stream(stream));  // DLPack < 1.0 producers
  }
  // The capsule stays unconsumed and alive until the launch is enqueued; its
  // own destructor then releases the producer's tensor.
  keep_alive.push_back(capsule);
  const char* cname = PyCapsule_GetName(capsule.ptr());
  const DLTensor* t = nullptr;
  uint64_t flags = 0;
  if (cname != nullptr && std::strcmp(cname, "dltensor_versioned") == 0) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule.ptr(), cname));
    if (m == nullptr) throw py::error_already_set();
    if (m->version.major != 1) {
      throw py::value_error(name + ": unsupported DLPack version " +
                            std::to_string(m->version.major));
    }
    flags = m->flags;
    t = &m->dl_tensor;
  } else if (cname != nullptr && std::strcmp(cname, "dltensor") == 0) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), cname));
    if (m == nullptr) throw py::error_already_set();
    t = &m->dl_tensor;
  } else {
    throw py::value_error(name + ".__dlpack__() did not return a DLPack capsule");
  }
  RawArray a;
  if (t->device.device_type != kDLCUDA && t->device.device_type != kDLCUDAManaged) {
    throw py::value_error(name + ": __dlpack__ gave memory of DLPack device type " +
                          std::to_string(t->device.device_type) + ", not CUDA");
  }
  a.device = t->device.device_id;
  a.data = reinterpret_cast<uintptr_t>(t->data) + t->byte_offset;
  a.shape.assign(t->shape, t->shape + t->ndim);
  if (t->strides != nullptr) a.strides.assign(t->strides, t->strides + t->ndim);
  a.kind = t->dtype.lanes != 1            ? '?'
           : t->dtype.code == kDLFloat  ? 'f'
           : t->dtype.code == kDLBfloat ? 'b'
           : t->dtype.code == kDLInt    ? 'i'
           : t->dtype.code == kDLUInt   ? 'u'
           : t->dtype.code == kDLBool   ? 'B'
                                        : '?';
  a.bits = t->dtype.bits;
  a.readonly = (flags & kDLFlagReadOnly) != 0;
  a.copied = (flags & kDLFlagIsCopied) != 0;
  if (a.size() == 0) a.device = -2;
  return a;
}

std::string no_cuda_message(const std::string& what) {
  return what +
         " but this fusedopt build has no CUDA kernels (fusedopt.build_info()['cuda'] is "
         "False: nvcc was not found when it was built, or FUSEDOPT_NO_CUDA was set). Pass "
         "NumPy arrays, or reinstall fusedopt on a machine with nvcc.";
}

}  // namespace

bool is_cuda_call(std::initializer_list<py::handle> lists,
                  std::initializer_list<py::handle> scalars, py::handle stream) {
  if (!stream.is_none()) return true;
  for (py::handle list : lists) {
    if (!is_list(list)) continue;  // the NumPy path raises the TypeError
    for (py::handle item : py::reinterpret_borrow<py::sequence>(list)) {
      if (is_cuda(item)) return true;
    }
  }
  for (py::handle s : scalars) {
    if (is_cuda(s)) return true;
  }
  return false;
}

CudaCall::CudaCall(const std::vector<std::string>& names, const std::vector<py::handle>& args,
                   py::handle stream) {
#if !defined(FUSEDOPT_WITH_CUDA)
  for (size_t a = 0; a < args.size(); ++a) {
    if (is_list(args[a])) {
      py::sequence seq = py::reinterpret_borrow<py::sequence>(args[a]);
      for (size_t i = 0; i < seq.size(); ++i) {
        if (is_cuda(seq[i])) {
          throw std::runtime_error(
              no_cuda_message(names[a] + "[" + std::to_string(i) + "] is a CUDA array"));
        }
      }
    } else if (is_cuda(args[a])) {
      throw std::runtime_error(no_cuda_message(names[a] + " is a CUDA array"));
    }
  }
  if (!stream.is_none()) throw std::runtime_error(no_cuda_message("stream= was given"));
  throw std::runtime_error(no_cuda_message("CUDA arrays were given"));
#else
  (void)names;
  (void)args;
  stream_ = parse_stream(stream);
#endif
}

CudaCall::~CudaCall() {
#if defined(FUSEDOPT_WITH_CUDA)
  if (previous_device_ >= 0 && previous_device_ != device_) cudaSetDevice(previous_device_);
#endif
}

void CudaCall::locate(int device, const std::string& name) {
  if (device == -2) return;  // an empty array is anywhere
  if (device_ == -2) {
    device_ = device;
    device_owner_ = name;
    return;
  }
  if (device != device_) {
    throw py::value_error(name + " is " + where(device) + " but " + device_owner_ + " is " +
                          where(device_) +
                          "; one call takes arrays of one device (all NumPy arrays, or all "
                          "on one CUDA device)");
  }
}

std::vector<HostArray> CudaCall::arrays(py::handle obj, const std::string& arg, bool writable,
                                        bool allow_16bit) {
  if (!is_list(obj)) {
    throw py::type_error(arg + " must be a list or tuple of arrays, got " + type_name(obj));
  }
  std::vector<HostArray> out;
  py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  for (size_t i = 0; i < seq.size(); ++i) {
    const std::string name = arg + "[" + std::to_string(i) + "]";
    py::object item = seq[i];
    RawArray a;
    switch (classify(item)) {
      case Kind::kCudaArrayInterface:
        a = from_cuda_array_interface(item, name);
        break;
      case Kind::kDlpackCuda:
        a = from_dlpack(item, name, stream_, keep_alive_);
        break;
      case Kind::kNumpy: {
        // Host memory in a call that has CUDA arrays (or stream=): recorded so
        // that the error names both sides (locate, or prepare_launch).
        locate(-1, name);
        py::array n = py::reinterpret_borrow<py::array>(item);
        a.data = reinterpret_cast<uintptr_t>(n.data());
        a.shape.assign(n.shape(), n.shape() + n.ndim());
        a.kind = n.dtype().kind();
        a.bits = 8 * static_cast<int>(n.itemsize());
        a.device = -1;
        break;
      }
      case Kind::kDlpackHost:
      case Kind::kOther:
      default:
        locate(-1, name);  // raises when the call's arrays are on a CUDA device
        throw py::type_error(name + " must be a NumPy array or a CUDA array "
                                    "(__cuda_array_interface__, or DLPack on a CUDA "
                                    "device), got " + type_name(item));
    }
    locate(a.device, name);
    HostArray h;
    if (a.kind == 'f' && a.bits == 32) {
      h.dtype = DType::kFloat32;
    } else if (a.kind == 'f' && a.bits == 64) {
      h.dtype = DType::kFloat64;
    } else if (allow_16bit && a.kind == 'f' && a.bits == 16) {
      h.dtype = DType::kFloat16;
    } else if (allow_16bit && a.kind == 'b' && a.bits == 16) {
      h.dtype = DType::kBFloat16;
    } else {
      throw py::type_error(name + " must have dtype " +
                           (allow_16bit ? "float16, bfloat16, float32 or float64"
                                        : "float32 or float64") +
                           ", got " + a.dtype_str());
    }
    if (!a.c_contiguous()) {
      throw py::value_error(name + " must be C-contiguous (shape " + shape_str(a.shape) +
                            " with strides that skip elements); pass a contiguous copy "
                            "that you then keep");
    }
    if (writable && a.readonly) {
      throw py::value_error(name + " is read-only; it is updated in place and must be "
                                   "writeable");
    }
    if (writable && a.copied) {
      throw py::value_error(name + " was exported as a copy (DLPack IS_COPIED); an "
                                   "in-place update of it would be lost");
    }
    if (a.has_stream && !same_stream(a.stream, stream_)) producer_streams_.insert(a.stream);
    h.data = reinterpret_cast<void*>(a.data);
    h.size = a.size();
    h.nbytes = h.size * (a.bits / 8);
    h.shape = a.shape;
    h.name = name;
    out.push_back(std::move(h));
  }
  return out;
}

std::optional<cuda::Scalar> CudaCall::device_scalar(py::handle value, const std::string& arg,
                                                    bool integer) {
  RawArray a;
  switch (classify(value)) {
    case Kind::kCudaArrayInterface:
      a = from_cuda_array_interface(value, arg);
      break;
    case Kind::kDlpackCuda:
      a = from_dlpack(value, arg, stream_, keep_alive_);
      break;
    default:
      return std::nullopt;  // a host value
  }
  if (a.size() != 1) {
    throw py::value_error(arg + " must be a number or a one-element CUDA array, got shape " +
                          shape_str(a.shape));
  }
  locate(a.device, arg);
  cuda::ScalarType type;
  if (a.kind == 'f' && a.bits == 32) {
    type = cuda::ScalarType::kFloat32;
  } else if (a.kind == 'f' && a.bits == 64) {
    type = cuda::ScalarType::kFloat64;
  } else if (integer && a.kind == 'i' && a.bits == 32) {
    type = cuda::ScalarType::kInt32;
  } else if (integer && a.kind == 'i' && a.bits == 64) {
    type = cuda::ScalarType::kInt64;
  } else {
    throw py::type_error(arg + " on the device must have dtype " +
                         (integer ? "int32, int64, float32 or float64" : "float32 or float64") +
                         ", got " + a.dtype_str());
  }
  if (a.has_stream && !same_stream(a.stream, stream_)) producer_streams_.insert(a.stream);
  return cuda::Scalar::Device(type, reinterpret_cast<const void*>(a.data));
}

CudaCall::DeviceOutput CudaCall::device_output(py::handle value, const std::string& arg,
                                               bool flag) {
  RawArray a;
  switch (classify(value)) {
    case Kind::kCudaArrayInterface:
      a = from_cuda_array_interface(value, arg);
      break;
    case Kind::kDlpackCuda:
      a = from_dlpack(value, arg, stream_, keep_alive_);
      break;
    default:
      throw py::type_error(arg + " must be None or a one-element CUDA array, got " +
                           type_name(value));
  }
  if (a.size() != 1) {
    throw py::value_error(arg + " must be a one-element CUDA array, got shape " +
                          shape_str(a.shape));
  }
  locate(a.device, arg);
  DeviceOutput out;
  out.data = reinterpret_cast<void*>(a.data);
  if (flag && (a.kind == 'B' || a.kind == 'u' || a.kind == 'i') && a.bits == 8) {
    out.type = cuda::ScalarType::kHost;  // one byte
  } else if (!flag && a.kind == 'f' && a.bits == 32) {
    out.type = cuda::ScalarType::kFloat32;
  } else if (!flag && a.kind == 'f' && a.bits == 64) {
    out.type = cuda::ScalarType::kFloat64;
  } else {
    throw py::type_error(arg + " must have dtype " +
                         (flag ? "bool, uint8 or int8" : "float32 or float64") + ", got " +
                         a.dtype_str());
  }
  if (a.readonly) throw py::value_error(arg + " is read-only; the result is written to it");
  if (a.copied) {
    throw py::value_error(arg + " was exported as a copy (DLPack IS_COPIED); the result "
                                "written to it would be lost");
  }
  if (a.has_stream && !same_stream(a.stream, stream_)) producer_streams_.insert(a.stream);
  return out;
}

cuda::Stream CudaCall::prepare_launch() {
  if (device_ == -1) {
    throw py::value_error("stream= applies to CUDA arrays, but " + device_owner_ +
                          " is a NumPy array (host memory)");
  }
#if defined(FUSEDOPT_WITH_CUDA)
  if (device_ >= 0) {
    int current = -1;
    const cudaError_t got = cudaGetDevice(&current);
    check(got == cudaSuccess ? "" : cuda_error(got), "cudaGetDevice");
    previous_device_ = current;
    if (current != device_) {
      const cudaError_t err = cudaSetDevice(device_);
      check(err == cudaSuccess ? "" : cuda_error(err), "cudaSetDevice");
    }
  }
  // __cuda_array_interface__ v3: the consumer waits for the producer's stream.
  for (uintptr_t s : producer_streams_) {
    cudaEvent_t event;
    cudaError_t err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    check(err == cudaSuccess ? "" : cuda_error(err), "cudaEventCreateWithFlags");
    err = cudaEventRecord(event, reinterpret_cast<cudaStream_t>(s));
    if (err == cudaSuccess) {
      err = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream_), event, 0);
    }
    cudaEventDestroy(event);
    check(err == cudaSuccess ? "" : cuda_error(err), "waiting for the arrays' stream");
  }
#endif
  return reinterpret_cast<cuda::Stream>(stream_);
}

void CudaCall::check(const std::string& error, const char* what) {
  if (!error.empty()) throw std::runtime_error(std::string(what) + " failed: " + error);
}

}  // namespace fusedopt

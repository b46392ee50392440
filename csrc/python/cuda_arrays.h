// CUDA arrays from Python for the kernels of fusedopt._C.
//
// Accepts objects with __dlpack__ / __dlpack_device__ on a CUDA device
// (PyTorch, JAX, CuPy; preferred where an object has both: DLPack carries the
// stream handshake) and objects with __cuda_array_interface__ (CuPy, PyTorch,
// Numba), checks them like the NumPy path does (arrays.h: the same HostArray
// records and the same layout and overlap checks, run before any launch), and
// prepares the launch: one device, the stream given as `stream=`, producers'
// streams waited for. Compiled in every build; without CUDA
// (FUSEDOPT_WITH_CUDA undefined) a call with CUDA arrays raises a clear error.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cuda/types.h"
#include "python/arrays.h"

namespace fusedopt {
namespace py = pybind11;

// True when the call goes to the CUDA kernels: some element of `lists` or
// some hyperparameter in `scalars` is a CUDA array, or `stream` is not None.
// Cheap for NumPy arrays (a type check each).
bool is_cuda_call(std::initializer_list<py::handle> lists,
                  std::initializer_list<py::handle> scalars, py::handle stream);

// One call of a kernel on CUDA arrays: collects and checks the arguments,
// keeps what must stay alive (DLPack capsules) until the launch is enqueued,
// then prepares the device and the stream.
class CudaCall {
 public:
  // Raises RuntimeError in a build without CUDA, naming the first CUDA array
  // of `names` / `args` (what the caller is given, in order).
  CudaCall(const std::vector<std::string>& names, const std::vector<py::handle>& args,
           py::handle stream);
  ~CudaCall();
  CudaCall(const CudaCall&) = delete;
  CudaCall& operator=(const CudaCall&) = delete;

  // A list argument of CUDA arrays, each checked: on the call's device,
  // C-contiguous, float32 or float64 (also float16 and bfloat16 where
  // `allow_16bit`), writeable where `writable`.
  std::vector<HostArray> arrays(py::handle obj, const std::string& arg, bool writable,
                                bool allow_16bit = false);

  // A hyperparameter: nullopt for a host value (check it with check_scalar /
  // check_step), or the device element of a one-element CUDA array (float32 or
  // float64; int32 and int64 too when `integer`). Device values cannot be
  // range-checked without a host synchronization; they are read by the kernel.
  std::optional<cuda::Scalar> device_scalar(py::handle value, const std::string& arg,
                                            bool integer);

  // A one-element CUDA array a result is written to: flag (bool, uint8 or
  // int8; type kHost) or a float (float32 or float64), writeable.
  struct DeviceOutput {
    void* data = nullptr;
    cuda::ScalarType type = cuda::ScalarType::kHost;
  };
  DeviceOutput device_output(py::handle value, const std::string& arg, bool flag);

  // The call's stream (valid after construction).
  cuda::Stream stream() const { return reinterpret_cast<cuda::Stream>(stream_); }

  // After every check: makes the call's device current (restored by the
  // destructor) and the stream wait for the streams that produced the
  // arrays. Returns the stream to launch on. Raises ValueError when the call
  // holds no CUDA array at all (NumPy arrays with stream=).
  cuda::Stream prepare_launch();

  // Raises RuntimeError for a non-empty error from a driver function.
  static void check(const std::string& error, const char* what);

 private:
  // Records where `name`'s memory is; the first array fixes the call's device.
  void locate(int device, const std::string& name);

  uintptr_t stream_ = 0;  // cudaStream_t; 0 is the legacy default stream
  int device_ = -2;       // -2 unknown yet, -1 host memory, >= 0 a CUDA device
  std::string device_owner_;
  int previous_device_ = -1;
  std::set<uintptr_t> producer_streams_;
  std::vector<py::object> keep_alive_;
};

}  // namespace fusedopt

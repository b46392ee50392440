// Multi-tensor Adam/AdamW on the GPU: the CUDA driver's API.
//
// Free of TensorFlow, Python and CUDA headers (the stream is CUDA's opaque
// `cudaStream_t`, declared here the way the CUDA headers declare it), so that
// the TF OpKernels and the pybind11 module include it as plain C++. Everything
// is enqueued on the caller's stream; nothing synchronizes with the host and
// nothing is allocated, so a step can be captured in a CUDA graph.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct CUstream_st;  // cudaStream_t == CUstream_st*

namespace fusedopt {
namespace cuda {

using Stream = CUstream_st*;

// The 16-bit float types on the host side: the bits of CUDA's __half and
// __nv_bfloat16, which this header cannot name.
struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// One hyperparameter: a value known on the host, or one element in device
// memory that the kernel reads when it runs (no host synchronization; a
// captured graph replays with whatever the element holds then).
enum class ScalarType : uint8_t { kHost, kFloat32, kFloat64, kInt32, kInt64 };
struct Scalar {
  ScalarType type = ScalarType::kHost;
  double host = 0.0;             // the value, when type == kHost
  const void* device = nullptr;  // the element, otherwise

  static Scalar Host(double value) {
    Scalar s;
    s.host = value;
    return s;
  }
  static Scalar Device(ScalarType type, const void* ptr) {
    Scalar s;
    s.type = type;
    s.device = ptr;
    return s;
  }
};

// Adam's per-step scalars, in one of two forms:
// - precomputed: the fields of AdamScalars (csrc/kernels/adam.h), as the TF op
//   receives them (computed by the Keras optimizer with TF ops);
// - raw: the hyperparameters, turned into AdamScalars by make_adam_scalars on
//   the device (for device-memory learning rates and step counters).
struct AdamCudaScalars {
  bool raw = false;
  // precomputed: alpha, one_minus_beta_1, one_minus_beta_2, epsilon, lr, weight_decay
  // raw:         lr, beta_1, beta_2, epsilon, step, weight_decay
  Scalar v[6];

  static AdamCudaScalars Precomputed(Scalar alpha, Scalar one_minus_beta_1,
                                     Scalar one_minus_beta_2, Scalar epsilon, Scalar lr,
                                     Scalar weight_decay) {
    AdamCudaScalars s;
    s.raw = false;
    s.v[0] = alpha;
    s.v[1] = one_minus_beta_1;
    s.v[2] = one_minus_beta_2;
    s.v[3] = epsilon;
    s.v[4] = lr;
    s.v[5] = weight_decay;
    return s;
  }
  static AdamCudaScalars Raw(Scalar lr, Scalar beta_1, Scalar beta_2, Scalar epsilon,
                             Scalar step, Scalar weight_decay) {
    AdamCudaScalars s;
    s.raw = true;
    s.v[0] = lr;
    s.v[1] = beta_1;
    s.v[2] = beta_2;
    s.v[3] = epsilon;
    s.v[4] = step;
    s.v[5] = weight_decay;
    return s;
  }
};

// Device pointers of N tensors: params[i], grads[i], m[i], v[i] hold sizes[i]
// contiguous elements. P is the parameter and gradient type, S the state (and
// math) type: <float, float>, <double, double>, <Float16, float> and
// <BFloat16, float> are compiled. The caller has validated everything
// (lengths, sizes, no buffer twice, one device).
template <typename P, typename S = P>
struct AdamCudaTensors {
  std::vector<P*> params;
  std::vector<const P*> grads;
  std::vector<S*> m;
  std::vector<S*> v;
  std::vector<int64_t> sizes;
};

// Enqueues one Adam (weight_decay: AdamW) step over every tensor on `stream`
// on the current device. Returns "" when every launch was enqueued, else
// CUDA's error message. Per element it runs adam_element from
// csrc/kernels/adam.h, in S.
template <typename P, typename S>
std::string adam_cuda(const AdamCudaTensors<P, S>& tensors, const AdamCudaScalars& scalars,
                      bool weight_decay, Stream stream);

// Enqueues a device-to-device copy of `bytes` bytes on `stream` ("" or the
// error). For copy-on-write of TF variables without Eigen's GPU device.
std::string copy_device_async(void* dst, const void* src, int64_t bytes, Stream stream);

}  // namespace cuda
}  // namespace fusedopt

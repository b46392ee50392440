// Multi-tensor Adam/AdamW on the GPU: the operation plugged into
// multi_tensor_apply. The per-element math is adam_element and the scalar
// computation make_adam_scalars, both from csrc/kernels/adam.h (shared with
// the CPU driver); this file only loads, converts and stores.
//
// Compiled with --fmad=false (CMakeLists.txt) and IEEE division and square
// root (nvcc's defaults without --use_fast_math), so that float32 and float64
// results match the CPU kernels bit for bit given the same scalars.
#include "cuda/adam_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/multi_tensor_apply.cuh"
#include "kernels/adam.h"

namespace fusedopt {
namespace cuda {
namespace {

template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<Float16> {
  using type = __half;
};
template <>
struct DeviceType<BFloat16> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ float to_math(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_math(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename P>
__device__ __forceinline__ P from_math(float x);
template <>
__device__ __forceinline__ __half from_math<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_math<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// A hyperparameter's value: the host value, or the device element read now.
__device__ __forceinline__ double read_scalar(const Scalar& s) {
  switch (s.type) {
    case ScalarType::kFloat32:
      return static_cast<double>(*static_cast<const float*>(s.device));
    case ScalarType::kFloat64:
      return *static_cast<const double*>(s.device);
    case ScalarType::kInt32:
      return static_cast<double>(*static_cast<const int32_t*>(s.device));
    case ScalarType::kInt64:
      return static_cast<double>(*static_cast<const int64_t*>(s.device));
    case ScalarType::kHost:
    default:
      return s.host;
  }
}

// P: parameter and gradient type on the device, S: state and math type.
// kRaw: the scalars are raw hyperparameters (make_adam_scalars runs per
// block); a separate instantiation keeps its double-precision pow out of the
// registers of the usual, precomputed case.
template <bool kDecay, bool kRaw, typename P, typename S>
struct AdamOp {
  using Elements = TypeList<P, const P, S, S>;  // params, grads, m, v
  using Context = AdamScalars<S>;

  AdamCudaScalars scalars;

  // Every thread reads the (few, cached) scalars once per chunk; branches are
  // uniform across the block.
  __device__ __forceinline__ Context block_context() const {
    double x[6];
#pragma unroll
    for (int k = 0; k < 6; ++k) x[k] = read_scalar(scalars.v[k]);
    if (kRaw) {
      return make_adam_scalars<S>(x[0], x[1], x[2], x[3], static_cast<int64_t>(x[4]), x[5]);
    }
    Context c;
    c.alpha = static_cast<S>(x[0]);
    c.one_minus_beta_1 = static_cast<S>(x[1]);
    c.one_minus_beta_2 = static_cast<S>(x[2]);
    c.epsilon = static_cast<S>(x[3]);
    c.lr = static_cast<S>(x[4]);
    c.weight_decay = static_cast<S>(x[5]);
    return c;
  }

  __device__ __forceinline__ void operator()(const Context& s, P& p, const P& g, S& m,
                                             S& v) const {
    if constexpr (std::is_same<P, S>::value) {
      adam_element<kDecay>(p, g, m, v, s);
    } else {
      // 16-bit parameters and gradients: the rule runs in S (float32).
      S param = to_math(p);
      adam_element<kDecay>(param, static_cast<S>(to_math(g)), m, v, s);
      p = from_math<P>(param);
    }
  }
};

std::string error_string(cudaError_t err) {
  if (err == cudaSuccess) return std::string();
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

}  // namespace

template <typename P, typename S>
std::string adam_cuda(const AdamCudaTensors<P, S>& t, const AdamCudaScalars& scalars,
                      bool weight_decay, Stream stream) {
  const size_t n = t.sizes.size();
  if (t.params.size() != n || t.grads.size() != n || t.m.size() != n || t.v.size() != n) {
    return "adam_cuda: params, grads, m, v and sizes differ in length";
  }
  using DP = typename DeviceType<P>::type;
  cudaError_t err;
  const bool raw = scalars.raw;
  if (weight_decay && raw) {
    err = multi_tensor_apply(AdamOp<true, true, DP, S>{scalars}, t.sizes, stream, t.params,
                             t.grads, t.m, t.v);
  } else if (weight_decay) {
    err = multi_tensor_apply(AdamOp<true, false, DP, S>{scalars}, t.sizes, stream, t.params,
                             t.grads, t.m, t.v);
  } else if (raw) {
    err = multi_tensor_apply(AdamOp<false, true, DP, S>{scalars}, t.sizes, stream, t.params,
                             t.grads, t.m, t.v);
  } else {
    err = multi_tensor_apply(AdamOp<false, false, DP, S>{scalars}, t.sizes, stream, t.params,
                             t.grads, t.m, t.v);
  }
  return error_string(err);
}

template std::string adam_cuda<float, float>(const AdamCudaTensors<float, float>&,
                                             const AdamCudaScalars&, bool, Stream);
template std::string adam_cuda<double, double>(const AdamCudaTensors<double, double>&,
                                               const AdamCudaScalars&, bool, Stream);
template std::string adam_cuda<Float16, float>(const AdamCudaTensors<Float16, float>&,
                                               const AdamCudaScalars&, bool, Stream);
template std::string adam_cuda<BFloat16, float>(const AdamCudaTensors<BFloat16, float>&,
                                                const AdamCudaScalars&, bool, Stream);

std::string copy_device_async(void* dst, const void* src, int64_t bytes, Stream stream) {
  if (bytes <= 0) return std::string();
  return error_string(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                      cudaMemcpyDeviceToDevice, stream));
}

}  // namespace cuda
}  // namespace fusedopt

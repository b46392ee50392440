// Values on the device: the storage types of the tensors, their conversion to
// and from the type the rules compute in, and hyperparameters, clip arguments
// and predicates read from host values or device memory.
//
// Conversions only: the math is csrc/kernels/'s. 16-bit storage is widened to
// float32 exactly and rounded back to nearest-even (__float2half_rn,
// __float2bfloat16_rn), as csrc/kernels/half.h does on the CPU; only the bits
// of a NaN differ (CUDA's canonical NaN 0x7FFF, the CPU's quiet NaN with the
// input's sign).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/types.h"
#include "kernels/clip.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// Host type (types.h) -> device type.
template <typename T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<Float16> {
  using type = __half;
};
template <>
struct DeviceTypeOf<BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using device_t = typename DeviceTypeOf<T>::type;

// Device storage type -> the type the rules compute in (float for 16-bit).
template <typename T>
struct ComputeOf {
  using type = T;
};
template <>
struct ComputeOf<__half> {
  using type = float;
};
template <>
struct ComputeOf<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using compute_of = typename ComputeOf<T>::type;

__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }

template <typename T>
__device__ __forceinline__ T from_compute(compute_of<T> x);
template <>
__device__ __forceinline__ __half from_compute<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_compute<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_compute<double>(double x) {
  return x;
}

// Element i of a device vector of `type`, as double (exact for every type).
__device__ __forceinline__ double read_element(ScalarType type, const void* p, int64_t i) {
  switch (type) {
    case ScalarType::kFloat16:
      return static_cast<double>(__half2float(static_cast<const __half*>(p)[i]));
    case ScalarType::kBFloat16:
      return static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    case ScalarType::kFloat32:
      return static_cast<double>(static_cast<const float*>(p)[i]);
    case ScalarType::kFloat64:
      return static_cast<const double*>(p)[i];
    case ScalarType::kInt32:
      return static_cast<double>(static_cast<const int32_t*>(p)[i]);
    case ScalarType::kInt64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case ScalarType::kHost:
    default:
      return 0.0;
  }
}

// Writes x to element i of a device vector of float `type`: 16-bit types
// through float32 (as the CPU ops round their double results: twice).
__device__ __forceinline__ void write_element(ScalarType type, void* p, int64_t i, double x) {
  switch (type) {
    case ScalarType::kFloat16:
      static_cast<__half*>(p)[i] = __float2half_rn(static_cast<float>(x));
      break;
    case ScalarType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(x));
      break;
    case ScalarType::kFloat32:
      static_cast<float*>(p)[i] = static_cast<float>(x);
      break;
    case ScalarType::kFloat64:
    default:
      static_cast<double*>(p)[i] = x;
      break;
  }
}

// A hyperparameter's value: the host value, or the device element read now.
__device__ __forceinline__ double read_scalar(const Scalar& s) {
  return s.type == ScalarType::kHost ? s.host : read_element(s.type, s.device, 0);
}

// The clip scalars of tensor `index` (of the call's lists) in compute type C.
template <typename C>
__device__ __forceinline__ ClipScalars<C> read_clip(const ClipArgs& clip, int64_t index) {
  ClipScalars<C> c{C(0), C(0)};
  if (clip.kind == ClipKind::kNone) return c;
  if (clip.type == ScalarType::kHost) {
    c.a = static_cast<C>(clip.host[0]);
    c.b = static_cast<C>(clip.host[1]);
    return c;
  }
  c.a = static_cast<C>(read_element(clip.type, clip.device, 0));
  if (clip.kind == ClipKind::kValue) {
    c.b = static_cast<C>(read_element(clip.type, clip.device, 1));
  } else if (clip.kind == ClipKind::kRatio) {
    c.b = static_cast<C>(read_element(clip.type, clip.device, 1 + index));
  }
  return c;
}

// clip_gradient (kernels/clip.h) with the kind chosen at run time: uniform
// across the launch, so the branch costs no divergence, and one kernel serves
// every kind (a template per kind would multiply the kernels by four).
template <typename C>
__device__ __forceinline__ C clip_element(ClipKind kind, C g, const ClipScalars<C>& c) {
  switch (kind) {
    case ClipKind::kValue:
      return clip_gradient<ClipKind::kValue>(g, c);
    case ClipKind::kRatio:
      return clip_gradient<ClipKind::kRatio>(g, c);
    case ClipKind::kScale:
      return clip_gradient<ClipKind::kScale>(g, c);
    case ClipKind::kNone:
    default:
      return g;
  }
}

// apply_if: false when the predicate's byte is zero.
__device__ __forceinline__ bool predicate_holds(const Predicate& p) {
  return p.device == nullptr || *p.device != 0;
}

FUSEDOPT_CUDA_NAMESPACE_END

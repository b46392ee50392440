// What the CUDA drivers' APIs share: the stream, the 16-bit storage types,
// hyperparameters on the host or in device memory, the clip arguments and the
// apply_if predicate.
//
// Free of TensorFlow, Python and CUDA headers (the stream is CUDA's opaque
// `cudaStream_t`, declared here the way the CUDA headers declare it), so that
// the TF OpKernels, the pybind11 module and the XLA FFI handlers include the
// driver headers as plain C++ and pass raw device pointers.
//
// Everything in fusedopt::cuda has hidden visibility: _C and _tf_ops.so each
// link their own copy of the drivers, and exported copies would make the
// dynamic linker bind both libraries to whichever was loaded first.
#pragma once

#include <cstdint>

#include "kernels/clip.h"

struct CUstream_st;  // cudaStream_t == CUstream_st*

#define FUSEDOPT_CUDA_NAMESPACE_BEGIN \
  namespace fusedopt {                \
  namespace cuda __attribute__((visibility("hidden"))) {
#define FUSEDOPT_CUDA_NAMESPACE_END \
  }                                 \
  }

FUSEDOPT_CUDA_NAMESPACE_BEGIN

using Stream = CUstream_st*;

// The 16-bit float types on the host side: the bits of CUDA's __half and
// __nv_bfloat16, which these headers cannot name.
struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// The element type of a value in device memory (kHost: not in device memory).
enum class ScalarType : uint8_t { kHost, kFloat16, kBFloat16, kFloat32, kFloat64, kInt32, kInt64 };

// One hyperparameter: a value known on the host, or one element in device
// memory that the kernel reads when it runs (no host synchronization; a
// captured graph replays with whatever the element holds then).
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

// A vector of `size` elements of a float type in device memory.
struct DeviceVector {
  ScalarType type = ScalarType::kFloat32;
  const void* data = nullptr;
  int64_t size = 0;
};

// The clip an update kernel applies to every gradient element before the
// rule (kernels/clip.h clip_gradient), with its arguments as the TF ops take
// them (csrc/tf/clip_args.h):
//   kValue: [lo, hi]   kRatio: [numerator, den_0, ..., den_{N-1}]   kScale: [scale]
// in device memory (any float ScalarType; the factor kernel or the TF graph
// wrote them), or for kValue and kScale on the host.
struct ClipArgs {
  ClipKind kind = ClipKind::kNone;
  ScalarType type = ScalarType::kHost;  // element type of `device`, or kHost
  const void* device = nullptr;
  double host[2] = {0.0, 0.0};

  static ClipArgs None() { return ClipArgs(); }
  static ClipArgs HostValue(double lo, double hi) {
    ClipArgs c;
    c.kind = ClipKind::kValue;
    c.host[0] = lo;
    c.host[1] = hi;
    return c;
  }
  static ClipArgs HostScale(double scale) {
    ClipArgs c;
    c.kind = ClipKind::kScale;
    c.host[0] = scale;
    return c;
  }
  static ClipArgs Device(ClipKind kind, ScalarType type, const void* args) {
    ClipArgs c;
    c.kind = kind;
    c.type = type;
    c.device = args;
    return c;
  }
};

// The update kernels' apply_if: one byte in device memory (a TF bool, or the
// flag the finite check or the factor kernel wrote); zero means "write
// nothing". nullptr: always apply.
struct Predicate {
  const uint8_t* device = nullptr;
};

FUSEDOPT_CUDA_NAMESPACE_END

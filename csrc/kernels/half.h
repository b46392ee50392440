// 16-bit floating-point storage (IEEE float16 and bfloat16) for the CPU
// kernels: the values are loaded into float32, the update rule runs in float32,
// and the results are rounded back to nearest-even on store.
//
// The conversions are plain integer and float32 arithmetic (no TF, no Eigen, no
// F16C), without branches, so the compiler vectorizes them for any instruction
// set (see select_bits). They are exact where the value is representable, round to nearest-even
// otherwise, keep Inf and NaN (NaN stays NaN, quiet), and handle float16
// subnormals. They produce no float32 subnormal on the way, so TensorFlow's
// flush-to-zero/denormals-are-zero mode does not change any result.
//
// Storage<T> maps a storage type to the type the rules compute in, with
// load/store: the identity for float and double, so the float32/float64 loops
// compile to the same code as without it.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/common.h"

namespace fusedopt {

// Bit patterns only: no arithmetic is defined on these, every use converts.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types");

FUSEDOPT_HOST_DEVICE uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

FUSEDOPT_HOST_DEVICE float float_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// cond ? a : b, in the form each target vectorizes best. Below AVX-512, GCC 12
// does not if-convert the ternaries of the float16 conversions and leaves the
// whole loop scalar, so they are written as bit masks there (Adam on float16:
// 3x faster with SSE2, 5x with AVX2, single thread). With AVX-512 the ternary
// becomes a masked move and is the faster form (about 1.2x over the masks).
FUSEDOPT_HOST_DEVICE uint32_t select_bits(bool cond, uint32_t a, uint32_t b) {
#if defined(__AVX512F__)
  return cond ? a : b;
#else
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);  // all ones or zero
  return (a & mask) | (b & ~mask);
#endif
}

// float16 -> float32, exact. Normal numbers, Inf and NaN: the exponent is
// rebiased by building a float32 with exponent + 224 and scaling it by
// 2^-112 (exact; Inf/NaN stay Inf/NaN). Subnormals (exponent 0): the 10-bit
// mantissa m is placed under the exponent of 0.5, giving 0.5 + m * 2^-24,
// and 0.5 is subtracted exactly.
FUSEDOPT_HOST_DEVICE float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // exponent and mantissa, sign shifted out
  const float normalized = float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude =
      select_bits(two_w < (1u << 27), float_bits(denormalized), float_bits(normalized));
  return float_from_bits(sign | magnitude);
}

// float32 -> float16, round to nearest-even. |f| is scaled by 2^2 in two
// steps (values from 65520 up overflow to Inf on the way, as they must),
// then added to a power of two chosen so that the float32 addition rounds at
// exactly float16's precision for f's exponent (at least float16's smallest
// subnormal step); the float16 exponent and mantissa are then the low bits of
// the sum. NaN becomes the quiet NaN 0x7E00 with f's sign.
FUSEDOPT_HOST_DEVICE uint16_t float_to_half(float f) {
  const uint32_t w = float_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  float base = (float_from_bits(w & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;  // a max: vectorizes as is
  base = float_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) |
                               select_bits(shl1_w > 0xFF000000u, 0x7E00u, nonsign));
}

// bfloat16 -> float32, exact: bfloat16 is the upper half of a float32.
FUSEDOPT_HOST_DEVICE float bfloat16_to_float(uint16_t b) {
  return float_from_bits(static_cast<uint32_t>(b) << 16);
}

// float32 -> bfloat16, round to nearest-even on the bits (as Eigen's and
// TensorFlow's bfloat16 do; float32 subnormals round like any other value,
// overflow rounds to Inf). NaN becomes the quiet NaN 0x7FC0 with f's sign
// (rounding its bits could otherwise carry it into Inf).
FUSEDOPT_HOST_DEVICE uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

// Storage type -> compute type, with the conversions.
template <typename T>
struct Storage {
  using Compute = T;
  static FUSEDOPT_HOST_DEVICE T load(T x) { return x; }
  static FUSEDOPT_HOST_DEVICE T store(T x) { return x; }
};

template <>
struct Storage<Half> {
  using Compute = float;
  static FUSEDOPT_HOST_DEVICE float load(Half x) { return half_to_float(x.bits); }
  static FUSEDOPT_HOST_DEVICE Half store(float x) { return Half{float_to_half(x)}; }
};

template <>
struct Storage<BFloat16> {
  using Compute = float;
  static FUSEDOPT_HOST_DEVICE float load(BFloat16 x) { return bfloat16_to_float(x.bits); }
  static FUSEDOPT_HOST_DEVICE BFloat16 store(float x) { return BFloat16{float_to_bfloat16(x)}; }
};

// The type the update rules compute in for storage type T.
template <typename T>
using compute_t = typename Storage<T>::Compute;

template <typename T>
FUSEDOPT_HOST_DEVICE compute_t<T> load(T x) {
  return Storage<T>::load(x);
}

template <typename T>
FUSEDOPT_HOST_DEVICE T store(compute_t<T> x) {
  return Storage<T>::store(x);
}

}  // namespace fusedopt

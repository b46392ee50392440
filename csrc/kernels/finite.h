// Whether a range of floating-point numbers holds an Inf or a NaN.
//
// Tested on the bit pattern: a value is non-finite exactly when its exponent
// field is all ones. Integer AND/compare/OR vectorizes without reordering any
// floating-point arithmetic, is not affected by -ffast-math style flags, and
// works the same for float16 and bfloat16 storage (as uint16) as for float
// and double.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/common.h"

namespace fusedopt {

// The storage formats the check understands.
enum class FloatFormat { kFloat16, kBFloat16, kFloat32, kFloat64 };

template <typename Bits>
FUSEDOPT_HOST_DEVICE bool any_nonfinite_bits(const Bits* x, int64_t n, Bits exponent_mask) {
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<Bits>((x[i] & exponent_mask) == exponent_mask);
  return bad != 0;
}

// The exponent field of `format`'s bit pattern: all ones exactly for Inf and
// NaN.
FUSEDOPT_HOST_DEVICE constexpr uint64_t exponent_mask(FloatFormat format) {
  return format == FloatFormat::kFloat16    ? 0x7C00u
         : format == FloatFormat::kBFloat16 ? 0x7F80u
         : format == FloatFormat::kFloat32  ? 0x7F800000u
                                            : 0x7FF0000000000000ull;
}

// True if any of the n elements (in `format`) starting at x is Inf or NaN.
inline bool any_nonfinite(FloatFormat format, const void* x, int64_t n) {
  const uint64_t mask = exponent_mask(format);
  switch (format) {
    case FloatFormat::kFloat16:
    case FloatFormat::kBFloat16:
      return any_nonfinite_bits(static_cast<const uint16_t*>(x), n, static_cast<uint16_t>(mask));
    case FloatFormat::kFloat32:
      return any_nonfinite_bits(static_cast<const uint32_t*>(x), n, static_cast<uint32_t>(mask));
    case FloatFormat::kFloat64:
      return any_nonfinite_bits(static_cast<const uint64_t*>(x), n, mask);
  }
  return true;
}

inline int64_t format_bytes(FloatFormat format) {
  switch (format) {
    case FloatFormat::kFloat16:
    case FloatFormat::kBFloat16:
      return 2;
    case FloatFormat::kFloat32:
      return 4;
    case FloatFormat::kFloat64:
      return 8;
  }
  return 0;
}

}  // namespace fusedopt

// Sum of squares of a contiguous range, accumulated in double in a fixed
// order: kLanes independent partial sums (element i goes to lane i % kLanes),
// added up lane 0 first. The order does not depend on the instruction set or
// the thread count, so the same inputs always give the same bits.
// float16/bfloat16 values are widened exactly (kernels/half.h), so no
// intermediate overflows their range.
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "kernels/half.h"

namespace fusedopt {

constexpr int kNormLanes = 8;

// One element's contribution: acc + v * v in double (the CPU lanes and the
// CUDA reduction, csrc/cuda/norm_cuda.cu, both add it this way).
FUSEDOPT_HOST_DEVICE double add_square(double acc, double v) { return acc + v * v; }

template <typename T>
inline double sum_of_squares(const T* __restrict x, int64_t n) {
  double lanes[kNormLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kNormLanes <= n; i += kNormLanes) {
    for (int j = 0; j < kNormLanes; ++j) {
      lanes[j] = add_square(lanes[j], static_cast<double>(load(x[i + j])));
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    lanes[j] = add_square(lanes[j], static_cast<double>(load(x[i])));
  }
  double total = 0.0;
  for (int j = 0; j < kNormLanes; ++j) total += lanes[j];
  return total;
}

}  // namespace fusedopt

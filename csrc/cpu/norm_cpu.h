// Per-tensor squared L2 norms of many tensors in one multi-threaded pass,
// the input of norm-based clipping. Deterministic: every chunk's partial sum
// is computed in a fixed order (kernels/norm.h) and the partials of a tensor
// are added in chunk order, whatever the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/parallel.h"
#include "kernels/half.h"

namespace fusedopt {

// out[i] = sum of x[i][k]^2, accumulated in double. T: float, double, Half or
// BFloat16 (kernels/half.h).
template <typename T>
void squared_norms_cpu(const std::vector<const T*>& x, const std::vector<int64_t>& sizes,
                       double* out, const ParallelFor& parallel);

}  // namespace fusedopt

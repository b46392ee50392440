// One multi-threaded pass over many tensors that tells whether all their
// elements are finite: the check behind skip_nonfinite, done before anything
// is written so that a step with an Inf or NaN gradient can be skipped whole.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/parallel.h"
#include "kernels/finite.h"

namespace fusedopt {

// False if any element of any x[i] (sizes[i] elements in `format`) is Inf or NaN.
bool all_finite_cpu(FloatFormat format, const std::vector<const void*>& x,
                    const std::vector<int64_t>& sizes, const ParallelFor& parallel);

}  // namespace fusedopt

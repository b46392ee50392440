// The all-finite check on the GPU: whether any element of many tensors is
// Inf or NaN, written to a device flag that the update kernels read as their
// apply_if (skip_nonfinite without a host synchronization). Plain C++.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/types.h"
#include "kernels/finite.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// *out = 1 if no element of any x[i] (sizes[i] elements of `format`) is Inf
// or NaN, else 0: a memset of *out to 1, then one multi-tensor launch whose
// threads store 0 where they find a non-finite element (kernels/finite.h's
// exponent-bit test; every store writes the same value, so no atomics and the
// same result on every run). With skip_if (a device byte, may be nullptr)
// nonzero when the kernel runs, no element is read and *out stays 1: the
// norms' own finite flag can settle the check (norm_cuda.h) and this pass then
// costs nothing. reset = false leaves out the memset: the launch only clears
// *out, so it ands its check into what *out holds (one call per float format
// of a mixed list, the first with reset).
std::string all_finite_cuda(FloatFormat format, const std::vector<const void*>& x,
                            const std::vector<int64_t>& sizes, uint8_t* out,
                            const uint8_t* skip_if, Stream stream, bool reset = true);

FUSEDOPT_CUDA_NAMESPACE_END

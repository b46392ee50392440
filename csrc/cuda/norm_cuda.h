// Gradient norms on the GPU, the first two stages of clipping (see
// notes/clip-contract: squared norms, clip factors, the update): per-tensor
// squared L2 norms as a deterministic two-stage reduction, and the clip
// arguments of the update kernels computed from them by a one-block kernel.
// Both write device memory only: no host synchronization, so clipping by
// norm and by global norm is capturable in a CUDA graph. Plain C++
// (cuda/types.h), like adam_cuda.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/types.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// Device memory squared_norms_cuda needs for `sizes` (8 bytes per 64K-element
// chunk, 8-byte aligned), which the caller allocates (TF: allocate_temp).
size_t squared_norms_workspace_bytes(const std::vector<int64_t>& sizes);

// out[i] = sum of x[i][k]^2 in double, written as out_type (16-bit types via
// float32, as the CPU op rounds). Two stages, each in a fixed order (no
// atomics): every 64K-element chunk's sum into its own slot of the
// workspace, then each tensor's slots summed (block_reduce.cuh gives both
// orders). The same inputs give the same bits on every run; not the CPU's
// bits (another fixed order). T: float, double, Float16, BFloat16.
template <typename T>
std::string squared_norms_cuda(const std::vector<const T*>& x, const std::vector<int64_t>& sizes,
                               ScalarType out_type, void* out, void* workspace,
                               size_t workspace_bytes, Stream stream);

// The clip factors of csrc/kernels/clip.h from squared norms in device memory
// (the TF op FusedoptClipFactors, csrc/tf/clip_factors_op.cc, on the CPU):
// - kNorm: one vector of N squared norms -> clip_args = [max_norm, b_0, ...,
//   b_{N-1}] (N + 1 elements; the update's clip='ratio'), b_i =
//   clip_by_norm_scalars(max_norm, squared[i]).b;
// - kGlobalNorm: any number of vectors (up to kMaxClipFactorVectors, of any
//   float types), all elements summed in double -> clip_args = [scale] (one
//   element; clip='scale'), clip_by_global_norm_scalars(max_norm, total).a.
//   Summation order: the elements, in index order across the vectors, are cut
//   into kFactorThreads contiguous stripes of equal length (the last ones
//   shorter or empty), each summed in order, and the stripe sums added in
//   order; with at most kFactorThreads elements that is sum_in_order.
// - kTotalNorm: like kGlobalNorm, but clip_args = [sqrt(total)], the global
//   norm itself (fusedopt.kernels.global_norm on CUDA arrays).
// clip_args is written as args_type, computing in float32 for 16- and 32-bit
// types and in double for float64 (the CPU op's compute type). `finite`
// (nullptr: not written) gets 1 if the total (kGlobalNorm, kTotalNorm) or every squared
// norm (kNorm) is finite, else 0. max_norm is read when the kernel runs and
// is not range-checked (the optimizers validate thresholds).
enum class ClipFactorKind { kNorm, kGlobalNorm, kTotalNorm };
constexpr int kMaxClipFactorVectors = 128;
constexpr int kFactorThreads = 256;
std::string clip_factors_cuda(ClipFactorKind kind, const std::vector<DeviceVector>& squared,
                              Scalar max_norm, ScalarType args_type, void* clip_args,
                              uint8_t* finite, Stream stream);

FUSEDOPT_CUDA_NAMESPACE_END

// The deterministic sum of one double per thread over a block of
// kBlockThreads threads: a fixed tree, no atomics, so the same inputs give the
// same bits on every run and every GPU.
//
// Order (the host tests replay it, tests/cuda_emulation): within each warp of
// 32 lanes, five shuffle-down steps (offsets 16, 8, 4, 2, 1; lane l adds lane
// l + offset's value, lanes whose partner is past lane 31 add their own value
// and are not used further); lane 0 of warp w then holds warp w's total.
// Warp 0 takes the kBlockThreads / 32 warp totals (lanes past them hold 0) and
// reduces them with the same five steps. Thread 0 gets the block's total.
#pragma once

#include <cuda_runtime.h>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/types.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

constexpr int kWarpSize = 32;
static_assert(kBlockThreads % kWarpSize == 0 && kBlockThreads / kWarpSize <= kWarpSize,
              "one warp reduces the warp totals");

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Every thread of the block must call it (it has a barrier); the result is
// valid in thread 0 only. Once per kernel: its shared memory is not reset.
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double warp_totals[kBlockThreads / kWarpSize];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (warp == 0) {
    total = lane < kBlockThreads / kWarpSize ? warp_totals[lane] : 0.0;
    total = warp_sum(total);
  }
  return total;
}

FUSEDOPT_CUDA_NAMESPACE_END

// Multi-tensor Adam/AdamW on the CPU: one call updates every tensor of a list
// and its two moments in place, one pass over memory per element.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/parallel.h"
#include "kernels/clip.h"
#include "kernels/adam.h"
#include "kernels/half.h"

namespace fusedopt {

// Raw views of N tensors; params[i], grads[i], m[i], v[i] all hold sizes[i]
// contiguous elements of T: float, double, or Half / BFloat16 (kernels/half.h),
// which are loaded into float32, updated in float32 with float32 scalars and
// rounded back to nearest-even. The caller has validated everything.
template <typename T>
struct AdamTensors {
  std::vector<T*> params;
  std::vector<const T*> grads;
  std::vector<T*> m;
  std::vector<T*> v;
  std::vector<int64_t> sizes;
};

template <typename T>
void adam_cpu(const AdamTensors<T>& tensors, const AdamScalars<compute_t<T>>& scalars,
              bool weight_decay, const ParallelFor& parallel,
              const GradClip<compute_t<T>>& clip = GradClip<compute_t<T>>());

// The same in the torch form of the rule (kernels/adam.h): Keras' torch
// backend's arithmetic.
template <typename T>
void adam_cpu(const AdamTensors<T>& tensors, const AdamTorchScalars<compute_t<T>>& scalars,
              bool weight_decay, const ParallelFor& parallel,
              const GradClip<compute_t<T>>& clip = GradClip<compute_t<T>>());

}  // namespace fusedopt

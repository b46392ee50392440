// Multi-tensor SGD (plain, momentum, Nesterov) on the CPU: one call updates
// every tensor of a list, and its momentum buffer, in place, one pass over
// memory per element.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/parallel.h"
#include "kernels/clip.h"
#include "kernels/half.h"
#include "kernels/sgd.h"

namespace fusedopt {

// Raw views of N tensors; params[i], grads[i] and (momentum variants) m[i]
// hold sizes[i] contiguous elements of T (float, double, or Half / BFloat16,
// computed in float32 as in adam_cpu.h). m is empty for SgdVariant::kPlain.
// The caller has validated everything.
template <typename T>
struct SgdTensors {
  std::vector<T*> params;
  std::vector<const T*> grads;
  std::vector<T*> m;
  std::vector<int64_t> sizes;
};

template <typename T>
void sgd_cpu(const SgdTensors<T>& tensors, const SgdScalars<compute_t<T>>& scalars,
             SgdVariant variant, bool weight_decay, const ParallelFor& parallel,
             const GradClip<compute_t<T>>& clip = GradClip<compute_t<T>>());

// The same in the torch form of the rule (kernels/sgd.h): Keras' torch
// backend's arithmetic.
template <typename T>
void sgd_cpu(const SgdTensors<T>& tensors, const SgdTorchScalars<compute_t<T>>& scalars,
             SgdVariant variant, bool weight_decay, const ParallelFor& parallel,
             const GradClip<compute_t<T>>& clip = GradClip<compute_t<T>>());

}  // namespace fusedopt

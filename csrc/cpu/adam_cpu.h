// Multi-tensor Adam/AdamW on the CPU: one call updates every tensor of a list
// and its two moments in place, one pass over memory per element.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/parallel.h"
#include "kernels/clip.h"
#include "kernels/adam.h"

namespace fusedopt {

// Raw views of N tensors; params[i], grads[i], m[i], v[i] all hold sizes[i]
// contiguous elements. The caller has validated everything.
template <typename T>
struct AdamTensors {
  std::vector<T*> params;
  std::vector<const T*> grads;
  std::vector<T*> m;
  std::vector<T*> v;
  std::vector<int64_t> sizes;
};

template <typename T>
void adam_cpu(const AdamTensors<T>& tensors, const AdamScalars<T>& scalars,
              bool weight_decay, const ParallelFor& parallel,
              const GradClip<T>& clip = GradClip<T>());

}  // namespace fusedopt

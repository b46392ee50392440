// Multi-tensor SGD (plain, momentum, Nesterov) on the GPU: the CUDA driver's
// API. Plain C++ (cuda/types.h), like adam_cuda.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/types.h"
#include "kernels/sgd.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// SGD's per-step scalars as hyperparameters on the host or in device memory,
// in one of two forms: SgdScalars (csrc/kernels/sgd.h; torch == false) or,
// for the PyTorch custom op, SgdTorchScalars (torch == true: Keras' torch
// backend's arithmetic), whose fields ride in lr (-lr), momentum and
// weight_decay (decay_scale); Torch() says which is which.
struct SgdCudaScalars {
  Scalar lr;
  Scalar momentum;
  Scalar weight_decay;
  Scalar decay_lr;
  bool torch = false;

  static SgdCudaScalars Torch(Scalar neg_lr, Scalar momentum, Scalar decay_scale) {
    SgdCudaScalars s;
    s.lr = neg_lr;
    s.momentum = momentum;
    s.weight_decay = decay_scale;
    s.torch = true;
    return s;
  }
};

// Device pointers of N tensors: params[i], grads[i] and (momentum variants)
// m[i] hold sizes[i] contiguous elements; m is empty for SgdVariant::kPlain.
// P: parameter and gradient type, S: momentum type; the same six <P, S> pairs
// as adam_cuda.h are compiled. The caller has validated everything.
template <typename P, typename S = P>
struct SgdCudaTensors {
  std::vector<P*> params;
  std::vector<const P*> grads;
  std::vector<S*> m;
  std::vector<int64_t> sizes;
};

// Enqueues one SGD step over every tensor on `stream` on the current device:
// per element sgd_element from csrc/kernels/sgd.h, the gradient clipped first
// as `clip` says, nothing written where apply_if's byte is zero. Returns ""
// when every launch was enqueued, else the error.
template <typename P, typename S>
std::string sgd_cuda(const SgdCudaTensors<P, S>& tensors, const SgdCudaScalars& scalars,
                     SgdVariant variant, bool weight_decay, const ClipArgs& clip,
                     const Predicate& apply_if, Stream stream);

FUSEDOPT_CUDA_NAMESPACE_END

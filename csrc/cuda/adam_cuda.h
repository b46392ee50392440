// Multi-tensor Adam/AdamW on the GPU: the CUDA driver's API.
//
// Plain C++ (cuda/types.h): the TF OpKernels, the pybind11 module and the XLA
// FFI handlers include it without CUDA headers. Everything is enqueued on the
// caller's stream; nothing synchronizes with the host and nothing is
// allocated, so a step can be captured in a CUDA graph.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/types.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// Adam's per-step scalars, in one of three forms:
// - precomputed: the fields of AdamScalars (csrc/kernels/adam.h), as the TF op
//   receives them (computed by the Keras optimizer with TF ops);
// - raw: the hyperparameters, turned into AdamScalars by make_adam_scalars on
//   the device (for device-memory learning rates and step counters);
// - torch: the fields of AdamTorchScalars (kernels/adam.h), the arithmetic of
//   Keras' torch backend (the PyTorch custom op on CUDA tensors).
enum class AdamForm : uint8_t { kPrecomputed, kRaw, kTorch };

struct AdamCudaScalars {
  AdamForm form = AdamForm::kPrecomputed;
  // precomputed: alpha, one_minus_beta_1, one_minus_beta_2, epsilon, lr, weight_decay
  // raw:         lr, beta_1, beta_2, epsilon, step, weight_decay
  // torch:       alpha, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, epsilon,
  //              decay_scale
  Scalar v[7];

  static AdamCudaScalars Precomputed(Scalar alpha, Scalar one_minus_beta_1,
                                     Scalar one_minus_beta_2, Scalar epsilon, Scalar lr,
                                     Scalar weight_decay) {
    AdamCudaScalars s;
    s.form = AdamForm::kPrecomputed;
    s.v[0] = alpha;
    s.v[1] = one_minus_beta_1;
    s.v[2] = one_minus_beta_2;
    s.v[3] = epsilon;
    s.v[4] = lr;
    s.v[5] = weight_decay;
    return s;
  }
  static AdamCudaScalars Raw(Scalar lr, Scalar beta_1, Scalar beta_2, Scalar epsilon,
                             Scalar step, Scalar weight_decay) {
    AdamCudaScalars s;
    s.form = AdamForm::kRaw;
    s.v[0] = lr;
    s.v[1] = beta_1;
    s.v[2] = beta_2;
    s.v[3] = epsilon;
    s.v[4] = step;
    s.v[5] = weight_decay;
    return s;
  }
  static AdamCudaScalars Torch(Scalar alpha, Scalar beta_1, Scalar one_minus_beta_1,
                               Scalar beta_2, Scalar one_minus_beta_2, Scalar epsilon,
                               Scalar decay_scale) {
    AdamCudaScalars s;
    s.form = AdamForm::kTorch;
    s.v[0] = alpha;
    s.v[1] = beta_1;
    s.v[2] = one_minus_beta_1;
    s.v[3] = beta_2;
    s.v[4] = one_minus_beta_2;
    s.v[5] = epsilon;
    s.v[6] = decay_scale;
    return s;
  }
};

// Device pointers of N tensors: params[i], grads[i], m[i], v[i] hold sizes[i]
// contiguous elements. P is the parameter and gradient type, S the state
// type; the rule computes in float32 for 16-bit P and S. Compiled:
// <float, float>, <double, double>, <Float16, float>, <BFloat16, float>
// (fusedopt.kernels: 16-bit parameters, float32 moments), <Float16, Float16>,
// <BFloat16, BFloat16> (the TF op on 16-bit variables). The caller has
// validated everything (lengths, sizes, no buffer twice, one device).
template <typename P, typename S = P>
struct AdamCudaTensors {
  std::vector<P*> params;
  std::vector<const P*> grads;
  std::vector<S*> m;
  std::vector<S*> v;
  std::vector<int64_t> sizes;
};

// Enqueues one Adam (weight_decay: AdamW) step over every tensor on `stream`
// on the current device: per element adam_element from csrc/kernels/adam.h,
// the gradient clipped first as `clip` says, nothing written where apply_if's
// byte is zero. Every launch is planned and the kernel checked before the
// first launch. Returns "" when every launch was enqueued, else the error.
template <typename P, typename S>
std::string adam_cuda(const AdamCudaTensors<P, S>& tensors, const AdamCudaScalars& scalars,
                      bool weight_decay, const ClipArgs& clip, const Predicate& apply_if,
                      Stream stream);

FUSEDOPT_CUDA_NAMESPACE_END

// Adam / AdamW: the per-element update rule, written once.
//
// Matches Keras 3 `keras.optimizers.Adam.update_step` operation for operation
// (same operands, same order, no fused multiply-add) so that a build with
// -ffp-contract=off reproduces the stock optimizer bit for bit:
//
//   p <- p - (p * weight_decay) * lr           (AdamW / `weight_decay=`, optional)
//   m <- m + (g - m) * (1 - beta_1)
//   v <- v + (g * g - v) * (1 - beta_2)
//   p <- p - (m * alpha) / (sqrt(v) + epsilon)
//
// with alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) computed once per step
// by the caller (AdamScalars below, or the same TF ops Keras uses).
//
// Keras' torch backend runs another arithmetic for the same rule (its
// foreach update, keras/src/backend/torch/optimizers/torch_adam.py, and the
// decay of TorchOptimizer._apply_weight_decay), written out below as the
// torch form (AdamTorchScalars): the Keras optimizers on that backend match
// it bit for bit.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace fusedopt {

// Per-step scalars of the Adam rule, already in the tensors' dtype.
template <typename T>
struct AdamScalars {
  T alpha;             // lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
  T one_minus_beta_1;  // 1 - beta_1
  T one_minus_beta_2;  // 1 - beta_2
  T epsilon;           // added to sqrt(v) ("epsilon hat")
  T lr;                // only used by the decoupled weight decay
  T weight_decay;      // only used when the caller asks for decay
};

// The scalar computation for callers that get raw hyperparameters (the
// pybind11 API; on the device when the hyperparameters live in device memory).
// The Keras optimizers compute the same values with TF ops instead, to match
// the stock optimizer's float32 rounding exactly.
template <typename T>
FUSEDOPT_HOST_DEVICE AdamScalars<T> make_adam_scalars(double lr, double beta_1,
                                                      double beta_2, double epsilon,
                                                      int64_t step, double weight_decay) {
  const double t = static_cast<double>(step);
  const double bias_1 = 1.0 - ::pow(beta_1, t);
  const double bias_2 = 1.0 - ::pow(beta_2, t);
  AdamScalars<T> s;
  s.alpha = static_cast<T>(lr * ::sqrt(bias_2) / bias_1);
  s.one_minus_beta_1 = static_cast<T>(1.0 - beta_1);
  s.one_minus_beta_2 = static_cast<T>(1.0 - beta_2);
  s.epsilon = static_cast<T>(epsilon);
  s.lr = static_cast<T>(lr);
  s.weight_decay = static_cast<T>(weight_decay);
  return s;
}

// One element. kDecay is a template parameter so the decay-free loop carries
// no branch and no extra arithmetic.
template <bool kDecay, typename T>
FUSEDOPT_HOST_DEVICE void adam_element(T& p, const T g, T& m, T& v,
                                       const AdamScalars<T>& s) {
  T param = p;
  if (kDecay) param = param - param * s.weight_decay * s.lr;
  const T m_new = m + (g - m) * s.one_minus_beta_1;
  const T v_new = v + (g * g - v) * s.one_minus_beta_2;
  m = m_new;
  v = v_new;
  p = param - (m_new * s.alpha) / (rule_sqrt(v_new) + s.epsilon);
}

// The torch form's per-step scalars, in the tensors' compute dtype.
template <typename T>
struct AdamTorchScalars {
  T alpha;             // lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), as in AdamScalars
  T beta_1;
  T one_minus_beta_1;
  T beta_2;
  T one_minus_beta_2;
  T epsilon;
  T decay_scale;       // 1 - weight_decay * lr; only used when the caller asks for decay
};

// The torch form, one element: Keras' torch backend's ops in their order.
// torch._foreach_add_(x, y, alpha=a) is x + a * y rounded once (a fused
// multiply-add in torch's vectorized CPU kernels and on CUDA); the decay is
// torch._foreach_mul_(p, 1 - wd * lr):
//
//   p <- p * decay_scale                       (optional)
//   m <- fma(g, 1 - beta_1, m * beta_1)
//   v <- fma(g * g, 1 - beta_2, v * beta_2)
//   p <- p - (m * alpha) / (sqrt(v) + epsilon)
//
// An overload of adam_element: the drivers' loops pick the form by the type
// of their scalars.
template <bool kDecay, typename T>
FUSEDOPT_HOST_DEVICE void adam_element(T& p, const T g, T& m, T& v,
                                       const AdamTorchScalars<T>& s) {
  T param = p;
  if (kDecay) param = param * s.decay_scale;
  const T m_new = rule_fma(g, s.one_minus_beta_1, m * s.beta_1);
  const T v_new = rule_fma(g * g, s.one_minus_beta_2, v * s.beta_2);
  m = m_new;
  v = v_new;
  p = param - (m_new * s.alpha) / (rule_sqrt(v_new) + s.epsilon);
}

}  // namespace fusedopt

// SGD (plain, momentum, Nesterov): the per-element update rule, written once.
//
// Matches Keras 3 `keras.optimizers.SGD.update_step` operation for operation
// (same operands, same order, no fused multiply-add) so that a build with
// -ffp-contract=off reproduces the stock optimizer bit for bit:
//
//   p <- p - (p * weight_decay) * decay_lr     (`weight_decay=`, optional)
//   plain:     p <- p - g * lr
//   momentum:  m <- m * momentum - g * lr;  p <- p + m
//   Nesterov:  m <- m * momentum - g * lr;  p <- p + (m * momentum - g * lr)
//
// The decay has its own learning-rate scalar (decay_lr) because the Keras
// optimizers pass (wd * lr, 1) instead of (wd, lr) in traced graphs to match
// Grappler's rewrite of the stock decay (python/fusedopt/optimizers/base.py,
// decay_scalars).
//
// Keras' torch backend's arithmetic for the same rule is the torch form below
// (SgdTorchScalars).
#pragma once

#include "kernels/common.h"

namespace fusedopt {

enum class SgdVariant { kPlain, kMomentum, kNesterov };

// Per-step scalars of the SGD rule, already in the tensors' dtype.
template <typename T>
struct SgdScalars {
  T lr;            // multiplies the gradient
  T momentum;      // multiplies the momentum buffer (unused by kPlain)
  T weight_decay;  // only used when the caller asks for decay
  T decay_lr;      // only used when the caller asks for decay
};

// The scalars for callers that get raw hyperparameters (the pybind11 API).
template <typename T>
FUSEDOPT_HOST_DEVICE SgdScalars<T> make_sgd_scalars(double lr, double momentum,
                                                    double weight_decay) {
  SgdScalars<T> s;
  s.lr = static_cast<T>(lr);
  s.momentum = static_cast<T>(momentum);
  s.weight_decay = static_cast<T>(weight_decay);
  s.decay_lr = static_cast<T>(lr);
  return s;
}

// One element. kDecay and kVariant are template parameters so each loop
// carries no branch and no unused arithmetic. kPlain neither reads nor writes
// m (callers without a momentum buffer pass any T lvalue).
template <bool kDecay, SgdVariant kVariant, typename T>
FUSEDOPT_HOST_DEVICE void sgd_element(T& p, const T g, T& m, const SgdScalars<T>& s) {
  T param = p;
  if (kDecay) param = param - param * s.weight_decay * s.decay_lr;
  if (kVariant == SgdVariant::kPlain) {
    p = param - g * s.lr;
  } else {
    const T m_new = m * s.momentum - g * s.lr;
    m = m_new;
    if (kVariant == SgdVariant::kNesterov) {
      p = param + (m_new * s.momentum - g * s.lr);
    } else {
      p = param + m_new;
    }
  }
}

// The torch form's per-step scalars, in the tensors' compute dtype.
template <typename T>
struct SgdTorchScalars {
  T neg_lr;       // -lr
  T momentum;     // unused by kPlain
  T decay_scale;  // 1 - weight_decay * lr; only used when the caller asks for decay
};

// The torch form, one element: the ops of Keras' torch backend
// (keras/src/backend/torch/optimizers/torch_sgd.py, Keras 3.15) in their
// order; torch._foreach_add_(x, y, alpha=a) is fma(y, a, x), the decay
// torch._foreach_mul_(p, 1 - wd * lr):
//
//   p <- p * decay_scale                       (optional)
//   plain:     p <- fma(g, -lr, p)
//   momentum:  m <- fma(g, -lr, m * momentum);  p <- p + m
//   Nesterov:  m <- fma(g, -lr, m * momentum);  p <- fma(m, momentum, fma(g, -lr, p))
//
// An overload of sgd_element: the loops pick the form by their scalars' type.
template <bool kDecay, SgdVariant kVariant, typename T>
FUSEDOPT_HOST_DEVICE void sgd_element(T& p, const T g, T& m, const SgdTorchScalars<T>& s) {
  T param = p;
  if (kDecay) param = param * s.decay_scale;
  if (kVariant == SgdVariant::kPlain) {
    p = rule_fma(g, s.neg_lr, param);
  } else {
    const T m_new = rule_fma(g, s.neg_lr, m * s.momentum);
    m = m_new;
    if (kVariant == SgdVariant::kNesterov) {
      p = rule_fma(m_new, s.momentum, rule_fma(g, s.neg_lr, param));
    } else {
      p = param + m_new;
    }
  }
}

}  // namespace fusedopt

// Gradient clipping folded into the update pass: applied to each gradient
// element right before the update rule, so clipping costs no extra pass over
// the gradients (the norms themselves come from one reduction pass,
// kernels/norm.h).
//
//   kValue:  g <- min(max(g, lo), hi)        tf.clip_by_value (NaN propagates)
//   kRatio:  g <- (g * numerator) / denominator
//            tf.clip_by_norm, per tensor: numerator = clip_norm,
//            denominator = max(||g||_2, clip_norm)
//   kScale:  g <- g * scale                  Keras clip_by_global_norm
//
// The operand order matches the TF ops, so with the same scalars the clipped
// gradients are bit-identical to the stock ones.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/common.h"

namespace fusedopt {

enum class ClipKind { kNone, kValue, kRatio, kScale };

// The two scalars of one tensor's clip: (lo, hi), (numerator, denominator) or
// (scale, unused).
template <typename T>
struct ClipScalars {
  T a;
  T b;
};

template <ClipKind kKind, typename T>
FUSEDOPT_HOST_DEVICE T clip_gradient(const T g, const ClipScalars<T>& c) {
  if (kKind == ClipKind::kValue) {
    // max then min, NaN-propagating like TF's Maximum/Minimum.
    const T lo_clipped = (g != g) ? g : (g < c.a ? c.a : g);
    return (lo_clipped != lo_clipped) ? lo_clipped : (c.b < lo_clipped ? c.b : lo_clipped);
  } else if (kKind == ClipKind::kRatio) {
    return (g * c.a) / c.b;
  } else if (kKind == ClipKind::kScale) {
    return g * c.a;
  } else {
    return g;
  }
}

// The clip factors from the gradients' squared L2 norms (kernels/norm.h), the
// one place their formulas are written. Computed in double and rounded once
// to the compute type S; every binding (TF ops, pybind11, the CUDA and XLA
// paths) calls these, none writes its own.
//
// Clip by norm of one tensor (tf.clip_by_norm): a = max_norm,
// b = max(||g||, max_norm). sqrt(0) is 0, so an all-zero gradient keeps
// b = max_norm (tf.clip_by_norm special-cases it to the same value).
template <typename S>
FUSEDOPT_HOST_DEVICE ClipScalars<S> clip_by_norm_scalars(double max_norm, double squared_norm) {
  const double norm = ::sqrt(squared_norm);
  // NaN-propagating max, as TF's Maximum: a NaN norm gives a NaN denominator.
  const double b = (norm != norm) ? norm : (norm > max_norm ? norm : max_norm);
  return ClipScalars<S>{static_cast<S>(max_norm), static_cast<S>(b)};
}

// Clip by global norm (Keras' clip_by_global_norm), given the sum of every
// gradient's squared norm: a = max_norm * min(1 / norm, 1 / max_norm) +
// (norm - norm). A non-finite norm makes the scale NaN (Inf - Inf), as in
// Keras, so that a clipped step with a bad norm is NaN everywhere.
template <typename S>
FUSEDOPT_HOST_DEVICE ClipScalars<S> clip_by_global_norm_scalars(double max_norm,
                                                               double total_squared) {
  const double norm = ::sqrt(total_squared);
  const double inv_norm = 1.0 / norm;
  const double inv_max = 1.0 / max_norm;
  // NaN-propagating min, as TF's Minimum.
  const double smaller = (inv_norm != inv_norm) ? inv_norm : (inv_norm < inv_max ? inv_norm : inv_max);
  const double scale = max_norm * smaller + (norm - norm);
  return ClipScalars<S>{static_cast<S>(scale), S(0)};
}

// The global squared norm from per-tensor (or per-group) squared norms:
// summed in index order, in double, so the same inputs give the same bits.
FUSEDOPT_HOST_DEVICE double sum_in_order(const double* squared, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += squared[i];
  return total;
}

// A driver-level clip request: one ClipScalars for every tensor, or a single
// one shared by all (value, scale).
template <typename T>
struct GradClip {
  ClipKind kind = ClipKind::kNone;
  std::vector<ClipScalars<T>> scalars;

  const ClipScalars<T>& of_tensor(size_t i) const {
    return scalars.size() == 1 ? scalars[0] : scalars[i];
  }
};

}  // namespace fusedopt

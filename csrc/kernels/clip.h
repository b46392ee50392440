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

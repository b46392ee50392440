// The `clip` attribute and `clip_args` input shared by the fused update ops.
//
//   clip = "none":  clip_args ignored (pass an empty vector)
//   clip = "value": clip_args = [lo, hi]
//   clip = "ratio": clip_args = [numerator, denominator_0, ..., denominator_{N-1}]
//   clip = "scale": clip_args = [scale]
//
// See csrc/kernels/clip.h for what each does to the gradients.
#pragma once

#include <string>
#include <type_traits>

#include "kernels/clip.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace fusedopt {

#define FUSEDOPT_CLIP_ATTR "clip: {'none', 'value', 'ratio', 'scale'} = 'none'"

inline absl::Status ParseClipKind(const std::string& name, ClipKind* kind) {
  if (name == "none") {
    *kind = ClipKind::kNone;
  } else if (name == "value") {
    *kind = ClipKind::kValue;
  } else if (name == "ratio") {
    *kind = ClipKind::kRatio;
  } else if (name == "scale") {
    *kind = ClipKind::kScale;
  } else {
    return ::tensorflow::errors::InvalidArgument("unknown clip kind '", name, "'");
  }
  return absl::OkStatus();
}

// A clip argument in an error message (float16 / bfloat16 through float).
template <typename T>
double ClipArgForMessage(T x) {
  if constexpr (std::is_floating_point<T>::value) {
    return x;
  } else {
    return static_cast<float>(x);
  }
}

// Reads and checks clip_args for `num_tensors` tensors (before any write).
template <typename T>
absl::Status ReadClipArgs(::tensorflow::OpKernelContext* ctx, ClipKind kind,
                          int64_t num_tensors, GradClip<T>* clip) {
  namespace tf = ::tensorflow;
  const tf::Tensor* args;
  TF_RETURN_IF_ERROR(ctx->input("clip_args", &args));
  clip->kind = kind;
  clip->scalars.clear();
  if (kind == ClipKind::kNone) return absl::OkStatus();
  const int64_t expected = kind == ClipKind::kValue   ? 2
                           : kind == ClipKind::kRatio ? num_tensors + 1
                                                      : 1;
  if (args->dims() != 1 || args->dim_size(0) != expected) {
    return tf::errors::InvalidArgument("clip_args must be a vector of ", expected,
                                       " values for this clip kind, got shape ",
                                       args->shape().DebugString());
  }
  const auto a = args->vec<T>();
  // Values no caller means: they would silently corrupt every gradient. NaN
  // passes (the comparisons are false): a non-finite gradient norm makes the
  // clip factors NaN in Keras too, and the update then propagates it.
  if (kind == ClipKind::kRatio) {
    for (int64_t i = 0; i < num_tensors; ++i) {
      if (a(i + 1) <= T(0)) {
        return tf::errors::InvalidArgument(
            "clip_args[", i + 1, "] (the clip-by-norm denominator of grads[", i,
            "]) must be > 0 (max(norm, clip_norm)), got ",
            ClipArgForMessage(a(i + 1)));
      }
      clip->scalars.push_back({a(0), a(i + 1)});
    }
  } else if (kind == ClipKind::kValue) {
    if (a(0) > a(1)) {
      return tf::errors::InvalidArgument("clip_args = [lo, hi] of clip='value' needs lo <= hi, "
                                         "got [", ClipArgForMessage(a(0)), ", ",
                                         ClipArgForMessage(a(1)), "]");
    }
    clip->scalars.push_back({a(0), a(1)});
  } else {
    clip->scalars.push_back({a(0), T(0)});
  }
  return absl::OkStatus();
}

}  // namespace fusedopt

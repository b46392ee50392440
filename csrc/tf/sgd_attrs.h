// The attributes of FusedoptSgd, read and checked once for its CPU kernel
// (sgd_op.cc, which also uses CheckMomentumCount in the shape function) and
// its GPU kernel (sgd_op_gpu.cc).
#pragma once

#include <string>

#include "kernels/sgd.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/clip_args.h"

namespace fusedopt {

// M momentum buffers for N parameters: M = N, or M = 0 (plain SGD).
inline absl::Status CheckMomentumCount(int n, int m) {
  if (m != 0 && m != n) {
    return ::tensorflow::errors::InvalidArgument(
        "momentums has ", m, " variables but params has ", n,
        "; pass one momentum buffer per parameter, or none for plain SGD");
  }
  return absl::OkStatus();
}

struct SgdAttrs {
  int num_tensors = 0;
  SgdVariant variant = SgdVariant::kPlain;
  bool apply_weight_decay = false;
  ClipKind clip_kind = ClipKind::kNone;
};

// N, M (checked against N), nesterov, apply_weight_decay and clip; the
// variant follows from M and nesterov.
inline absl::Status ReadSgdAttrs(::tensorflow::OpKernelConstruction* ctx, SgdAttrs* attrs) {
  int m = 0;
  bool nesterov = false;
  std::string clip;
  TF_RETURN_IF_ERROR(ctx->GetAttr("N", &attrs->num_tensors));
  TF_RETURN_IF_ERROR(ctx->GetAttr("M", &m));
  TF_RETURN_IF_ERROR(CheckMomentumCount(attrs->num_tensors, m));
  TF_RETURN_IF_ERROR(ctx->GetAttr("nesterov", &nesterov));
  TF_RETURN_IF_ERROR(ctx->GetAttr("apply_weight_decay", &attrs->apply_weight_decay));
  TF_RETURN_IF_ERROR(ctx->GetAttr("clip", &clip));
  TF_RETURN_IF_ERROR(ParseClipKind(clip, &attrs->clip_kind));
  attrs->variant = m == 0    ? SgdVariant::kPlain
                   : nesterov ? SgdVariant::kNesterov
                              : SgdVariant::kMomentum;
  return absl::OkStatus();
}

}  // namespace fusedopt

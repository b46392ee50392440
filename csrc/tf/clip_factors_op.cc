// FusedoptClipFactors: the clip arguments of the fused update ops from the
// gradients' squared norms (FusedoptSquaredNorms), with the formulas of
// csrc/kernels/clip.h. The Python optimizers only wire tensors together: no
// clip formula is written in Python.
//
//   kind = "norm":        squared_norms = [one vector of N per-tensor norms]
//                         clip_args = [max_norm, b_0, ..., b_{N-1}]
//                         (the update ops' clip="ratio": g <- (g * max_norm) / b_i)
//   kind = "global_norm": squared_norms = any number of vectors (the groups of
//                         one step, of any float dtypes); their elements are
//                         summed in order, in double
//                         clip_args = [scale]  (clip="scale": g <- g * scale)
//
// `finite`: whether the summed squared norm is finite (global_norm) or every
// squared norm is (norm). Under skip_nonfinite the global norm's pass is the
// step's non-finite check: its norm is not finite exactly when an element of
// some gradient is not, or when the norm overflows (then Keras' scale, and so
// the whole clipped step, is NaN).
#include <cmath>
#include <vector>

#include "kernels/clip.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf/dtypes.h"

namespace fusedopt {
namespace {

namespace tf = ::tensorflow;

REGISTER_OP("FusedoptClipFactors")
    .Input("squared_norms: Tsq")
    .Input("max_norm: T")
    .Output("clip_args: T")
    .Output("finite: bool")
    .Attr("kind: {'norm', 'global_norm'}")
    .Attr("Tsq: list({half, bfloat16, float, double}) >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn([](tf::shape_inference::InferenceContext* c) {
      std::string kind;
      TF_RETURN_IF_ERROR(c->GetAttr("kind", &kind));
      tf::shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(c->num_inputs() - 1), 0, &unused));
      if (kind == "global_norm") {
        c->set_output(0, c->Vector(1));
      } else {
        tf::shape_inference::ShapeHandle norms;
        TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &norms));
        tf::shape_inference::DimensionHandle n;
        TF_RETURN_IF_ERROR(c->Add(c->Dim(norms, 0), 1, &n));
        c->set_output(0, c->Vector(n));
      }
      c->set_output(1, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Clip arguments for FusedoptAdam / FusedoptSgd from squared norms (see
csrc/kernels/clip.h): kind='norm' gives clip='ratio' arguments for one call,
kind='global_norm' the clip='scale' argument shared by every call of a step.
finite: the squared norm(s) are finite.
)doc");

// Element i of a 1-D tensor of any of the four float dtypes, as double.
double ElementAsDouble(const tf::Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case tf::DT_HALF:
      return static_cast<double>(static_cast<float>(t.vec<Eigen::half>()(i)));
    case tf::DT_BFLOAT16:
      return static_cast<double>(static_cast<float>(t.vec<tf::bfloat16>()(i)));
    case tf::DT_FLOAT:
      return static_cast<double>(t.vec<float>()(i));
    default:
      return t.vec<double>()(i);
  }
}

template <typename T>
class FusedoptClipFactorsOp : public tf::OpKernel {
 public:
  explicit FusedoptClipFactorsOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    std::string kind;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    global_ = kind == "global_norm";
  }

  void Compute(tf::OpKernelContext* ctx) override {
    tf::OpInputList lists;
    OP_REQUIRES_OK(ctx, ctx->input_list("squared_norms", &lists));
    const tf::Tensor& max_norm_t = ctx->input(lists.size());
    OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(max_norm_t.shape()),
                tf::errors::InvalidArgument("max_norm must be a scalar, got shape ",
                                            max_norm_t.shape().DebugString()));
    OP_REQUIRES(ctx, global_ || lists.size() == 1,
                tf::errors::InvalidArgument(
                    "kind='norm' takes the squared norms of one call (one vector), got ",
                    lists.size()));
    std::vector<double> squared;
    for (int l = 0; l < lists.size(); ++l) {
      OP_REQUIRES(ctx, lists[l].dims() == 1,
                  tf::errors::InvalidArgument("squared_norms[", l,
                                              "] must be a vector, got shape ",
                                              lists[l].shape().DebugString()));
      for (int64_t i = 0; i < lists[l].dim_size(0); ++i) {
        squared.push_back(ElementAsDouble(lists[l], i));
      }
    }
    const double max_norm = static_cast<double>(ComputeScalar(max_norm_t.scalar<T>()()));
    OP_REQUIRES(ctx, max_norm > 0,
                tf::errors::InvalidArgument("max_norm must be > 0, got ", max_norm));

    using S = kernel_compute_t<T>;
    tf::Tensor* args;
    tf::Tensor* finite;
    bool all_finite = true;
    if (global_) {
      const double total = sum_in_order(squared.data(), static_cast<int64_t>(squared.size()));
      all_finite = std::isfinite(total);
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({1}), &args));
      args->vec<T>()(0) = static_cast<T>(clip_by_global_norm_scalars<S>(max_norm, total).a);
    } else {
      const int64_t n = static_cast<int64_t>(squared.size());
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({n + 1}), &args));
      auto a = args->vec<T>();
      a(0) = max_norm_t.scalar<T>()();
      for (int64_t i = 0; i < n; ++i) {
        all_finite = all_finite && std::isfinite(squared[i]);
        a(i + 1) = static_cast<T>(clip_by_norm_scalars<S>(max_norm, squared[i]).b);
      }
    }
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({}), &finite));
    finite->scalar<bool>()() = all_finite;
  }

 private:
  bool global_ = false;
};

FUSEDOPT_REGISTER_CPU_KERNELS("FusedoptClipFactors", FusedoptClipFactorsOp);

}  // namespace
}  // namespace fusedopt

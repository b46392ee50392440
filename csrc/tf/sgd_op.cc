// FusedoptSgd: one op call updates every variable of one dtype with SGD
// (plain, momentum or Nesterov), in place. Hyperparameters arrive as runtime
// scalar tensors computed by the Python optimizer with the same TF ops the
// stock Keras SGD uses, so schedules and callbacks change them every step
// without retracing.
//
// Plain SGD has no momentum buffer: `momentums` is an empty list (M = 0).
// With M = N the momentum buffers are updated and `nesterov` picks the rule.
//
// T = half / bfloat16: params, grads, momentums and scalars in that dtype;
// the kernel computes in float32 and rounds each result to nearest-even
// (tf/dtypes.h).
#include "cpu/sgd_cpu.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf/apply_if.h"
#include "tf/clip_args.h"
#include "tf/dtypes.h"
#include "tf/fused_update.h"
#include "tf/sgd_attrs.h"

namespace fusedopt {
namespace {

using CPUDevice = Eigen::ThreadPoolDevice;

const std::vector<std::string> kSgdScalars = {"lr", "momentum", "weight_decay",
                                              "decay_lr"};

REGISTER_OP("FusedoptSgd")
    .Input("params: N * resource")
    .Input("momentums: M * resource")
    .Input("grads: N * T")
    .Input("lr: T")
    .Input("momentum: T")
    .Input("weight_decay: T")
    .Input("decay_lr: T")
    .Input("clip_args: T")
    .Input(FUSEDOPT_APPLY_IF_INPUT)
    .Attr("T: {half, bfloat16, float, double}")
    .Attr(FUSEDOPT_CLIP_ATTR)
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr(FUSEDOPT_APPLY_IF_ATTR)
    .Attr("nesterov: bool = false")
    .Attr("apply_weight_decay: bool = false")
    .SetShapeFn([](tf::shape_inference::InferenceContext* c) {
      int n, m;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      TF_RETURN_IF_ERROR(c->GetAttr("M", &m));
      TF_RETURN_IF_ERROR(CheckMomentumCount(n, m));
      TF_RETURN_IF_ERROR(ScalarInputsShape(c, kSgdScalars));
      return ApplyIfShape(c);
    })
    .Doc(R"doc(
Multi-tensor SGD (Keras semantics), updating params and momentums in place.

For every element: if apply_weight_decay, p -= p * weight_decay * decay_lr;
then with no momentums (M = 0) p -= g * lr; otherwise
m = m * momentum - g * lr and p += m, or with nesterov
p += m * momentum - g * lr (with the new m). Variables are locked in address
order; every input is validated before the first write. The gradients are
first clipped as `clip` says (none, value: [lo, hi], ratio: [numerator,
denominator per tensor], scale: [scale]; see csrc/kernels/clip.h). With
apply_if = [pred] (G = 1) nothing is written unless pred is true. For
T = half or bfloat16 the arithmetic is float32 (scalars widened exactly), each
result rounded to T.
)doc");

template <typename T>
class FusedoptSgdOp : public tf::OpKernel {
 public:
  explicit FusedoptSgdOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSgdAttrs(ctx, &attrs_));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    GradClip<T> clip;
    OP_REQUIRES_OK(ctx, ReadClipArgs<T>(ctx, attrs_.clip_kind, attrs_.num_tensors, &clip));
    bool apply;
    OP_REQUIRES_OK(ctx, ReadApplyIf(ctx, &apply));
    FusedUpdate<CPUDevice, T> update(ctx, {"params", "momentums"}, "grads", kSgdScalars);
    OP_REQUIRES_OK(ctx, update.Prepare());
    if (!apply) return;

    SgdScalars<kernel_compute_t<T>> s;
    s.lr = ComputeScalar(update.Scalar("lr"));
    s.momentum = ComputeScalar(update.Scalar("momentum"));
    s.weight_decay = ComputeScalar(update.Scalar("weight_decay"));
    s.decay_lr = ComputeScalar(update.Scalar("decay_lr"));

    auto& vars = update.variables();
    SgdTensors<kernel_t<T>> t;
    t.params.reserve(update.grads().size());
    if (attrs_.variant != SgdVariant::kPlain) t.m.reserve(update.grads().size());
    t.grads.reserve(update.grads().size());
    t.sizes.reserve(update.grads().size());
    for (size_t i = 0; i < update.grads().size(); ++i) {
      t.params.push_back(KernelData<T>(vars[0][i]));
      if (attrs_.variant != SgdVariant::kPlain) {
        t.m.push_back(KernelData<T>(vars[1][i]));
      }
      t.grads.push_back(KernelData<T>(update.grads()[i]));
      t.sizes.push_back(update.grads()[i].NumElements());
    }
    sgd_cpu(t, s, attrs_.variant, attrs_.apply_weight_decay, TfParallelFor(ctx), ComputeClip(clip));
  }

 private:
  SgdAttrs attrs_;
};

FUSEDOPT_REGISTER_CPU_KERNELS("FusedoptSgd", FusedoptSgdOp);

}  // namespace
}  // namespace fusedopt

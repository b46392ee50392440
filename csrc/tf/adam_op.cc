// FusedoptAdam: one op call updates every variable of one dtype with Adam or
// AdamW, in place. Hyperparameters arrive as runtime scalar tensors computed
// by the Python optimizer with the same TF ops the stock Keras Adam uses, so
// schedules and callbacks change them every step without retracing.
//
// T = half / bfloat16: params, grads and both moments in that dtype, the
// scalars too (computed like the stock update_step does for such variables);
// the kernel computes in float32 and rounds each result to nearest-even
// (tf/dtypes.h).
#include "cpu/adam_cpu.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf/apply_if.h"
#include "tf/clip_args.h"
#include "tf/dtypes.h"
#include "tf/fused_update.h"

namespace fusedopt {
namespace {

using CPUDevice = Eigen::ThreadPoolDevice;

const std::vector<std::string> kAdamScalars = {
    "alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon", "lr", "weight_decay"};

REGISTER_OP("FusedoptAdam")
    .Input("params: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("grads: N * T")
    .Input("alpha: T")
    .Input("one_minus_beta_1: T")
    .Input("one_minus_beta_2: T")
    .Input("epsilon: T")
    .Input("lr: T")
    .Input("weight_decay: T")
    .Input("clip_args: T")
    .Input(FUSEDOPT_APPLY_IF_INPUT)
    .Attr("T: {half, bfloat16, float, double}")
    .Attr(FUSEDOPT_CLIP_ATTR)
    .Attr("N: int >= 1")
    .Attr(FUSEDOPT_APPLY_IF_ATTR)
    .Attr("apply_weight_decay: bool = false")
    .SetShapeFn([](tf::shape_inference::InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarInputsShape(c, kAdamScalars));
      return ApplyIfShape(c);
    })
    .Doc(R"doc(
Multi-tensor Adam/AdamW (Keras semantics), updating params, m and v in place.

For every element: if apply_weight_decay, p -= p * weight_decay * lr; then
m += (g - m) * one_minus_beta_1; v += (g * g - v) * one_minus_beta_2;
p -= (m * alpha) / (sqrt(v) + epsilon). Variables are locked in address order;
every input is validated before the first write. With apply_if = [pred]
(G = 1) nothing is written unless pred is true. For T = half or bfloat16 the
arithmetic is float32 (scalars widened exactly), each result rounded to T.
)doc");

template <typename T>
class FusedoptAdamOp : public tf::OpKernel {
 public:
  explicit FusedoptAdamOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tensors_));
    std::string clip;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip));
    OP_REQUIRES_OK(ctx, ParseClipKind(clip, &clip_kind_));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    GradClip<T> clip;
    OP_REQUIRES_OK(ctx, ReadClipArgs<T>(ctx, clip_kind_, num_tensors_, &clip));
    bool apply;
    OP_REQUIRES_OK(ctx, ReadApplyIf(ctx, &apply));
    FusedUpdate<CPUDevice, T> update(ctx, {"params", "m", "v"}, "grads", kAdamScalars);
    OP_REQUIRES_OK(ctx, update.Prepare());
    if (!apply) return;

    AdamScalars<kernel_compute_t<T>> s;
    s.alpha = ComputeScalar(update.Scalar("alpha"));
    s.one_minus_beta_1 = ComputeScalar(update.Scalar("one_minus_beta_1"));
    s.one_minus_beta_2 = ComputeScalar(update.Scalar("one_minus_beta_2"));
    s.epsilon = ComputeScalar(update.Scalar("epsilon"));
    s.lr = ComputeScalar(update.Scalar("lr"));
    s.weight_decay = ComputeScalar(update.Scalar("weight_decay"));

    auto& vars = update.variables();
    AdamTensors<kernel_t<T>> t;
    t.params.reserve(update.grads().size());
    t.m.reserve(update.grads().size());
    t.v.reserve(update.grads().size());
    t.grads.reserve(update.grads().size());
    t.sizes.reserve(update.grads().size());
    for (size_t i = 0; i < update.grads().size(); ++i) {
      t.params.push_back(KernelData<T>(vars[0][i]));
      t.m.push_back(KernelData<T>(vars[1][i]));
      t.v.push_back(KernelData<T>(vars[2][i]));
      t.grads.push_back(KernelData<T>(update.grads()[i]));
      t.sizes.push_back(update.grads()[i].NumElements());
    }
    adam_cpu(t, s, apply_weight_decay_, TfParallelFor(ctx), ComputeClip(clip));
  }

 private:
  bool apply_weight_decay_ = false;
  ClipKind clip_kind_ = ClipKind::kNone;
  int num_tensors_ = 0;
};

FUSEDOPT_REGISTER_CPU_KERNELS("FusedoptAdam", FusedoptAdamOp);

}  // namespace
}  // namespace fusedopt

// FusedoptSgd on the GPU (the op is registered in sgd_op.cc). Thin like
// adam_op_gpu.cc: FusedUpdate validates everything before the first write,
// csrc/cuda/sgd_cuda.cu runs the rule on the op's stream, hyperparameters,
// clip_args and apply_if stay in device memory. CUDA builds only.
#include <string>
#include <vector>

#include "cuda/sgd_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/clip_args.h"
#include "tf/fused_update.h"
#include "tf/gpu_util.h"

namespace fusedopt {
namespace {

template <typename T>
class FusedoptSgdGpuOp : public tf::OpKernel {
 public:
  explicit FusedoptSgdGpuOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    int m = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tensors_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("M", &m));
    // The op's shape function refuses other counts; a kernel built without it
    // must not read a momentum buffer that is not there.
    OP_REQUIRES(ctx, m == 0 || m == num_tensors_,
                tf::errors::InvalidArgument("momentums has ", m, " variables but params has ",
                                            num_tensors_));
    bool nesterov = false;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &nesterov));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    std::string clip;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip));
    OP_REQUIRES_OK(ctx, ParseClipKind(clip, &clip_kind_));
    variant_ = m == 0    ? SgdVariant::kPlain
               : nesterov ? SgdVariant::kNesterov
                          : SgdVariant::kMomentum;
  }

  void Compute(tf::OpKernelContext* ctx) override {
    cuda::Stream stream;
    OP_REQUIRES_OK(ctx, GpuLaunchStream(ctx, "FusedoptSgd", &stream));
    cuda::ClipArgs clip;
    OP_REQUIRES_OK(ctx, DeviceClipArgs<T>(ctx, clip_kind_, num_tensors_, &clip));
    cuda::Predicate apply_if;
    OP_REQUIRES_OK(ctx, DevicePredicate(ctx, &apply_if));
    FusedUpdate<GpuDevice, T> update(ctx, {"params", "momentums"}, "grads",
                                     {"lr", "momentum", "weight_decay", "decay_lr"},
                                     GpuBufferCopy(stream));
    OP_REQUIRES_OK(ctx, update.Prepare());

    const cuda::SgdCudaScalars scalars{
        DeviceScalarInput<T>(ctx, "lr"), DeviceScalarInput<T>(ctx, "momentum"),
        DeviceScalarInput<T>(ctx, "weight_decay"), DeviceScalarInput<T>(ctx, "decay_lr")};
    using C = cuda_t<T>;
    auto& vars = update.variables();
    const auto& grads = update.grads();
    cuda::SgdCudaTensors<C, C> t;
    for (size_t i = 0; i < grads.size(); ++i) {
      t.params.push_back(static_cast<C*>(vars[0][i].data()));
      if (variant_ != SgdVariant::kPlain) t.m.push_back(static_cast<C*>(vars[1][i].data()));
      t.grads.push_back(static_cast<const C*>(grads[i].data()));
      t.sizes.push_back(grads[i].NumElements());
    }
    const std::string err =
        cuda::sgd_cuda(t, scalars, variant_, apply_weight_decay_, clip, apply_if, stream);
    OP_REQUIRES(ctx, err.empty(), tf::errors::Internal("FusedoptSgd: ", err));
  }

 private:
  int num_tensors_ = 0;
  SgdVariant variant_ = SgdVariant::kPlain;
  bool apply_weight_decay_ = false;
  ClipKind clip_kind_ = ClipKind::kNone;
};

FUSEDOPT_REGISTER_GPU_KERNELS("FusedoptSgd", FusedoptSgdGpuOp);

}  // namespace
}  // namespace fusedopt

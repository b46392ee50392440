// FusedoptAdam on the GPU (the op is registered in adam_op.cc).
//
// A thin OpKernel, plain C++ (DESIGN.md: never Eigen::GpuDevice with CUDA 13
// against TF's CUDA 12 build): FusedUpdate locks and validates every input
// before the first write, then one call enqueues the multi-tensor kernels of
// csrc/cuda/adam_cuda.cu on the op's stream. The hyperparameters, clip_args
// and apply_if stay in device memory and the kernels read them when they run:
// no host synchronization, so a step with clipping and skip_nonfinite is
// capturable. Compiled only in CUDA builds.
#include <string>
#include <vector>

#include "cuda/adam_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/clip_args.h"
#include "tf/fused_update.h"
#include "tf/gpu_util.h"

namespace fusedopt {
namespace {

template <typename T>
class FusedoptAdamGpuOp : public tf::OpKernel {
 public:
  explicit FusedoptAdamGpuOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tensors_));
    std::string clip;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip));
    OP_REQUIRES_OK(ctx, ParseClipKind(clip, &clip_kind_));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    cuda::Stream stream;
    OP_REQUIRES_OK(ctx, GpuLaunchStream(ctx, "FusedoptAdam", &stream));
    cuda::ClipArgs clip;
    OP_REQUIRES_OK(ctx, DeviceClipArgs<T>(ctx, clip_kind_, num_tensors_, &clip));
    cuda::Predicate apply_if;
    OP_REQUIRES_OK(ctx, DevicePredicate(ctx, &apply_if));
    FusedUpdate<GpuDevice, T> update(
        ctx, {"params", "m", "v"}, "grads",
        {"alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon", "lr", "weight_decay"},
        GpuBufferCopy(stream));
    OP_REQUIRES_OK(ctx, update.Prepare());

    const auto scalars = cuda::AdamCudaScalars::Precomputed(
        DeviceScalarInput<T>(ctx, "alpha"), DeviceScalarInput<T>(ctx, "one_minus_beta_1"),
        DeviceScalarInput<T>(ctx, "one_minus_beta_2"), DeviceScalarInput<T>(ctx, "epsilon"),
        DeviceScalarInput<T>(ctx, "lr"), DeviceScalarInput<T>(ctx, "weight_decay"));

    using C = cuda_t<T>;
    auto& vars = update.variables();
    const auto& grads = update.grads();
    cuda::AdamCudaTensors<C, C> t;
    for (size_t i = 0; i < grads.size(); ++i) {
      t.params.push_back(static_cast<C*>(vars[0][i].data()));
      t.m.push_back(static_cast<C*>(vars[1][i].data()));
      t.v.push_back(static_cast<C*>(vars[2][i].data()));
      t.grads.push_back(static_cast<const C*>(grads[i].data()));
      t.sizes.push_back(grads[i].NumElements());
    }
    const std::string err =
        cuda::adam_cuda(t, scalars, apply_weight_decay_, clip, apply_if, stream);
    OP_REQUIRES(ctx, err.empty(), tf::errors::Internal("FusedoptAdam: ", err));
  }

 private:
  bool apply_weight_decay_ = false;
  int num_tensors_ = 0;
  ClipKind clip_kind_ = ClipKind::kNone;
};

FUSEDOPT_REGISTER_GPU_KERNELS("FusedoptAdam", FusedoptAdamGpuOp);

}  // namespace
}  // namespace fusedopt

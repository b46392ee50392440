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
#include "tf/sgd_attrs.h"

namespace fusedopt {
namespace {

template <typename T>
class FusedoptSgdGpuOp : public tf::OpKernel {
 public:
  explicit FusedoptSgdGpuOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSgdAttrs(ctx, &attrs_));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    cuda::Stream stream;
    OP_REQUIRES_OK(ctx, GpuLaunchStream(ctx, "FusedoptSgd", &stream));
    cuda::ClipArgs clip;
    OP_REQUIRES_OK(ctx, DeviceClipArgs<T>(ctx, attrs_.clip_kind, attrs_.num_tensors, &clip));
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
      if (attrs_.variant != SgdVariant::kPlain) t.m.push_back(static_cast<C*>(vars[1][i].data()));
      t.grads.push_back(static_cast<const C*>(grads[i].data()));
      t.sizes.push_back(grads[i].NumElements());
    }
    const std::string err =
        cuda::sgd_cuda(t, scalars, attrs_.variant, attrs_.apply_weight_decay, clip, apply_if, stream);
    OP_REQUIRES(ctx, err.empty(), tf::errors::Internal("FusedoptSgd: ", err));
  }

 private:
  SgdAttrs attrs_;
};

FUSEDOPT_REGISTER_GPU_KERNELS("FusedoptSgd", FusedoptSgdGpuOp);

}  // namespace
}  // namespace fusedopt

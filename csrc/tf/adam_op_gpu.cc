// FusedoptAdam on the GPU (the op is registered in adam_op.cc).
//
// A thin OpKernel, plain C++ (DESIGN.md: never Eigen::GpuDevice with CUDA 13
// against TF's CUDA 12 build): FusedUpdate locks and validates every input
// before the first write, then one call enqueues the multi-tensor kernels of
// csrc/cuda/adam_cuda.cu on the op's stream. The hyperparameters stay in
// device memory (no host synchronization). Compiled only in CUDA builds.
#include <string>
#include <vector>

#include "cuda/adam_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/apply_if.h"
#include "tf/fused_update.h"
#include "tf/gpu_util.h"

namespace fusedopt {
namespace {

template <typename T>
class FusedoptAdamGpuOp : public tf::OpKernel {
 public:
  explicit FusedoptAdamGpuOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    // Gradient clipping inside the update is not on the GPU yet: refuse it
    // rather than silently update with unclipped gradients.
    if (ctx->HasAttr("clip")) {
      std::string clip;
      OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip));
      OP_REQUIRES(ctx, clip == "none",
                  tf::errors::Unimplemented("FusedoptAdam on the GPU does not clip gradients "
                                            "yet (clip='", clip, "'); clip before the op"));
    }
  }

  void Compute(tf::OpKernelContext* ctx) override {
    const cuda::Stream stream = GpuStream(ctx);
    OP_REQUIRES(ctx, stream != nullptr,
                tf::errors::Internal("FusedoptAdam: no CUDA stream for the GPU kernel"));
    // apply_if lives in host memory: skipping decides on the host, which
    // waits for the predicate's producer (the GPU skip_nonfinite path that
    // avoids this synchronization is not built yet).
    bool apply;
    OP_REQUIRES_OK(ctx, ReadApplyIf(ctx, &apply));
    FusedUpdate<GpuDevice, T> update(
        ctx, {"params", "m", "v"}, "grads",
        {"alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon", "lr", "weight_decay"},
        GpuBufferCopy(stream));
    OP_REQUIRES_OK(ctx, update.Prepare());
    if (!apply) return;

    const auto scalars = cuda::AdamCudaScalars::Precomputed(
        DeviceScalarInput<T>(ctx, "alpha"), DeviceScalarInput<T>(ctx, "one_minus_beta_1"),
        DeviceScalarInput<T>(ctx, "one_minus_beta_2"), DeviceScalarInput<T>(ctx, "epsilon"),
        DeviceScalarInput<T>(ctx, "lr"), DeviceScalarInput<T>(ctx, "weight_decay"));

    auto& vars = update.variables();
    const auto& grads = update.grads();
    cuda::AdamCudaTensors<T, T> t;
    t.params.reserve(grads.size());
    t.grads.reserve(grads.size());
    t.m.reserve(grads.size());
    t.v.reserve(grads.size());
    t.sizes.reserve(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      t.params.push_back(static_cast<T*>(vars[0][i].data()));
      t.m.push_back(static_cast<T*>(vars[1][i].data()));
      t.v.push_back(static_cast<T*>(vars[2][i].data()));
      t.grads.push_back(static_cast<const T*>(grads[i].data()));
      t.sizes.push_back(grads[i].NumElements());
    }
    const std::string err = cuda::adam_cuda(t, scalars, apply_weight_decay_, stream);
    OP_REQUIRES(ctx, err.empty(),
                tf::errors::Internal("FusedoptAdam: CUDA kernel launch failed: ", err));
  }

 private:
  bool apply_weight_decay_ = false;
};

#define REGISTER_GPU(T)                                                   \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("FusedoptAdam").Device(tf::DEVICE_GPU).TypeConstraint<T>("T").HostMemory("apply_if"), \
      FusedoptAdamGpuOp<T>);
REGISTER_GPU(float);
REGISTER_GPU(double);
#undef REGISTER_GPU

}  // namespace
}  // namespace fusedopt

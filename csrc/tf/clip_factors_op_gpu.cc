// FusedoptClipFactors on the GPU (the op is registered in clip_factors_op.cc):
// the one-block kernel of csrc/cuda/norm_cuda.cu computes clip_args and
// `finite` from the squared norms in device memory, so the update ops read
// them without a host synchronization. max_norm stays in device memory too,
// and is not checked > 0 here (that would need a synchronization); the
// optimizers validate thresholds. CUDA builds only.
#include <string>
#include <vector>

#include "cuda/norm_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/gpu_util.h"

namespace fusedopt {
namespace {

template <typename T>
class FusedoptClipFactorsGpuOp : public tf::OpKernel {
 public:
  explicit FusedoptClipFactorsGpuOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    std::string kind;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    global_ = kind == "global_norm";
  }

  void Compute(tf::OpKernelContext* ctx) override {
    cuda::Stream stream;
    OP_REQUIRES_OK(ctx, GpuLaunchStream(ctx, "FusedoptClipFactors", &stream));
    tf::OpInputList lists;
    OP_REQUIRES_OK(ctx, ctx->input_list("squared_norms", &lists));
    const tf::Tensor& max_norm = ctx->input(lists.size());
    OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(max_norm.shape()),
                tf::errors::InvalidArgument("max_norm must be a scalar, got shape ",
                                            max_norm.shape().DebugString()));
    OP_REQUIRES(ctx, global_ || lists.size() == 1,
                tf::errors::InvalidArgument(
                    "kind='norm' takes the squared norms of one call (one vector), got ",
                    lists.size()));
    OP_REQUIRES(ctx, lists.size() <= cuda::kMaxClipFactorVectors,
                tf::errors::InvalidArgument("FusedoptClipFactors on the GPU takes at most ",
                                            cuda::kMaxClipFactorVectors,
                                            " vectors of squared norms, got ", lists.size()));
    std::vector<cuda::DeviceVector> vectors;
    int64_t n = 0;
    for (int l = 0; l < lists.size(); ++l) {
      OP_REQUIRES(ctx, lists[l].dims() == 1,
                  tf::errors::InvalidArgument("squared_norms[", l, "] must be a vector, got shape ",
                                              lists[l].shape().DebugString()));
      vectors.push_back(
          {CudaScalarTypeOf(lists[l].dtype()), lists[l].data(), lists[l].NumElements()});
      n += lists[l].NumElements();
    }
    tf::Tensor* args;
    tf::Tensor* finite;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({global_ ? 1 : n + 1}), &args));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({}), &finite));
    const std::string err = cuda::clip_factors_cuda(
        global_ ? cuda::ClipFactorKind::kGlobalNorm : cuda::ClipFactorKind::kNorm, vectors,
        cuda::Scalar::Device(CudaScalarType<T>(), max_norm.data()), CudaScalarType<T>(),
        args->data(), static_cast<uint8_t*>(finite->data()), stream);
    OP_REQUIRES(ctx, err.empty(), tf::errors::Internal("FusedoptClipFactors: ", err));
  }

 private:
  bool global_ = false;
};

FUSEDOPT_REGISTER_GPU_KERNELS("FusedoptClipFactors", FusedoptClipFactorsGpuOp);

}  // namespace
}  // namespace fusedopt

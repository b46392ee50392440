// FusedoptSquaredNorms on the GPU (the op is registered in norm_op.cc): the
// deterministic two-stage reduction of csrc/cuda/norm_cuda.cu, its output in
// device memory (T, like the CPU kernel's). CUDA builds only.
#include <vector>

#include "cuda/norm_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/gpu_util.h"

namespace fusedopt {
namespace {

template <typename T>
class FusedoptSquaredNormsGpuOp : public tf::OpKernel {
 public:
  using tf::OpKernel::OpKernel;

  void Compute(tf::OpKernelContext* ctx) override {
    cuda::Stream stream;
    OP_REQUIRES_OK(ctx, GpuLaunchStream(ctx, "FusedoptSquaredNorms", &stream));
    tf::OpInputList x;
    OP_REQUIRES_OK(ctx, ctx->input_list("x", &x));
    using C = cuda_t<T>;
    std::vector<const C*> data;
    std::vector<int64_t> sizes;
    for (int i = 0; i < x.size(); ++i) {
      data.push_back(static_cast<const C*>(x[i].data()));
      sizes.push_back(x[i].NumElements());
    }
    tf::Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({x.size()}), &out));
    const size_t bytes = cuda::squared_norms_workspace_bytes(sizes);
    tf::Tensor workspace;
    void* ws = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, bytes, &workspace, &ws));
    const std::string err = cuda::squared_norms_cuda<C>(data, sizes, CudaScalarType<T>(),
                                                        out->data(), ws, bytes, stream);
    OP_REQUIRES(ctx, err.empty(), tf::errors::Internal("FusedoptSquaredNorms: ", err));
  }
};

FUSEDOPT_REGISTER_GPU_KERNELS("FusedoptSquaredNorms", FusedoptSquaredNormsGpuOp);

}  // namespace
}  // namespace fusedopt

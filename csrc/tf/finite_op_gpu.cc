// FusedoptAllFinite on the GPU (the op is registered in finite_op.cc): the
// check of csrc/cuda/finite_cuda.cu, its bool in device memory, where the
// update ops read it as apply_if (skip_nonfinite without a host
// synchronization). CUDA builds only.
#include <vector>

#include "cuda/finite_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/gpu_util.h"

namespace fusedopt {
namespace {

template <typename T>
constexpr FloatFormat FormatOf() {
  if constexpr (std::is_same<T, Eigen::half>::value) {
    return FloatFormat::kFloat16;
  } else if constexpr (std::is_same<T, tf::bfloat16>::value) {
    return FloatFormat::kBFloat16;
  } else if constexpr (std::is_same<T, float>::value) {
    return FloatFormat::kFloat32;
  } else {
    return FloatFormat::kFloat64;
  }
}

template <typename T>
class FusedoptAllFiniteGpuOp : public tf::OpKernel {
 public:
  using tf::OpKernel::OpKernel;

  void Compute(tf::OpKernelContext* ctx) override {
    cuda::Stream stream;
    OP_REQUIRES_OK(ctx, GpuLaunchStream(ctx, "FusedoptAllFinite", &stream));
    tf::OpInputList x;
    OP_REQUIRES_OK(ctx, ctx->input_list("x", &x));
    std::vector<const void*> data;
    std::vector<int64_t> sizes;
    for (int i = 0; i < x.size(); ++i) {
      data.push_back(x[i].data());
      sizes.push_back(x[i].NumElements());
    }
    tf::Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({}), &out));
    const std::string err = cuda::all_finite_cuda(FormatOf<T>(), data, sizes,
                                                  static_cast<uint8_t*>(out->data()), nullptr,
                                                  stream);
    OP_REQUIRES(ctx, err.empty(), tf::errors::Internal("FusedoptAllFinite: ", err));
  }
};

FUSEDOPT_REGISTER_GPU_KERNELS("FusedoptAllFinite", FusedoptAllFiniteGpuOp);

}  // namespace
}  // namespace fusedopt

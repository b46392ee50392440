// FusedoptAllFinite: whether every element of a list of tensors is finite, in
// one multi-threaded pass. The Keras optimizers' skip_nonfinite uses it as the
// predicate of the step: all the update work sits behind it in a cond, so a
// step with an Inf or NaN gradient writes nothing.
#include "cpu/finite_cpu.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf/dtypes.h"
#include "tf/fused_update.h"

namespace fusedopt {
namespace {

REGISTER_OP("FusedoptAllFinite")
    .Input("x: N * T")
    .Output("all_finite: bool")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("N: int >= 1")
    .SetShapeFn(tf::shape_inference::ScalarShape)
    .Doc(R"doc(
all_finite = no element of any x[i] is Inf or NaN.
)doc");

template <typename T>
constexpr FloatFormat format_of();
template <>
constexpr FloatFormat format_of<Eigen::half>() { return FloatFormat::kFloat16; }
template <>
constexpr FloatFormat format_of<tf::bfloat16>() { return FloatFormat::kBFloat16; }
template <>
constexpr FloatFormat format_of<float>() { return FloatFormat::kFloat32; }
template <>
constexpr FloatFormat format_of<double>() { return FloatFormat::kFloat64; }

template <typename T>
class FusedoptAllFiniteOp : public tf::OpKernel {
 public:
  using tf::OpKernel::OpKernel;

  void Compute(tf::OpKernelContext* ctx) override {
    tf::OpInputList x;
    OP_REQUIRES_OK(ctx, ctx->input_list("x", &x));
    std::vector<const void*> data;
    std::vector<int64_t> sizes;
    for (int i = 0; i < x.size(); ++i) {
      data.push_back(x[i].data());
      sizes.push_back(x[i].NumElements());
    }
    const bool finite = all_finite_cpu(format_of<T>(), data, sizes, TfParallelFor(ctx));
    tf::Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({}), &out));
    out->scalar<bool>()() = finite;
  }
};

FUSEDOPT_REGISTER_CPU_KERNELS("FusedoptAllFinite", FusedoptAllFiniteOp);

}  // namespace
}  // namespace fusedopt

// FusedoptSquaredNorms: the squared L2 norm of every tensor of a list in one
// multi-threaded pass, deterministic (fixed summation order, double
// accumulation). The Keras optimizers turn it into clip factors for
// clip-by-norm and clip-by-global-norm that the update ops then apply inside
// their own pass over the gradients.
//
// T = half / bfloat16: the squares are summed in double from the exactly
// widened values (no intermediate overflow) and rounded to T once at the end,
// via float32. The output keeps T like the stock clip ops, whose norms are in
// the gradients' dtype too: a float16 squared norm above 65504 is Inf there
// as here.
#include "cpu/norm_cpu.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf/dtypes.h"
#include "tf/fused_update.h"

namespace fusedopt {
namespace {

REGISTER_OP("FusedoptSquaredNorms")
    .Input("x: N * T")
    .Output("squared_norms: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("N: int >= 1")
    .SetShapeFn([](tf::shape_inference::InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      c->set_output(0, c->Vector(n));
      return absl::OkStatus();
    })
    .Doc(R"doc(
squared_norms[i] = sum(x[i]**2), accumulated in double in a fixed order and
rounded to T once: the same inputs give the same bits on any thread count.
)doc");

template <typename T>
class FusedoptSquaredNormsOp : public tf::OpKernel {
 public:
  using tf::OpKernel::OpKernel;

  void Compute(tf::OpKernelContext* ctx) override {
    tf::OpInputList x;
    OP_REQUIRES_OK(ctx, ctx->input_list("x", &x));
    std::vector<const kernel_t<T>*> data;
    std::vector<int64_t> sizes;
    for (int i = 0; i < x.size(); ++i) {
      data.push_back(KernelData<T>(x[i]));
      sizes.push_back(x[i].NumElements());
    }
    std::vector<double> sums(x.size());
    squared_norms_cpu(data, sizes, sums.data(), TfParallelFor(ctx));
    tf::Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({x.size()}), &out));
    auto o = out->vec<T>();
    // 16-bit T: through float32, as Eigen converts (rounding twice can differ
    // from a direct double -> T rounding by one unit in the last place, rarely).
    for (int i = 0; i < x.size(); ++i) {
      o(i) = static_cast<T>(static_cast<kernel_compute_t<T>>(sums[i]));
    }
  }
};

FUSEDOPT_REGISTER_CPU_KERNELS("FusedoptSquaredNorms", FusedoptSquaredNormsOp);

}  // namespace
}  // namespace fusedopt

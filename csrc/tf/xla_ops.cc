// XLA kernel for FusedoptAdam, so that the fused op can stay inside an XLA
// cluster (model.compile(jit_compile=True), Keras' "auto" on one GPU).
//
// Built into its own library, fusedopt/_tf_xla_ops.so, loaded after
// _tf_ops.so (which registers the op): XLA kernels need the XLA headers and
// libtensorflow_cc.so.2, which the plain op library does not. The math is
// that of the stock Keras Adam update_step, written with the same operations
// in the same order, so that XLA compiles it to the same numbers as the stock
// optimizer under XLA:
//   p -= (p * weight_decay) * lr                  (apply_weight_decay)
//   m += (g - m) * one_minus_beta_1
//   v += (g * g - v) * one_minus_beta_2
//   p -= (m * alpha) / (sqrt(v) + epsilon)
// Under XLA the Python optimizer does not fold clipping into the op (clip must
// be "none"): the stock clipping runs before it, as XLA compiles it.
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def_builder.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/hlo/builder/xla_builder.h"

namespace fusedopt {
namespace {

namespace tf = ::tensorflow;

class FusedoptAdamXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptAdamXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tensors_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    std::string clip;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip));
    OP_REQUIRES(ctx, clip == "none",
                tf::errors::Unimplemented(
                    "FusedoptAdam under XLA supports clip='none' only, got clip='", clip,
                    "' (fusedopt optimizers clip with the stock ops inside XLA)"));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    const int n = num_tensors_;
    // Inputs: params[n], m[n], v[n], grads[n], then the scalars.
    const int scalars = 4 * n;
    const char* names[] = {"alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon",
                           "lr", "weight_decay"};
    for (int k = 0; k < 6; ++k) {
      OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(ctx->InputShape(scalars + k)),
                  tf::errors::InvalidArgument(
                      "FusedoptAdam: ", names[k], " must be a scalar, got shape ",
                      ctx->InputShape(scalars + k).DebugString()));
    }
    xla::XlaOp alpha = ctx->Input(scalars);
    xla::XlaOp one_minus_beta_1 = ctx->Input(scalars + 1);
    xla::XlaOp one_minus_beta_2 = ctx->Input(scalars + 2);
    xla::XlaOp epsilon = ctx->Input(scalars + 3);
    xla::XlaOp lr = ctx->Input(scalars + 4);
    xla::XlaOp weight_decay = ctx->Input(scalars + 5);

    for (int i = 0; i < n; ++i) {
      tf::TensorShape p_shape, m_shape, v_shape;
      xla::XlaOp p, m, v;
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(i, dtype_, &p_shape, &p));
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(n + i, dtype_, &m_shape, &m));
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(2 * n + i, dtype_, &v_shape, &v));
      const tf::TensorShape g_shape = ctx->InputShape(3 * n + i);
      OP_REQUIRES(ctx,
                  p_shape == m_shape && p_shape == v_shape && p_shape == g_shape,
                  tf::errors::InvalidArgument(
                      "FusedoptAdam: params[", i, "] has shape ", p_shape.DebugString(),
                      "; m, v and grads must have the same, got ", m_shape.DebugString(),
                      ", ", v_shape.DebugString(), ", ", g_shape.DebugString()));
      xla::XlaOp g = ctx->Input(3 * n + i);

      if (apply_weight_decay_) {
        p = xla::Sub(p, xla::Mul(xla::Mul(p, weight_decay), lr));
      }
      m = xla::Add(m, xla::Mul(xla::Sub(g, m), one_minus_beta_1));
      v = xla::Add(v, xla::Mul(xla::Sub(xla::Mul(g, g), v), one_minus_beta_2));
      p = xla::Sub(p, xla::Div(xla::Mul(m, alpha), xla::Add(xla::Sqrt(v), epsilon)));

      OP_REQUIRES_OK(ctx, ctx->AssignVariable(i, dtype_, p));
      OP_REQUIRES_OK(ctx, ctx->AssignVariable(n + i, dtype_, m));
      OP_REQUIRES_OK(ctx, ctx->AssignVariable(2 * n + i, dtype_, v));
    }
  }

 private:
  tf::DataType dtype_;
  int num_tensors_;
  bool apply_weight_decay_;
};

// float32 and float64: the dtypes the Python side fuses under XLA (half
// types fall back to the stock update there, whose XLA rounding the CPU
// kernel's float32 arithmetic would not reproduce).
REGISTER_XLA_OP(Name("FusedoptAdam").TypeConstraint("T", {tf::DT_FLOAT, tf::DT_DOUBLE}),
                FusedoptAdamXlaOp);

// XLA turns the REGISTER_XLA_OP registrations into kernels of its JIT devices
// once per process (XlaOpRegistry::RegisterCompilationKernels). If an XLA
// compilation ran before this library was loaded, that has happened already
// and the registration above is never seen ("No registered 'FusedoptAdam'
// OpKernel for XLA_CPU_JIT devices"). Then register the kernel on those
// devices directly, as that function would have.
bool HasKernel(const char* op, const char* device) {
  return absl::StrContains(tf::KernelsRegisteredForOp(op),
                           absl::StrCat("device='", device, "'"));
}

tf::OpKernel* CreateFusedoptAdamXlaOp(tf::OpKernelConstruction* ctx) {
  return new FusedoptAdamXlaOp(ctx);
}

const bool kRegisteredLate = [] {
  bool any = false;
  for (const char* device : {"XLA_CPU_JIT", "XLA_GPU_JIT"}) {
    // AddV2 has a kernel on every XLA JIT device once XLA registered them.
    if (HasKernel("AddV2", device) && !HasKernel("FusedoptAdam", device)) {
      new tf::kernel_factory::OpKernelRegistrar(
          tf::KernelDefBuilder("FusedoptAdam")
              .Device(device)
              .TypeConstraint("T", {tf::DT_FLOAT, tf::DT_DOUBLE})
              .Build(),
          "FusedoptAdamXlaOp", CreateFusedoptAdamXlaOp);
      any = true;
    }
  }
  return any;
}();

}  // namespace
}  // namespace fusedopt

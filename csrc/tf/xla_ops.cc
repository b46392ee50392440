// XLA kernels for FusedoptAdam and FusedoptSgd, so that the fused ops can
// stay inside an XLA cluster (model.compile(jit_compile=True), Keras' "auto"
// on one GPU).
//
// Built into its own library, fusedopt/_tf_xla_ops.so, loaded after
// _tf_ops.so (which registers the ops): XLA kernels need the XLA headers and
// libtensorflow_cc.so.2, which the plain op library does not. Each kernel
// writes the stock Keras update_step with the same operations in the same
// order, so that XLA compiles (and simplifies) it to the same numbers as the
// stock optimizer under XLA:
//   decay (apply_weight_decay):  p -= (p * weight_decay) * lr
//   Adam:  m += (g - m) * one_minus_beta_1
//          v += (g * g - v) * one_minus_beta_2
//          p -= (m * alpha) / (sqrt(v) + epsilon)
//   SGD:   p -= g * lr                          (no momentum buffers)
//          m = m * momentum - g * lr; p += m    (momentum)
//          p += m * momentum - g * lr           (nesterov, with the new m)
// Under XLA the Python optimizers do not fold clipping into the ops (clip
// must be "none"): the stock clipping runs before them, as XLA compiles it.
// With apply_if = [pred], every new value is select(pred, new, old).
#include <initializer_list>
#include <optional>
#include <vector>
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

absl::Status CheckNoClip(tf::OpKernelConstruction* ctx, const char* op) {
  std::string clip;
  TF_RETURN_IF_ERROR(ctx->GetAttr("clip", &clip));
  if (clip != "none") {
    return tf::errors::Unimplemented(
        op, " under XLA supports clip='none' only, got clip='", clip,
        "' (fusedopt optimizers clip with the stock ops inside XLA)");
  }
  return absl::OkStatus();
}

// Checks that the inputs from index `first` on, one per name, are scalars.
absl::Status CheckScalars(tf::XlaOpKernelContext* ctx, const char* op, int first,
                          std::initializer_list<const char*> names) {
  int i = first;
  for (const char* name : names) {
    if (!tf::TensorShapeUtils::IsScalar(ctx->InputShape(i))) {
      return tf::errors::InvalidArgument(op, ": ", name, " must be a scalar, got shape ",
                                         ctx->InputShape(i).DebugString());
    }
    ++i;
  }
  return absl::OkStatus();
}

// The predicate of the optional apply_if input (G = 0 or 1), if any.
absl::Status ApplyIf(tf::XlaOpKernelContext* ctx, const char* op,
                     std::optional<xla::XlaOp>* pred) {
  std::vector<xla::XlaOp> list;
  std::vector<tf::TensorShape> shapes;
  TF_RETURN_IF_ERROR(ctx->InputList("apply_if", &list, &shapes));
  if (list.size() > 1) {
    return tf::errors::InvalidArgument(op, ": apply_if takes at most one predicate, got ",
                                       list.size());
  }
  pred->reset();
  if (list.empty()) return absl::OkStatus();
  if (!tf::TensorShapeUtils::IsScalar(shapes[0])) {
    return tf::errors::InvalidArgument(op, ": apply_if[0] must be a scalar bool, got shape ",
                                       shapes[0].DebugString());
  }
  *pred = list[0];
  return absl::OkStatus();
}

// Assigns `value` to variable input `input`, or keeps `old` where the
// predicate is false.
absl::Status Assign(tf::XlaOpKernelContext* ctx, int input, tf::DataType dtype,
                    const tf::TensorShape& shape, const std::optional<xla::XlaOp>& pred,
                    xla::XlaOp old, xla::XlaOp value) {
  if (pred) value = xla::Select(xla::Broadcast(*pred, shape.dim_sizes()), value, old);
  return ctx->AssignVariable(input, dtype, value);
}

// p - (p * weight_decay) * lr: the stock decay, before the update.
xla::XlaOp Decayed(xla::XlaOp p, xla::XlaOp weight_decay, xla::XlaOp lr) {
  return xla::Sub(p, xla::Mul(xla::Mul(p, weight_decay), lr));
}

class FusedoptAdamXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptAdamXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tensors_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    OP_REQUIRES_OK(ctx, CheckNoClip(ctx, "FusedoptAdam"));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    const int n = num_tensors_;
    // Inputs: params[n], m[n], v[n], grads[n], then the scalars.
    const int scalars = 4 * n;
    OP_REQUIRES_OK(ctx, CheckScalars(ctx, "FusedoptAdam", scalars,
                                     {"alpha", "one_minus_beta_1", "one_minus_beta_2",
                                      "epsilon", "lr", "weight_decay"}));
    xla::XlaOp alpha = ctx->Input(scalars);
    xla::XlaOp one_minus_beta_1 = ctx->Input(scalars + 1);
    xla::XlaOp one_minus_beta_2 = ctx->Input(scalars + 2);
    xla::XlaOp epsilon = ctx->Input(scalars + 3);
    xla::XlaOp lr = ctx->Input(scalars + 4);
    xla::XlaOp weight_decay = ctx->Input(scalars + 5);
    std::optional<xla::XlaOp> pred;
    OP_REQUIRES_OK(ctx, ApplyIf(ctx, "FusedoptAdam", &pred));

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
      const xla::XlaOp p0 = p, m0 = m, v0 = v;

      if (apply_weight_decay_) p = Decayed(p, weight_decay, lr);
      m = xla::Add(m, xla::Mul(xla::Sub(g, m), one_minus_beta_1));
      v = xla::Add(v, xla::Mul(xla::Sub(xla::Mul(g, g), v), one_minus_beta_2));
      p = xla::Sub(p, xla::Div(xla::Mul(m, alpha), xla::Add(xla::Sqrt(v), epsilon)));

      OP_REQUIRES_OK(ctx, Assign(ctx, i, dtype_, p_shape, pred, p0, p));
      OP_REQUIRES_OK(ctx, Assign(ctx, n + i, dtype_, p_shape, pred, m0, m));
      OP_REQUIRES_OK(ctx, Assign(ctx, 2 * n + i, dtype_, p_shape, pred, v0, v));
    }
  }

 private:
  tf::DataType dtype_;
  int num_tensors_;
  bool apply_weight_decay_;
};

class FusedoptSgdXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptSgdXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &num_tensors_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("M", &num_momentums_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &nesterov_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &apply_weight_decay_));
    OP_REQUIRES(ctx, num_momentums_ == 0 || num_momentums_ == num_tensors_,
                tf::errors::InvalidArgument(
                    "FusedoptSgd: momentums has ", num_momentums_, " variables but params has ",
                    num_tensors_, "; pass one momentum buffer per parameter, or none"));
    OP_REQUIRES_OK(ctx, CheckNoClip(ctx, "FusedoptSgd"));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    const int n = num_tensors_;
    const int m_count = num_momentums_;
    // Inputs: params[n], momentums[m_count], grads[n], then the scalars.
    const int scalars = 2 * n + m_count;
    OP_REQUIRES_OK(ctx, CheckScalars(ctx, "FusedoptSgd", scalars,
                                     {"lr", "momentum", "weight_decay", "decay_lr"}));
    xla::XlaOp lr = ctx->Input(scalars);
    xla::XlaOp momentum = ctx->Input(scalars + 1);
    xla::XlaOp weight_decay = ctx->Input(scalars + 2);
    xla::XlaOp decay_lr = ctx->Input(scalars + 3);
    std::optional<xla::XlaOp> pred;
    OP_REQUIRES_OK(ctx, ApplyIf(ctx, "FusedoptSgd", &pred));

    for (int i = 0; i < n; ++i) {
      tf::TensorShape p_shape;
      xla::XlaOp p;
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(i, dtype_, &p_shape, &p));
      const tf::TensorShape g_shape = ctx->InputShape(n + m_count + i);
      OP_REQUIRES(ctx, p_shape == g_shape,
                  tf::errors::InvalidArgument(
                      "FusedoptSgd: params[", i, "] has shape ", p_shape.DebugString(),
                      " but grads[", i, "] has shape ", g_shape.DebugString()));
      xla::XlaOp g = ctx->Input(n + m_count + i);
      const xla::XlaOp p0 = p;

      if (apply_weight_decay_) p = Decayed(p, weight_decay, decay_lr);
      if (m_count == 0) {
        p = xla::Sub(p, xla::Mul(g, lr));
      } else {
        tf::TensorShape m_shape;
        xla::XlaOp m;
        OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(n + i, dtype_, &m_shape, &m));
        OP_REQUIRES(ctx, m_shape == p_shape,
                    tf::errors::InvalidArgument(
                        "FusedoptSgd: params[", i, "] has shape ", p_shape.DebugString(),
                        " but momentums[", i, "] has shape ", m_shape.DebugString()));
        const xla::XlaOp m0 = m;
        m = xla::Sub(xla::Mul(m, momentum), xla::Mul(g, lr));
        OP_REQUIRES_OK(ctx, Assign(ctx, n + i, dtype_, p_shape, pred, m0, m));
        p = nesterov_ ? xla::Add(p, xla::Sub(xla::Mul(m, momentum), xla::Mul(g, lr)))
                      : xla::Add(p, m);
      }
      OP_REQUIRES_OK(ctx, Assign(ctx, i, dtype_, p_shape, pred, p0, p));
    }
  }

 private:
  tf::DataType dtype_;
  int num_tensors_;
  int num_momentums_;
  bool nesterov_;
  bool apply_weight_decay_;
};

// float32 and float64: the dtypes the Python side fuses under XLA (half
// types fall back to the stock update there, whose XLA rounding the CPU
// kernel's float32 arithmetic would not reproduce).
REGISTER_XLA_OP(Name("FusedoptAdam").TypeConstraint("T", {tf::DT_FLOAT, tf::DT_DOUBLE}),
                FusedoptAdamXlaOp);
REGISTER_XLA_OP(Name("FusedoptSgd").TypeConstraint("T", {tf::DT_FLOAT, tf::DT_DOUBLE}),
                FusedoptSgdXlaOp);

// XLA turns the REGISTER_XLA_OP registrations into kernels of its JIT devices
// once per process (XlaOpRegistry::RegisterCompilationKernels). If an XLA
// compilation ran before this library was loaded, that has happened already
// and the registrations above are never seen ("No registered 'FusedoptAdam'
// OpKernel for XLA_CPU_JIT devices"). Then register the kernels on those
// devices directly, as that function would have.
bool HasKernel(const char* op, const char* device) {
  return absl::StrContains(tf::KernelsRegisteredForOp(op),
                           absl::StrCat("device='", device, "'"));
}

template <typename Op>
tf::OpKernel* Create(tf::OpKernelConstruction* ctx) {
  return new Op(ctx);
}

const bool kRegisteredLate = [] {
  struct Kernel {
    const char* op;
    tf::OpKernel* (*create)(tf::OpKernelConstruction*);
  };
  bool any = false;
  for (const Kernel& kernel : {Kernel{"FusedoptAdam", Create<FusedoptAdamXlaOp>},
                               Kernel{"FusedoptSgd", Create<FusedoptSgdXlaOp>}}) {
    for (const char* device : {"XLA_CPU_JIT", "XLA_GPU_JIT"}) {
      // AddV2 has a kernel on every XLA JIT device once XLA registered them.
      if (HasKernel("AddV2", device) && !HasKernel(kernel.op, device)) {
        new tf::kernel_factory::OpKernelRegistrar(
            tf::KernelDefBuilder(kernel.op)
                .Device(device)
                .TypeConstraint("T", {tf::DT_FLOAT, tf::DT_DOUBLE})
                .Build(),
            absl::StrCat(kernel.op, "XlaOp"), kernel.create);
        any = true;
      }
    }
  }
  return any;
}();

}  // namespace
}  // namespace fusedopt

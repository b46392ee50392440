// XLA kernels for FusedoptAdam, FusedoptSgd, FusedoptSquaredNorms,
// FusedoptClipFactors and FusedoptAllFinite, so that the fused ops stay
// inside an XLA cluster (model.compile(jit_compile=True), Keras' "auto" on
// one GPU) and XLA runs fusedopt's own kernel there.
//
// Each kernel emits one typed-FFI custom call (API_VERSION_TYPED_FFI) to the
// handler of csrc/ffi/ (operands: csrc/ffi/handlers.h), which runs the CPU
// driver on XLA's intra-op thread pool. The update calls alias every written
// buffer (result j is operand j), so XLA updates the variables' buffers in
// place (docs/xla.md: how the variables flow through the cluster). The
// per-step scalars, clip arguments and apply_if predicate are operands
// (runtime values, no recompilation); only N, the decay flag, the SGD variant
// and the clip kind are attributes. No math here: under XLA the fused ops
// give the CPU kernel's bits, like outside XLA.
//
// Built into its own library, fusedopt/_tf_xla_ops.so, loaded after
// _tf_ops.so (which registers the ops): XLA kernels need the XLA headers and
// libtensorflow_cc.so.2, which the plain op library does not. Loading it
// registers the FFI handlers into TensorFlow's XLA (xla::ffi::GetXlaFfiApi(),
// defined in libtensorflow_cc.so.2) for the platform "Host", and the XLA
// kernels for XLA_CPU_JIT. On XLA_GPU_JIT only where opted in
// (FUSEDOPT_XLA_CUDA=1 in a CUDA build, like the rest of the TF GPU path
// until a TF GPU run proves it): then the CUDA handlers are registered for
// "CUDA" and the ops that have one (FusedoptAdam) get a GPU XLA kernel.
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ffi/handlers.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/compiler/tf2xla/xla_resource.h"
#include "tensorflow/core/framework/kernel_def_builder.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/ffi/api/api.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/layout_util.h"
#include "xla/shape_util.h"

// Defined in libtensorflow_cc.so.2 (xla/ffi/ffi_api.cc); declared here rather
// than through xla/ffi/ffi_api.h, which pulls in XLA's internals.
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();
}  // namespace xla::ffi

namespace fusedopt {
namespace {

namespace tf = ::tensorflow;
namespace fh = ::fusedopt::ffi_handlers;

// ---------------------------------------------------------------------------
// FFI handler registration (once, when the library loads).

bool CudaOptedIn() {
#if defined(FUSEDOPT_WITH_CUDA)
  const char* env = std::getenv("FUSEDOPT_XLA_CUDA");
  return env != nullptr && std::strcmp(env, "1") == 0;
#else
  return false;
#endif
}

// Registers `handler` as `target` on `platform`; "" or why it failed.
std::string Register(const char* target, const char* platform, XLA_FFI_Handler* handler,
                     XLA_FFI_Handler_Traits traits = 0) {
  const XLA_FFI_Api* api = ::xla::ffi::GetXlaFfiApi();
  XLA_FFI_Error* err =
      ::xla::ffi::Ffi::RegisterStaticHandler(api, target, platform, handler, traits);
  if (err == nullptr) return "";
  std::string message = ::xla::ffi::internal::GetErrorMessage(api, err);
  ::xla::ffi::internal::DestroyError(api, err);
  return absl::StrCat("registering the XLA FFI handler ", target, " for ", platform,
                      " failed: ", message);
}

// The first registration failure, or "" (the kernels refuse to compile then).
const std::string& RegistrationError() {
  static const std::string error = [] {
    struct Entry {
      const char* target;
      XLA_FFI_Handler* handler;
    };
    for (const Entry& e : {Entry{fh::kAdamTarget, FusedoptFfiAdamCpu},
                           Entry{fh::kSgdTarget, FusedoptFfiSgdCpu},
                           Entry{fh::kSquaredNormsTarget, FusedoptFfiSquaredNormsCpu},
                           Entry{fh::kClipFactorsTarget, FusedoptFfiClipFactorsCpu},
                           Entry{fh::kAllFiniteTarget, FusedoptFfiAllFiniteCpu}}) {
      std::string err = Register(e.target, "Host", e.handler);
      if (!err.empty()) return err;
    }
#if defined(FUSEDOPT_WITH_CUDA)
    if (CudaOptedIn()) {
      std::string err = Register(fh::kAdamTarget, "CUDA", FusedoptFfiAdamCuda,
                                 XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE);
      if (!err.empty()) return err;
    }
#endif
    return std::string();
  }();
  return error;
}

// ---------------------------------------------------------------------------
// Emitting the call.

bool OnGpu(tf::OpKernelConstruction* ctx) {
  return ctx->device_type() == tf::DeviceType(tf::DEVICE_GPU_XLA_JIT);
}

// The shape of `op` with the default (descending) layout: the handlers read
// dense row-major buffers, so XLA lays every operand and result out that way
// (inserting a copy where a producer chose another layout).
absl::StatusOr<xla::Shape> DenseShape(xla::XlaBuilder* b, xla::XlaOp op) {
  TF_ASSIGN_OR_RETURN(xla::Shape shape, b->GetShape(op));
  xla::LayoutUtil::SetToDefaultLayout(&shape);
  return shape;
}

// One typed-FFI custom call to `target`. result_shapes: one per result, a
// tuple of them unless `single` (one result, the call's value itself);
// result j < `aliased` aliases operand j. attrs: the handler's attributes as
// an MLIR dictionary ("{a = 1, b = "x"}").
absl::StatusOr<xla::XlaOp> FfiCall(xla::XlaBuilder* b, const char* target,
                                   const std::vector<xla::XlaOp>& operands,
                                   std::vector<xla::Shape> result_shapes, int64_t aliased,
                                   const std::string& attrs, bool single = false) {
  if (!RegistrationError().empty()) return tf::errors::Internal(RegistrationError());
  std::vector<xla::Shape> operand_shapes;
  for (const xla::XlaOp& op : operands) {
    TF_ASSIGN_OR_RETURN(xla::Shape s, DenseShape(b, op));
    operand_shapes.push_back(std::move(s));
  }
  for (xla::Shape& s : result_shapes) xla::LayoutUtil::SetToDefaultLayout(&s);
  if (single && result_shapes.size() != 1) {
    return tf::errors::Internal(target, ": a single result expected");
  }
  const xla::Shape shape =
      single ? result_shapes[0] : xla::ShapeUtil::MakeTupleShape(result_shapes);
  std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>> aliasing;
  for (int64_t j = 0; j < aliased; ++j) {
    aliasing.push_back({xla::ShapeIndex({j}), {j, xla::ShapeIndex()}});
  }
  return xla::CustomCallWithLayout(b, target, operands, shape, operand_shapes, attrs,
                                   /*has_side_effect=*/false, aliasing, /*literal=*/nullptr,
                                   xla::CustomCallSchedule::SCHEDULE_NONE,
                                   xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
}

// The per-step scalars (0-d inputs from `first` on, one per name) as one
// vector operand: buffers, not attributes, so new values do not recompile.
absl::StatusOr<xla::XlaOp> ScalarVector(tf::XlaOpKernelContext* ctx, const char* op, int first,
                                        std::initializer_list<const char*> names) {
  std::vector<xla::XlaOp> parts;
  int i = first;
  for (const char* name : names) {
    if (!tf::TensorShapeUtils::IsScalar(ctx->InputShape(i))) {
      return tf::errors::InvalidArgument(op, ": ", name, " must be a scalar, got shape ",
                                         ctx->InputShape(i).DebugString());
    }
    parts.push_back(xla::Reshape(ctx->Input(i), {1}));
    ++i;
  }
  return xla::ConcatInDim(ctx->builder(), parts, 0);
}

// clip_args as the handler takes it: empty for clip='none', else the vector
// of the length the kind needs for `n` tensors (csrc/tf/clip_args.h).
absl::StatusOr<xla::XlaOp> ClipArgs(tf::XlaOpKernelContext* ctx, const char* op,
                                    const std::string& clip, int n, tf::DataType dtype) {
  xla::PrimitiveType type;
  TF_RETURN_IF_ERROR(tf::DataTypeToPrimitiveType(dtype, &type));
  if (clip == "none") {
    return xla::ConvertElementType(xla::ConstantR1<float>(ctx->builder(), {}), type);
  }
  const int64_t expected = clip == "value" ? 2 : clip == "ratio" ? n + 1 : 1;
  const tf::TensorShape shape = ctx->InputShape("clip_args");
  if (shape.dims() != 1 || shape.dim_size(0) != expected) {
    return tf::errors::InvalidArgument(op, ": clip_args must be a vector of ", expected,
                                       " values for clip='", clip, "', got shape ",
                                       shape.DebugString());
  }
  return ctx->Input("clip_args");
}

// apply_if as the handler takes it: bool[0] (always apply) or the predicate.
absl::StatusOr<xla::XlaOp> ApplyIf(tf::XlaOpKernelContext* ctx, const char* op) {
  std::vector<xla::XlaOp> list;
  std::vector<tf::TensorShape> shapes;
  TF_RETURN_IF_ERROR(ctx->InputList("apply_if", &list, &shapes));
  if (list.size() > 1) {
    return tf::errors::InvalidArgument(op, ": apply_if takes at most one predicate, got ",
                                       list.size());
  }
  if (list.empty()) return xla::ConstantR1<bool>(ctx->builder(), {});
  if (!tf::TensorShapeUtils::IsScalar(shapes[0])) {
    return tf::errors::InvalidArgument(op, ": apply_if[0] must be a scalar bool, got shape ",
                                       shapes[0].DebugString());
  }
  return list[0];
}

// The update ops' operand lists: every variable list read, then the
// gradients, each entry checked against params[i]'s shape.
struct VariableOperands {
  std::vector<xla::XlaOp> ops;
  std::vector<xla::Shape> shapes;  // of the written buffers, in order
};

absl::Status ReadVariables(tf::XlaOpKernelContext* ctx, const char* op, tf::DataType dtype,
                           const std::vector<std::pair<const char*, int>>& lists, int n,
                           VariableOperands* out) {
  int input = 0;
  std::vector<tf::TensorShape> param_shapes;
  // Each variable once, as the CPU kernels require: written twice in one
  // call, one of the two updates would be silently lost.
  std::unordered_map<const tf::XlaResource*, std::string> seen;
  for (const auto& [name, count] : lists) {
    for (int i = 0; i < count; ++i, ++input) {
      tf::XlaResource* resource;
      TF_RETURN_IF_ERROR(ctx->GetResourceInput(input, &resource));
      const std::string label = absl::StrCat(name, "[", i, "] (variable '", resource->name(),
                                             "')");
      const auto [it, inserted] = seen.emplace(resource, label);
      if (!inserted) {
        return tf::errors::InvalidArgument(op, ": ", label, " and ", it->second,
                                           " are the same variable; each may appear once");
      }
      tf::TensorShape shape;
      xla::XlaOp value;
      TF_RETURN_IF_ERROR(ctx->ReadVariableInput(input, dtype, &shape, &value));
      if (param_shapes.size() < static_cast<size_t>(n)) {
        param_shapes.push_back(shape);
      } else if (shape != param_shapes[i]) {
        return tf::errors::InvalidArgument(op, ": params[", i, "] has shape ",
                                           param_shapes[i].DebugString(), " but ", name, "[",
                                           i, "] has shape ", shape.DebugString());
      }
      out->ops.push_back(value);
      TF_ASSIGN_OR_RETURN(xla::Shape s, DenseShape(ctx->builder(), value));
      out->shapes.push_back(std::move(s));
    }
  }
  // The gradients follow the variable lists.
  for (int i = 0; i < n; ++i, ++input) {
    const tf::TensorShape shape = ctx->InputShape(input);
    if (shape != param_shapes[i]) {
      return tf::errors::InvalidArgument(op, ": params[", i, "] has shape ",
                                         param_shapes[i].DebugString(), " but grads[", i,
                                         "] has shape ", shape.DebugString());
    }
    out->ops.push_back(ctx->Input(input));
  }
  return absl::OkStatus();
}

// Writes result j of `call` to variable input j, for every written buffer.
absl::Status AssignResults(tf::XlaOpKernelContext* ctx, tf::DataType dtype, xla::XlaOp call,
                           int written) {
  for (int j = 0; j < written; ++j) {
    TF_RETURN_IF_ERROR(ctx->AssignVariable(j, dtype, xla::GetTupleElement(call, j)));
  }
  return absl::OkStatus();
}

const char* Bool(bool b) { return b ? "true" : "false"; }

// Checks shared by the update kernels' constructors.
absl::Status CheckUpdateAttrs(tf::OpKernelConstruction* ctx, const char* op,
                              const std::string& clip) {
  if (clip != "none" && clip != "value" && clip != "ratio" && clip != "scale") {
    return tf::errors::InvalidArgument(op, ": unknown clip kind '", clip, "'");
  }
  if (OnGpu(ctx)) {
    bool has_apply_if = false;
    int g = 0;
    TF_RETURN_IF_ERROR(ctx->GetAttr("G", &g));
    has_apply_if = g > 0;
    if (clip != "none" || has_apply_if) {
      return tf::errors::Unimplemented(
          op, " under XLA on the GPU takes clip='none' and no apply_if yet (the CUDA "
          "driver has neither a clip stage nor a device-side predicate), got clip='",
          clip, "'", has_apply_if ? " with apply_if" : "");
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The kernels.

class FusedoptAdamXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptAdamXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip_));
    OP_REQUIRES_OK(ctx, CheckUpdateAttrs(ctx, "FusedoptAdam", clip_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    const char* op = "FusedoptAdam";
    const int n = n_;
    // Inputs: params[n], m[n], v[n], grads[n], the six scalars, clip_args,
    // apply_if: the handler's operand order.
    VariableOperands operands;
    OP_REQUIRES_OK(ctx, ReadVariables(ctx, op, dtype_, {{"params", n}, {"m", n}, {"v", n}}, n,
                                      &operands));
    auto scalars = ScalarVector(ctx, op, 4 * n,
                                {"alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon",
                                 "lr", "weight_decay"});
    OP_REQUIRES_OK(ctx, scalars.status());
    auto clip_args = ClipArgs(ctx, op, clip_, n, dtype_);
    OP_REQUIRES_OK(ctx, clip_args.status());
    auto apply_if = ApplyIf(ctx, op);
    OP_REQUIRES_OK(ctx, apply_if.status());
    operands.ops.push_back(*scalars);
    operands.ops.push_back(*clip_args);
    operands.ops.push_back(*apply_if);

    auto call = FfiCall(ctx->builder(), fh::kAdamTarget, operands.ops, operands.shapes, 3 * n,
                        absl::StrCat("{clip = \"", clip_, "\", decay = ", Bool(decay_), "}"));
    OP_REQUIRES_OK(ctx, call.status());
    OP_REQUIRES_OK(ctx, AssignResults(ctx, dtype_, *call, 3 * n));
  }

 private:
  tf::DataType dtype_;
  int n_;
  bool decay_;
  std::string clip_;
};

class FusedoptSgdXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptSgdXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("M", &m_count_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &nesterov_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("apply_weight_decay", &decay_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip_));
    OP_REQUIRES(ctx, m_count_ == 0 || m_count_ == n_,
                tf::errors::InvalidArgument(
                    "FusedoptSgd: momentums has ", m_count_, " variables but params has ", n_,
                    "; pass one momentum buffer per parameter, or none"));
    OP_REQUIRES_OK(ctx, CheckUpdateAttrs(ctx, "FusedoptSgd", clip_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    const char* op = "FusedoptSgd";
    const int n = n_;
    VariableOperands operands;
    OP_REQUIRES_OK(ctx, ReadVariables(ctx, op, dtype_, {{"params", n}, {"momentums", m_count_}},
                                      n, &operands));
    auto scalars =
        ScalarVector(ctx, op, 2 * n + m_count_, {"lr", "momentum", "weight_decay", "decay_lr"});
    OP_REQUIRES_OK(ctx, scalars.status());
    auto clip_args = ClipArgs(ctx, op, clip_, n, dtype_);
    OP_REQUIRES_OK(ctx, clip_args.status());
    auto apply_if = ApplyIf(ctx, op);
    OP_REQUIRES_OK(ctx, apply_if.status());
    operands.ops.push_back(*scalars);
    operands.ops.push_back(*clip_args);
    operands.ops.push_back(*apply_if);

    const char* variant = m_count_ == 0 ? "plain" : nesterov_ ? "nesterov" : "momentum";
    auto call = FfiCall(ctx->builder(), fh::kSgdTarget, operands.ops, operands.shapes,
                        n + m_count_,
                        absl::StrCat("{clip = \"", clip_, "\", decay = ", Bool(decay_),
                                     ", variant = \"", variant, "\"}"));
    OP_REQUIRES_OK(ctx, call.status());
    OP_REQUIRES_OK(ctx, AssignResults(ctx, dtype_, *call, n + m_count_));
  }

 private:
  tf::DataType dtype_;
  int n_;
  int m_count_;
  bool nesterov_;
  bool decay_;
  std::string clip_;
};

class FusedoptSquaredNormsXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptSquaredNormsXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    std::vector<xla::XlaOp> x;
    std::vector<tf::TensorShape> shapes;
    OP_REQUIRES_OK(ctx, ctx->InputList("x", &x, &shapes));
    xla::PrimitiveType type;
    OP_REQUIRES_OK(ctx, tf::DataTypeToPrimitiveType(dtype_, &type));
    auto call = FfiCall(ctx->builder(), fh::kSquaredNormsTarget, x,
                        {xla::ShapeUtil::MakeShape(type, {static_cast<int64_t>(x.size())})}, 0,
                        "", /*single=*/true);
    OP_REQUIRES_OK(ctx, call.status());
    ctx->SetOutput(0, *call);
  }

 private:
  tf::DataType dtype_;
};

class FusedoptClipFactorsXlaOp : public tf::XlaOpKernel {
 public:
  explicit FusedoptClipFactorsXlaOp(tf::OpKernelConstruction* ctx) : tf::XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    const char* op = "FusedoptClipFactors";
    std::vector<xla::XlaOp> operands;
    std::vector<tf::TensorShape> shapes;
    OP_REQUIRES_OK(ctx, ctx->InputList("squared_norms", &operands, &shapes));
    const bool global = kind_ == "global_norm";
    OP_REQUIRES(ctx, global || operands.size() == 1,
                tf::errors::InvalidArgument(
                    op, ": kind='norm' takes the squared norms of one call (one vector), got ",
                    operands.size()));
    int64_t total = 0;
    for (size_t l = 0; l < shapes.size(); ++l) {
      OP_REQUIRES(ctx, shapes[l].dims() == 1,
                  tf::errors::InvalidArgument(op, ": squared_norms[", l,
                                              "] must be a vector, got shape ",
                                              shapes[l].DebugString()));
      total += shapes[l].dim_size(0);
    }
    const tf::TensorShape max_norm_shape = ctx->InputShape("max_norm");
    OP_REQUIRES(ctx, tf::TensorShapeUtils::IsScalar(max_norm_shape),
                tf::errors::InvalidArgument(op, ": max_norm must be a scalar, got shape ",
                                            max_norm_shape.DebugString()));
    operands.push_back(ctx->Input("max_norm"));
    xla::PrimitiveType type;
    OP_REQUIRES_OK(ctx, tf::DataTypeToPrimitiveType(dtype_, &type));
    auto call = FfiCall(ctx->builder(), fh::kClipFactorsTarget, operands,
                        {xla::ShapeUtil::MakeShape(type, {global ? 1 : total + 1}),
                         xla::ShapeUtil::MakeShape(xla::PRED, {})},
                        0, absl::StrCat("{kind = \"", kind_, "\"}"));
    OP_REQUIRES_OK(ctx, call.status());
    ctx->SetOutput(0, xla::GetTupleElement(*call, 0));
    ctx->SetOutput(1, xla::GetTupleElement(*call, 1));
  }

 private:
  tf::DataType dtype_;
  std::string kind_;
};

class FusedoptAllFiniteXlaOp : public tf::XlaOpKernel {
 public:
  using tf::XlaOpKernel::XlaOpKernel;

  void Compile(tf::XlaOpKernelContext* ctx) override {
    std::vector<xla::XlaOp> x;
    std::vector<tf::TensorShape> shapes;
    OP_REQUIRES_OK(ctx, ctx->InputList("x", &x, &shapes));
    auto call = FfiCall(ctx->builder(), fh::kAllFiniteTarget, x,
                        {xla::ShapeUtil::MakeShape(xla::PRED, {})}, 0, "",
                        /*single=*/true);
    OP_REQUIRES_OK(ctx, call.status());
    ctx->SetOutput(0, *call);
  }
};

// ---------------------------------------------------------------------------
// Registration of the XLA kernels.

template <typename Op>
tf::OpKernel* Create(tf::OpKernelConstruction* ctx) {
  return new Op(ctx);
}

struct Kernel {
  const char* op;
  tf::OpKernel* (*create)(tf::OpKernelConstruction*);
  bool has_cuda_handler;  // csrc/ffi/cuda_handlers.cc
};

const std::vector<Kernel>& Kernels() {
  static const std::vector<Kernel> kernels = {
      {"FusedoptAdam", Create<FusedoptAdamXlaOp>, true},
      {"FusedoptSgd", Create<FusedoptSgdXlaOp>, false},
      {"FusedoptSquaredNorms", Create<FusedoptSquaredNormsXlaOp>, false},
      {"FusedoptClipFactors", Create<FusedoptClipFactorsXlaOp>, false},
      {"FusedoptAllFinite", Create<FusedoptAllFiniteXlaOp>, false},
  };
  return kernels;
}

// The XLA devices a kernel is registered for.
std::vector<const char*> Devices(const Kernel& kernel) {
  std::vector<const char*> devices = {tf::DEVICE_CPU_XLA_JIT};
  if (kernel.has_cuda_handler && CudaOptedIn()) devices.push_back(tf::DEVICE_GPU_XLA_JIT);
  return devices;
}

// The four element types of the ops; FusedoptClipFactors' T is its output's.
const std::vector<tf::DataType> kTypes = {tf::DT_HALF, tf::DT_BFLOAT16, tf::DT_FLOAT,
                                          tf::DT_DOUBLE};

const bool kRegistered = [] {
  // The handlers first: a failure is reported by every kernel's compilation.
  (void)RegistrationError();
  for (const Kernel& kernel : Kernels()) {
    for (const char* device : Devices(kernel)) {
      new tf::XlaOpRegistrar(tf::XlaOpRegistrationBuilder::Name(kernel.op)
                                 .Device(device)
                                 .TypeConstraint("T", kTypes)
                                 .Build(kernel.create));
    }
  }
  return true;
}();

// XLA turns the XLA op registrations into kernels of its JIT devices once
// per process (XlaOpRegistry::RegisterCompilationKernels). If an XLA
// compilation ran before this library was loaded, that has happened already
// and the registrations above are never seen ("No registered 'FusedoptAdam'
// OpKernel for XLA_CPU_JIT devices"). Then register the kernels on those
// devices directly, as that function would have.
bool HasKernel(const char* op, const char* device) {
  return absl::StrContains(tf::KernelsRegisteredForOp(op),
                           absl::StrCat("device='", device, "'"));
}

const bool kRegisteredLate = [] {
  (void)kRegistered;
  bool any = false;
  for (const Kernel& kernel : Kernels()) {
    for (const char* device : Devices(kernel)) {
      // AddV2 has a kernel on every XLA JIT device once XLA registered them.
      if (HasKernel("AddV2", device) && !HasKernel(kernel.op, device)) {
        new tf::kernel_factory::OpKernelRegistrar(
            tf::KernelDefBuilder(kernel.op).Device(device).TypeConstraint("T", kTypes).Build(),
            absl::StrCat(kernel.op, "XlaOp"), kernel.create);
        any = true;
      }
    }
  }
  return any;
}();

}  // namespace
}  // namespace fusedopt

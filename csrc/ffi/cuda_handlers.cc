// The CUDA XLA FFI handlers: the same operands as the CPU ones
// (csrc/ffi/handlers.h), every buffer in device memory, the CUDA drivers
// launched on XLA's stream. Plain C++ (the driver API, csrc/cuda/*.h, names
// the stream as CUstream_st*, so no CUDA header is needed here).
//
// Each handler checks every buffer's type and shape before the first launch,
// as the CPU handlers do; what they check by reading values (clip_args
// lo <= hi, denominators > 0, max_norm > 0) is not checked here: the values
// are in device memory and reading them would synchronize (the optimizers
// validate thresholds; docs/gpu.md). The per-step scalars, clip arguments and
// the apply_if predicate stay in device memory and the kernels read them when
// they run (cuda::Scalar::Device, cuda::ClipArgs::Device, cuda::Predicate).
//
// The update, clip-factor and finite handlers only enqueue kernels, memsets
// and device-to-device copies: they allocate nothing, never synchronize, and
// are command-buffer compatible (XLA may capture them in a CUDA graph). The
// squared norms take their per-chunk workspace from XLA's scratch allocator.
//
// Types: the updates take float32 and float64 (what the JAX executor fuses
// on every platform); norms, clip factors and the finite check also float16
// and bfloat16, as on the CPU.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cuda/adam_cuda.h"
#include "cuda/finite_cuda.h"
#include "cuda/norm_cuda.h"
#include "cuda/runtime.h"
#include "cuda/sgd_cuda.h"
#include "ffi/common.h"
#include "ffi/handlers.h"

namespace fusedopt {
namespace ffi_handlers {
namespace {

ffi::Error Unimplemented(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, what);
}

ffi::Error Launched(const std::string& err, const char* target) {
  if (err.empty()) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(target) + ": CUDA launch failed: " + err);
}

// The drivers' name of an XLA float type (kHost: not a float type).
cuda::ScalarType DeviceType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F16:
      return cuda::ScalarType::kFloat16;
    case ffi::DataType::BF16:
      return cuda::ScalarType::kBFloat16;
    case ffi::DataType::F32:
      return cuda::ScalarType::kFloat32;
    case ffi::DataType::F64:
      return cuda::ScalarType::kFloat64;
    default:
      return cuda::ScalarType::kHost;
  }
}

// A result that is not its operand's buffer starts as a device copy of it.
ffi::Error StartFromOnDevice(const ffi::AnyBuffer& in, const ffi::AnyBuffer& out,
                             cuda::Stream stream) {
  if (out.untyped_data() == in.untyped_data() || in.size_bytes() == 0) {
    return ffi::Error::Success();
  }
  const std::string err = cuda::copy_device_async(out.untyped_data(), in.untyped_data(),
                                                  static_cast<int64_t>(in.size_bytes()), stream);
  if (!err.empty()) return ffi::Error::Internal("device copy of an operand failed: " + err);
  return ffi::Error::Success();
}

// The small operands of an update, in device memory: `count` scalars of the
// parameters' type, the clip arguments (ClipArgCount values of that type) and
// apply_if (0 or 1 bool). Shapes and types only (see the top of this file).
struct DeviceOperands {
  std::vector<cuda::Scalar> scalars;
  cuda::ClipArgs clip;
  cuda::Predicate apply_if;
};

ffi::Error ReadDeviceOperands(const ffi::AnyBuffer& scalars, size_t count, const char* layout,
                              const ffi::AnyBuffer& clip_args, ClipKind kind, size_t n,
                              const ffi::AnyBuffer& apply_if, ffi::DataType t,
                              DeviceOperands* out) {
  if (scalars.element_type() != t || scalars.element_count() != count) {
    return ffi::Error::InvalidArgument("scalars must hold " + std::to_string(count) + " " +
                                       TypeName(t) + " values (" + layout + "), got " +
                                       TypeName(scalars.element_type()) + " of shape " +
                                       ShapeString(scalars));
  }
  const int64_t expected = ClipArgCount(kind, static_cast<int64_t>(n));
  if ((kind != ClipKind::kNone && clip_args.element_type() != t) || Count(clip_args) != expected) {
    return ffi::Error::InvalidArgument("clip_args must hold " + std::to_string(expected) + " " +
                                       TypeName(t) + " values for this clip kind, got " +
                                       TypeName(clip_args.element_type()) + " of shape " +
                                       ShapeString(clip_args));
  }
  if (auto e = CheckApplyIf(apply_if); e.failure()) return e;
  const cuda::ScalarType type = DeviceType(t);
  const char* base = static_cast<const char*>(scalars.untyped_data());
  const size_t bytes = scalars.size_bytes() / count;
  out->scalars.clear();
  for (size_t k = 0; k < count; ++k) {
    out->scalars.push_back(cuda::Scalar::Device(type, base + k * bytes));
  }
  out->clip = kind == ClipKind::kNone
                  ? cuda::ClipArgs::None()
                  : cuda::ClipArgs::Device(kind, type, clip_args.untyped_data());
  out->apply_if.device =
      Count(apply_if) == 0 ? nullptr : static_cast<const uint8_t*>(apply_if.untyped_data());
  return ffi::Error::Success();
}

// fn(T{}) for the update types (float32, float64).
template <typename Fn>
ffi::Error WithUpdateType(ffi::DataType t, const char* target, Fn&& fn) {
  switch (t) {
    case ffi::DataType::F32:
      return fn(float{});
    case ffi::DataType::F64:
      return fn(double{});
    default:
      return Unimplemented(std::string(target) + " on CUDA takes float32 or float64 parameters, "
                           "got " + TypeName(t));
  }
}

// fn(T{}) with T the CUDA drivers' host-side storage type of t (any float).
template <typename Fn>
ffi::Error WithDeviceFloatType(ffi::DataType t, const std::string& what, Fn&& fn) {
  switch (t) {
    case ffi::DataType::F16:
      return fn(cuda::Float16{});
    case ffi::DataType::BF16:
      return fn(cuda::BFloat16{});
    case ffi::DataType::F32:
      return fn(float{});
    case ffi::DataType::F64:
      return fn(double{});
    default:
      return ffi::Error::InvalidArgument(what + " has element type " + TypeName(t) +
                                         "; expected a float type");
  }
}

template <typename T>
std::vector<T*> Pointers(const Buffers& b, size_t from, size_t count) {
  std::vector<T*> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(static_cast<T*>(b[from + i].untyped_data()));
  return out;
}

std::vector<int64_t> Sizes(const Buffers& b, size_t count) {
  std::vector<int64_t> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(Count(b[i]));
  return out;
}

// ---------------------------------------------------------------------------
// Adam / AdamW

ffi::Error AdamCuda(CUstream_st* stream, ffi::RemainingArgs remaining_args,
                    ffi::RemainingRets remaining_rets, bool decay, std::string_view clip) {
  ClipKind clip_kind = ClipKind::kNone;
  if (auto e = ParseClipKind(clip, &clip_kind); e.failure()) return e;
  Buffers args, rets;
  if (auto e = Collect(remaining_args, &args); e.failure()) return e;
  if (auto e = Collect(remaining_rets, &rets); e.failure()) return e;
  size_t n = 0;
  if (auto e = AdamTensorCount(args, &n); e.failure()) return e;
  const ffi::DataType t = args[0].element_type();
  return WithUpdateType(t, "fusedopt_adam", [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if (auto e = CheckTensors(args, rets, {{"params", "m", "v", "grads"}, {n, n, n, n}}, n, 3 * n);
        e.failure()) {
      return e;
    }
    DeviceOperands d;
    if (auto e = ReadDeviceOperands(args[4 * n], 6,
                                    "alpha, 1 - beta_1, 1 - beta_2, epsilon, lr, weight_decay",
                                    args[4 * n + 1], clip_kind, n, args[4 * n + 2], t, &d);
        e.failure()) {
      return e;
    }
    for (size_t j = 0; j < 3 * n; ++j) {
      if (auto e = StartFromOnDevice(args[j], rets[j], stream); e.failure()) return e;
    }
    const auto s = cuda::AdamCudaScalars::Precomputed(d.scalars[0], d.scalars[1], d.scalars[2],
                                                      d.scalars[3], d.scalars[4], d.scalars[5]);
    cuda::AdamCudaTensors<T, T> tensors{Pointers<T>(rets, 0, n), Pointers<const T>(args, 3 * n, n),
                                        Pointers<T>(rets, n, n), Pointers<T>(rets, 2 * n, n),
                                        Sizes(args, n)};
    return Launched(cuda::adam_cuda(tensors, s, decay, d.clip, d.apply_if, stream),
                    "fusedopt_adam");
  });
}

// ---------------------------------------------------------------------------
// SGD (plain, momentum, Nesterov)

ffi::Error SgdCuda(CUstream_st* stream, ffi::RemainingArgs remaining_args,
                   ffi::RemainingRets remaining_rets, bool decay, std::string_view clip,
                   std::string_view variant_name) {
  ClipKind clip_kind = ClipKind::kNone;
  if (auto e = ParseClipKind(clip, &clip_kind); e.failure()) return e;
  SgdVariant variant = SgdVariant::kPlain;
  if (auto e = ParseSgdVariant(variant_name, &variant); e.failure()) return e;
  Buffers args, rets;
  if (auto e = Collect(remaining_args, &args); e.failure()) return e;
  if (auto e = Collect(remaining_rets, &rets); e.failure()) return e;
  size_t n = 0, m_count = 0;
  if (auto e = SgdTensorCounts(args, variant, variant_name, &n, &m_count); e.failure()) return e;
  const ffi::DataType t = args[0].element_type();
  return WithUpdateType(t, "fusedopt_sgd", [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if (auto e = CheckTensors(args, rets, {{"params", "momentums", "grads"}, {n, m_count, n}}, n,
                              n + m_count);
        e.failure()) {
      return e;
    }
    const size_t rest = 2 * n + m_count;
    DeviceOperands d;
    if (auto e = ReadDeviceOperands(args[rest], 4, "lr, momentum, weight_decay, decay_lr",
                                    args[rest + 1], clip_kind, n, args[rest + 2], t, &d);
        e.failure()) {
      return e;
    }
    for (size_t j = 0; j < n + m_count; ++j) {
      if (auto e = StartFromOnDevice(args[j], rets[j], stream); e.failure()) return e;
    }
    const cuda::SgdCudaScalars s{d.scalars[0], d.scalars[1], d.scalars[2], d.scalars[3]};
    cuda::SgdCudaTensors<T, T> tensors{Pointers<T>(rets, 0, n),
                                       Pointers<const T>(args, n + m_count, n),
                                       Pointers<T>(rets, n, m_count), Sizes(args, n)};
    return Launched(cuda::sgd_cuda(tensors, s, variant, decay, d.clip, d.apply_if, stream),
                    "fusedopt_sgd");
  });
}

// ---------------------------------------------------------------------------
// Squared norms

ffi::Error SquaredNormsCuda(CUstream_st* stream, ffi::ScratchAllocator scratch,
                            ffi::RemainingArgs remaining_args, ffi::Result<ffi::AnyBuffer> out) {
  Buffers x;
  if (auto e = Collect(remaining_args, &x); e.failure()) return e;
  if (x.empty()) return ffi::Error::InvalidArgument("fusedopt_squared_norms needs x[N], N >= 1");
  const ffi::DataType t = x[0].element_type();
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i].element_type() != t) {
      return ffi::Error::InvalidArgument(Named("x", i) + " has element type " +
                                         TypeName(x[i].element_type()) + " but x[0] has " +
                                         TypeName(t));
    }
  }
  if (out->element_type() != t || out->element_count() != x.size()) {
    return ffi::Error::InvalidArgument("the result must be a " + TypeName(t) + " vector of " +
                                       std::to_string(x.size()) + " squared norms");
  }
  return WithDeviceFloatType(t, "x[0]", [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    const std::vector<int64_t> sizes = Sizes(x, x.size());
    const size_t bytes = cuda::squared_norms_workspace_bytes(sizes);
    void* workspace = nullptr;
    if (bytes > 0) {
      const std::optional<void*> got = scratch.Allocate(bytes, 8);
      if (!got.has_value()) {
        return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                          "fusedopt_squared_norms: no scratch memory for the " +
                              std::to_string(bytes) + "-byte workspace");
      }
      workspace = *got;
    }
    return Launched(cuda::squared_norms_cuda<T>(Pointers<const T>(x, 0, x.size()), sizes,
                                                DeviceType(t), out->untyped_data(), workspace,
                                                bytes, stream),
                    "fusedopt_squared_norms");
  });
}

// ---------------------------------------------------------------------------
// Clip factors

ffi::Error ClipFactorsCuda(CUstream_st* stream, ffi::RemainingArgs remaining_args,
                           ffi::Result<ffi::AnyBuffer> args_out,
                           ffi::Result<ffi::Buffer<ffi::DataType::PRED>> finite_out,
                           std::string_view kind) {
  Buffers in;
  if (auto e = Collect(remaining_args, &in); e.failure()) return e;
  ClipFactorOperands operands;
  if (auto e = CheckClipFactorOperands(kind, in, *args_out, &operands); e.failure()) return e;
  const bool global = operands.global;
  if (global && operands.lists > static_cast<size_t>(cuda::kMaxClipFactorVectors)) {
    return Unimplemented("kind='global_norm' on CUDA sums at most " +
                         std::to_string(cuda::kMaxClipFactorVectors) + " vectors, got " +
                         std::to_string(operands.lists));
  }
  std::vector<cuda::DeviceVector> squared;
  for (size_t l = 0; l < operands.lists; ++l) {
    squared.push_back({DeviceType(in[l].element_type()), in[l].untyped_data(), Count(in[l])});
  }
  const ffi::AnyBuffer& max_norm = in[operands.lists];
  const cuda::ScalarType type = DeviceType(max_norm.element_type());
  return Launched(
      cuda::clip_factors_cuda(
          global ? cuda::ClipFactorKind::kGlobalNorm : cuda::ClipFactorKind::kNorm, squared,
          cuda::Scalar::Device(type, max_norm.untyped_data()), type, args_out->untyped_data(),
          reinterpret_cast<uint8_t*>(finite_out->typed_data()), stream),
      "fusedopt_clip_factors");
}

// ---------------------------------------------------------------------------
// All finite

ffi::Error AllFiniteCuda(CUstream_st* stream, ffi::RemainingArgs remaining_args,
                         ffi::Result<ffi::Buffer<ffi::DataType::PRED>> out) {
  Buffers x;
  if (auto e = Collect(remaining_args, &x); e.failure()) return e;
  constexpr FloatFormat kFormats[] = {FloatFormat::kFloat16, FloatFormat::kBFloat16,
                                      FloatFormat::kFloat32, FloatFormat::kFloat64};
  constexpr ffi::DataType kTypes[] = {ffi::DataType::F16, ffi::DataType::BF16,
                                      ffi::DataType::F32, ffi::DataType::F64};
  std::vector<const void*> data[4];
  std::vector<int64_t> sizes[4];
  for (size_t i = 0; i < x.size(); ++i) {
    int f = 0;
    while (f < 4 && kTypes[f] != x[i].element_type()) ++f;
    if (f == 4) {
      return ffi::Error::InvalidArgument(Named("x", i) + " has element type " +
                                         TypeName(x[i].element_type()) +
                                         "; expected a float type");
    }
    data[f].push_back(x[i].untyped_data());
    sizes[f].push_back(Count(x[i]));
  }
  // One launch per format present: the first sets the flag, the others and
  // their check into it (with no operand at all, the float64 call sets it).
  uint8_t* flag = reinterpret_cast<uint8_t*>(out->typed_data());
  bool first = true;
  for (int f = 0; f < 4; ++f) {
    if (data[f].empty() && !(first && f == 3)) continue;
    const std::string err =
        cuda::all_finite_cuda(kFormats[f], data[f], sizes[f], flag, nullptr, stream, first);
    if (!err.empty()) return Launched(err, "fusedopt_all_finite");
    first = false;
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace ffi_handlers
}  // namespace fusedopt

namespace fh = ::fusedopt::ffi_handlers;

using FusedoptCudaStream = fh::ffi::PlatformStream<CUstream_st*>;
// An alias: a comma inside a template argument would split the macro's
// arguments.
using FusedoptCudaPredBuffer = fh::ffi::Buffer<fh::ffi::DataType::PRED>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiAdamCuda, fh::AdamCuda,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<FusedoptCudaStream>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay")
                                  .Attr<std::string_view>("clip"),
                              {fh::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiSgdCuda, fh::SgdCuda,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<FusedoptCudaStream>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay")
                                  .Attr<std::string_view>("clip")
                                  .Attr<std::string_view>("variant"),
                              {fh::ffi::Traits::kCmdBufferCompatible});

// Not marked command-buffer compatible: it allocates scratch memory.
XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiSquaredNormsCuda, fh::SquaredNormsCuda,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<FusedoptCudaStream>()
                                  .Ctx<fh::ffi::ScratchAllocator>()
                                  .RemainingArgs()
                                  .Ret<fh::ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiClipFactorsCuda, fh::ClipFactorsCuda,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<FusedoptCudaStream>()
                                  .RemainingArgs()
                                  .Ret<fh::ffi::AnyBuffer>()
                                  .Ret<FusedoptCudaPredBuffer>()
                                  .Attr<std::string_view>("kind"),
                              {fh::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiAllFiniteCuda, fh::AllFiniteCuda,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<FusedoptCudaStream>()
                                  .RemainingArgs()
                                  .Ret<FusedoptCudaPredBuffer>(),
                              {fh::ffi::Traits::kCmdBufferCompatible});

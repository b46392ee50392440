// The CUDA XLA FFI handlers: the same operands as the CPU ones
// (csrc/ffi/handlers.h), every buffer in device memory, the CUDA drivers
// launched on XLA's stream. Plain C++ (the driver API, csrc/cuda/*.h, names
// the stream as CUstream_st*, so no CUDA header is needed here).
//
// Command-buffer compatible (XLA may capture the call in a CUDA graph): the
// handlers only enqueue kernels and device-to-device copies; they allocate
// nothing, never synchronize and read no device memory on the host. The
// per-step scalars stay in device memory and the kernels read them when they
// run (cuda::Scalar::Device).
//
// Built: fusedopt_adam (float32, float64), clip='none' and no apply_if
// predicate. The CUDA drivers take device clip arguments and a device
// predicate, but no handler passes them yet, and the SGD, norm, clip-factor
// and finite drivers have no CUDA handler yet: this handler refuses clipped
// or predicated calls with UNIMPLEMENTED rather than run them unclipped or
// unguarded (docs/xla.md).
#include <string>
#include <string_view>
#include <vector>

#include "cuda/adam_cuda.h"
#include "cuda/runtime.h"
#include "ffi/common.h"
#include "ffi/handlers.h"

namespace fusedopt {
namespace ffi_handlers {
namespace {

using Buffers = std::vector<ffi::AnyBuffer>;

ffi::Error Unimplemented(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, what);
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

template <typename T>
ffi::Error AdamCudaTyped(const Buffers& args, const Buffers& rets, size_t n, bool decay,
                         cuda::Stream stream) {
  const ffi::DataType t = args[0].element_type();
  const char* lists[] = {"params", "m", "v", "grads"};
  for (size_t l = 0; l < 4; ++l) {
    for (size_t i = 0; i < n; ++i) {
      if (auto e = CheckLike(args[l * n + i], lists[l], i, t, args[i], "params", i);
          e.failure()) {
        return e;
      }
    }
  }
  if (auto e = CheckCount("results", rets.size(), 3 * n, "params, m, v, aliased to them");
      e.failure()) {
    return e;
  }
  const ffi::AnyBuffer& scalars = args[4 * n];
  if (scalars.element_type() != t || scalars.element_count() != 6) {
    return ffi::Error::InvalidArgument(
        "scalars must hold 6 values of the parameters' type (alpha, 1 - beta_1, 1 - beta_2, "
        "epsilon, lr, weight_decay)");
  }
  for (size_t j = 0; j < 3 * n; ++j) {
    if (auto e = StartFromOnDevice(args[j], rets[j], stream); e.failure()) return e;
  }
  constexpr cuda::ScalarType kType =
      std::is_same<T, float>::value ? cuda::ScalarType::kFloat32 : cuda::ScalarType::kFloat64;
  const T* s = static_cast<const T*>(scalars.untyped_data());
  const auto device_scalars = cuda::AdamCudaScalars::Precomputed(
      cuda::Scalar::Device(kType, s + 0), cuda::Scalar::Device(kType, s + 1),
      cuda::Scalar::Device(kType, s + 2), cuda::Scalar::Device(kType, s + 3),
      cuda::Scalar::Device(kType, s + 4), cuda::Scalar::Device(kType, s + 5));
  cuda::AdamCudaTensors<T, T> tensors;
  for (size_t i = 0; i < n; ++i) {
    tensors.params.push_back(static_cast<T*>(rets[i].untyped_data()));
    tensors.m.push_back(static_cast<T*>(rets[n + i].untyped_data()));
    tensors.v.push_back(static_cast<T*>(rets[2 * n + i].untyped_data()));
    tensors.grads.push_back(static_cast<const T*>(args[3 * n + i].untyped_data()));
    tensors.sizes.push_back(Count(args[i]));
  }
  const std::string err = cuda::adam_cuda(tensors, device_scalars, decay, cuda::ClipArgs::None(),
                                           cuda::Predicate(), stream);
  if (!err.empty()) return ffi::Error::Internal("fusedopt_adam: CUDA launch failed: " + err);
  return ffi::Error::Success();
}

ffi::Error AdamCuda(CUstream_st* stream, ffi::RemainingArgs remaining_args,
                    ffi::RemainingRets remaining_rets, bool decay, std::string_view clip) {
  ClipKind clip_kind = ClipKind::kNone;
  if (auto e = ParseClipKind(clip, &clip_kind); e.failure()) return e;
  if (clip_kind != ClipKind::kNone) {
    return Unimplemented("fusedopt_adam on CUDA does not clip gradients yet (clip='" +
                         std::string(clip) + "')");
  }
  Buffers args, rets;
  if (auto e = Collect(remaining_args, &args); e.failure()) return e;
  if (auto e = Collect(remaining_rets, &rets); e.failure()) return e;
  if (args.size() < 7 || (args.size() - 3) % 4 != 0) {
    return ffi::Error::InvalidArgument(
        "fusedopt_adam takes params[N], m[N], v[N], grads[N], scalars, clip_args, apply_if "
        "(4N + 3 operands, N >= 1), got " + std::to_string(args.size()) + " operands");
  }
  const size_t n = (args.size() - 3) / 4;
  if (Count(args[4 * n + 1]) != 0) {
    return ffi::Error::InvalidArgument("clip_args must be empty for clip='none'");
  }
  if (auto e = CheckApplyIf(args[4 * n + 2]); e.failure()) return e;
  if (Count(args[4 * n + 2]) != 0) {
    return Unimplemented(
        "fusedopt_adam on CUDA does not take an apply_if predicate yet (the CUDA driver "
        "has no device-side predicate)");
  }
  switch (args[0].element_type()) {
    case ffi::DataType::F32:
      return AdamCudaTyped<float>(args, rets, n, decay, stream);
    case ffi::DataType::F64:
      return AdamCudaTyped<double>(args, rets, n, decay, stream);
    default:
      return Unimplemented("fusedopt_adam on CUDA takes float32 or float64 parameters, got " +
                           TypeName(args[0].element_type()));
  }
}

}  // namespace
}  // namespace ffi_handlers
}  // namespace fusedopt

namespace fh = ::fusedopt::ffi_handlers;

using FusedoptCudaStream = fh::ffi::PlatformStream<CUstream_st*>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiAdamCuda, fh::AdamCuda,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<FusedoptCudaStream>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay")
                                  .Attr<std::string_view>("clip"),
                              {fh::ffi::Traits::kCmdBufferCompatible});

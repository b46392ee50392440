// The CPU XLA FFI handlers (csrc/ffi/handlers.h lists their operands): each
// checks every buffer before the first write, translates the buffers into the
// CPU drivers' raw views and runs the driver on XLA's intra-op thread pool.
// The results alias the operands, so the update is in place.
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "cpu/adam_cpu.h"
#include "cpu/finite_cpu.h"
#include "cpu/norm_cpu.h"
#include "cpu/sgd_cpu.h"
#include "ffi/common.h"
#include "ffi/handlers.h"
#include "kernels/clip.h"
#include "kernels/finite.h"

namespace fusedopt {
namespace ffi_handlers {
namespace {

// ---------------------------------------------------------------------------
// Adam / AdamW

constexpr const char* kAdamScalarLayout =
    "alpha, 1 - beta_1, 1 - beta_2, epsilon, lr, weight_decay";

template <typename T>
ffi::Error AdamTyped(const Buffers& args, const Buffers& rets, size_t n, bool decay,
                     ClipKind clip_kind, const ParallelFor& parallel) {
  const ffi::DataType t = args[0].element_type();
  bool aliased = false;
  if (auto e = CheckTensors(args, rets, {{"params", "m", "v", "grads"}, {n, n, n, n}}, n, 3 * n,
                            &aliased);
      e.failure()) {
    return e;
  }
  compute_t<T> s[6];
  if (auto e = ReadScalars<T>(args[4 * n], "scalars", t, 6, s, kAdamScalarLayout); e.failure()) {
    return e;
  }
  GradClip<compute_t<T>> clip;
  if (auto e = ReadClip<T>(args[4 * n + 1], t, clip_kind, static_cast<int64_t>(n), &clip);
      e.failure()) {
    return e;
  }
  const ffi::AnyBuffer& apply_if = args[4 * n + 2];
  if (auto e = CheckApplyIf(apply_if); e.failure()) return e;

  // Checked: from here on nothing fails.
  if (!aliased) {
    for (size_t j = 0; j < 3 * n; ++j) StartFrom(args[j], rets[j]);
  }
  if (!ReadApplyIf(apply_if)) return ffi::Error::Success();
  AdamScalars<compute_t<T>> scalars{s[0], s[1], s[2], s[3], s[4], s[5]};
  AdamTensors<T> tensors;
  tensors.params.reserve(n);
  tensors.m.reserve(n);
  tensors.v.reserve(n);
  tensors.grads.reserve(n);
  tensors.sizes.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    tensors.params.push_back(static_cast<T*>(rets[i].untyped_data()));
    tensors.m.push_back(static_cast<T*>(rets[n + i].untyped_data()));
    tensors.v.push_back(static_cast<T*>(rets[2 * n + i].untyped_data()));
    tensors.grads.push_back(static_cast<const T*>(args[3 * n + i].untyped_data()));
    tensors.sizes.push_back(Count(args[i]));
  }
  adam_cpu(tensors, scalars, decay, parallel, clip);
  return ffi::Error::Success();
}

ffi::Error AdamCpu(ffi::ThreadPool pool, ffi::RemainingArgs remaining_args,
                   ffi::RemainingRets remaining_rets, bool decay, std::string_view clip) {
  ClipKind clip_kind = ClipKind::kNone;
  if (auto e = ParseClipKind(clip, &clip_kind); e.failure()) return e;
  Buffers args, rets;
  if (auto e = Collect(remaining_args, &args); e.failure()) return e;
  if (auto e = Collect(remaining_rets, &rets); e.failure()) return e;
  size_t n = 0;
  if (auto e = AdamTensorCount(args, &n); e.failure()) return e;
  const ParallelFor parallel = PoolParallelFor(&pool);
  return WithFloatType(args[0].element_type(), "params[0]", [&](auto tag) {
    using T = decltype(tag);
    return AdamTyped<T>(args, rets, n, decay, clip_kind, parallel);
  });
}

// ---------------------------------------------------------------------------
// SGD (plain, momentum, Nesterov)

constexpr const char* kSgdScalarLayout = "lr, momentum, weight_decay, decay_lr";

template <typename T>
ffi::Error SgdTyped(const Buffers& args, const Buffers& rets, size_t n, size_t m_count,
                    SgdVariant variant, bool decay, ClipKind clip_kind,
                    const ParallelFor& parallel) {
  const ffi::DataType t = args[0].element_type();
  bool aliased = false;
  if (auto e = CheckTensors(args, rets, {{"params", "momentums", "grads"}, {n, m_count, n}}, n,
                            n + m_count, &aliased);
      e.failure()) {
    return e;
  }
  const size_t rest = 2 * n + m_count;
  compute_t<T> s[4];
  if (auto e = ReadScalars<T>(args[rest], "scalars", t, 4, s, kSgdScalarLayout); e.failure()) {
    return e;
  }
  GradClip<compute_t<T>> clip;
  if (auto e = ReadClip<T>(args[rest + 1], t, clip_kind, static_cast<int64_t>(n), &clip);
      e.failure()) {
    return e;
  }
  const ffi::AnyBuffer& apply_if = args[rest + 2];
  if (auto e = CheckApplyIf(apply_if); e.failure()) return e;

  if (!aliased) {
    for (size_t j = 0; j < n + m_count; ++j) StartFrom(args[j], rets[j]);
  }
  if (!ReadApplyIf(apply_if)) return ffi::Error::Success();
  SgdScalars<compute_t<T>> scalars{s[0], s[1], s[2], s[3]};
  SgdTensors<T> tensors;
  tensors.params.reserve(n);
  tensors.m.reserve(m_count);
  tensors.grads.reserve(n);
  tensors.sizes.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    tensors.params.push_back(static_cast<T*>(rets[i].untyped_data()));
    if (m_count > 0) tensors.m.push_back(static_cast<T*>(rets[n + i].untyped_data()));
    tensors.grads.push_back(static_cast<const T*>(args[n + m_count + i].untyped_data()));
    tensors.sizes.push_back(Count(args[i]));
  }
  sgd_cpu(tensors, scalars, variant, decay, parallel, clip);
  return ffi::Error::Success();
}

ffi::Error SgdCpu(ffi::ThreadPool pool, ffi::RemainingArgs remaining_args,
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
  const ParallelFor parallel = PoolParallelFor(&pool);
  return WithFloatType(args[0].element_type(), "params[0]", [&](auto tag) {
    using T = decltype(tag);
    return SgdTyped<T>(args, rets, n, m_count, variant, decay, clip_kind, parallel);
  });
}

// ---------------------------------------------------------------------------
// Squared norms

ffi::Error SquaredNormsCpu(ffi::ThreadPool pool, ffi::RemainingArgs remaining_args,
                           ffi::Result<ffi::AnyBuffer> out) {
  Buffers x;
  if (auto e = Collect(remaining_args, &x); e.failure()) return e;
  if (x.empty()) return ffi::Error::InvalidArgument("fusedopt_squared_norms needs x[N], N >= 1");
  const ffi::DataType t = x[0].element_type();
  return WithFloatType(t, "x[0]", [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    std::vector<const T*> data;
    std::vector<int64_t> sizes;
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i].element_type() != t) {
        return ffi::Error::InvalidArgument(Named("x", i) + " has element type " +
                                           TypeName(x[i].element_type()) + " but x[0] has " +
                                           TypeName(t));
      }
      data.push_back(static_cast<const T*>(x[i].untyped_data()));
      sizes.push_back(Count(x[i]));
    }
    if (out->element_type() != t || out->element_count() != x.size()) {
      return ffi::Error::InvalidArgument("the result must be a " + TypeName(t) + " vector of " +
                                         std::to_string(x.size()) + " squared norms");
    }
    std::vector<double> sums(x.size());
    squared_norms_cpu(data, sizes, sums.data(), PoolParallelFor(&pool));
    // Rounded once to T (16-bit T via float32, as the TF op).
    T* o = static_cast<T*>(out->untyped_data());
    for (size_t i = 0; i < x.size(); ++i) o[i] = store<T>(static_cast<compute_t<T>>(sums[i]));
    return ffi::Error::Success();
  });
}

// ---------------------------------------------------------------------------
// Clip factors

// Element i of a float vector of any of the four types, as double.
double AsDouble(const ffi::AnyBuffer& b, size_t i) {
  const void* p = b.untyped_data();
  switch (b.element_type()) {
    case ffi::DataType::F16:
      return load(static_cast<const Half*>(p)[i]);
    case ffi::DataType::BF16:
      return load(static_cast<const BFloat16*>(p)[i]);
    case ffi::DataType::F32:
      return static_cast<const float*>(p)[i];
    default:
      return static_cast<const double*>(p)[i];
  }
}

ffi::Error ClipFactorsCpu(ffi::RemainingArgs remaining_args, ffi::Result<ffi::AnyBuffer> args_out,
                          ffi::Result<ffi::Buffer<ffi::DataType::PRED>> finite_out,
                          std::string_view kind) {
  Buffers in;
  if (auto e = Collect(remaining_args, &in); e.failure()) return e;
  ClipFactorOperands operands;
  if (auto e = CheckClipFactorOperands(kind, in, *args_out, &operands); e.failure()) return e;
  const bool global = operands.global;
  std::vector<double> squared;
  for (size_t l = 0; l < operands.lists; ++l) {
    for (size_t i = 0; i < in[l].element_count(); ++i) squared.push_back(AsDouble(in[l], i));
  }
  const ffi::AnyBuffer& max_norm_b = in[operands.lists];
  return WithFloatType(max_norm_b.element_type(), "max_norm", [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    using S = compute_t<T>;
    const T max_norm_t = *static_cast<const T*>(max_norm_b.untyped_data());
    const double max_norm = static_cast<double>(load(max_norm_t));
    if (!(max_norm > 0)) {
      return ffi::Error::InvalidArgument("max_norm must be > 0, got " + std::to_string(max_norm));
    }
    T* a = static_cast<T*>(args_out->untyped_data());
    bool all_finite = true;
    if (global) {
      const double total = sum_in_order(squared.data(), static_cast<int64_t>(squared.size()));
      all_finite = std::isfinite(total);
      a[0] = store<T>(clip_by_global_norm_scalars<S>(max_norm, total).a);
    } else {
      a[0] = max_norm_t;
      for (size_t i = 0; i < squared.size(); ++i) {
        all_finite = all_finite && std::isfinite(squared[i]);
        a[i + 1] = store<T>(clip_by_norm_scalars<S>(max_norm, squared[i]).b);
      }
    }
    *finite_out->typed_data() = all_finite;
    return ffi::Error::Success();
  });
}

// ---------------------------------------------------------------------------
// All finite

ffi::Error AllFiniteCpu(ffi::ThreadPool pool, ffi::RemainingArgs remaining_args,
                        ffi::Result<ffi::Buffer<ffi::DataType::PRED>> out) {
  Buffers x;
  if (auto e = Collect(remaining_args, &x); e.failure()) return e;
  // Grouped by format: one pass per element type present.
  constexpr FloatFormat kFormats[] = {FloatFormat::kFloat16, FloatFormat::kBFloat16,
                                      FloatFormat::kFloat32, FloatFormat::kFloat64};
  std::vector<const void*> data[4];
  std::vector<int64_t> sizes[4];
  for (size_t i = 0; i < x.size(); ++i) {
    int f;
    switch (x[i].element_type()) {
      case ffi::DataType::F16:
        f = 0;
        break;
      case ffi::DataType::BF16:
        f = 1;
        break;
      case ffi::DataType::F32:
        f = 2;
        break;
      case ffi::DataType::F64:
        f = 3;
        break;
      default:
        return ffi::Error::InvalidArgument(Named("x", i) + " has element type " +
                                           TypeName(x[i].element_type()) +
                                           "; expected a float type");
    }
    data[f].push_back(x[i].untyped_data());
    sizes[f].push_back(Count(x[i]));
  }
  const ParallelFor parallel = PoolParallelFor(&pool);
  bool finite = true;
  for (int f = 0; f < 4 && finite; ++f) {
    if (!data[f].empty()) finite = all_finite_cpu(kFormats[f], data[f], sizes[f], parallel);
  }
  *out->typed_data() = finite;
  return ffi::Error::Success();
}

}  // namespace
}  // namespace ffi_handlers
}  // namespace fusedopt

namespace fh = ::fusedopt::ffi_handlers;

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiAdamCpu, fh::AdamCpu,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<fh::ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay")
                                  .Attr<std::string_view>("clip"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiSgdCpu, fh::SgdCpu,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<fh::ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("decay")
                                  .Attr<std::string_view>("clip")
                                  .Attr<std::string_view>("variant"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiSquaredNormsCpu, fh::SquaredNormsCpu,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<fh::ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .Ret<fh::ffi::AnyBuffer>());

// An alias: a comma inside a template argument would split the macro's
// arguments.
using FusedoptPredBuffer = fh::ffi::Buffer<fh::ffi::DataType::PRED>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiClipFactorsCpu, fh::ClipFactorsCpu,
                              fh::ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .Ret<fh::ffi::AnyBuffer>()
                                  .Ret<FusedoptPredBuffer>()
                                  .Attr<std::string_view>("kind"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedoptFfiAllFiniteCpu, fh::AllFiniteCpu,
                              fh::ffi::Ffi::Bind()
                                  .Ctx<fh::ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .Ret<FusedoptPredBuffer>());

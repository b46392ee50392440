// What the XLA FFI handlers share: reading XLA's buffers into the drivers'
// raw views, the checks behind every error message, and XLA's CPU thread pool
// as a ParallelFor.
//
// Only the header-only FFI API (xla/ffi/api/ffi.h) is used, so the same
// handler objects register into TensorFlow's XLA (csrc/tf/xla_ops.cc) and into
// jaxlib's (python/fusedopt/backends/jax/ffi.py through the _xla_ffi module).
// No per-element math here: the rules are in csrc/kernels/, the loops in
// csrc/cpu/ and csrc/cuda/.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "cpu/parallel.h"
#include "kernels/clip.h"
#include "kernels/half.h"
#include "kernels/sgd.h"
#include "xla/ffi/api/ffi.h"

namespace fusedopt {
namespace ffi_handlers {

namespace ffi = ::xla::ffi;

// ---------------------------------------------------------------------------
// Element types.

inline std::string TypeName(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::F64:
      return "float64";
    case ffi::DataType::PRED:
      return "bool";
    default:
      return "XLA type " + std::to_string(static_cast<int>(t));
  }
}

// Calls fn(T{}) with T the drivers' storage type of `t` (float, double, Half,
// BFloat16), or returns an error naming `what`.
template <typename Fn>
ffi::Error WithFloatType(ffi::DataType t, const std::string& what, Fn&& fn) {
  switch (t) {
    case ffi::DataType::F32:
      return fn(float{});
    case ffi::DataType::F64:
      return fn(double{});
    case ffi::DataType::F16:
      return fn(Half{});
    case ffi::DataType::BF16:
      return fn(BFloat16{});
    default:
      return ffi::Error::InvalidArgument(
          what + " has element type " + TypeName(t) +
          "; expected float16, bfloat16, float32 or float64");
  }
}

// ---------------------------------------------------------------------------
// Buffers: the call's operands and results as vectors, with names for errors.

// The remaining operands (results) with the buffer at index i read straight
// from the C call frame, after the type check `isa` makes: get<AnyBuffer>(i)
// builds a diagnostic engine and an ErrorOr for every buffer, and a call over
// 300 tensors has 2,100 of them (docs/backends.md, "Speed").
class OperandView : public ffi::RemainingArgs {
 public:
  explicit OperandView(const ffi::RemainingArgs& a) : ffi::RemainingArgs(a) {}
  ffi::AnyBuffer buffer(size_t i) const {
    return ffi::AnyBuffer(static_cast<const XLA_FFI_Buffer*>(args()->args[offset() + i]));
  }
};

class ResultView : public ffi::RemainingRets {
 public:
  explicit ResultView(const ffi::RemainingRets& r) : ffi::RemainingRets(r) {}
  ffi::AnyBuffer buffer(size_t i) const {
    return ffi::AnyBuffer(static_cast<const XLA_FFI_Buffer*>(rets()->rets[offset() + i]));
  }
};

inline ffi::Error Collect(const ffi::RemainingArgs& args, std::vector<ffi::AnyBuffer>* out) {
  const OperandView view(args);
  out->clear();
  out->reserve(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args.isa<ffi::AnyBuffer>(i)) {
      return ffi::Error::InvalidArgument("operand " + std::to_string(i) + " is not a buffer");
    }
    out->push_back(view.buffer(i));
  }
  return ffi::Error::Success();
}

inline ffi::Error Collect(const ffi::RemainingRets& rets, std::vector<ffi::AnyBuffer>* out) {
  const ResultView view(rets);
  out->clear();
  out->reserve(rets.size());
  for (size_t i = 0; i < rets.size(); ++i) {
    if (!rets.isa<ffi::AnyBuffer>(i)) {
      return ffi::Error::InvalidArgument("result " + std::to_string(i) + " is not a buffer");
    }
    out->push_back(view.buffer(i));
  }
  return ffi::Error::Success();
}

inline std::string Named(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

inline std::string ShapeString(const ffi::AnyBuffer& b) {
  std::string s = "[";
  const auto dims = b.dimensions();
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

// A plain loop: std::equal on the int64 dimensions becomes a call to memcmp,
// which costs more than the comparison of the one or two dimensions a tensor
// usually has, and this runs for every operand and result of every call.
inline bool SameShape(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  const auto da = a.dimensions(), db = b.dimensions();
  if (da.size() != db.size()) return false;
  for (size_t i = 0; i < da.size(); ++i) {
    if (da[i] != db[i]) return false;
  }
  return true;
}

// Why `b` (called list[i]) is not of element type `t` and the shape of `like`
// (called like_list[k]); out of line, for the rare call that fails.
[[gnu::cold, gnu::noinline]] inline ffi::Error LikeError(const ffi::AnyBuffer& b,
                                                         const char* list, size_t i,
                                                         ffi::DataType t,
                                                         const ffi::AnyBuffer& like,
                                                         const char* like_list, size_t k) {
  if (b.element_type() != t) {
    return ffi::Error::InvalidArgument(Named(list, i) + " has element type " +
                                       TypeName(b.element_type()) + " but " +
                                       Named(like_list, k) + " has " + TypeName(t));
  }
  if (!SameShape(b, like)) {
    return ffi::Error::InvalidArgument(Named(list, i) + " has shape " + ShapeString(b) +
                                       " but " + Named(like_list, k) + " has shape " +
                                       ShapeString(like));
  }
  return ffi::Error::Success();
}

// `b` (called list[i]) has element type `t` and the shape of `like` (called
// like_list[k]). The names are built only for the error: this runs once per
// tensor of every call, and the strings cost more than the comparison.
inline ffi::Error CheckLike(const ffi::AnyBuffer& b, const char* list, size_t i, ffi::DataType t,
                            const ffi::AnyBuffer& like, const char* like_list, size_t k) {
  if (XLA_FFI_PREDICT_TRUE(b.element_type() == t && SameShape(b, like))) {
    return ffi::Error::Success();
  }
  return LikeError(b, list, i, t, like, like_list, k);
}

inline ffi::Error CheckCount(const char* what, size_t got, size_t expected,
                             const std::string& why) {
  if (got != expected) {
    return ffi::Error::InvalidArgument(std::string(what) + ": got " + std::to_string(got) +
                                       ", expected " + std::to_string(expected) + " (" + why +
                                       ")");
  }
  return ffi::Error::Success();
}

inline int64_t Count(const ffi::AnyBuffer& b) { return static_cast<int64_t>(b.element_count()); }

// A result aliases its operand (the callers declare the aliasing). XLA gives
// a different buffer only where it could not alias; then the result starts
// as a copy of the operand and is updated in place like the aliased case.
inline void StartFrom(const ffi::AnyBuffer& in, const ffi::AnyBuffer& out) {
  if (out.untyped_data() != in.untyped_data() && in.size_bytes() > 0) {
    std::memcpy(out.untyped_data(), in.untyped_data(), in.size_bytes());
  }
}

// The operands or results of a call, in order.
using Buffers = std::vector<ffi::AnyBuffer>;

// The tensor operands of an update, by list: lists[l][i] is operand
// offsets[l] + i; lists 0..written-1 are written (result j aliases operand j).
// Views of the caller's brace lists, which live until the call returns: this
// is built on every call, and allocates nothing.
struct UpdateLists {
  std::initializer_list<const char*> names;
  std::initializer_list<size_t> sizes;  // one per name
};

// Checks that every tensor of `lists` (in `args`, from operand 0 on) has
// params[0]'s element type and params[i]'s shape, and that `rets` pairs up
// with the first `written` operands. *aliased (if given) says whether every
// result is its operand's buffer, as it is whenever XLA could alias them:
// then no result needs to start as a copy (StartFrom).
//
// Tensor by tensor, every list's i-th and the results that alias them, while
// params[i]'s buffer is at hand: a call over 300 tensors reads 2,100 buffer
// descriptors here, and one pass over them costs less than one per list.
inline ffi::Error CheckTensors(const Buffers& args, const Buffers& rets,
                               const UpdateLists& lists, size_t num_tensors, size_t written,
                               bool* aliased = nullptr) {
  if (auto e = CheckCount("results", rets.size(), written,
                          "one per written operand, aliased to it");
      e.failure()) {
    return e;
  }
  const ffi::DataType t = args[0].element_type();
  bool all_aliased = true;
  for (size_t i = 0; i < num_tensors; ++i) {
    const ffi::AnyBuffer& like = args[i];
    size_t offset = 0;
    for (size_t l = 0; l < lists.names.size(); ++l) {
      // Every list holds at most one tensor per parameter (callers pass N or
      // none), so lists[l][i] is shaped like params[i].
      const size_t size = lists.sizes.begin()[l];
      if (i < size) {
        const size_t j = offset + i;
        if (auto e = CheckLike(args[j], lists.names.begin()[l], i, t, like, "params", i);
            e.failure()) {
          return e;
        }
        if (j < written) {
          if (XLA_FFI_PREDICT_FALSE(rets[j].element_type() != t || !SameShape(rets[j], like))) {
            return ffi::Error::InvalidArgument(
                "result " + std::to_string(j) + " must have the element type and shape of "
                "operand " + std::to_string(j) + " (it aliases it)");
          }
          all_aliased = all_aliased && rets[j].untyped_data() == args[j].untyped_data();
        }
      }
      offset += size;
    }
  }
  if (aliased != nullptr) *aliased = all_aliased;
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// The small operands: per-step scalars, clip arguments, the predicate.

// `count` values of storage type T in the compute type (16-bit types widen
// exactly), from a host buffer of exactly that many elements.
template <typename T>
ffi::Error ReadScalars(const ffi::AnyBuffer& b, const char* name, ffi::DataType t, size_t count,
                       compute_t<T>* out, const char* layout) {
  if (b.element_type() != t) {
    return ffi::Error::InvalidArgument(std::string(name) + " has element type " +
                                       TypeName(b.element_type()) + "; expected " + TypeName(t) +
                                       " (the parameters' type)");
  }
  if (b.element_count() != count) {
    return ffi::Error::InvalidArgument(std::string(name) + " must hold " +
                                       std::to_string(count) + " values (" + layout + "), got " +
                                       std::to_string(b.element_count()));
  }
  const T* x = static_cast<const T*>(b.untyped_data());
  for (size_t i = 0; i < count; ++i) out[i] = load(x[i]);
  return ffi::Error::Success();
}

inline ffi::Error ParseClipKind(std::string_view name, ClipKind* kind) {
  if (name == "none") {
    *kind = ClipKind::kNone;
  } else if (name == "value") {
    *kind = ClipKind::kValue;
  } else if (name == "ratio") {
    *kind = ClipKind::kRatio;
  } else if (name == "scale") {
    *kind = ClipKind::kScale;
  } else {
    return ffi::Error::InvalidArgument("clip must be 'none', 'value', 'ratio' or 'scale', got '" +
                                       std::string(name) + "'");
  }
  return ffi::Error::Success();
}

// SGD's variant attribute.
inline ffi::Error ParseSgdVariant(std::string_view name, SgdVariant* variant) {
  if (name == "plain") {
    *variant = SgdVariant::kPlain;
  } else if (name == "momentum") {
    *variant = SgdVariant::kMomentum;
  } else if (name == "nesterov") {
    *variant = SgdVariant::kNesterov;
  } else {
    return ffi::Error::InvalidArgument(
        "variant must be 'plain', 'momentum' or 'nesterov', got '" + std::string(name) + "'");
  }
  return ffi::Error::Success();
}

// The tensor count N of an Adam call from its operand count: params, m, v,
// grads (N each), then scalars, clip_args, apply_if.
inline ffi::Error AdamTensorCount(const Buffers& args, size_t* n) {
  if (args.size() < 7 || (args.size() - 3) % 4 != 0) {
    return ffi::Error::InvalidArgument(
        "fusedopt_adam takes params[N], m[N], v[N], grads[N], scalars, clip_args, apply_if "
        "(4N + 3 operands, N >= 1), got " + std::to_string(args.size()) + " operands");
  }
  *n = (args.size() - 3) / 4;
  return ffi::Error::Success();
}

// The tensor counts of an SGD call: params (N), momentums (N, none for plain
// SGD), grads (N), then scalars, clip_args, apply_if.
inline ffi::Error SgdTensorCounts(const Buffers& args, SgdVariant variant,
                                  std::string_view variant_name, size_t* n, size_t* m_count) {
  const size_t lists = variant == SgdVariant::kPlain ? 2 : 3;
  if (args.size() < lists + 3 || (args.size() - 3) % lists != 0) {
    return ffi::Error::InvalidArgument(
        std::string("fusedopt_sgd with variant='") + std::string(variant_name) + "' takes " +
        (lists == 2 ? "params[N], grads[N]" : "params[N], momentums[N], grads[N]") +
        ", scalars, clip_args, apply_if (" + std::to_string(lists) +
        "N + 3 operands, N >= 1), got " + std::to_string(args.size()) + " operands");
  }
  *n = (args.size() - 3) / lists;
  *m_count = lists == 2 ? 0 : *n;
  return ffi::Error::Success();
}

// The operands of a clip-factors call, checked: kind 'norm' (one vector of a
// group's squared norms) or 'global_norm' (any number of vectors), each a
// float vector, then max_norm, a float scalar; clip_args (the result) of
// max_norm's type with 1 value (global) or N + 1 ('norm', N squared norms).
struct ClipFactorOperands {
  bool global;
  size_t lists;  // the squared-norm vectors: in[0, lists); max_norm is in[lists]
};

inline bool IsFloatType(ffi::DataType t) {
  return t == ffi::DataType::F16 || t == ffi::DataType::BF16 || t == ffi::DataType::F32 ||
         t == ffi::DataType::F64;
}

inline ffi::Error CheckClipFactorOperands(std::string_view kind, const Buffers& in,
                                          const ffi::AnyBuffer& args_out,
                                          ClipFactorOperands* out) {
  const bool global = kind == "global_norm";
  if (!global && kind != "norm") {
    return ffi::Error::InvalidArgument("kind must be 'norm' or 'global_norm', got '" +
                                       std::string(kind) + "'");
  }
  if (in.size() < 2) {
    return ffi::Error::InvalidArgument(
        "fusedopt_clip_factors takes squared_norms[K] (K >= 1) and max_norm, got " +
        std::to_string(in.size()) + " operands");
  }
  const size_t lists = in.size() - 1;
  if (!global && lists != 1) {
    return ffi::Error::InvalidArgument(
        "kind='norm' takes the squared norms of one call (one vector), got " +
        std::to_string(lists));
  }
  size_t total = 0;
  for (size_t l = 0; l < lists; ++l) {
    if (!IsFloatType(in[l].element_type())) {
      return ffi::Error::InvalidArgument(Named("squared_norms", l) + " has element type " +
                                         TypeName(in[l].element_type()) +
                                         "; expected a float type");
    }
    if (in[l].dimensions().size() != 1) {
      return ffi::Error::InvalidArgument(Named("squared_norms", l) +
                                         " must be a vector, got shape " + ShapeString(in[l]));
    }
    total += in[l].element_count();
  }
  const ffi::AnyBuffer& max_norm = in[lists];
  if (!IsFloatType(max_norm.element_type()) || max_norm.element_count() != 1 ||
      max_norm.dimensions().size() != 0) {
    return ffi::Error::InvalidArgument("max_norm must be a float scalar, got " +
                                       TypeName(max_norm.element_type()) + " of shape " +
                                       ShapeString(max_norm));
  }
  const size_t expected = global ? 1 : total + 1;
  if (args_out.element_type() != max_norm.element_type() ||
      args_out.element_count() != expected) {
    return ffi::Error::InvalidArgument("clip_args must be a " +
                                       TypeName(max_norm.element_type()) + " vector of " +
                                       std::to_string(expected) + " values");
  }
  *out = {global, lists};
  return ffi::Error::Success();
}

// How many clip_args a clip kind takes for `n` tensors (csrc/tf/clip_args.h:
// value [lo, hi], ratio [numerator, den_0..den_{n-1}], scale [scale]).
inline int64_t ClipArgCount(ClipKind kind, int64_t n) {
  switch (kind) {
    case ClipKind::kNone:
      return 0;
    case ClipKind::kValue:
      return 2;
    case ClipKind::kRatio:
      return n + 1;
    case ClipKind::kScale:
      return 1;
  }
  return 0;
}

// The clip request of an update over `n` tensors, from the host buffer
// clip_args (storage type T), checked as the TF ops check it
// (csrc/tf/clip_args.h): a ratio denominator <= 0 or lo > hi is refused, NaN
// passes (a non-finite norm makes the factors NaN in Keras too).
template <typename T>
ffi::Error ReadClip(const ffi::AnyBuffer& b, ffi::DataType t, ClipKind kind, int64_t n,
                    GradClip<compute_t<T>>* clip) {
  using S = compute_t<T>;
  clip->kind = kind;
  clip->scalars.clear();
  const int64_t expected = ClipArgCount(kind, n);
  if (kind != ClipKind::kNone && b.element_type() != t) {
    return ffi::Error::InvalidArgument("clip_args has element type " +
                                       TypeName(b.element_type()) + "; expected " + TypeName(t) +
                                       " (the parameters' type)");
  }
  if (Count(b) != expected) {
    return ffi::Error::InvalidArgument("clip_args must hold " + std::to_string(expected) +
                                       " values for this clip kind, got shape " + ShapeString(b));
  }
  if (kind == ClipKind::kNone) return ffi::Error::Success();
  const T* x = static_cast<const T*>(b.untyped_data());
  if (kind == ClipKind::kRatio) {
    const S numerator = load(x[0]);
    for (int64_t i = 0; i < n; ++i) {
      const S den = load(x[i + 1]);
      if (den <= S(0)) {
        return ffi::Error::InvalidArgument(
            "clip_args[" + std::to_string(i + 1) + "] (the clip-by-norm denominator of grads[" +
            std::to_string(i) + "]) must be > 0 (max(norm, clip_norm)), got " +
            std::to_string(static_cast<double>(den)));
      }
      clip->scalars.push_back({numerator, den});
    }
  } else if (kind == ClipKind::kValue) {
    const S lo = load(x[0]), hi = load(x[1]);
    if (lo > hi) {
      return ffi::Error::InvalidArgument(
          "clip_args = [lo, hi] of clip='value' needs lo <= hi, got [" +
          std::to_string(static_cast<double>(lo)) + ", " +
          std::to_string(static_cast<double>(hi)) + "]");
    }
    clip->scalars.push_back({lo, hi});
  } else {
    clip->scalars.push_back({load(x[0]), S(0)});
  }
  return ffi::Error::Success();
}

// apply_if: a bool buffer of 0 elements (always apply) or 1 (apply when true).
inline ffi::Error CheckApplyIf(const ffi::AnyBuffer& b) {
  if (b.element_type() != ffi::DataType::PRED || b.element_count() > 1) {
    return ffi::Error::InvalidArgument(
        "apply_if must be a bool buffer of 0 elements (always apply) or 1 (the predicate), "
        "got " + TypeName(b.element_type()) + " of shape " + ShapeString(b));
  }
  return ffi::Error::Success();
}

// Host memory only (the CPU handlers).
inline bool ReadApplyIf(const ffi::AnyBuffer& b) {
  return b.element_count() == 0 || *static_cast<const uint8_t*>(b.untyped_data()) != 0;
}

// ---------------------------------------------------------------------------
// XLA's intra-op thread pool as the drivers' ParallelFor.
//
// The calling thread may itself be one of the pool's threads, and the pool
// may be busy with other work: so the caller never waits for a task that has
// not started. Every thread (the caller included) takes shares from a shared
// counter until none is left; the caller then waits only for shares already
// taken. A helper that starts after that finds nothing left and returns
// without touching the work (which lives on the caller's stack); the state it
// reads is kept alive by its shared_ptr.
class SharedShares {
 public:
  SharedShares(int64_t num_tasks, int64_t num_shares, const TaskRange* fn)
      : num_tasks_(num_tasks), num_shares_(num_shares), fn_(fn) {}

  void Work() {
    for (;;) {
      int64_t k;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (next_ >= num_shares_) return;
        k = next_++;
        ++running_;
      }
      (*fn_)(num_tasks_ * k / num_shares_, num_tasks_ * (k + 1) / num_shares_);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--running_ == 0 && next_ >= num_shares_) done_.notify_all();
    }
  }

  void Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return next_ >= num_shares_ && running_ == 0; });
  }

 private:
  const int64_t num_tasks_;
  const int64_t num_shares_;
  const TaskRange* const fn_;
  std::mutex mutex_;
  std::condition_variable done_;
  int64_t next_ = 0;     // the next share to take
  int64_t running_ = 0;  // shares taken and not finished
};

// One share per pool thread; the caller works too. Without a pool (or with
// one thread) everything runs on the caller.
inline ParallelFor PoolParallelFor(ffi::ThreadPool* pool) {
  const int64_t threads = pool->num_threads();
  return [pool, threads](int64_t num_tasks, int64_t /*cost*/, const TaskRange& fn) {
    if (num_tasks <= 0) return;
    const int64_t shares = std::min<int64_t>(num_tasks, std::max<int64_t>(threads, 1));
    if (shares <= 1) {
      fn(0, num_tasks);
      return;
    }
    auto state = std::make_shared<SharedShares>(num_tasks, shares, &fn);
    for (int64_t i = 1; i < shares; ++i) pool->Schedule([state] { state->Work(); });
    state->Work();
    state->Wait();
  };
}

}  // namespace ffi_handlers
}  // namespace fusedopt

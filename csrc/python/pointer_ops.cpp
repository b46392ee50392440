// fusedopt._C's entry points over raw pointers, for callers that hold
// framework tensors: the PyTorch custom ops (python/fusedopt/backends/torch/
// ops.py) pass each tensor's data_ptr(), its element count and dtype, and the
// per-step scalars as the address of a small array of the compute dtype (a
// tensor of the same device), so that a hyperparameter that is a tensor is
// never read back to Python.
//
// Pointers carry no type, extent or owner: the caller has checked the tensors
// (dtype, device, contiguity, shapes) and keeps them alive for the call. This
// layer checks the rest before the first write (list lengths, sizes, null
// pointers, no written tensor overlapping another, names, clip arguments) and
// only translates; the math is in csrc/kernels/, the loops in csrc/cpu/.
//
// Scalars, in this order (kernels/adam.h, kernels/sgd.h):
//   adam, form "keras": alpha, 1 - beta_1, 1 - beta_2, epsilon, lr, weight_decay
//   adam, form "torch": alpha, beta_1, 1 - beta_1, beta_2, 1 - beta_2, epsilon,
//                       decay_scale
//   sgd,  form "keras": lr, momentum, weight_decay, decay_lr
//   sgd,  form "torch": -lr, momentum, decay_scale
// Clip arguments (kernels/clip.h; the TF ops' clip_args, csrc/tf/clip_args.h):
//   "value": [lo, hi]   "ratio": [numerator, denominator_0, ...]   "scale": [scale]
// apply_if: the address of one bool byte (0: write nothing), or 0 for none.
//
// device < 0 is host memory. device >= 0 is CUDA device memory on that device
// (builds with CUDA): the CUDA drivers (csrc/cuda/) run on `stream` (a
// cudaStream_t, 0 for the legacy default stream; torch passes its current
// stream), everything enqueued, nothing synchronized or allocated, so that a
// step can be captured in a CUDA graph. There the scalars, clip arguments,
// apply_if and max_norm are device memory too, read by the kernels when they
// run: the host checks of their values (lo <= hi, denominators > 0,
// max_norm > 0) need a sync and are the caller's (the Keras optimizers
// validate thresholds at construction); squared_norms takes a workspace of
// pointer_squared_norms_workspace_bytes(sizes) bytes from the caller.
#include "python/pointer_ops.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/adam_cpu.h"
#include "cpu/finite_cpu.h"
#include "cpu/norm_cpu.h"
#include "cpu/parallel.h"
#include "cpu/sgd_cpu.h"
#include "kernels/clip.h"
#include "kernels/half.h"
#include "python/gil.h"

#if defined(FUSEDOPT_WITH_CUDA)
#include <cuda_runtime_api.h>

#include "cuda/adam_cuda.h"
#include "cuda/finite_cuda.h"
#include "cuda/norm_cuda.h"
#include "cuda/runtime.h"
#include "cuda/sgd_cuda.h"
#endif

namespace fusedopt {
namespace py = pybind11;
namespace {

using Pointers = std::vector<uintptr_t>;
using Sizes = std::vector<int64_t>;

ParallelFor pool() {
  return [](int64_t n, int64_t cost, const TaskRange& fn) {
    default_thread_pool().parallel_for(n, cost, fn);
  };
}

FloatFormat parse_dtype(const std::string& dtype, const std::string& arg) {
  if (dtype == "float16") return FloatFormat::kFloat16;
  if (dtype == "bfloat16") return FloatFormat::kBFloat16;
  if (dtype == "float32") return FloatFormat::kFloat32;
  if (dtype == "float64") return FloatFormat::kFloat64;
  throw py::type_error(arg + " must be 'float16', 'bfloat16', 'float32' or 'float64', got '" +
                       dtype + "'");
}

// fn(T{}) with T the storage type of `format`.
template <typename Fn>
void with_type(FloatFormat format, Fn&& fn) {
  switch (format) {
    case FloatFormat::kFloat16:
      return fn(Half{});
    case FloatFormat::kBFloat16:
      return fn(BFloat16{});
    case FloatFormat::kFloat32:
      return fn(float{});
    case FloatFormat::kFloat64:
      return fn(double{});
  }
}

ClipKind parse_clip(const std::string& clip) {
  if (clip == "none") return ClipKind::kNone;
  if (clip == "value") return ClipKind::kValue;
  if (clip == "ratio") return ClipKind::kRatio;
  if (clip == "scale") return ClipKind::kScale;
  throw py::value_error("clip must be 'none', 'value', 'ratio' or 'scale', got '" + clip + "'");
}

bool parse_form(const std::string& form) {
  if (form == "torch") return true;
  if (form == "keras") return false;
  throw py::value_error("form must be 'keras' or 'torch', got '" + form + "'");
}

SgdVariant parse_variant(const std::string& variant) {
  if (variant == "plain") return SgdVariant::kPlain;
  if (variant == "momentum") return SgdVariant::kMomentum;
  if (variant == "nesterov") return SgdVariant::kNesterov;
  throw py::value_error("variant must be 'plain', 'momentum' or 'nesterov', got '" + variant +
                        "'");
}

void check_address(uintptr_t address, const std::string& arg) {
  if (address == 0) throw py::value_error(arg + " is a null pointer");
}

#if defined(FUSEDOPT_WITH_CUDA)

// ------------------------------------------------------------ CUDA memory

// Runs the rest of the entry on `device` (the tensors' device), restoring the
// caller's current device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int64_t device) {
    const std::string problem = cuda::cuda_problem();
    if (!problem.empty()) throw std::runtime_error(problem);
    check(cudaGetDevice(&previous_));
    if (previous_ != device) check(cudaSetDevice(static_cast<int>(device)));
  }
  ~DeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

  static void check(cudaError_t err) {
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error(std::string(cudaGetErrorName(err)) + ": " +
                               cudaGetErrorString(err));
    }
  }

 private:
  int previous_ = 0;
};

// A driver's error ("" when every launch was enqueued) as an exception.
void check_launch(const std::string& err) {
  if (!err.empty()) throw std::runtime_error(err);
}

cuda::Stream as_stream(uintptr_t stream) { return reinterpret_cast<cuda::Stream>(stream); }

cuda::ScalarType device_type(FloatFormat format) {
  switch (format) {
    case FloatFormat::kFloat16:
      return cuda::ScalarType::kFloat16;
    case FloatFormat::kBFloat16:
      return cuda::ScalarType::kBFloat16;
    case FloatFormat::kFloat32:
      return cuda::ScalarType::kFloat32;
    case FloatFormat::kFloat64:
    default:
      return cuda::ScalarType::kFloat64;
  }
}

// The CUDA drivers' host-side name of the storage type T (kernels/half.h's
// Half and BFloat16 are cuda::Float16 and cuda::BFloat16 there).
template <typename T>
struct CudaStorage {
  using type = T;
};
template <>
struct CudaStorage<Half> {
  using type = cuda::Float16;
};
template <>
struct CudaStorage<BFloat16> {
  using type = cuda::BFloat16;
};

// Element k of a device vector of the compute dtype S, as a driver scalar.
template <typename S>
cuda::Scalar device_scalar(uintptr_t vector, int k) {
  return cuda::Scalar::Device(sizeof(S) == 8 ? cuda::ScalarType::kFloat64
                                             : cuda::ScalarType::kFloat32,
                              reinterpret_cast<const S*>(vector) + k);
}

template <typename S>
cuda::ClipArgs device_clip(ClipKind kind, uintptr_t args) {
  if (kind == ClipKind::kNone) return cuda::ClipArgs::None();
  check_address(args, "clip_args");
  return cuda::ClipArgs::Device(kind,
                                sizeof(S) == 8 ? cuda::ScalarType::kFloat64
                                               : cuda::ScalarType::kFloat32,
                                reinterpret_cast<const void*>(args));
}

cuda::Predicate device_predicate(uintptr_t apply_if) {
  cuda::Predicate p;
  p.device = reinterpret_cast<const uint8_t*>(apply_if);
  return p;
}

#endif  // FUSEDOPT_WITH_CUDA

void refuse_device(int64_t device) {
#if !defined(FUSEDOPT_WITH_CUDA)
  if (device >= 0) {
    throw py::value_error(
        "device " + std::to_string(device) +
        ": this build of fusedopt has no CUDA kernels (device < 0 takes host memory); "
        "rebuild with CUDA (docs/build.md) or keep the tensors on the CPU");
  }
#else
  (void)device;
#endif
}

// Every list has one pointer per size; a tensor with elements has an address.
void check_lists(const Sizes& sizes, const std::vector<const Pointers*>& lists,
                 const std::vector<std::string>& names) {
  for (size_t l = 0; l < lists.size(); ++l) {
    if (lists[l]->size() != sizes.size()) {
      throw py::value_error(names[l] + " has " + std::to_string(lists[l]->size()) +
                            " pointers for " + std::to_string(sizes.size()) +
                            " sizes; pass one per tensor");
    }
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] < 0) {
      throw py::value_error("sizes[" + std::to_string(i) + "] is " + std::to_string(sizes[i]) +
                            "; expected >= 0");
    }
    for (size_t l = 0; l < lists.size(); ++l) {
      if (sizes[i] > 0 && (*lists[l])[i] == 0) {
        throw py::value_error(names[l] + "[" + std::to_string(i) + "] is a null pointer");
      }
    }
  }
}

// No written tensor shares a byte with any other tensor of the call (a
// tensor passed twice would be updated twice, or read after its update).
// lists[l] holds sizes[i] elements of `element_bytes` at each address.
void check_no_overlap(const Sizes& sizes, int64_t element_bytes,
                      const std::vector<const Pointers*>& lists,
                      const std::vector<std::string>& names, const std::vector<bool>& written) {
  struct Span {
    uintptr_t begin, end;
    size_t list, index;
  };
  std::vector<Span> spans;
  for (size_t l = 0; l < lists.size(); ++l) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] == 0) continue;
      const uintptr_t begin = (*lists[l])[i];
      spans.push_back({begin, begin + static_cast<uintptr_t>(sizes[i] * element_bytes), l, i});
    }
  }
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  // In start order, a span overlaps an earlier one exactly when it starts
  // before the end of the earlier span reaching furthest: of all of them if
  // it is written, of the written ones if it is only read.
  const Span* furthest = nullptr;
  const Span* furthest_written = nullptr;
  for (const Span& b : spans) {
    const Span* a = written[b.list] ? furthest : furthest_written;
    if (a != nullptr && b.begin < a->end) {
      throw py::value_error(names[a->list] + "[" + std::to_string(a->index) + "] and " +
                            names[b.list] + "[" + std::to_string(b.index) +
                            "] share memory; a tensor the call writes may not overlap any "
                            "other tensor of the call");
    }
    if (furthest == nullptr || b.end > furthest->end) furthest = &b;
    if (written[b.list] && (furthest_written == nullptr || b.end > furthest_written->end)) {
      furthest_written = &b;
    }
  }
}

int64_t element_bytes(FloatFormat format) { return format_bytes(format); }

template <typename T>
std::vector<T*> as(const Pointers& p) {
  std::vector<T*> out;
  out.reserve(p.size());
  for (uintptr_t a : p) out.push_back(reinterpret_cast<T*>(a));
  return out;
}

// The clip request from its arguments in host memory, checked as the TF ops
// check clip_args (csrc/tf/clip_args.h): a value range with lo > hi or a
// ratio denominator <= 0 would corrupt every gradient; NaN passes (a
// non-finite norm makes the factors NaN in Keras too).
template <typename S>
GradClip<S> read_clip(ClipKind kind, uintptr_t args, size_t num_tensors) {
  GradClip<S> clip;
  clip.kind = kind;
  if (kind == ClipKind::kNone) return clip;
  check_address(args, "clip_args");
  const S* a = reinterpret_cast<const S*>(args);
  if (kind == ClipKind::kValue) {
    if (a[0] > a[1]) {
      throw py::value_error("clip_args = [lo, hi] of clip='value' needs lo <= hi, got [" +
                            std::to_string(static_cast<double>(a[0])) + ", " +
                            std::to_string(static_cast<double>(a[1])) + "]");
    }
    clip.scalars.push_back({a[0], a[1]});
  } else if (kind == ClipKind::kRatio) {
    for (size_t i = 0; i < num_tensors; ++i) {
      if (a[i + 1] <= S(0)) {
        throw py::value_error("clip_args[" + std::to_string(i + 1) +
                              "] (the clip-by-norm denominator of tensor " + std::to_string(i) +
                              ") must be > 0, got " + std::to_string(static_cast<double>(a[i + 1])));
      }
      clip.scalars.push_back({a[0], a[i + 1]});
    }
  } else {
    clip.scalars.push_back({a[0], S(0)});
  }
  return clip;
}

// Whether the step writes: no predicate, or a true one.
bool read_apply_if(uintptr_t apply_if) {
  if (apply_if == 0) return true;
  uint8_t flag;
  std::memcpy(&flag, reinterpret_cast<const void*>(apply_if), 1);
  return flag != 0;
}

void adam(const Pointers& params, const Pointers& grads, const Pointers& m, const Pointers& v,
          const Sizes& sizes, const std::string& dtype, uintptr_t scalars,
          const std::string& form, bool decay, const std::string& clip, uintptr_t clip_args,
          uintptr_t apply_if, int64_t device, uintptr_t stream) {
  (void)stream;
  const FloatFormat format = parse_dtype(dtype, "dtype");
  const bool torch_form = parse_form(form);
  const ClipKind kind = parse_clip(clip);
  check_lists(sizes, {&params, &grads, &m, &v}, {"params", "grads", "m", "v"});
  check_no_overlap(sizes, element_bytes(format), {&params, &grads, &m, &v},
                   {"params", "grads", "m", "v"}, {true, false, true, true});
  check_address(scalars, "scalars");
  refuse_device(device);
#if defined(FUSEDOPT_WITH_CUDA)
  if (device >= 0) {
    const DeviceGuard guard(device);
    with_type(format, [&](auto tag) {
      using S = compute_t<decltype(tag)>;
      using P = typename CudaStorage<decltype(tag)>::type;
      const cuda::ClipArgs device_clip_args = device_clip<S>(kind, clip_args);
      if (sizes.empty()) return;
      const cuda::AdamCudaTensors<P, P> t{as<P>(params), as<const P>(grads), as<P>(m), as<P>(v),
                                          sizes};
      auto x = [&](int k) { return device_scalar<S>(scalars, k); };
      const cuda::AdamCudaScalars s =
          torch_form ? cuda::AdamCudaScalars::Torch(x(0), x(1), x(2), x(3), x(4), x(5), x(6))
                     : cuda::AdamCudaScalars::Precomputed(x(0), x(1), x(2), x(3), x(4), x(5));
      check_launch(cuda::adam_cuda(t, s, decay, device_clip_args, device_predicate(apply_if),
                                   as_stream(stream)));
    });
    return;
  }
#endif
  with_type(format, [&](auto tag) {
    using T = decltype(tag);
    using S = compute_t<T>;
    const GradClip<S> grad_clip = read_clip<S>(kind, clip_args, sizes.size());
    if (!read_apply_if(apply_if) || sizes.empty()) return;
    const AdamTensors<T> t{as<T>(params), as<const T>(grads), as<T>(m), as<T>(v), sizes};
    const S* s = reinterpret_cast<const S*>(scalars);
    without_gil([&] {
      if (torch_form) {
        adam_cpu(t, AdamTorchScalars<S>{s[0], s[1], s[2], s[3], s[4], s[5], s[6]}, decay,
                 pool(), grad_clip);
      } else {
        adam_cpu(t, AdamScalars<S>{s[0], s[1], s[2], s[3], s[4], s[5]}, decay, pool(),
                 grad_clip);
      }
    });
  });
}

void sgd(const Pointers& params, const Pointers& grads, const Pointers& momentums,
         const Sizes& sizes, const std::string& dtype, uintptr_t scalars,
         const std::string& form, const std::string& variant, bool decay,
         const std::string& clip, uintptr_t clip_args, uintptr_t apply_if, int64_t device,
         uintptr_t stream) {
  (void)stream;
  const FloatFormat format = parse_dtype(dtype, "dtype");
  const bool torch_form = parse_form(form);
  const SgdVariant sgd_variant = parse_variant(variant);
  const ClipKind kind = parse_clip(clip);
  if (sgd_variant == SgdVariant::kPlain) {
    if (!momentums.empty()) {
      throw py::value_error("variant 'plain' keeps no momentum buffers; pass momentums=[]");
    }
    check_lists(sizes, {&params, &grads}, {"params", "grads"});
    check_no_overlap(sizes, element_bytes(format), {&params, &grads}, {"params", "grads"},
                     {true, false});
  } else {
    check_lists(sizes, {&params, &grads, &momentums}, {"params", "grads", "momentums"});
    check_no_overlap(sizes, element_bytes(format), {&params, &grads, &momentums},
                     {"params", "grads", "momentums"}, {true, false, true});
  }
  check_address(scalars, "scalars");
  refuse_device(device);
#if defined(FUSEDOPT_WITH_CUDA)
  if (device >= 0) {
    const DeviceGuard guard(device);
    with_type(format, [&](auto tag) {
      using S = compute_t<decltype(tag)>;
      using P = typename CudaStorage<decltype(tag)>::type;
      const cuda::ClipArgs device_clip_args = device_clip<S>(kind, clip_args);
      if (sizes.empty()) return;
      const cuda::SgdCudaTensors<P, P> t{as<P>(params), as<const P>(grads), as<P>(momentums),
                                         sizes};
      auto x = [&](int k) { return device_scalar<S>(scalars, k); };
      const cuda::SgdCudaScalars s = torch_form
                                         ? cuda::SgdCudaScalars::Torch(x(0), x(1), x(2))
                                         : cuda::SgdCudaScalars{x(0), x(1), x(2), x(3)};
      check_launch(cuda::sgd_cuda(t, s, sgd_variant, decay, device_clip_args,
                                  device_predicate(apply_if), as_stream(stream)));
    });
    return;
  }
#endif
  with_type(format, [&](auto tag) {
    using T = decltype(tag);
    using S = compute_t<T>;
    const GradClip<S> grad_clip = read_clip<S>(kind, clip_args, sizes.size());
    if (!read_apply_if(apply_if) || sizes.empty()) return;
    const SgdTensors<T> t{as<T>(params), as<const T>(grads), as<T>(momentums), sizes};
    const S* s = reinterpret_cast<const S*>(scalars);
    without_gil([&] {
      if (torch_form) {
        sgd_cpu(t, SgdTorchScalars<S>{s[0], s[1], s[2]}, sgd_variant, decay, pool(), grad_clip);
      } else {
        sgd_cpu(t, SgdScalars<S>{s[0], s[1], s[2], s[3]}, sgd_variant, decay, pool(), grad_clip);
      }
    });
  });
}

// out[i] = sum of x[i]^2 (kernels/norm.h: double, fixed order), rounded once
// to the tensors' dtype (16-bit through float32), as FusedoptSquaredNorms.
// On a CUDA device: squared_norms_cuda's fixed order (another one), with the
// caller's workspace of squared_norms_workspace_bytes(sizes) bytes.
void squared_norms(const Pointers& x, const Sizes& sizes, const std::string& dtype,
                   uintptr_t out, int64_t device, uintptr_t stream, uintptr_t workspace,
                   int64_t workspace_bytes) {
  (void)stream;
  (void)workspace;
  (void)workspace_bytes;
  const FloatFormat format = parse_dtype(dtype, "dtype");
  check_lists(sizes, {&x}, {"x"});
  if (!sizes.empty()) check_address(out, "out");
  refuse_device(device);
#if defined(FUSEDOPT_WITH_CUDA)
  if (device >= 0) {
    const DeviceGuard guard(device);
    const size_t needed = cuda::squared_norms_workspace_bytes(sizes);
    if (workspace_bytes < 0 || static_cast<size_t>(workspace_bytes) < needed ||
        (needed > 0 && workspace == 0)) {
      throw py::value_error("squared_norms on CUDA needs a workspace of " +
                            std::to_string(needed) + " bytes (pointer_squared_norms_workspace_"
                            "bytes), got " + std::to_string(workspace_bytes) + " at " +
                            std::to_string(workspace));
    }
    if (sizes.empty()) return;
    with_type(format, [&](auto tag) {
      using P = typename CudaStorage<decltype(tag)>::type;
      check_launch(cuda::squared_norms_cuda<P>(
          as<const P>(x), sizes, device_type(format), reinterpret_cast<void*>(out),
          reinterpret_cast<void*>(workspace), static_cast<size_t>(workspace_bytes),
          as_stream(stream)));
    });
    return;
  }
#endif
  with_type(format, [&](auto tag) {
    using T = decltype(tag);
    std::vector<double> sums(sizes.size());
    without_gil([&] { squared_norms_cpu(as<const T>(x), sizes, sums.data(), pool()); });
    T* o = reinterpret_cast<T*>(out);
    for (size_t i = 0; i < sums.size(); ++i) {
      o[i] = store<T>(static_cast<compute_t<T>>(sums[i]));
    }
  });
}

double element_as_double(FloatFormat format, uintptr_t address, int64_t i) {
  double value = 0.0;
  with_type(format, [&](auto tag) {
    using T = decltype(tag);
    value = static_cast<double>(load(reinterpret_cast<const T*>(address)[i]));
  });
  return value;
}

// The clip arguments of the update from squared norms, with the formulas of
// kernels/clip.h, as FusedoptClipFactors (csrc/tf/clip_factors_op.cc):
//   kind "norm":        one vector of N squared norms -> out = [max_norm, b_0, ..., b_{N-1}]
//   kind "global_norm": any number of vectors, summed in order -> out = [scale]
// out and max_norm in `dtype`; *finite = whether the (summed) squared norms are finite.
void clip_factors(const Pointers& squared, const Sizes& counts,
                  const std::vector<std::string>& squared_dtypes, uintptr_t max_norm,
                  const std::string& dtype, const std::string& kind, uintptr_t out,
                  uintptr_t finite, int64_t device, uintptr_t stream) {
  (void)stream;
  const FloatFormat format = parse_dtype(dtype, "dtype");
  const bool global = kind == "global_norm";
  if (!global && kind != "norm") {
    throw py::value_error("kind must be 'norm' or 'global_norm', got '" + kind + "'");
  }
  check_lists(counts, {&squared}, {"squared"});
  if (squared_dtypes.size() != squared.size()) {
    throw py::value_error("squared_dtypes has " + std::to_string(squared_dtypes.size()) +
                          " entries for " + std::to_string(squared.size()) + " vectors");
  }
  if (!global && squared.size() != 1) {
    throw py::value_error("kind='norm' takes the squared norms of one call (one vector), got " +
                          std::to_string(squared.size()));
  }
  std::vector<FloatFormat> formats;
  for (size_t l = 0; l < squared.size(); ++l) {
    formats.push_back(parse_dtype(squared_dtypes[l], "squared_dtypes[" + std::to_string(l) + "]"));
  }
  check_address(max_norm, "max_norm");
  check_address(out, "out");
  check_address(finite, "finite");
  refuse_device(device);
#if defined(FUSEDOPT_WITH_CUDA)
  if (device >= 0) {
    if (global && squared.size() > static_cast<size_t>(cuda::kMaxClipFactorVectors)) {
      throw py::value_error("kind='global_norm' on CUDA sums at most " +
                            std::to_string(cuda::kMaxClipFactorVectors) + " vectors, got " +
                            std::to_string(squared.size()));
    }
    const DeviceGuard guard(device);
    std::vector<cuda::DeviceVector> vectors;
    for (size_t l = 0; l < squared.size(); ++l) {
      vectors.push_back({device_type(formats[l]), reinterpret_cast<const void*>(squared[l]),
                         counts[l]});
    }
    check_launch(cuda::clip_factors_cuda(
        global ? cuda::ClipFactorKind::kGlobalNorm : cuda::ClipFactorKind::kNorm, vectors,
        cuda::Scalar::Device(device_type(format), reinterpret_cast<const void*>(max_norm)),
        device_type(format), reinterpret_cast<void*>(out), reinterpret_cast<uint8_t*>(finite),
        as_stream(stream)));
    return;
  }
#endif
  const double threshold = element_as_double(format, max_norm, 0);
  if (!(threshold > 0)) {
    throw py::value_error("max_norm must be > 0, got " + std::to_string(threshold));
  }
  std::vector<double> sums;
  for (size_t l = 0; l < squared.size(); ++l) {
    for (int64_t i = 0; i < counts[l]; ++i) {
      sums.push_back(element_as_double(formats[l], squared[l], i));
    }
  }
  bool all_finite = true;
  with_type(format, [&](auto tag) {
    using T = decltype(tag);
    using S = compute_t<T>;
    T* o = reinterpret_cast<T*>(out);
    if (global) {
      const double total = sum_in_order(sums.data(), static_cast<int64_t>(sums.size()));
      all_finite = std::isfinite(total);
      o[0] = store<T>(clip_by_global_norm_scalars<S>(threshold, total).a);
    } else {
      o[0] = reinterpret_cast<const T*>(max_norm)[0];
      for (size_t i = 0; i < sums.size(); ++i) {
        all_finite = all_finite && std::isfinite(sums[i]);
        o[i + 1] = store<T>(clip_by_norm_scalars<S>(threshold, sums[i]).b);
      }
    }
  });
  const uint8_t flag = all_finite ? 1 : 0;
  std::memcpy(reinterpret_cast<void*>(finite), &flag, 1);
}

// Calls fn(format, data, sizes) with the tensors of each float format in a
// fixed order (float16, bfloat16, float32, float64), empty groups included.
template <typename Fn>
void by_format(const Pointers& x, const Sizes& sizes, const std::vector<FloatFormat>& formats,
               Fn&& fn) {
  for (FloatFormat f : {FloatFormat::kFloat16, FloatFormat::kBFloat16, FloatFormat::kFloat32,
                        FloatFormat::kFloat64}) {
    std::vector<const void*> data;
    Sizes n;
    for (size_t i = 0; i < x.size(); ++i) {
      if (formats[i] != f) continue;
      data.push_back(reinterpret_cast<const void*>(x[i]));
      n.push_back(sizes[i]);
    }
    fn(f, data, n);
  }
}

// *out = no element of any tensor is Inf or NaN (kernels/finite.h); the
// tensors may have different dtypes.
void all_finite(const Pointers& x, const Sizes& sizes, const std::vector<std::string>& dtypes,
                uintptr_t out, int64_t device, uintptr_t stream) {
  (void)stream;
  check_lists(sizes, {&x}, {"x"});
  if (dtypes.size() != x.size()) {
    throw py::value_error("dtypes has " + std::to_string(dtypes.size()) + " entries for " +
                          std::to_string(x.size()) + " tensors");
  }
  check_address(out, "out");
  refuse_device(device);
  std::vector<FloatFormat> formats;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    formats.push_back(parse_dtype(dtypes[i], "dtypes[" + std::to_string(i) + "]"));
  }
#if defined(FUSEDOPT_WITH_CUDA)
  if (device >= 0) {
    // One launch per dtype present, the first setting *out, the others anding
    // their check into it (with no tensor at all, the float64 call sets it).
    const DeviceGuard guard(device);
    bool first = true;
    by_format(x, sizes, formats, [&](FloatFormat f, const std::vector<const void*>& data,
                                      const Sizes& n) {
      if (data.empty() && !(first && f == FloatFormat::kFloat64)) return;
      check_launch(cuda::all_finite_cuda(f, data, n, reinterpret_cast<uint8_t*>(out), nullptr,
                                         as_stream(stream), /*reset=*/first));
      first = false;
    });
    return;
  }
#endif
  bool finite = true;
  without_gil([&] {
    by_format(x, sizes, formats, [&](FloatFormat f, const std::vector<const void*>& data,
                                      const Sizes& n) {
      if (!data.empty() && finite) finite = all_finite_cpu(f, data, n, pool());
    });
  });
  const uint8_t flag = finite ? 1 : 0;
  std::memcpy(reinterpret_cast<void*>(out), &flag, 1);
}

int64_t workspace_bytes(const Sizes& sizes) {
#if defined(FUSEDOPT_WITH_CUDA)
  return static_cast<int64_t>(cuda::squared_norms_workspace_bytes(sizes));
#else
  (void)sizes;
  return 0;
#endif
}

bool pointer_cuda() {
#if defined(FUSEDOPT_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace

void register_pointer_ops(py::module_& mod) {
  mod.def("pointer_adam", &adam, py::arg("params"), py::arg("grads"), py::arg("m"),
          py::arg("v"), py::arg("sizes"), py::arg("dtype"), py::arg("scalars"), py::kw_only(),
          py::arg("form"), py::arg("decay"), py::arg("clip") = "none",
          py::arg("clip_args") = 0, py::arg("apply_if") = 0, py::arg("device") = -1,
          py::arg("stream") = 0,
          "Multi-tensor Adam/AdamW in place on raw addresses (see csrc/python/pointer_ops.cpp).");
  mod.def("pointer_sgd", &sgd, py::arg("params"), py::arg("grads"), py::arg("momentums"),
          py::arg("sizes"), py::arg("dtype"), py::arg("scalars"), py::kw_only(),
          py::arg("form"), py::arg("variant"), py::arg("decay"), py::arg("clip") = "none",
          py::arg("clip_args") = 0, py::arg("apply_if") = 0, py::arg("device") = -1,
          py::arg("stream") = 0,
          "Multi-tensor SGD in place on raw addresses (see csrc/python/pointer_ops.cpp).");
  mod.def("pointer_squared_norms", &squared_norms, py::arg("x"), py::arg("sizes"),
          py::arg("dtype"), py::arg("out"), py::kw_only(), py::arg("device") = -1,
          py::arg("stream") = 0, py::arg("workspace") = 0, py::arg("workspace_bytes") = 0,
          "Per-tensor squared L2 norms into out (raw addresses).");
  mod.def("pointer_squared_norms_workspace_bytes", &workspace_bytes, py::arg("sizes"),
          "Bytes of device memory pointer_squared_norms needs on CUDA for these sizes (0 in "
          "builds without CUDA).");
  mod.def("pointer_cuda", &pointer_cuda,
          "Whether this build's pointer entries take CUDA device memory (device >= 0).");
  mod.def("pointer_clip_factors", &clip_factors, py::arg("squared"), py::arg("counts"),
          py::arg("squared_dtypes"), py::arg("max_norm"), py::arg("dtype"), py::arg("kind"),
          py::arg("out"), py::arg("finite"), py::kw_only(), py::arg("device") = -1,
          py::arg("stream") = 0, "Clip arguments from squared norms (raw addresses).");
  mod.def("pointer_all_finite", &all_finite, py::arg("x"), py::arg("sizes"),
          py::arg("dtypes"), py::arg("out"), py::kw_only(), py::arg("device") = -1,
          py::arg("stream") = 0, "Whether every element is finite, into *out (raw addresses).");
}

}  // namespace fusedopt

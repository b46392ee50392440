#include "python/cuda_ops.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/adam.h"
#include "kernels/finite.h"
#include "python/arrays.h"
#include "python/cuda_arrays.h"
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
namespace {


// A hyperparameter of a CUDA call: a checked host value or a device element.
struct Hyper {
  std::optional<cuda::Scalar> device;
  double host = 0.0;

  cuda::Scalar scalar() const { return device ? *device : cuda::Scalar::Host(host); }
};

// Host values get the NumPy path's checks (check_scalar, check_range).
Hyper real_hyper(CudaCall& call, py::handle value, const std::string& arg) {
  Hyper h;
  h.device = call.device_scalar(value, arg, /*integer=*/false);
  if (!h.device) {
    h.host = check_scalar(value, arg);
    check_range(h.host, arg, hyperparameter_range(arg));
  }
  return h;
}

Hyper step_hyper(CudaCall& call, py::handle value, const std::string& arg) {
  Hyper h;
  h.device = call.device_scalar(value, arg, /*integer=*/true);
  if (!h.device) h.host = static_cast<double>(check_step(value, arg));
  return h;
}

// 16-bit parameters and gradients take float32 state lists of their shapes.
void check_state_layout(const std::vector<HostArray>& params,
                        const std::vector<const std::vector<HostArray>*>& states,
                        const std::vector<std::string>& names) {
  std::string all;  // "m and v", "momentums"
  for (const std::string& n : names) all += (all.empty() ? "" : " and ") + n;
  for (size_t l = 0; l < states.size(); ++l) {
    const auto& list = *states[l];
    if (list.size() != params.size()) {
      throw py::value_error(names[l] + " has " + std::to_string(list.size()) +
                            " arrays but params has " + std::to_string(params.size()) +
                            "; every list needs one array per parameter");
    }
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].dtype != DType::kFloat32) {
        throw py::type_error(list[i].name + " has dtype " + dtype_name(list[i].dtype) + " but " +
                             params[i].name + " has " + dtype_name(params[i].dtype) +
                             "; 16-bit parameters take float32 " + all);
      }
      if (list[i].shape != params[i].shape) {
        throw py::value_error(list[i].name + " and " + params[i].name +
                              " have different shapes; " + names[l] +
                              "[i] has the shape of params[i]");
      }
    }
  }
}

// params, grads and the state lists of an update call: one dtype, or 16-bit
// params and grads with float32 state.
DType check_update_layout(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                          const std::vector<const std::vector<HostArray>*>& states,
                          const std::vector<std::string>& names) {
  const DType dtype = p.empty() ? DType::kFloat32 : p[0].dtype;
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16) {
    check_same_layout(p, {&g}, {"grads"});
    check_state_layout(p, states, names);
  } else {
    std::vector<const std::vector<HostArray>*> all = {&g};
    std::vector<std::string> all_names = {"grads"};
    for (size_t l = 0; l < states.size(); ++l) {
      all.push_back(states[l]);
      all_names.push_back(names[l]);
    }
    check_same_layout(p, all, all_names);
  }
  return dtype;
}

FloatFormat format_of(DType d) {
  switch (d) {
    case DType::kFloat16:
      return FloatFormat::kFloat16;
    case DType::kBFloat16:
      return FloatFormat::kBFloat16;
    case DType::kFloat32:
      return FloatFormat::kFloat32;
    case DType::kFloat64:
    default:
      return FloatFormat::kFloat64;
  }
}

[[noreturn]] void no_cuda() {
  throw std::runtime_error("this fusedopt build has no CUDA kernels");
}

#if defined(FUSEDOPT_WITH_CUDA)

std::string cuda_error(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// Device memory of one call, allocated and freed in stream order on the
// call's stream (cudaMallocAsync / cudaFreeAsync): no synchronization, and
// capturable in a CUDA graph. Parts are 256-byte aligned.
class Scratch {
 public:
  Scratch(const std::vector<size_t>& parts, cudaStream_t stream) : stream_(stream) {
    size_t total = 0;
    for (size_t bytes : parts) {
      offsets_.push_back(total);
      total += (bytes + 255) / 256 * 256;
    }
    if (total == 0) return;
    const cudaError_t err = cudaMallocAsync(&base_, total, stream_);
    if (err != cudaSuccess) {
      cudaGetLastError();
      base_ = nullptr;
      throw std::runtime_error("allocating " + std::to_string(total) +
                               " bytes of device memory failed: " + cuda_error(err));
    }
  }
  ~Scratch() {
    if (base_ != nullptr) cudaFreeAsync(base_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void* part(size_t k) const {
    return base_ == nullptr ? nullptr : static_cast<char*>(base_) + offsets_[k];
  }

 private:
  cudaStream_t stream_;
  void* base_ = nullptr;
  std::vector<size_t> offsets_;
};

template <typename T>
std::vector<const T*> const_views(const std::vector<HostArray>& a) {
  std::vector<const T*> out;
  for (const HostArray& x : a) out.push_back(static_cast<const T*>(x.data));
  return out;
}

std::vector<int64_t> sizes_of(const std::vector<HostArray>& a) {
  std::vector<int64_t> out;
  for (const HostArray& x : a) out.push_back(x.size);
  return out;
}

// The squared norms of `x` (their driver type T) into `out` (N doubles).
std::string squared_norms(const std::vector<HostArray>& x, DType dtype, double* out,
                          void* workspace, size_t bytes, cudaStream_t s) {
  const std::vector<int64_t> sizes = sizes_of(x);
  const auto st = cuda::ScalarType::kFloat64;
  switch (dtype) {
    case DType::kFloat32:
      return cuda::squared_norms_cuda<float>(const_views<float>(x), sizes, st, out, workspace,
                                             bytes, s);
    case DType::kFloat64:
      return cuda::squared_norms_cuda<double>(const_views<double>(x), sizes, st, out, workspace,
                                              bytes, s);
    case DType::kFloat16:
      return cuda::squared_norms_cuda<cuda::Float16>(const_views<cuda::Float16>(x), sizes, st,
                                                     out, workspace, bytes, s);
    case DType::kBFloat16:
    default:
      return cuda::squared_norms_cuda<cuda::BFloat16>(const_views<cuda::BFloat16>(x), sizes, st,
                                                      out, workspace, bytes, s);
  }
}

std::string all_finite(const std::vector<HostArray>& x, DType dtype, uint8_t* out,
                       const uint8_t* skip_if, cudaStream_t s) {
  std::vector<const void*> data;
  for (const HostArray& a : x) data.push_back(a.data);
  return cuda::all_finite_cuda(format_of(dtype), data, sizes_of(x), out, skip_if, s);
}

// The clip arguments and the apply_if predicate of an update on the device,
// as the NumPy path computes them on the host (module.cpp make_clip,
// step_is_finite):
// - clip_value: host arguments [-c, c];
// - clip_norm / global_clip_norm: the squared norms (norm_cuda.h), then the
//   factor kernel writes the clip arguments (in the rule's compute type) and
//   whether the norms are finite;
// - skip_nonfinite: that flag is the predicate, except for float64 gradients,
//   whose squared norms can overflow with finite elements: there the element
//   check runs where the flag is 0 (and costs nothing where it is 1); without
//   a clip by norm the element check alone.
struct DeviceStep {
  cuda::ClipArgs clip;
  cuda::Predicate apply_if;
  std::unique_ptr<Scratch> scratch;
};

DeviceStep prepare_step(const std::vector<HostArray>& grads, DType dtype,
                        const CudaClipRequest& request, bool skip, cudaStream_t s) {
  DeviceStep step;
  const double c = request.threshold;
  if (request.kind == ClipKind::kValue) step.clip = cuda::ClipArgs::HostValue(-c, c);
  const bool norms = request.kind == ClipKind::kRatio || request.kind == ClipKind::kScale;
  if (!norms && !skip) return step;
  const size_t n = grads.size();
  const std::vector<int64_t> sizes = sizes_of(grads);
  const size_t ws = norms ? cuda::squared_norms_workspace_bytes(sizes) : 0;
  // Parts: workspace, squared norms, clip arguments, the norms' finite flag,
  // the elements' finite flag.
  step.scratch = std::make_unique<Scratch>(
      std::vector<size_t>{ws, norms ? n * sizeof(double) : 0, norms ? (n + 1) * sizeof(double) : 0,
                          1, 1},
      s);
  const Scratch& m = *step.scratch;
  uint8_t* norms_finite = static_cast<uint8_t*>(m.part(3));
  uint8_t* elements_finite = static_cast<uint8_t*>(m.part(4));
  if (norms) {
    double* squared = static_cast<double*>(m.part(1));
    CudaCall::check(squared_norms(grads, dtype, squared, m.part(0), ws, s), "squared norms");
    const cuda::ScalarType args_type =
        dtype == DType::kFloat64 ? cuda::ScalarType::kFloat64 : cuda::ScalarType::kFloat32;
    CudaCall::check(cuda::clip_factors_cuda(request.kind == ClipKind::kRatio
                                                ? cuda::ClipFactorKind::kNorm
                                                : cuda::ClipFactorKind::kGlobalNorm,
                                            {{cuda::ScalarType::kFloat64, squared,
                                              static_cast<int64_t>(n)}},
                                            cuda::Scalar::Host(c), args_type, m.part(2),
                                            norms_finite, s),
                    "clip factors");
    step.clip = cuda::ClipArgs::Device(request.kind, args_type, m.part(2));
  }
  if (skip) {
    if (norms && dtype != DType::kFloat64) {
      step.apply_if.device = norms_finite;
    } else {
      CudaCall::check(all_finite(grads, dtype, elements_finite, norms ? norms_finite : nullptr, s),
                      "the finite check");
      step.apply_if.device = elements_finite;
    }
  }
  return step;
}

template <typename P, typename S>
std::string launch_adam(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                        const std::vector<HostArray>& m, const std::vector<HostArray>& v,
                        const Hyper& lr, const Hyper& beta_1, const Hyper& beta_2,
                        const Hyper& epsilon, const Hyper& step, const Hyper& weight_decay,
                        const DeviceStep& device_step, cudaStream_t stream) {
  cuda::AdamCudaTensors<P, S> t;
  for (size_t i = 0; i < p.size(); ++i) {
    t.params.push_back(static_cast<P*>(p[i].data));
    t.grads.push_back(static_cast<const P*>(g[i].data));
    t.m.push_back(static_cast<S*>(m[i].data));
    t.v.push_back(static_cast<S*>(v[i].data));
    t.sizes.push_back(p[i].size);
  }
  cuda::AdamCudaScalars s;
  using C = std::conditional_t<std::is_same<S, double>::value, double, float>;
  if (lr.device || beta_1.device || beta_2.device || step.device) {
    // make_adam_scalars runs on the device, reading the device values.
    s = cuda::AdamCudaScalars::Raw(lr.scalar(), beta_1.scalar(), beta_2.scalar(),
                                   epsilon.scalar(), step.scalar(), weight_decay.scalar());
  } else {
    // The same scalars as the NumPy path, so both give the same bits.
    const AdamScalars<C> a = make_adam_scalars<C>(lr.host, beta_1.host, beta_2.host,
                                                  epsilon.host, static_cast<int64_t>(step.host),
                                                  weight_decay.host);
    s = cuda::AdamCudaScalars::Precomputed(
        cuda::Scalar::Host(a.alpha), cuda::Scalar::Host(a.one_minus_beta_1),
        cuda::Scalar::Host(a.one_minus_beta_2),
        epsilon.device ? *epsilon.device : cuda::Scalar::Host(a.epsilon),
        cuda::Scalar::Host(a.lr),
        weight_decay.device ? *weight_decay.device : cuda::Scalar::Host(a.weight_decay));
  }
  // A device weight decay may be 0: the decay kernel then leaves p as it is.
  const bool decay = weight_decay.device.has_value() || weight_decay.host != 0.0;
  return cuda::adam_cuda(t, s, decay, device_step.clip, device_step.apply_if,
                         reinterpret_cast<cuda::Stream>(stream));
}

template <typename P, typename S>
std::string launch_sgd(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                       const std::vector<HostArray>& m, const cuda::SgdCudaScalars& scalars,
                       SgdVariant variant, bool decay, const DeviceStep& device_step,
                       cudaStream_t stream) {
  cuda::SgdCudaTensors<P, S> t;
  for (size_t i = 0; i < p.size(); ++i) {
    t.params.push_back(static_cast<P*>(p[i].data));
    t.grads.push_back(static_cast<const P*>(g[i].data));
    if (!m.empty()) t.m.push_back(static_cast<S*>(m[i].data));
    t.sizes.push_back(p[i].size);
  }
  return cuda::sgd_cuda(t, scalars, variant, decay, device_step.clip, device_step.apply_if,
                        reinterpret_cast<cuda::Stream>(stream));
}

// The GPU paths' driver check, before anything else is enqueued.
void require_usable_cuda() {
  const std::string problem = cuda::cuda_problem();
  if (!problem.empty()) throw std::runtime_error(problem);
}

#endif  // FUSEDOPT_WITH_CUDA

}  // namespace

py::object adam_cuda_call(py::handle params, py::handle grads, py::handle m, py::handle v,
                          py::handle lr, py::handle beta_1, py::handle beta_2,
                          py::handle epsilon, py::handle step, py::handle weight_decay,
                          const CudaClipRequest& clip, bool skip_nonfinite, py::handle stream) {
  CudaCall call({"params", "grads", "m", "v", "lr", "beta_1", "beta_2", "epsilon", "step",
                 "weight_decay"},
                {params, grads, m, v, lr, beta_1, beta_2, epsilon, step, weight_decay}, stream);
  // Every check first, in the NumPy path's order: nothing is launched unless
  // all pass.
  const auto p_ = call.arrays(params, "params", true, /*allow_16bit=*/true);
  const auto g_ = call.arrays(grads, "grads", false, /*allow_16bit=*/true);
  const auto m_ = call.arrays(m, "m", true);
  const auto v_ = call.arrays(v, "v", true);
  const DType dtype = check_update_layout(p_, g_, {&m_, &v_}, {"m", "v"});
  check_no_overlap({&p_, &m_, &v_}, {&g_});
  const Hyper lr_ = real_hyper(call, lr, "lr");
  const Hyper b1 = real_hyper(call, beta_1, "beta_1");
  const Hyper b2 = real_hyper(call, beta_2, "beta_2");
  const Hyper eps = real_hyper(call, epsilon, "epsilon");
  const Hyper t = step_hyper(call, step, "step");
  const Hyper wd = real_hyper(call, weight_decay, "weight_decay");
  const cuda::Stream s = call.prepare_launch();
  const py::object result = skip_nonfinite ? py::none() : py::object(py::bool_(true));
  if (p_.empty()) return result;
#if defined(FUSEDOPT_WITH_CUDA)
  require_usable_cuda();
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(s);
  std::string err;
  without_gil([&] {
    const DeviceStep ds = prepare_step(g_, dtype, clip, skip_nonfinite, cs);
    switch (dtype) {
      case DType::kFloat32:
        err = launch_adam<float, float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, ds, cs);
        break;
      case DType::kFloat64:
        err = launch_adam<double, double>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, ds, cs);
        break;
      case DType::kFloat16:
        err = launch_adam<cuda::Float16, float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, ds, cs);
        break;
      case DType::kBFloat16:
        err = launch_adam<cuda::BFloat16, float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, ds, cs);
        break;
    }
  });
  CudaCall::check(err, "adam on CUDA arrays");
  return result;
#else
  (void)s;
  (void)dtype;
  (void)clip;
  no_cuda();
#endif
}

py::object sgd_cuda_call(py::handle params, py::handle grads, py::handle momentums,
                         py::handle lr, py::handle momentum, bool nesterov,
                         py::handle weight_decay, const CudaClipRequest& clip,
                         bool skip_nonfinite, py::handle stream) {
  CudaCall call({"params", "grads", "momentums", "lr", "momentum", "weight_decay"},
                {params, grads, momentums, lr, momentum, weight_decay}, stream);
  const auto p_ = call.arrays(params, "params", true, /*allow_16bit=*/true);
  const auto g_ = call.arrays(grads, "grads", false, /*allow_16bit=*/true);
  const bool has_m = !momentums.is_none();
  const auto m_ = has_m ? call.arrays(momentums, "momentums", true) : std::vector<HostArray>{};
  const DType dtype = has_m ? check_update_layout(p_, g_, {&m_}, {"momentums"})
                            : check_update_layout(p_, g_, {}, {});
  check_no_overlap({&p_, &m_}, {&g_});
  const Hyper lr_ = real_hyper(call, lr, "lr");
  const Hyper mom = real_hyper(call, momentum, "momentum");
  const Hyper wd = real_hyper(call, weight_decay, "weight_decay");
  if (!has_m && (mom.device || mom.host != 0.0)) {
    throw py::value_error(
        "momentums is None but momentum is " +
        (mom.device ? std::string("a CUDA array") : std::string(py::repr(momentum))) +
        "; pass one momentum buffer per parameter (momentum != 0 needs them)");
  }
  const cuda::Stream s = call.prepare_launch();
  const py::object result = skip_nonfinite ? py::none() : py::object(py::bool_(true));
  if (p_.empty()) return result;
#if defined(FUSEDOPT_WITH_CUDA)
  require_usable_cuda();
  const SgdVariant variant = !has_m     ? SgdVariant::kPlain
                             : nesterov ? SgdVariant::kNesterov
                                        : SgdVariant::kMomentum;
  // The decay's own learning rate is lr (kernels/sgd.h make_sgd_scalars).
  const cuda::SgdCudaScalars scalars{lr_.scalar(), mom.scalar(), wd.scalar(), lr_.scalar()};
  const bool decay = wd.device.has_value() || wd.host != 0.0;
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(s);
  std::string err;
  without_gil([&] {
    const DeviceStep ds = prepare_step(g_, dtype, clip, skip_nonfinite, cs);
    switch (dtype) {
      case DType::kFloat32:
        err = launch_sgd<float, float>(p_, g_, m_, scalars, variant, decay, ds, cs);
        break;
      case DType::kFloat64:
        err = launch_sgd<double, double>(p_, g_, m_, scalars, variant, decay, ds, cs);
        break;
      case DType::kFloat16:
        err = launch_sgd<cuda::Float16, float>(p_, g_, m_, scalars, variant, decay, ds, cs);
        break;
      case DType::kBFloat16:
        err = launch_sgd<cuda::BFloat16, float>(p_, g_, m_, scalars, variant, decay, ds, cs);
        break;
    }
  });
  CudaCall::check(err, "sgd on CUDA arrays");
  return result;
#else
  (void)s;
  (void)dtype;
  (void)clip;
  (void)nesterov;
  no_cuda();
#endif
}

py::object all_finite_cuda_call(py::handle arrays, py::handle out, py::handle stream) {
  CudaCall call({"arrays", "out"}, {arrays, out}, stream);
  const auto a = call.arrays(arrays, "arrays", false, /*allow_16bit=*/true);
  check_one_dtype(a);
  std::optional<CudaCall::DeviceOutput> dst;
  if (!out.is_none()) dst = call.device_output(out, "out", /*flag=*/true);
  const cuda::Stream s = call.prepare_launch();
#if defined(FUSEDOPT_WITH_CUDA)
  require_usable_cuda();
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(s);
  const DType dtype = a.empty() ? DType::kFloat32 : a[0].dtype;
  if (dst) {
    std::string err;
    without_gil([&] {
      err = all_finite(a, dtype, static_cast<uint8_t*>(dst->data), nullptr, cs);
    });
    CudaCall::check(err, "all_finite on CUDA arrays");
    return py::none();
  }
  uint8_t host = 0;
  std::string err;
  without_gil([&] {
    Scratch flag({1}, cs);
    err = all_finite(a, dtype, static_cast<uint8_t*>(flag.part(0)), nullptr, cs);
    if (err.empty()) {
      cudaError_t e = cudaMemcpyAsync(&host, flag.part(0), 1, cudaMemcpyDeviceToHost, cs);
      if (e == cudaSuccess) e = cudaStreamSynchronize(cs);
      if (e != cudaSuccess) err = cuda_error(e);
    }
  });
  CudaCall::check(err, "all_finite on CUDA arrays");
  return py::bool_(host != 0);
#else
  (void)s;
  (void)dst;
  no_cuda();
#endif
}

py::object global_norm_cuda_call(py::handle arrays, py::handle out, py::handle stream) {
  CudaCall call({"arrays", "out"}, {arrays, out}, stream);
  const auto a = call.arrays(arrays, "arrays", false, /*allow_16bit=*/true);
  check_one_dtype(a);
  std::optional<CudaCall::DeviceOutput> dst;
  if (!out.is_none()) dst = call.device_output(out, "out", /*flag=*/false);
  const cuda::Stream s = call.prepare_launch();
#if defined(FUSEDOPT_WITH_CUDA)
  require_usable_cuda();
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(s);
  const DType dtype = a.empty() ? DType::kFloat32 : a[0].dtype;
  const size_t n = a.size();
  const size_t ws = cuda::squared_norms_workspace_bytes(sizes_of(a));
  double host = 0.0;
  std::string err;
  without_gil([&] {
    // Parts: workspace, squared norms, the norm (when returned to the host).
    Scratch m({ws, n * sizeof(double), sizeof(double)}, cs);
    double* squared = static_cast<double*>(m.part(1));
    err = n == 0 ? std::string() : squared_norms(a, dtype, squared, m.part(0), ws, cs);
    void* target = dst ? dst->data : m.part(2);
    const cuda::ScalarType type = dst ? dst->type : cuda::ScalarType::kFloat64;
    if (err.empty()) {
      err = cuda::clip_factors_cuda(cuda::ClipFactorKind::kTotalNorm,
                                    {{cuda::ScalarType::kFloat64, squared,
                                      static_cast<int64_t>(n)}},
                                    cuda::Scalar::Host(1.0), type, target, nullptr, cs);
    }
    if (err.empty() && !dst) {
      cudaError_t e = cudaMemcpyAsync(&host, target, sizeof(double), cudaMemcpyDeviceToHost, cs);
      if (e == cudaSuccess) e = cudaStreamSynchronize(cs);
      if (e != cudaSuccess) err = cuda_error(e);
    }
  });
  CudaCall::check(err, "global_norm on CUDA arrays");
  if (dst) return py::none();
  return py::float_(host);
#else
  (void)s;
  (void)dst;
  no_cuda();
#endif
}

py::object cuda_problem() {
#if defined(FUSEDOPT_WITH_CUDA)
  const std::string problem = cuda::cuda_problem();
  if (problem.empty()) return py::none();
  return py::str(problem);
#else
  return py::str(
      "this fusedopt build has no CUDA kernels (nvcc was not found when it was built, or "
      "FUSEDOPT_NO_CUDA was set)");
#endif
}

}  // namespace fusedopt

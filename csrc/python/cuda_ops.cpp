#include "python/cuda_ops.h"

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cuda/adam_cuda.h"
#include "kernels/adam.h"
#include "python/arrays.h"
#include "python/cuda_arrays.h"

namespace fusedopt {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A hyperparameter of a CUDA call: a checked host value or a device element.
struct Hyper {
  std::optional<cuda::Scalar> device;
  double host = 0.0;

  cuda::Scalar scalar() const { return device ? *device : cuda::Scalar::Host(host); }
};

// Host values get the NumPy path's checks (check_scalar, check_range).
Hyper real_hyper(CudaCall& call, py::handle value, const std::string& arg, double lo,
                 bool lo_open, double hi, bool hi_open) {
  Hyper h;
  h.device = call.device_scalar(value, arg, /*integer=*/false);
  if (!h.device) {
    h.host = check_scalar(value, arg);
    check_range(h.host, arg, lo, lo_open, hi, hi_open);
  }
  return h;
}

Hyper step_hyper(CudaCall& call, py::handle value, const std::string& arg) {
  Hyper h;
  h.device = call.device_scalar(value, arg, /*integer=*/true);
  if (!h.device) h.host = static_cast<double>(check_step(value, arg));
  return h;
}

// 16-bit parameters and gradients take float32 m and v of their shapes.
void check_state_layout(const std::vector<HostArray>& params,
                        const std::vector<const std::vector<HostArray>*>& states,
                        const std::vector<std::string>& names) {
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
                             "; 16-bit parameters take float32 m and v");
      }
      if (list[i].shape != params[i].shape) {
        throw py::value_error(list[i].name + " and " + params[i].name +
                              " have different shapes; m[i] and v[i] have the shape of "
                              "params[i]");
      }
    }
  }
}

#if defined(FUSEDOPT_WITH_CUDA)
// P: the parameter type of the CUDA driver, S: the state type.
template <typename P, typename S>
std::string launch_adam(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                        const std::vector<HostArray>& m, const std::vector<HostArray>& v,
                        const Hyper& lr, const Hyper& beta_1, const Hyper& beta_2,
                        const Hyper& epsilon, const Hyper& step, const Hyper& weight_decay,
                        cuda::Stream stream) {
  cuda::AdamCudaTensors<P, S> t;
  for (size_t i = 0; i < p.size(); ++i) {
    t.params.push_back(static_cast<P*>(p[i].data));
    t.grads.push_back(static_cast<const P*>(g[i].data));
    t.m.push_back(static_cast<S*>(m[i].data));
    t.v.push_back(static_cast<S*>(v[i].data));
    t.sizes.push_back(p[i].size);
  }
  cuda::AdamCudaScalars s;
  if (lr.device || beta_1.device || beta_2.device || step.device) {
    // make_adam_scalars runs on the device, reading the device values.
    s = cuda::AdamCudaScalars::Raw(lr.scalar(), beta_1.scalar(), beta_2.scalar(),
                                   epsilon.scalar(), step.scalar(), weight_decay.scalar());
  } else {
    // The same scalars as the NumPy path, so both give the same bits.
    const AdamScalars<S> a = make_adam_scalars<S>(
        lr.host, beta_1.host, beta_2.host, epsilon.host, static_cast<int64_t>(step.host),
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
  py::gil_scoped_release release;
  return cuda::adam_cuda(t, s, decay, stream);
}
#endif

}  // namespace

void adam_cuda_call(py::handle params, py::handle grads, py::handle m, py::handle v,
                    py::handle lr, py::handle beta_1, py::handle beta_2, py::handle epsilon,
                    py::handle step, py::handle weight_decay, py::handle stream) {
  CudaCall call({"params", "grads", "m", "v", "lr", "beta_1", "beta_2", "epsilon", "step",
                 "weight_decay"},
                {params, grads, m, v, lr, beta_1, beta_2, epsilon, step, weight_decay}, stream);
  // Every check first, in the NumPy path's order: nothing is launched unless
  // all pass.
  const auto p_ = call.arrays(params, "params", true, /*allow_16bit=*/true);
  const auto g_ = call.arrays(grads, "grads", false, /*allow_16bit=*/true);
  const auto m_ = call.arrays(m, "m", true);
  const auto v_ = call.arrays(v, "v", true);
  const DType dtype = p_.empty() ? DType::kFloat32 : p_[0].dtype;
  const bool half = dtype == DType::kFloat16 || dtype == DType::kBFloat16;
  if (half) {
    check_same_layout(p_, {&g_});
    check_state_layout(p_, {&m_, &v_}, {"m", "v"});
  } else {
    check_same_layout(p_, {&g_, &m_, &v_});
  }
  check_no_overlap({&p_, &m_, &v_}, {&g_});
  const Hyper lr_ = real_hyper(call, lr, "lr", 0.0, false, kInf, true);
  const Hyper b1 = real_hyper(call, beta_1, "beta_1", 0.0, false, 1.0, true);
  const Hyper b2 = real_hyper(call, beta_2, "beta_2", 0.0, false, 1.0, true);
  const Hyper eps = real_hyper(call, epsilon, "epsilon", 0.0, false, kInf, true);
  const Hyper t = step_hyper(call, step, "step");
  const Hyper wd = real_hyper(call, weight_decay, "weight_decay", 0.0, false, kInf, true);
  const cuda::Stream s = call.prepare_launch();
  if (p_.empty()) return;

#if defined(FUSEDOPT_WITH_CUDA)
  std::string err;
  switch (dtype) {
    case DType::kFloat32:
      err = launch_adam<float, float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, s);
      break;
    case DType::kFloat64:
      err = launch_adam<double, double>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, s);
      break;
    case DType::kFloat16:
      err = launch_adam<cuda::Float16, float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, s);
      break;
    case DType::kBFloat16:
      err = launch_adam<cuda::BFloat16, float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, s);
      break;
  }
  CudaCall::check(err, "adam on CUDA arrays");
#else
  (void)s;
#endif
}

}  // namespace fusedopt

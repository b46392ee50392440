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

#if defined(FUSEDOPT_WITH_CUDA)
template <typename T>
std::string launch_adam(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                        const std::vector<HostArray>& m, const std::vector<HostArray>& v,
                        const Hyper& lr, const Hyper& beta_1, const Hyper& beta_2,
                        const Hyper& epsilon, const Hyper& step, const Hyper& weight_decay,
                        cuda::Stream stream) {
  cuda::AdamCudaTensors<T, T> t;
  for (size_t i = 0; i < p.size(); ++i) {
    t.params.push_back(static_cast<T*>(p[i].data));
    t.grads.push_back(static_cast<const T*>(g[i].data));
    t.m.push_back(static_cast<T*>(m[i].data));
    t.v.push_back(static_cast<T*>(v[i].data));
    t.sizes.push_back(p[i].size);
  }
  cuda::AdamCudaScalars s;
  if (lr.device || beta_1.device || beta_2.device || step.device) {
    // make_adam_scalars runs on the device, reading the device values.
    s = cuda::AdamCudaScalars::Raw(lr.scalar(), beta_1.scalar(), beta_2.scalar(),
                                   epsilon.scalar(), step.scalar(), weight_decay.scalar());
  } else {
    // The same scalars as the NumPy path, so both give the same bits.
    const AdamScalars<T> a = make_adam_scalars<T>(
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
  const auto p_ = call.arrays(params, "params", true);
  const auto g_ = call.arrays(grads, "grads", false);
  const auto m_ = call.arrays(m, "m", true);
  const auto v_ = call.arrays(v, "v", true);
  check_same_layout(p_, {&g_, &m_, &v_});
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
  const std::string err =
      p_[0].dtype == DType::kFloat32
          ? launch_adam<float>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, s)
          : launch_adam<double>(p_, g_, m_, v_, lr_, b1, b2, eps, t, wd, s);
  CudaCall::check(err, "adam on CUDA arrays");
#else
  (void)s;
#endif
}

}  // namespace fusedopt

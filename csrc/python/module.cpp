// fusedopt._C: the CPU (and, where built, CUDA) kernels on Python arrays.
//
// This layer only translates and validates arguments; the math lives in
// csrc/kernels/ and the loops in csrc/cpu/. The user-facing wrappers with
// docstrings are in python/fusedopt/kernels.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/adam_cpu.h"
#include "cpu/finite_cpu.h"
#include "cpu/isa.h"
#include "cpu/norm_cpu.h"
#include "cpu/parallel.h"
#include "cpu/sgd_cpu.h"
#include "cpu/stream.h"
#include "python/arrays.h"
#include "python/cuda_arrays.h"
#include "python/cuda_ops.h"
#include "python/gil.h"
#include "python/pointer_ops.h"

namespace py = pybind11;
using namespace fusedopt;

namespace {


ParallelFor pool_parallel_for() {
  return [](int64_t n, int64_t cost, const TaskRange& fn) {
    default_thread_pool().parallel_for(n, cost, fn);
  };
}

// The clip options of kernels.adam / kernels.sgd: at most one of clip_value,
// clip_norm (per tensor) and global_clip_norm, a finite threshold > 0.
struct ClipRequest {
  ClipKind kind = ClipKind::kNone;
  double threshold = 0.0;
};

ClipRequest read_clip(py::handle clip_value, py::handle clip_norm,
                      py::handle global_clip_norm) {
  const std::pair<const char*, py::handle> options[] = {
      {"clip_value", clip_value}, {"clip_norm", clip_norm}, {"global_clip_norm", global_clip_norm}};
  const ClipKind kinds[] = {ClipKind::kValue, ClipKind::kRatio, ClipKind::kScale};
  ClipRequest request;
  std::string chosen;
  for (int i = 0; i < 3; ++i) {
    if (options[i].second.is_none()) continue;
    if (request.kind != ClipKind::kNone) {
      throw py::value_error(std::string("pass at most one of clip_value, clip_norm and "
                                        "global_clip_norm; got ") + chosen + " and " +
                            options[i].first);
    }
    chosen = options[i].first;
    request.kind = kinds[i];
    request.threshold = check_scalar(options[i].second, chosen);
    check_range(request.threshold, chosen, hyperparameter_range("clip_threshold"));
  }
  return request;
}

template <typename T>
std::vector<double> squared_norms(const std::vector<HostArray>& x) {
  std::vector<const T*> data;
  std::vector<int64_t> sizes;
  data.reserve(x.size());
  sizes.reserve(x.size());
  for (const HostArray& a : x) {
    data.push_back(static_cast<const T*>(a.data));
    sizes.push_back(a.size);
  }
  std::vector<double> out(x.size());
  squared_norms_cpu(data, sizes, out.data(), pool_parallel_for());
  return out;
}

// The squared norms of `grads` that the clip needs (by norm, by global
// norm); empty for the others.
std::vector<double> clip_squared_norms(const ClipRequest& request,
                                       const std::vector<HostArray>& grads) {
  if (request.kind != ClipKind::kRatio && request.kind != ClipKind::kScale) return {};
  return grads[0].dtype == DType::kFloat32 ? squared_norms<float>(grads)
                                           : squared_norms<double>(grads);
}

// The clip factors from the gradients' squared norms (clip_squared_norms),
// with the formulas of kernels/clip.h.
template <typename T>
GradClip<T> make_clip(const ClipRequest& request, const std::vector<double>& squared) {
  GradClip<T> clip;
  clip.kind = request.kind;
  const double c = request.threshold;
  if (request.kind == ClipKind::kValue) {
    clip.scalars.push_back({static_cast<T>(-c), static_cast<T>(c)});
  } else if (request.kind == ClipKind::kRatio) {
    for (double sq : squared) clip.scalars.push_back(clip_by_norm_scalars<T>(c, sq));
  } else if (request.kind == ClipKind::kScale) {
    const double total = sum_in_order(squared.data(), static_cast<int64_t>(squared.size()));
    clip.scalars.push_back(clip_by_global_norm_scalars<T>(c, total));
  }
  return clip;
}

// Whether every element of every array is finite (no Inf, no NaN).
bool host_all_finite(const std::vector<HostArray>& arrays) {
  if (arrays.empty()) return true;
  std::vector<const void*> data;
  std::vector<int64_t> sizes;
  data.reserve(arrays.size());
  sizes.reserve(arrays.size());
  for (const HostArray& a : arrays) {
    data.push_back(a.data);
    sizes.push_back(a.size);
  }
  const FloatFormat format =
      arrays[0].dtype == DType::kFloat32 ? FloatFormat::kFloat32 : FloatFormat::kFloat64;
  return all_finite_cpu(format, data, sizes, pool_parallel_for());
}

// Whether the step may run under skip_nonfinite. The clip's squared norms,
// where there are any, already read every element: a NaN or Inf makes its
// tensor's sum non-finite, and summed in double float32 squares cannot
// overflow, so finite sums settle it without a second pass. (Only a float64
// sum can overflow with finite elements: then the elements decide.)
bool step_is_finite(const std::vector<HostArray>& grads, const std::vector<double>& squared) {
  if (!squared.empty()) {
    bool finite = true;
    for (double sq : squared) finite = finite && std::isfinite(sq);
    if (finite) return true;
    if (grads[0].dtype == DType::kFloat32) return false;
  }
  return host_all_finite(grads);
}

bool check_flag(py::handle value, const char* name) {
  if (!py::isinstance<py::bool_>(value) &&
      !py::isinstance(value, py::module_::import("numpy").attr("bool_"))) {
    throw py::type_error(std::string(name) + " must be a bool, got " +
                         std::string(py::str(py::type::handle_of(value).attr("__name__"))));
  }
  return value.cast<bool>();
}

// Whether a call may involve CUDA arrays: is_cuda_call, without asking the
// arrays and numbers that cannot be CUDA arrays. It looks up the CUDA
// interfaces on every argument (attribute lookups that fail, microseconds per
// hyperparameter), while a NumPy array or an exact Python float or int is
// never a CUDA array: lists of NumPy arrays only pass no list on, and plain
// numbers no scalar.
bool maybe_cuda_call(std::initializer_list<py::handle> lists,
                     std::initializer_list<py::handle> scalars, py::handle stream) {
  const auto& npy = py::detail::npy_api::get();
  bool plain = true;
  for (py::handle list : lists) {
    if (!PyList_Check(list.ptr()) && !PyTuple_Check(list.ptr())) continue;
    for (Py_ssize_t i = 0; plain && i < PySequence_Fast_GET_SIZE(list.ptr()); ++i) {
      plain = npy.PyArray_Check_(PySequence_Fast_GET_ITEM(list.ptr(), i));
    }
  }
  for (py::handle s : scalars) {
    plain = plain && (PyFloat_CheckExact(s.ptr()) || PyLong_CheckExact(s.ptr()));
  }
  return plain ? !stream.is_none() : is_cuda_call(lists, scalars, stream);
}

CudaClipRequest cuda_clip(const ClipRequest& request) {
  return CudaClipRequest{request.kind, request.threshold};
}

template <typename T>
AdamTensors<T> adam_views(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                          const std::vector<HostArray>& m, const std::vector<HostArray>& v) {
  AdamTensors<T> t;
  t.params.reserve(p.size());
  t.grads.reserve(p.size());
  t.m.reserve(p.size());
  t.v.reserve(p.size());
  t.sizes.reserve(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    t.params.push_back(static_cast<T*>(p[i].data));
    t.grads.push_back(static_cast<const T*>(g[i].data));
    t.m.push_back(static_cast<T*>(m[i].data));
    t.v.push_back(static_cast<T*>(v[i].data));
    t.sizes.push_back(p[i].size);
  }
  return t;
}

py::object adam(py::handle params, py::handle grads, py::handle m, py::handle v, py::handle lr,
                py::handle beta_1, py::handle beta_2, py::handle epsilon, py::handle step,
                py::handle weight_decay, py::handle clip_value, py::handle clip_norm,
                py::handle global_clip_norm, py::handle skip_nonfinite, py::handle stream) {
  const ClipRequest clip = read_clip(clip_value, clip_norm, global_clip_norm);
  const bool skip = check_flag(skip_nonfinite, "skip_nonfinite");
  // CUDA arrays (or stream=) go to the CUDA kernels (csrc/python/cuda_ops.cpp).
  if (maybe_cuda_call({params, grads, m, v}, {lr, beta_1, beta_2, epsilon, step, weight_decay},
                      stream)) {
    return adam_cuda_call(params, grads, m, v, lr, beta_1, beta_2, epsilon, step, weight_decay,
                          cuda_clip(clip), skip, stream);
  }
  // Validate everything first: nothing is written unless every check passes.
  const auto p_ = host_arrays(params, "params", true);
  const auto g_ = host_arrays(grads, "grads", false);
  const auto m_ = host_arrays(m, "m", true);
  const auto v_ = host_arrays(v, "v", true);
  check_same_layout(p_, {&g_, &m_, &v_}, {"grads", "m", "v"});
  check_no_overlap({&p_, &m_, &v_}, {&g_});
  const double lr_ = check_scalar(lr, "lr");
  check_range(lr_, "lr", hyperparameter_range("lr"));
  const double b1 = check_scalar(beta_1, "beta_1");
  check_range(b1, "beta_1", hyperparameter_range("beta_1"));
  const double b2 = check_scalar(beta_2, "beta_2");
  check_range(b2, "beta_2", hyperparameter_range("beta_2"));
  const double eps = check_scalar(epsilon, "epsilon");
  check_range(eps, "epsilon", hyperparameter_range("epsilon"));
  const int64_t t = check_step(step, "step");
  const double wd = check_scalar(weight_decay, "weight_decay");
  check_range(wd, "weight_decay", hyperparameter_range("weight_decay"));
  if (p_.empty()) return py::bool_(true);

  const bool decay = wd != 0.0;
  const bool applied = without_gil([&] {
    const std::vector<double> squared = clip_squared_norms(clip, g_);
    if (skip && !step_is_finite(g_, squared)) return false;
    if (p_[0].dtype == DType::kFloat32) {
      adam_cpu(adam_views<float>(p_, g_, m_, v_), make_adam_scalars<float>(lr_, b1, b2, eps, t, wd),
               decay, pool_parallel_for(), make_clip<float>(clip, squared));
    } else {
      adam_cpu(adam_views<double>(p_, g_, m_, v_),
               make_adam_scalars<double>(lr_, b1, b2, eps, t, wd), decay, pool_parallel_for(),
               make_clip<double>(clip, squared));
    }
    return true;
  });
  return py::bool_(applied);
}

template <typename T>
SgdTensors<T> sgd_views(const std::vector<HostArray>& p, const std::vector<HostArray>& g,
                        const std::vector<HostArray>& m) {
  SgdTensors<T> t;
  t.params.reserve(p.size());
  t.grads.reserve(p.size());
  t.m.reserve(m.size());
  t.sizes.reserve(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    t.params.push_back(static_cast<T*>(p[i].data));
    t.grads.push_back(static_cast<const T*>(g[i].data));
    if (!m.empty()) t.m.push_back(static_cast<T*>(m[i].data));
    t.sizes.push_back(p[i].size);
  }
  return t;
}

py::object sgd(py::handle params, py::handle grads, py::handle momentums, py::handle lr,
               py::handle momentum, py::handle nesterov, py::handle weight_decay,
               py::handle clip_value, py::handle clip_norm, py::handle global_clip_norm,
               py::handle skip_nonfinite, py::handle stream) {
  // Validate everything first: nothing is written unless every check passes.
  const ClipRequest clip = read_clip(clip_value, clip_norm, global_clip_norm);
  const bool skip = check_flag(skip_nonfinite, "skip_nonfinite");
  // CUDA arrays (or stream=) go to the CUDA kernels (csrc/python/cuda_ops.cpp).
  if (maybe_cuda_call({params, grads, momentums}, {lr, momentum, weight_decay}, stream)) {
    return sgd_cuda_call(params, grads, momentums, lr, momentum, check_flag(nesterov, "nesterov"),
                         weight_decay, cuda_clip(clip), skip, stream);
  }
  const auto p_ = host_arrays(params, "params", true);
  const auto g_ = host_arrays(grads, "grads", false);
  const bool has_m = !momentums.is_none();
  const auto m_ = has_m ? host_arrays(momentums, "momentums", true) : std::vector<HostArray>{};
  if (has_m) {
    check_same_layout(p_, {&g_, &m_}, {"grads", "momentums"});
  } else {
    check_same_layout(p_, {&g_}, {"grads"});
  }
  check_no_overlap({&p_, &m_}, {&g_});
  const double lr_ = check_scalar(lr, "lr");
  check_range(lr_, "lr", hyperparameter_range("lr"));
  const double mom = check_scalar(momentum, "momentum");
  check_range(mom, "momentum", hyperparameter_range("momentum"));
  const bool nesterov_ = check_flag(nesterov, "nesterov");
  const double wd = check_scalar(weight_decay, "weight_decay");
  check_range(wd, "weight_decay", hyperparameter_range("weight_decay"));
  if (!has_m && mom != 0.0) {
    throw py::value_error("momentums is None but momentum is " + std::string(py::repr(momentum)) +
                          "; pass one momentum buffer per parameter (momentum != 0 needs "
                          "them)");
  }
  if (p_.empty()) return py::bool_(true);

  const SgdVariant variant = !has_m     ? SgdVariant::kPlain
                             : nesterov_ ? SgdVariant::kNesterov
                                         : SgdVariant::kMomentum;
  const bool decay = wd != 0.0;
  const bool applied = without_gil([&] {
    const std::vector<double> squared = clip_squared_norms(clip, g_);
    if (skip && !step_is_finite(g_, squared)) return false;
    if (p_[0].dtype == DType::kFloat32) {
      sgd_cpu(sgd_views<float>(p_, g_, m_), make_sgd_scalars<float>(lr_, mom, wd), variant,
              decay, pool_parallel_for(), make_clip<float>(clip, squared));
    } else {
      sgd_cpu(sgd_views<double>(p_, g_, m_), make_sgd_scalars<double>(lr_, mom, wd), variant,
              decay, pool_parallel_for(), make_clip<double>(clip, squared));
    }
    return true;
  });
  return py::bool_(applied);
}

py::object all_finite(py::handle arrays, py::handle out, py::handle stream) {
  if (is_cuda_call({arrays}, {out}, stream)) return all_finite_cuda_call(arrays, out, stream);
  if (!out.is_none()) throw py::type_error("out= takes a CUDA array, for CUDA arrays");
  const auto a = host_arrays(arrays, "arrays", false);
  check_one_dtype(a);
  return py::bool_(without_gil([&] { return host_all_finite(a); }));
}

py::object global_norm(py::handle arrays, py::handle out, py::handle stream) {
  if (is_cuda_call({arrays}, {out}, stream)) return global_norm_cuda_call(arrays, out, stream);
  if (!out.is_none()) throw py::type_error("out= takes a CUDA array, for CUDA arrays");
  const auto a = host_arrays(arrays, "arrays", false);
  check_one_dtype(a);
  if (a.empty()) return py::float_(0.0);
  const double total = without_gil([&] {
    const auto sums =
        a[0].dtype == DType::kFloat32 ? squared_norms<float>(a) : squared_norms<double>(a);
    return sum_in_order(sums.data(), static_cast<int64_t>(sums.size()));
  });
  return py::float_(std::sqrt(total));
}

py::dict build_info() {
  py::dict info;
#if defined(FUSEDOPT_WITH_CUDA)
  info["cuda"] = true;
  info["cuda_architectures"] = std::string(FUSEDOPT_CUDA_ARCHITECTURES);
#else
  info["cuda"] = false;
  info["cuda_architectures"] = py::none();
#endif
  info["cuda_problem"] = fusedopt::cuda_problem();
  info["cpu_isa_compiled"] = compiled_isas();
  info["cpu_isa_supported"] = supported_isas();
  info["cpu_isa"] = std::string(cpu_kernels().name);
  info["num_threads"] = default_thread_pool().num_threads();
  info["compiler"] = std::string(
#if defined(__clang__)
      "clang " __clang_version__
#elif defined(__GNUC__)
      "gcc " __VERSION__
#else
      "unknown"
#endif
  );
  return info;
}

void stream_inplace(py::array_t<float, py::array::c_style> data, float scale, int repeats) {
  if (!data.writeable()) throw py::value_error("data must be writeable");
  float* ptr = data.mutable_data();
  const int64_t n = data.size();
  without_gil([&] { stream_scale_inplace(ptr, n, scale, repeats, pool_parallel_for()); });
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "fusedopt's fused optimizer kernels on NumPy arrays (see fusedopt.kernels)";
  // {name: (low, low_open, high, high_open)}: the one table of valid
  // hyperparameter values (arrays.h), read by fusedopt.hyperparameters.
  py::dict ranges;
  for (const auto& [name, r] : hyperparameter_ranges()) {
    ranges[py::str(name)] = py::make_tuple(r.lo, r.lo_open, r.hi, r.hi_open);
  }
  mod.attr("HYPERPARAMETER_RANGES") = ranges;
  mod.def("adam", &adam, py::arg("params"), py::arg("grads"), py::arg("m"), py::arg("v"),
          py::kw_only(), py::arg("lr"), py::arg("beta_1"), py::arg("beta_2"),
          py::arg("epsilon"), py::arg("step"), py::arg("weight_decay") = 0.0,
          py::arg("clip_value") = py::none(), py::arg("clip_norm") = py::none(),
          py::arg("global_clip_norm") = py::none(), py::arg("skip_nonfinite") = false,
          py::arg("stream") = py::none(),
          "Multi-tensor Adam/AdamW, in place; False if skipped (skip_nonfinite). See "
          "fusedopt.kernels.adam.");
  mod.def("sgd", &sgd, py::arg("params"), py::arg("grads"), py::arg("momentums"),
          py::kw_only(), py::arg("lr"), py::arg("momentum") = 0.0,
          py::arg("nesterov") = false, py::arg("weight_decay") = 0.0,
          py::arg("clip_value") = py::none(), py::arg("clip_norm") = py::none(),
          py::arg("global_clip_norm") = py::none(), py::arg("skip_nonfinite") = false,
          py::arg("stream") = py::none(),
          "Multi-tensor SGD (plain, momentum, Nesterov), in place; False if skipped "
          "(skip_nonfinite). See fusedopt.kernels.sgd.");
  mod.def("all_finite", &all_finite, py::arg("arrays"), py::kw_only(),
          py::arg("out") = py::none(), py::arg("stream") = py::none(),
          "Whether no element of any array is Inf or NaN. See fusedopt.kernels.all_finite.");
  mod.def("global_norm", &global_norm, py::arg("arrays"), py::kw_only(),
          py::arg("out") = py::none(), py::arg("stream") = py::none(),
          "sqrt(sum of squares of every element of every array), deterministic. See "
          "fusedopt.kernels.global_norm.");
  mod.def("stream_inplace", &stream_inplace, py::arg("data"), py::arg("scale"),
          py::arg("repeats") = 1,
          "Bandwidth probe: data *= scale in place, `repeats` times, on the kernel "
          "thread pool (reads and writes 8 bytes per element per repeat).");
  mod.def("build_info", &build_info, "What this build of the kernels contains.");
  mod.def("cuda_problem", &fusedopt::cuda_problem,
          "None if the CUDA kernels can run in this process; else why not (no CUDA in this "
          "build, no NVIDIA driver, a driver older than the CUDA runtime they were built for, "
          "no device), naming the versions and how to rebuild.");
  register_pointer_ops(mod);
}

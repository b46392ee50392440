// fusedopt._xla_ffi: the XLA FFI handlers as PyCapsules, for
// jax.ffi.register_ffi_target (python/fusedopt/backends/jax/ffi.py). A module
// of its own, apart from _C: it needs only the header-only FFI API and the
// CPU (and CUDA) drivers, nothing of TensorFlow or jaxlib at build time.
#include <pybind11/pybind11.h>

#include "ffi/handlers.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;
namespace fh = ::fusedopt::ffi_handlers;

namespace {

py::capsule Capsule(XLA_FFI_Error* (*fn)(XLA_FFI_CallFrame*)) {
  return py::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

PYBIND11_MODULE(_xla_ffi, m) {
  m.doc() = "fusedopt's XLA FFI handlers as PyCapsules (see fusedopt.backends.jax.ffi)";
  m.def(
      "cpu_handlers",
      [] {
        py::dict d;
        d[fh::kAdamTarget] = Capsule(FusedoptFfiAdamCpu);
        d[fh::kSgdTarget] = Capsule(FusedoptFfiSgdCpu);
        d[fh::kSquaredNormsTarget] = Capsule(FusedoptFfiSquaredNormsCpu);
        d[fh::kClipFactorsTarget] = Capsule(FusedoptFfiClipFactorsCpu);
        d[fh::kAllFiniteTarget] = Capsule(FusedoptFfiAllFiniteCpu);
        return d;
      },
      "target name -> PyCapsule of the CPU handler");
  m.def(
      "cuda_handlers",
      [] {
        py::dict d;
#if defined(FUSEDOPT_WITH_CUDA)
        d[fh::kAdamTarget] = Capsule(FusedoptFfiAdamCuda);
        d[fh::kSgdTarget] = Capsule(FusedoptFfiSgdCuda);
        d[fh::kSquaredNormsTarget] = Capsule(FusedoptFfiSquaredNormsCuda);
        d[fh::kClipFactorsTarget] = Capsule(FusedoptFfiClipFactorsCuda);
        d[fh::kAllFiniteTarget] = Capsule(FusedoptFfiAllFiniteCuda);
#endif
        return d;
      },
      "target name -> PyCapsule of the CUDA handler (empty in a CPU-only build)");
  m.attr("FFI_API_VERSION") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}

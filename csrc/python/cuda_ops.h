// The kernels of fusedopt._C on CUDA arrays: module.cpp's entry points call
// these when is_cuda_call() says the call has CUDA arrays (or stream=).
// Each checks its arguments like the NumPy path (nothing is launched unless
// every check passes) and enqueues the CUDA drivers on the stream, without
// synchronizing with the host (except where a Python value is returned:
// all_finite and global_norm without out=).
#pragma once

#include <pybind11/pybind11.h>

#include "kernels/clip.h"

namespace fusedopt {
namespace py = pybind11;

// The clip options of kernels.adam / kernels.sgd, as module.cpp read them
// (at most one; threshold > 0, finite).
struct CudaClipRequest {
  ClipKind kind = ClipKind::kNone;
  double threshold = 0.0;
};

// Returns True, or None with skip_nonfinite (whether the step ran is known on
// the device only).
py::object adam_cuda_call(py::handle params, py::handle grads, py::handle m, py::handle v,
                          py::handle lr, py::handle beta_1, py::handle beta_2,
                          py::handle epsilon, py::handle step, py::handle weight_decay,
                          const CudaClipRequest& clip, bool skip_nonfinite, py::handle stream);

py::object sgd_cuda_call(py::handle params, py::handle grads, py::handle momentums,
                         py::handle lr, py::handle momentum, bool nesterov,
                         py::handle weight_decay, const CudaClipRequest& clip,
                         bool skip_nonfinite, py::handle stream);

// A bool (after synchronizing the stream), or None when the result went to
// `out` (a one-element bool/uint8 CUDA array).
py::object all_finite_cuda_call(py::handle arrays, py::handle out, py::handle stream);

// A float (after synchronizing the stream), or None when the result went to
// `out` (a one-element float32/float64 CUDA array).
py::object global_norm_cuda_call(py::handle arrays, py::handle out, py::handle stream);

// None when the GPU paths can run in this process; else why not (no CUDA in
// this build, no driver, a driver older than the CUDA runtime the kernels
// were built for, no device).
py::object cuda_problem();

}  // namespace fusedopt

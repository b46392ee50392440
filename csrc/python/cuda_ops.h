// The kernels of fusedopt._C on CUDA arrays: module.cpp's entry points call
// these when is_cuda_call() says the call has CUDA arrays (or stream=).
// Each checks its arguments like the NumPy path (nothing is launched unless
// every check passes) and enqueues the CUDA driver on the stream.
#pragma once

#include <pybind11/pybind11.h>

namespace fusedopt {
namespace py = pybind11;

void adam_cuda_call(py::handle params, py::handle grads, py::handle m, py::handle v,
                    py::handle lr, py::handle beta_1, py::handle beta_2, py::handle epsilon,
                    py::handle step, py::handle weight_decay, py::handle stream);

}  // namespace fusedopt

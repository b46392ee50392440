// fusedopt._C's raw-pointer entry points (pointer_adam, pointer_sgd, ...):
// see pointer_ops.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace fusedopt {

void register_pointer_ops(pybind11::module_& mod);

}  // namespace fusedopt

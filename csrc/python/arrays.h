// Turning Python arguments into validated raw views for the drivers.
//
// Every check runs before any kernel starts, so a bad call raises and leaves
// every array as it was. Messages name the argument (`params[3]`) and say what
// was expected.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fusedopt {
namespace py = pybind11;

// kFloat16 and kBFloat16 only come from CUDA arrays (cuda_arrays.h), as
// parameters and gradients with float32 state.
enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

const char* dtype_name(DType d);

// "(2, 3)" / "(5,)": a shape as NumPy prints it, for messages.
std::string shape_str(const std::vector<int64_t>& shape);
// The Python type name of `obj`, for messages.
std::string type_name(const py::handle& obj);

// One validated host array.
struct HostArray {
  void* data;
  int64_t size;
  int64_t nbytes;
  std::vector<int64_t> shape;
  DType dtype;
  std::string name;  // e.g. "params[3]"
  // A reference to the array object: the kernels run with the GIL released,
  // when another Python thread could empty the caller's list and free the
  // array it was the last reference to. Destroyed with the GIL held (the
  // HostArray vectors outlive the gil_scoped_release of a call).
  py::object owner;
};

// A list argument, checked element by element. `writable` lists must be
// writeable NumPy arrays; all arrays must be C-contiguous, aligned float32 /
// float64 in native byte order and not masked (numpy.ma: the kernels would
// ignore the mask).
std::vector<HostArray> host_arrays(const py::handle& obj, const std::string& arg,
                                   bool writable);

// Every array of the list has the dtype of the first (TypeError naming both).
void check_one_dtype(const std::vector<HostArray>& arrays);

// Same number of arrays in every list, same shape as params[i], one dtype for
// all; TypeError/ValueError otherwise.
// other_names[i] names others[i] in messages (needed when that list is empty).
void check_same_layout(const std::vector<HostArray>& params,
                       const std::vector<const std::vector<HostArray>*>& others,
                       const std::vector<std::string>& other_names = {});

// No written array may overlap any other array of the call.
void check_no_overlap(const std::vector<const std::vector<HostArray>*>& written,
                      const std::vector<const std::vector<HostArray>*>& read);

// Scalar checks: finite, and within the range named in the message.
double check_scalar(const py::handle& value, const std::string& arg);
void check_range(double value, const std::string& arg, double lo, bool lo_open,
                 double hi, bool hi_open);
int64_t check_step(const py::handle& value, const std::string& arg);

}  // namespace fusedopt

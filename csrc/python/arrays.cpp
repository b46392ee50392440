#include "python/arrays.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace fusedopt {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "?";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string type_name(const py::handle& obj) {
  return py::str(py::type::handle_of(obj).attr("__name__"));
}

namespace {
// An instance of numpy.ma.MaskedArray. Plain ndarrays (the common case) cost
// one type comparison; subclasses look numpy.ma up only where it was imported
// (an array cannot be masked otherwise).
bool is_masked(const py::handle& obj) {
  const PyTypeObject* ndarray = py::detail::npy_api::get().PyArray_Type_;
  if (Py_TYPE(obj.ptr()) == ndarray) return false;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("numpy.ma")) return false;
  return py::isinstance(obj, modules["numpy.ma"].attr("MaskedArray"));
}
}  // namespace

std::vector<HostArray> host_arrays(const py::handle& obj, const std::string& arg,
                                   bool writable) {
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj)) {
    throw py::type_error(arg + " must be a list or tuple of NumPy arrays, got " +
                         type_name(obj));
  }
  std::vector<HostArray> out;
  py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  for (size_t i = 0; i < seq.size(); ++i) {
    const std::string name = arg + "[" + std::to_string(i) + "]";
    py::object item = seq[i];
    if (!py::isinstance<py::array>(item)) {
      // kernels.adam routes CUDA arrays to the CUDA kernels before this; here
      // they reach only functions that have no CUDA version (yet).
      const bool cuda_like = py::hasattr(item, "__cuda_array_interface__");
      throw py::type_error(name + " must be a NumPy array, got " + type_name(item) +
                           (cuda_like ? " (a CUDA array: of the kernels only kernels.adam "
                                        "takes CUDA arrays)"
                                      : ""));
    }
    py::array a = py::reinterpret_borrow<py::array>(item);
    HostArray h;
    if (a.dtype().is(py::dtype::of<float>())) {
      h.dtype = DType::kFloat32;
    } else if (a.dtype().is(py::dtype::of<double>())) {
      h.dtype = DType::kFloat64;
    } else {
      throw py::type_error(name + " must have dtype float32 or float64, got " +
                           std::string(py::str(a.dtype())));
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(name + " must be C-contiguous (use numpy.ascontiguousarray "
                                   "on a copy you then keep)");
    }
    // A view at an odd byte offset (e.g. of a uint8 buffer): the kernels read
    // whole floats, which is undefined behaviour at a misaligned address.
    if (reinterpret_cast<uintptr_t>(a.data()) % a.itemsize() != 0) {
      throw py::value_error(name + " is not aligned to its " + std::to_string(a.itemsize()) +
                            "-byte element size (a view at an odd byte offset); pass an "
                            "aligned copy that you then keep");
    }
    if (is_masked(item)) {
      throw py::value_error(name + " is a masked array (numpy.ma); masks are not supported, "
                                   "pass the data (and handle the mask) yourself");
    }
    if (writable && !a.writeable()) {
      throw py::value_error(name + " is read-only; it is updated in place and must "
                                   "be writeable");
    }
    h.data = const_cast<void*>(a.data());
    h.size = a.size();
    h.nbytes = a.nbytes();
    h.shape.assign(a.shape(), a.shape() + a.ndim());
    h.name = name;
    h.owner = item;
    out.push_back(std::move(h));
  }
  return out;
}

void check_one_dtype(const std::vector<HostArray>& arrays) {
  for (const HostArray& a : arrays) {
    if (a.dtype != arrays[0].dtype) {
      throw py::type_error(a.name + " has dtype " + dtype_name(a.dtype) + " but " +
                           arrays[0].name + " has " + dtype_name(arrays[0].dtype) +
                           "; one call takes one dtype");
    }
  }
}

void check_same_layout(const std::vector<HostArray>& params,
                       const std::vector<const std::vector<HostArray>*>& others,
                       const std::vector<std::string>& other_names) {
  for (size_t l = 0; l < others.size(); ++l) {
    const auto* list = others[l];
    if (list->size() != params.size()) {
      // An empty list has no array to take its name from.
      const std::string arg =
          l < other_names.size() ? other_names[l]
          : list->empty()        ? "a list"
                                 : list->front().name.substr(0, list->front().name.find('['));
      throw py::value_error(arg + " has " + std::to_string(list->size()) +
                            " arrays but params has " + std::to_string(params.size()) +
                            "; every list needs one array per parameter");
    }
  }
  check_one_dtype(params);
  for (size_t i = 0; i < params.size(); ++i) {
    for (const auto* list : others) {
      const HostArray& a = (*list)[i];
      if (a.dtype != params[i].dtype) {
        throw py::type_error(a.name + " has dtype " + dtype_name(a.dtype) + " but " +
                             params[i].name + " has " + dtype_name(params[i].dtype));
      }
      if (a.shape != params[i].shape) {
        throw py::value_error(a.name + " has shape " + shape_str(a.shape) + " but " +
                              params[i].name + " has shape " + shape_str(params[i].shape));
      }
    }
  }
}

void check_no_overlap(const std::vector<const std::vector<HostArray>*>& written,
                      const std::vector<const std::vector<HostArray>*>& read) {
  struct Span {
    uintptr_t begin, end;
    const HostArray* array;
    bool written;
  };
  std::vector<Span> spans;
  for (const auto* list : written)
    for (const auto& a : *list)
      if (a.nbytes > 0) spans.push_back({uintptr_t(a.data), uintptr_t(a.data) + a.nbytes, &a, true});
  for (const auto* list : read)
    for (const auto& a : *list)
      if (a.nbytes > 0) spans.push_back({uintptr_t(a.data), uintptr_t(a.data) + a.nbytes, &a, false});
  std::sort(spans.begin(), spans.end(),
            [](const Span& x, const Span& y) { return x.begin < y.begin; });
  // Sweep: remember the span reaching furthest so far, among written ones and
  // among all, to find any overlap that involves a written array.
  const Span* reach_any = nullptr;
  const Span* reach_written = nullptr;
  for (const Span& s : spans) {
    const Span* clash = nullptr;
    if (s.written && reach_any && reach_any->end > s.begin) clash = reach_any;
    if (!clash && reach_written && reach_written->end > s.begin) clash = reach_written;
    if (clash) {
      throw py::value_error(s.array->name + " and " + clash->array->name +
                            " share memory; every array that is updated in place must "
                            "be a separate buffer");
    }
    if (!reach_any || s.end > reach_any->end) reach_any = &s;
    if (s.written && (!reach_written || s.end > reach_written->end)) reach_written = &s;
  }
}

namespace {
// True, numpy.True_ or a boolean array: converts to 1.0 but is never meant as
// a learning rate or a decay.
bool is_boolean(const py::handle& value) {
  if (py::isinstance<py::bool_>(value)) return true;
  if (py::isinstance<py::array>(value)) {
    return py::reinterpret_borrow<py::array>(value).dtype().kind() == 'b';
  }
  const std::string type = type_name(value);
  return type == "bool" || type == "bool_";  // NumPy 2 / NumPy 1 scalar types
}
}  // namespace

double check_scalar(const py::handle& value, const std::string& arg) {
  if (is_boolean(value) ||
      !(py::isinstance<py::float_>(value) || py::isinstance<py::int_>(value) ||
        py::hasattr(value, "__float__"))) {
    throw py::type_error(arg + " must be a real number, got " + type_name(value));
  }
  double x;
  try {
    x = value.cast<double>();
  } catch (const py::cast_error&) {
    // e.g. a NumPy array of several elements: it has __float__ but no value.
    throw py::type_error(arg + " must be a real number, got " + type_name(value));
  } catch (py::error_already_set&) {
    throw py::type_error(arg + " must be a real number, got " + type_name(value));
  }
  if (!std::isfinite(x)) {
    throw py::value_error(arg + " must be finite, got " + std::string(py::repr(value)));
  }
  return x;
}

void check_range(double x, const std::string& arg, double lo, bool lo_open, double hi,
                 bool hi_open) {
  const bool ok = (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  if (!ok) {
    std::ostringstream os;
    os << arg << " must be in " << (lo_open ? "(" : "[") << lo << ", ";
    if (std::isinf(hi)) {
      os << "inf)";
    } else {
      os << hi << (hi_open ? ")" : "]");
    }
    os << ", got " << x;
    throw py::value_error(os.str());
  }
}

int64_t check_step(const py::handle& value, const std::string& arg) {
  if (py::isinstance<py::bool_>(value) || !py::hasattr(value, "__index__")) {
    throw py::type_error(arg + " must be an integer (the 1-based step count), got " +
                         type_name(value));
  }
  int64_t step;
  try {
    step = value.cast<int64_t>();
  } catch (const py::cast_error&) {
    throw py::value_error(arg + " must be an integer in [1, 2**63), got " +
                          std::string(py::repr(value)));
  }
  if (step < 1) {
    throw py::value_error(arg + " must be >= 1 (steps are counted from 1), got " +
                          std::to_string(step));
  }
  return step;
}

}  // namespace fusedopt

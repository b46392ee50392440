#include "python/arrays.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "cpu/radix_sort.h"

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

std::string ArrayName::str() const {
  if (list_ == nullptr) return text_ ? *text_ : std::string();
  return std::string(list_) + "[" + std::to_string(index_) + "]";
}

std::string operator+(const ArrayName& name, const char* text) { return name.str() + text; }
std::string operator+(const std::string& text, const ArrayName& name) {
  return text + name.str();
}

namespace {
std::string dims_str(const int64_t* dims, size_t rank) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < rank; ++i) os << (i ? ", " : "") << dims[i];
  if (rank == 1) os << ",";
  os << ")";
  return os.str();
}
}  // namespace

std::string shape_str(const std::vector<int64_t>& shape) {
  return dims_str(shape.data(), shape.size());
}

std::string shape_str(const Shape& shape) { return dims_str(shape.begin(), shape.size()); }

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

namespace {
// The byte-order mark of a non-native dtype ('>' on little-endian machines).
constexpr char kSwappedByteOrder = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '>' : '<';
}  // namespace

// The fields are read from NumPy's structs through pybind11's proxies, not
// through py::array's accessors: those build dtype objects and take
// references per call, and this runs for every array of every call.
std::vector<HostArray> host_arrays(const py::handle& obj, const char* arg, bool writable) {
  PyObject* seq = obj.ptr();
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
    throw py::type_error(std::string(arg) + " must be a list or tuple of NumPy arrays, got " +
                         type_name(obj));
  }
  const auto& npy = py::detail::npy_api::get();
  std::vector<HostArray> out;
  out.reserve(static_cast<size_t>(PySequence_Fast_GET_SIZE(seq)));
  // The size is read again each time: no Python code runs in the loop, but a
  // list is not ours to assume fixed.
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    ArrayName name(arg, static_cast<size_t>(i));
    py::object item = py::reinterpret_borrow<py::object>(PySequence_Fast_GET_ITEM(seq, i));
    if (!npy.PyArray_Check_(item.ptr())) {
      // kernels.adam routes CUDA arrays to the CUDA kernels before this; here
      // they reach only functions that have no CUDA version (yet).
      const bool cuda_like = py::hasattr(item, "__cuda_array_interface__");
      throw py::type_error(name + " must be a NumPy array, got " +
                           type_name(item) +
                           (cuda_like ? " (a CUDA array: of the kernels only kernels.adam "
                                        "takes CUDA arrays)"
                                      : ""));
    }
    const auto* a = py::detail::array_proxy(item.ptr());
    const auto* descr = py::detail::array_descriptor_proxy(a->descr);
    // Filled in place: a record is not small (its shape and name are inline).
    HostArray& h = out.emplace_back();
    int64_t itemsize;
    // By type number and byte order: a float32 dtype need not be NumPy's one
    // float32 descriptor object (one with metadata is another object).
    if (descr->type_num == py::detail::npy_api::NPY_FLOAT_ &&
        descr->byteorder != kSwappedByteOrder) {
      h.dtype = DType::kFloat32;
      itemsize = 4;
    } else if (descr->type_num == py::detail::npy_api::NPY_DOUBLE_ &&
               descr->byteorder != kSwappedByteOrder) {
      h.dtype = DType::kFloat64;
      itemsize = 8;
    } else {
      throw py::type_error(name + " must have dtype float32 or float64, got " +
                           std::string(py::str(py::handle(a->descr))));
    }
    if (!(a->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) {
      throw py::value_error(name +
                            " must be C-contiguous (use numpy.ascontiguousarray "
                            "on a copy you then keep)");
    }
    // A view at an odd byte offset (e.g. of a uint8 buffer): the kernels read
    // whole floats, which is undefined behaviour at a misaligned address.
    if (reinterpret_cast<uintptr_t>(a->data) % static_cast<uintptr_t>(itemsize) != 0) {
      throw py::value_error(name + " is not aligned to its " +
                            std::to_string(itemsize) +
                            "-byte element size (a view at an odd byte offset); pass an "
                            "aligned copy that you then keep");
    }
    if (is_masked(item)) {
      throw py::value_error(name +
                            " is a masked array (numpy.ma); masks are not supported, "
                            "pass the data (and handle the mask) yourself");
    }
    if (writable && !(a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) {
      throw py::value_error(name +
                            " is read-only; it is updated in place and must be writeable");
    }
    int64_t size = 1;
    for (int d = 0; d < a->nd; ++d) size *= a->dimensions[d];
    h.data = a->data;
    h.size = size;
    h.nbytes = size * itemsize;
    h.shape.assign(a->dimensions, a->dimensions + a->nd);
    h.owns_memory = (a->flags & py::detail::npy_api::NPY_ARRAY_OWNDATA_) != 0;
    h.name = std::move(name);
    h.owner = std::move(item);
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
                                 : list->front().name.str().substr(0, list->front().name.str().find('['));
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

namespace {
// One array's bytes; `array` indexes the call's records, flagged kWritten.
struct Span {
  uintptr_t begin, end;
  uint32_t array;
};
constexpr uint32_t kWritten = 1u << 31;

// Where every array owns its memory, arrays can only share memory by being
// the same buffer: true when no written buffer appears twice (read ones may),
// found with a hash set of the addresses instead of a sort. False also when
// some array does not own its memory (a view): the sweep decides then.
bool owned_and_distinct(const std::vector<const std::vector<HostArray>*>& written,
                        const std::vector<const std::vector<HostArray>*>& read) {
  size_t count = 0;
  for (const auto* lists : {&written, &read}) {
    for (const auto* list : *lists) {
      for (const HostArray& a : *list) {
        if (!a.owns_memory) return false;
      }
      count += list->size();
    }
  }
  int log2_capacity = 4;
  while ((size_t(1) << log2_capacity) < 2 * count) ++log2_capacity;
  const size_t capacity = size_t(1) << log2_capacity;
  struct Slot {
    uintptr_t address;  // 0: empty
    bool written;
  };
  std::vector<Slot> table(capacity);
  for (const auto* lists : {&written, &read}) {
    const bool is_written = lists == &written;
    for (const auto* list : *lists) {
      for (const HostArray& a : *list) {
        if (a.nbytes == 0) continue;
        const uintptr_t address = reinterpret_cast<uintptr_t>(a.data);
        // Fibonacci hashing: the top bits of the address times 2^64 / phi.
        size_t i = static_cast<size_t>((address * 0x9E3779B97F4A7C15ull) >> (64 - log2_capacity));
        while (table[i].address != 0 && table[i].address != address) i = (i + 1) & (capacity - 1);
        if (table[i].address == address) {
          if (is_written || table[i].written) return false;
        } else {
          table[i] = {address, is_written};
        }
      }
    }
  }
  return true;
}
}  // namespace

void check_no_overlap(const std::vector<const std::vector<HostArray>*>& written,
                      const std::vector<const std::vector<HostArray>*>& read) {
  if (owned_and_distinct(written, read)) return;
  std::vector<const HostArray*> arrays;
  size_t count = 0;
  for (const auto* list : written) count += list->size();
  for (const auto* list : read) count += list->size();
  arrays.reserve(count);
  for (const auto* list : written)
    for (const auto& a : *list) arrays.push_back(&a);
  const size_t num_written = arrays.size();
  for (const auto* list : read)
    for (const auto& a : *list) arrays.push_back(&a);
  std::vector<Span> spans;
  spans.reserve(arrays.size());
  for (size_t i = 0; i < arrays.size(); ++i) {
    const HostArray& a = *arrays[i];
    const uint32_t flag = i < num_written ? kWritten : 0;
    if (a.nbytes > 0) {
      spans.push_back({uintptr_t(a.data), uintptr_t(a.data) + a.nbytes,
                       static_cast<uint32_t>(i) | flag});
    }
  }
  sort_by_address(spans, [](const Span& s) { return s.begin; });
  // Sweep: remember the span reaching furthest so far, among written ones and
  // among all, to find any overlap that involves a written array.
  const Span* reach_any = nullptr;
  const Span* reach_written = nullptr;
  for (const Span& s : spans) {
    const bool s_written = (s.array & kWritten) != 0;
    const Span* clash = nullptr;
    if (s_written && reach_any && reach_any->end > s.begin) clash = reach_any;
    if (!clash && reach_written && reach_written->end > s.begin) clash = reach_written;
    if (clash) {
      throw py::value_error(arrays[s.array & ~kWritten]->name + " and " +
                            arrays[clash->array & ~kWritten]->name +
                            " share memory; every array that is updated in place must "
                            "be a separate buffer");
    }
    if (!reach_any || s.end > reach_any->end) reach_any = &s;
    if (s_written && (!reach_written || s.end > reach_written->end)) reach_written = &s;
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

const std::vector<std::pair<std::string, Interval>>& hyperparameter_ranges() {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  static const std::vector<std::pair<std::string, Interval>> ranges = {
      {"lr", {0.0, false, kInf, true}},
      {"beta_1", {0.0, false, 1.0, true}},
      {"beta_2", {0.0, false, 1.0, true}},
      {"epsilon", {0.0, false, kInf, true}},
      {"weight_decay", {0.0, false, kInf, true}},
      {"momentum", {0.0, false, 1.0, false}},
      {"clip_threshold", {0.0, true, kInf, true}},
  };
  return ranges;
}

const Interval& hyperparameter_range(const std::string& key) {
  for (const auto& [name, range] : hyperparameter_ranges()) {
    if (name == key) return range;
  }
  throw std::logic_error("no hyperparameter range named " + key);
}

void check_range(double x, const std::string& arg, const Interval& range) {
  const auto [lo, lo_open, hi, hi_open] = range;
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

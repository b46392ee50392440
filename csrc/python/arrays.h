// Turning Python arguments into validated raw views for the drivers.
//
// Every check runs before any kernel starts, so a bad call raises and leaves
// every array as it was. Messages name the argument (`params[3]`) and say what
// was expected.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fusedopt {
namespace py = pybind11;

// kFloat16 and kBFloat16 only come from CUDA arrays (cuda_arrays.h), as
// parameters and gradients with float32 state.
enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

const char* dtype_name(DType d);

// An array's dimensions, held inline up to kInlineRank of them. One record is
// built for every array of every call (four per parameter for Adam), and a
// heap block per record was a measurable part of a call on many small arrays.
class Shape {
 public:
  Shape() = default;
  // Implicit, so that a std::vector<int64_t> can be assigned to a record's shape.
  Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }  // NOLINT

  template <typename It>
  void assign(It first, It last) {
    rank_ = static_cast<size_t>(last - first);
    heap_.clear();
    if (rank_ <= kInlineRank) {
      for (size_t i = 0; i < rank_; ++i) inline_[i] = first[i];  // no memmove call
    } else {
      heap_.assign(first, last);
    }
  }

  size_t size() const { return rank_; }
  const int64_t* begin() const { return rank_ <= kInlineRank ? inline_ : heap_.data(); }
  const int64_t* end() const { return begin() + rank_; }
  int64_t operator[](size_t i) const { return begin()[i]; }
  bool operator==(const Shape& o) const {
    if (rank_ != o.rank_) return false;
    for (size_t i = 0; i < rank_; ++i) {  // no memcmp call for a few dimensions
      if (begin()[i] != o.begin()[i]) return false;
    }
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  static constexpr size_t kInlineRank = 4;
  size_t rank_ = 0;
  int64_t inline_[kInlineRank] = {};
  std::vector<int64_t> heap_;  // rank > kInlineRank only
};

// "(2, 3)" / "(5,)": a shape as NumPy prints it, for messages.
std::string shape_str(const std::vector<int64_t>& shape);
std::string shape_str(const Shape& shape);
// The Python type name of `obj`, for messages.
std::string type_name(const py::handle& obj);

// How messages name an array of a list argument: "params[3]". A NumPy record
// holds the list's name and the index, and the text is composed only when a
// message needs it (a string per array per call was a fifth of the time of a
// call on a few hundred small arrays); other records assign the text.
class ArrayName {
 public:
  ArrayName() = default;
  // `list` must outlive the name: a string literal.
  ArrayName(const char* list, size_t index) : list_(list), index_(index) {}
  ArrayName& operator=(std::string text) {
    text_ = std::make_shared<const std::string>(std::move(text));
    list_ = nullptr;
    return *this;
  }
  std::string str() const;
  operator std::string() const { return str(); }  // NOLINT: names go into messages

 private:
  std::shared_ptr<const std::string> text_;  // null for a (list, index) name
  const char* list_ = nullptr;
  size_t index_ = 0;
};
std::string operator+(const ArrayName& name, const char* text);
std::string operator+(const std::string& text, const ArrayName& name);

// One validated host array.
struct HostArray {
  // User-provided: emplace_back() then does not zero the whole record first.
  HostArray() {}  // NOLINT(modernize-use-equals-default)

  void* data = nullptr;
  int64_t size = 0;
  int64_t nbytes = 0;
  Shape shape;
  DType dtype = DType::kFloat32;
  ArrayName name;  // e.g. "params[3]"
  // The array allocated its buffer itself (NumPy's OWNDATA): then no other
  // array can overlap it but a view of it, which does not own its memory.
  bool owns_memory = false;
  // A reference to the array object: the kernels run with the GIL released,
  // when another Python thread could empty the caller's list and free the
  // array it was the last reference to. Destroyed with the GIL held (the
  // HostArray vectors outlive the GIL-free part of a call (gil.h)).
  py::object owner;
};

// A list argument, checked element by element. `writable` lists must be
// writeable NumPy arrays; all arrays must be C-contiguous, aligned float32 /
// float64 in native byte order and not masked (numpy.ma: the kernels would
// ignore the mask).
// `arg` names the argument in messages: a string literal (ArrayName).
std::vector<HostArray> host_arrays(const py::handle& obj, const char* arg, bool writable);

// Every array of the list has the dtype of the first (TypeError naming both).
void check_one_dtype(const std::vector<HostArray>& arrays);

// Same number of arrays in every list, same shape as params[i], one dtype for
// all; TypeError/ValueError otherwise.
// other_names[i] names others[i] in messages (needed when that list is empty).
void check_same_layout(const std::vector<HostArray>& params,
                       const std::vector<const std::vector<HostArray>*>& others,
                       const std::vector<std::string>& other_names = {});

// No written array may overlap any other array of the call. O(N) in the number
// of arrays: a hash set of the addresses where every array owns its memory,
// else a radix sort of the addresses and one sweep.
void check_no_overlap(const std::vector<const std::vector<HostArray>*>& written,
                      const std::vector<const std::vector<HostArray>*>& read);

// Scalar checks: finite, and within the range named in the message.
double check_scalar(const py::handle& value, const std::string& arg);
// The valid values of a hyperparameter: an interval, open or closed at each end.
struct Interval {
  double lo;
  bool lo_open;
  double hi;
  bool hi_open;
};

// Every hyperparameter's interval, in one table: "lr", "beta_1", "beta_2",
// "epsilon", "weight_decay", "momentum", "clip_threshold" (clip_value,
// clip_norm, global_clip_norm). These checks here, and through
// _C.HYPERPARAMETER_RANGES the Keras optimizers' and transformers'
// (python/fusedopt/hyperparameters.py), so each range is written once.
const std::vector<std::pair<std::string, Interval>>& hyperparameter_ranges();
const Interval& hyperparameter_range(const std::string& key);

// ValueError "<arg> must be in [lo, hi), got x" unless x is in `range`.
void check_range(double value, const std::string& arg, const Interval& range);
int64_t check_step(const py::handle& value, const std::string& arg);

}  // namespace fusedopt

// Runs fusedopt's CUDA drivers (csrc/cuda/*.cu, compiled as C++ against
// emulation.h) on the CPU and compares every result bit for bit with the
// per-element rules of csrc/kernels/ run on the host (the reductions with
// their own documented fixed order, replayed here).
//
// Every tensor is its own exact-size heap allocation (ASan aborts on an
// access past its end; a tensor placed one element off alignment has that
// element before it, filled with a sentinel that must survive), initial
// values are random (never zeros), gradients must come back untouched.
//
// Usage: harness CASE...  (harness list: the cases). Prints "ok CASE" per
// case; a mismatch prints what differs and exits 1; ASan/UBSan abort.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/adam_cuda.h"
#include "cuda/finite_cuda.h"
#include "cuda/launch.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/norm_cuda.h"
#include "cuda/runtime.h"
#include "cuda/sgd_cuda.h"
#include "emulation.h"
#include "kernels/adam.h"
#include "kernels/clip.h"
#include "kernels/finite.h"
#include "kernels/half.h"
#include "kernels/norm.h"
#include "kernels/sgd.h"

using namespace fusedopt;
namespace fc = fusedopt::cuda;

namespace {

// ---------------------------------------------------------------------------
// Failing.

std::string g_case;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "FAIL %s: %s\n", g_case.c_str(), what.c_str());
  std::exit(1);
}

// The message is only built when the check fails (some run per element).
#define require(ok, what)     \
  do {                        \
    if (!(ok)) fail(what);    \
  } while (0)

void require_ok(const std::string& err, const std::string& what) {
  if (!err.empty()) fail(what + ": the driver returned \"" + err + "\"");
}

// ---------------------------------------------------------------------------
// Element types: the host rules' view (csrc/kernels/half.h) of the drivers'
// types.

template <typename T>
struct Host;
template <>
struct Host<float> {
  using C = float;
  using Bits = uint32_t;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
  static constexpr fc::ScalarType kType = fc::ScalarType::kFloat32;
  static constexpr FloatFormat kFormat = FloatFormat::kFloat32;
  static const char* name() { return "float32"; }
};
template <>
struct Host<double> {
  using C = double;
  using Bits = uint64_t;
  static double load(double x) { return x; }
  static double store(double x) { return x; }
  static constexpr fc::ScalarType kType = fc::ScalarType::kFloat64;
  static constexpr FloatFormat kFormat = FloatFormat::kFloat64;
  static const char* name() { return "float64"; }
};
template <>
struct Host<fc::Float16> {
  using C = float;
  using Bits = uint16_t;
  static float load(fc::Float16 x) { return half_to_float(x.bits); }
  static fc::Float16 store(float x) { return fc::Float16{float_to_half(x)}; }
  static constexpr fc::ScalarType kType = fc::ScalarType::kFloat16;
  static constexpr FloatFormat kFormat = FloatFormat::kFloat16;
  static const char* name() { return "float16"; }
};
template <>
struct Host<fc::BFloat16> {
  using C = float;
  using Bits = uint16_t;
  static float load(fc::BFloat16 x) { return bfloat16_to_float(x.bits); }
  static fc::BFloat16 store(float x) { return fc::BFloat16{float_to_bfloat16(x)}; }
  static constexpr fc::ScalarType kType = fc::ScalarType::kBFloat16;
  static constexpr FloatFormat kFormat = FloatFormat::kBFloat16;
  static const char* name() { return "bfloat16"; }
};

template <typename T>
uint64_t bits_of(T x) {
  typename Host<T>::Bits b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}

template <typename T>
bool is_nan(T x) {
  const double d = static_cast<double>(Host<T>::load(x));
  return d != d;
}

// Bit-identical, or both NaN (CUDA writes its canonical NaN 0x7FFF where the
// host rules write a quiet NaN with the input's sign).
template <typename T>
bool same(T a, T b) {
  return bits_of(a) == bits_of(b) || (is_nan(a) && is_nan(b));
}

template <typename T>
T from_double(double x) {
  return Host<T>::store(static_cast<typename Host<T>::C>(x));
}

template <typename T>
double to_double(T x) {
  return static_cast<double>(Host<T>::load(x));
}

// Element i of a vector of `type` in (emulated) device memory, as double,
// read with the host rules.
double read_as_double(fc::ScalarType type, const void* p, int64_t i) {
  switch (type) {
    case fc::ScalarType::kFloat16:
      return to_double(static_cast<const fc::Float16*>(p)[i]);
    case fc::ScalarType::kBFloat16:
      return to_double(static_cast<const fc::BFloat16*>(p)[i]);
    case fc::ScalarType::kFloat32:
      return static_cast<const float*>(p)[i];
    case fc::ScalarType::kFloat64:
      return static_cast<const double*>(p)[i];
    case fc::ScalarType::kInt32:
      return static_cast<const int32_t*>(p)[i];
    case fc::ScalarType::kInt64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    default:
      fail("read_as_double: no type");
  }
}

size_t type_bytes(fc::ScalarType type) {
  switch (type) {
    case fc::ScalarType::kFloat16:
    case fc::ScalarType::kBFloat16:
      return 2;
    case fc::ScalarType::kFloat32:
    case fc::ScalarType::kInt32:
      return 4;
    default:
      return 8;
  }
}

const char* type_name(fc::ScalarType type) {
  switch (type) {
    case fc::ScalarType::kHost:
      return "host";
    case fc::ScalarType::kFloat16:
      return "float16";
    case fc::ScalarType::kBFloat16:
      return "bfloat16";
    case fc::ScalarType::kFloat32:
      return "float32";
    case fc::ScalarType::kFloat64:
      return "float64";
    case fc::ScalarType::kInt32:
      return "int32";
    case fc::ScalarType::kInt64:
      return "int64";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// Memory: every tensor its own allocation.

constexpr unsigned char kLeadByte = 0xA5;

// `n` elements of T in an allocation of exactly their size, or, `misalign`
// elements off 16-byte alignment, after that many sentinel elements.
template <typename T>
class Buffer {
 public:
  Buffer(int64_t n, int misalign) : n_(n), lead_(static_cast<size_t>(misalign) * sizeof(T)) {
    const size_t bytes = static_cast<size_t>(n) * sizeof(T) + lead_;
    base_ = static_cast<unsigned char*>(std::malloc(bytes > 0 ? bytes : 0));
    if (base_ == nullptr && bytes > 0) fail("out of memory");
    std::memset(base_, kLeadByte, lead_);
  }
  ~Buffer() { std::free(base_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() { return reinterpret_cast<T*>(base_ + lead_); }
  const T* data() const { return reinterpret_cast<const T*>(base_ + lead_); }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return data()[i]; }
  const T& operator[](int64_t i) const { return data()[i]; }

  void fill(const std::vector<T>& values) {
    if (n_ > 0) std::memcpy(data(), values.data(), static_cast<size_t>(n_) * sizeof(T));
  }
  std::vector<T> read() const { return std::vector<T>(data(), data() + n_); }
  bool lead_intact() const {
    for (size_t i = 0; i < lead_; ++i) {
      if (base_[i] != kLeadByte) return false;
    }
    return true;
  }

 private:
  int64_t n_;
  size_t lead_;
  unsigned char* base_;
};

// One value of `type` in its own allocation (a device hyperparameter, clip
// argument or predicate).
struct DeviceValue {
  std::unique_ptr<Buffer<unsigned char>> bytes;
  fc::ScalarType type = fc::ScalarType::kHost;

  const void* ptr() const { return bytes->data(); }
};

DeviceValue device_vector(fc::ScalarType type, const std::vector<double>& values) {
  DeviceValue d;
  d.type = type;
  d.bytes = std::make_unique<Buffer<unsigned char>>(
      static_cast<int64_t>(type_bytes(type) * values.size()), 0);
  for (size_t i = 0; i < values.size(); ++i) {
    void* p = d.bytes->data() + i * type_bytes(type);
    switch (type) {
      case fc::ScalarType::kFloat16: {
        const fc::Float16 h = from_double<fc::Float16>(values[i]);
        std::memcpy(p, &h, 2);
        break;
      }
      case fc::ScalarType::kBFloat16: {
        const fc::BFloat16 h = from_double<fc::BFloat16>(values[i]);
        std::memcpy(p, &h, 2);
        break;
      }
      case fc::ScalarType::kFloat32: {
        const float f = static_cast<float>(values[i]);
        std::memcpy(p, &f, 4);
        break;
      }
      case fc::ScalarType::kFloat64:
        std::memcpy(p, &values[i], 8);
        break;
      case fc::ScalarType::kInt32: {
        const int32_t k = static_cast<int32_t>(values[i]);
        std::memcpy(p, &k, 4);
        break;
      }
      case fc::ScalarType::kInt64: {
        const int64_t k = static_cast<int64_t>(values[i]);
        std::memcpy(p, &k, 8);
        break;
      }
      default:
        fail("device_vector: no type");
    }
  }
  return d;
}

// A hyperparameter on the host, or in device memory as `type`; `value` is
// what the kernel will read (the stored value, as double).
struct Hyper {
  fc::Scalar scalar;
  double value = 0.0;
  DeviceValue storage;
};

Hyper hyper(double x, fc::ScalarType where) {
  Hyper h;
  if (where == fc::ScalarType::kHost) {
    h.scalar = fc::Scalar::Host(x);
    h.value = x;
    return h;
  }
  h.storage = device_vector(where, {x});
  h.scalar = fc::Scalar::Device(where, h.storage.ptr());
  h.value = read_as_double(where, h.storage.ptr(), 0);
  return h;
}

// ---------------------------------------------------------------------------
// Random inputs.

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(gen); }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen); }
  int64_t integer(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
  }
};

template <typename T>
std::vector<T> random_values(Rng& rng, int64_t n, double scale, bool positive = false) {
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) {
    double r = rng.normal() * scale;
    if (positive) r = std::fabs(r) + 1e-6;
    x = from_double<T>(r);
  }
  return v;
}

// The sizes every element-wise case covers: not multiples of any vector width,
// around the chunk (65,536), several chunks, empty.
constexpr int64_t C = fc::kChunkElements;
const std::vector<int64_t> kOddSizes = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 0, 255, 1023, 1025,
                                        4096, C - 1, C, C + 1, 2 * C + 3};

// Every alignment mix across `lists` lists: tensor i takes mask i % 2^lists
// (bit l: list l one element off alignment), each size with several masks.
std::vector<int> alignment_masks(size_t tensors, int lists, int offset = 0) {
  std::vector<int> masks(tensors);
  for (size_t i = 0; i < tensors; ++i) masks[i] = static_cast<int>((i + offset) % (1u << lists));
  return masks;
}

// The odd sizes, each under several alignment masks: every one of the 2^lists
// mixes on a short and on a multi-vector size, four others on each other
// size. (Each block of 512 threads copies the 31 KB launch table into every
// thread's parameters, so tensors are cheap but not free.)
struct Layout {
  std::vector<int64_t> sizes;
  std::vector<int> masks;
};

Layout odd_layout(int lists) {
  Layout l;
  const int combos = 1 << lists;
  for (int64_t s : kOddSizes) {
    const bool sweep = s == 7 || s == 1025;
    const int reps = sweep ? combos : std::min(combos, 4);
    for (int r = 0; r < reps; ++r) {
      l.sizes.push_back(s);
      l.masks.push_back(sweep ? r : static_cast<int>((r * 5 + s) % combos));
    }
  }
  return l;
}

// A few sizes (short, tails, two chunks), every mix once.
Layout short_layout(int lists) {
  Layout l;
  const std::vector<int64_t> sizes = {1, 5, 17, 1025, C + 1, 2 * C + 3};
  for (size_t i = 0; i < sizes.size(); ++i) {
    l.sizes.push_back(sizes[i]);
    l.masks.push_back(static_cast<int>(i % (1u << lists)));
  }
  return l;
}

// A list of tensors of T: one buffer each, its initial values, its layout.
template <typename T>
struct TensorList {
  std::vector<std::unique_ptr<Buffer<T>>> buffers;
  std::vector<std::vector<T>> initial;

  TensorList(Rng& rng, const Layout& layout, int list, double scale, bool positive = false) {
    for (size_t i = 0; i < layout.sizes.size(); ++i) {
      const int misalign = (layout.masks[i] >> list) & 1;
      buffers.push_back(std::make_unique<Buffer<T>>(layout.sizes[i], misalign));
      initial.push_back(random_values<T>(rng, layout.sizes[i], scale, positive));
      buffers.back()->fill(initial.back());
    }
  }
  std::vector<T*> pointers() {
    std::vector<T*> p;
    for (auto& b : buffers) p.push_back(b->data());
    return p;
  }
  std::vector<const T*> const_pointers() {
    std::vector<const T*> p;
    for (auto& b : buffers) p.push_back(b->data());
    return p;
  }
  void check_leads(const char* name) const {
    for (size_t i = 0; i < buffers.size(); ++i) {
      require(buffers[i]->lead_intact(),
              std::string(name) + "[" + std::to_string(i) + "]: a write before the tensor");
    }
  }
  void check_unchanged(const char* name) const {
    for (size_t i = 0; i < buffers.size(); ++i) {
      for (int64_t k = 0; k < buffers[i]->size(); ++k) {
        if (bits_of((*buffers[i])[k]) != bits_of(initial[i][k])) {
          fail(std::string(name) + "[" + std::to_string(i) + "][" + std::to_string(k) +
               "] was written (it must not be)");
        }
      }
    }
  }
};

template <typename T>
void compare(const char* name, size_t tensor, int64_t k, T got, T want) {
  if (!same(got, want)) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s[%zu][%" PRId64 "] (%s): got %.17g (bits %" PRIx64
                  "), want %.17g (bits %" PRIx64 ")",
                  name, tensor, k, Host<T>::name(), to_double(got), bits_of(got),
                  to_double(want), bits_of(want));
    fail(buf);
  }
}

// ---------------------------------------------------------------------------
// Clip arguments and predicates.

struct ClipSetup {
  ClipKind kind = ClipKind::kNone;
  fc::ScalarType where = fc::ScalarType::kHost;  // kHost or a device type
};

struct Clip {
  fc::ClipArgs args;
  DeviceValue storage;
  std::vector<double> values;  // as the kernel reads them

  // The clip scalars the kernel uses for tensor i, in C.
  template <typename C>
  ClipScalars<C> of_tensor(size_t i) const {
    if (args.kind == ClipKind::kNone) return {C(0), C(0)};
    if (args.kind == ClipKind::kRatio) return {static_cast<C>(values[0]), static_cast<C>(values[1 + i])};
    if (args.kind == ClipKind::kValue) return {static_cast<C>(values[0]), static_cast<C>(values[1])};
    return {static_cast<C>(values[0]), C(0)};
  }
};

Clip make_clip(Rng& rng, const ClipSetup& setup, size_t tensors) {
  Clip c;
  std::vector<double> v;
  if (setup.kind == ClipKind::kValue) {
    v = {-0.4 - 0.2 * rng.uniform(0, 1), 0.3 + 0.2 * rng.uniform(0, 1)};
  } else if (setup.kind == ClipKind::kRatio) {
    v.push_back(0.75);
    for (size_t i = 0; i < tensors; ++i) v.push_back(0.75 + 3.0 * rng.uniform(0, 1));
  } else if (setup.kind == ClipKind::kScale) {
    v = {0.2 + 0.6 * rng.uniform(0, 1)};
  }
  if (setup.kind == ClipKind::kNone) return c;
  if (setup.where == fc::ScalarType::kHost) {
    c.args = setup.kind == ClipKind::kValue ? fc::ClipArgs::HostValue(v[0], v[1])
                                            : fc::ClipArgs::HostScale(v[0]);
    c.values = v;
    return c;
  }
  c.storage = device_vector(setup.where, v);
  c.args = fc::ClipArgs::Device(setup.kind, setup.where, c.storage.ptr());
  for (size_t i = 0; i < v.size(); ++i) c.values.push_back(read_as_double(setup.where, c.storage.ptr(), i));
  return c;
}

template <typename C>
C clip_host(ClipKind kind, C g, const ClipScalars<C>& c) {
  switch (kind) {
    case ClipKind::kValue:
      return clip_gradient<ClipKind::kValue>(g, c);
    case ClipKind::kRatio:
      return clip_gradient<ClipKind::kRatio>(g, c);
    case ClipKind::kScale:
      return clip_gradient<ClipKind::kScale>(g, c);
    default:
      return g;
  }
}

// -1: no predicate, 0: false, 1: true.
struct Pred {
  fc::Predicate predicate;
  std::unique_ptr<Buffer<uint8_t>> storage;
  bool applies = true;
};

Pred make_predicate(int state) {
  Pred p;
  if (state < 0) return p;
  p.storage = std::make_unique<Buffer<uint8_t>>(1, 0);
  (*p.storage)[0] = static_cast<uint8_t>(state);
  p.predicate.device = p.storage->data();
  p.applies = state != 0;
  return p;
}

// ---------------------------------------------------------------------------
// Adam.

struct UpdateCase {
  Layout layout;
  ClipSetup clip;
  bool decay = false;
  fc::ScalarType scalars = fc::ScalarType::kHost;  // where the hyperparameters live
  bool raw = false;                                // Adam: raw hyperparameters
  fc::ScalarType step_type = fc::ScalarType::kHost;
  int predicate = -1;
  uint64_t seed = 1;
  SgdVariant variant = SgdVariant::kMomentum;
  bool torch = false;  // the torch form (AdamForm::kTorch, SgdCudaScalars::Torch)
};

// The torch form's weight decay: a decay scale 1 - wd * lr of 0.994 to 0.998,
// which even bfloat16 device scalars tell from 1, passed with and without
// decay (a driver that decayed regardless would show).
constexpr double kTorchDecay = 0.2;

// The rule on the host: one Adam element, either form, after clip_gradient.
template <typename P, typename S>
struct AdamExpected {
  P p;
  S m;
  S v;
};

template <typename P, typename S, typename Rule, typename CT>
AdamExpected<P, S> adam_host(P p0, P g0, S m0, S v0, const Rule& s, bool decay, ClipKind clip,
                             const ClipScalars<CT>& c) {
  CT pp = Host<P>::load(p0);
  CT mm = Host<S>::load(m0);
  CT vv = Host<S>::load(v0);
  const CT gg = clip_host(clip, static_cast<CT>(Host<P>::load(g0)), c);
  if (decay) {
    adam_element<true>(pp, gg, mm, vv, s);
  } else {
    adam_element<false>(pp, gg, mm, vv, s);
  }
  return {Host<P>::store(pp), Host<S>::store(mm), Host<S>::store(vv)};
}

// Runs adam_cuda on the case and checks every element. The torch form also
// computes the Keras form on the same scalars: returns how many elements it
// would have stored differently (0 for the other forms), so that a case can
// require that a driver running the wrong form fails.
template <typename P, typename S>
int64_t adam_case(const UpdateCase& uc) {
  using CT = typename Host<S>::C;
  require(!(uc.raw && uc.torch), "adam_case: raw or torch, not both");
  Rng rng(uc.seed);
  TensorList<P> p(rng, uc.layout, 0, 1.0);
  TensorList<P> g(rng, uc.layout, 1, 1.0);
  TensorList<S> m(rng, uc.layout, 2, 0.1);
  TensorList<S> v(rng, uc.layout, 3, 0.01, /*positive=*/true);
  const size_t n = uc.layout.sizes.size();
  const Clip clip = make_clip(rng, uc.clip, n);
  const Pred pred = make_predicate(uc.predicate);

  const double lr = 0.01 + 0.01 * rng.uniform(0, 1), b1 = 0.9, b2 = 0.99, eps = 1e-3;
  const double wd = uc.torch ? kTorchDecay : uc.decay ? 0.004 : 0.0;
  const int64_t step = 3;
  std::vector<Hyper> h;
  fc::AdamCudaScalars scalars;
  AdamScalars<CT> s;       // the Keras form (precomputed, raw; torch: for the comparison)
  AdamTorchScalars<CT> ts;  // the torch form
  if (uc.raw) {
    h.push_back(hyper(lr, uc.scalars));
    h.push_back(hyper(b1, uc.scalars));
    h.push_back(hyper(b2, uc.scalars));
    h.push_back(hyper(eps, uc.scalars));
    h.push_back(hyper(static_cast<double>(step), uc.step_type));
    h.push_back(hyper(wd, uc.scalars));
    scalars = fc::AdamCudaScalars::Raw(h[0].scalar, h[1].scalar, h[2].scalar, h[3].scalar,
                                       h[4].scalar, h[5].scalar);
    s = make_adam_scalars<CT>(h[0].value, h[1].value, h[2].value, h[3].value,
                              static_cast<int64_t>(h[4].value), h[5].value);
  } else if (uc.torch) {
    const AdamScalars<double> d = make_adam_scalars<double>(lr, b1, b2, eps, step, wd);
    for (double x : {d.alpha, b1, 1.0 - b1, b2, 1.0 - b2, eps, 1.0 - wd * lr}) {
      h.push_back(hyper(x, uc.scalars));
    }
    scalars = fc::AdamCudaScalars::Torch(h[0].scalar, h[1].scalar, h[2].scalar, h[3].scalar,
                                         h[4].scalar, h[5].scalar, h[6].scalar);
    ts.alpha = static_cast<CT>(h[0].value);
    ts.beta_1 = static_cast<CT>(h[1].value);
    ts.one_minus_beta_1 = static_cast<CT>(h[2].value);
    ts.beta_2 = static_cast<CT>(h[3].value);
    ts.one_minus_beta_2 = static_cast<CT>(h[4].value);
    ts.epsilon = static_cast<CT>(h[5].value);
    ts.decay_scale = static_cast<CT>(h[6].value);
    // The Keras form on the same scalars (decay: p - p * (1 - decay_scale) * 1).
    s = {ts.alpha, ts.one_minus_beta_1, ts.one_minus_beta_2, ts.epsilon, CT(1), CT(1) - ts.decay_scale};
  } else {
    const AdamScalars<double> d = make_adam_scalars<double>(lr, b1, b2, eps, step, wd);
    for (double x : {d.alpha, d.one_minus_beta_1, d.one_minus_beta_2, d.epsilon, d.lr,
                     d.weight_decay}) {
      h.push_back(hyper(x, uc.scalars));
    }
    scalars = fc::AdamCudaScalars::Precomputed(h[0].scalar, h[1].scalar, h[2].scalar,
                                               h[3].scalar, h[4].scalar, h[5].scalar);
    s.alpha = static_cast<CT>(h[0].value);
    s.one_minus_beta_1 = static_cast<CT>(h[1].value);
    s.one_minus_beta_2 = static_cast<CT>(h[2].value);
    s.epsilon = static_cast<CT>(h[3].value);
    s.lr = static_cast<CT>(h[4].value);
    s.weight_decay = static_cast<CT>(h[5].value);
  }

  fc::AdamCudaTensors<P, S> t;
  t.params = p.pointers();
  t.grads = g.const_pointers();
  t.m = m.pointers();
  t.v = v.pointers();
  t.sizes = uc.layout.sizes;
  require_ok(fc::adam_cuda(t, scalars, uc.decay, clip.args, pred.predicate, nullptr), "adam_cuda");

  g.check_unchanged("grads");
  for (auto* l : {&p, &g}) l->check_leads("params/grads");
  for (auto* l : {&m, &v}) l->check_leads("m/v");
  if (!pred.applies) {
    p.check_unchanged("params");
    m.check_unchanged("m");
    v.check_unchanged("v");
    return 0;
  }
  int64_t forms_differ = 0;
  for (size_t i = 0; i < n; ++i) {
    const ClipScalars<CT> c = clip.of_tensor<CT>(i);
    for (int64_t k = 0; k < uc.layout.sizes[i]; ++k) {
      const P p0 = p.initial[i][k], g0 = g.initial[i][k];
      const S m0 = m.initial[i][k], v0 = v.initial[i][k];
      const AdamExpected<P, S> keras = adam_host(p0, g0, m0, v0, s, uc.decay, clip.args.kind, c);
      const AdamExpected<P, S> want =
          uc.torch ? adam_host(p0, g0, m0, v0, ts, uc.decay, clip.args.kind, c) : keras;
      compare("params", i, k, (*p.buffers[i])[k], want.p);
      compare("m", i, k, (*m.buffers[i])[k], want.m);
      compare("v", i, k, (*v.buffers[i])[k], want.v);
      if (!same(keras.p, want.p) || !same(keras.m, want.m) || !same(keras.v, want.v)) {
        ++forms_differ;
      }
    }
  }
  return forms_differ;
}

// ---------------------------------------------------------------------------
// SGD.

// The rule on the host: one SGD element, either form, after clip_gradient
// (m0: the momentum, 0 for kPlain).
template <typename P, typename S>
struct SgdExpected {
  P p;
  S m;
};

template <typename P, typename S, typename Rule, typename CT>
SgdExpected<P, S> sgd_host(P p0, P g0, CT m0, const Rule& s, SgdVariant variant, bool decay,
                           ClipKind clip, const ClipScalars<CT>& c) {
  CT pp = Host<P>::load(p0);
  CT mm = m0;
  const CT gg = clip_host(clip, static_cast<CT>(Host<P>::load(g0)), c);
  if (variant == SgdVariant::kPlain) {
    if (decay) sgd_element<true, SgdVariant::kPlain>(pp, gg, mm, s);
    else sgd_element<false, SgdVariant::kPlain>(pp, gg, mm, s);
  } else if (variant == SgdVariant::kMomentum) {
    if (decay) sgd_element<true, SgdVariant::kMomentum>(pp, gg, mm, s);
    else sgd_element<false, SgdVariant::kMomentum>(pp, gg, mm, s);
  } else {
    if (decay) sgd_element<true, SgdVariant::kNesterov>(pp, gg, mm, s);
    else sgd_element<false, SgdVariant::kNesterov>(pp, gg, mm, s);
  }
  return {Host<P>::store(pp), Host<S>::store(mm)};
}

// Runs sgd_cuda on the case and checks every element; returns, like
// adam_case, how many elements the Keras form would have stored differently
// from the torch form (0 for the Keras form).
template <typename P, typename S>
int64_t sgd_case(const UpdateCase& uc) {
  using CT = typename Host<S>::C;
  const bool plain = uc.variant == SgdVariant::kPlain;
  Rng rng(uc.seed);
  TensorList<P> p(rng, uc.layout, 0, 1.0);
  TensorList<P> g(rng, uc.layout, 1, 1.0);
  Layout none;
  TensorList<S> m(rng, plain ? none : uc.layout, 2, 0.1);
  const size_t n = uc.layout.sizes.size();
  const Clip clip = make_clip(rng, uc.clip, n);
  const Pred pred = make_predicate(uc.predicate);
  const double lr = 0.01 + 0.02 * rng.uniform(0, 1), momentum = plain ? 0.0 : 0.9;
  std::vector<Hyper> h;
  fc::SgdCudaScalars scalars;
  SgdScalars<CT> s;       // the Keras form (torch: for the comparison)
  SgdTorchScalars<CT> ts;  // the torch form
  if (uc.torch) {
    for (double x : {-lr, momentum, 1.0 - kTorchDecay * lr}) h.push_back(hyper(x, uc.scalars));
    scalars = fc::SgdCudaScalars::Torch(h[0].scalar, h[1].scalar, h[2].scalar);
    ts.neg_lr = static_cast<CT>(h[0].value);
    ts.momentum = static_cast<CT>(h[1].value);
    ts.decay_scale = static_cast<CT>(h[2].value);
    // The Keras form on the same scalars (decay: p - p * (1 - decay_scale) * 1).
    s = {-ts.neg_lr, ts.momentum, CT(1) - ts.decay_scale, CT(1)};
  } else {
    for (double x : {lr, momentum, uc.decay ? 0.004 : 0.0, 0.0125}) h.push_back(hyper(x, uc.scalars));
    scalars = fc::SgdCudaScalars{h[0].scalar, h[1].scalar, h[2].scalar, h[3].scalar};
    s.lr = static_cast<CT>(h[0].value);
    s.momentum = static_cast<CT>(h[1].value);
    s.weight_decay = static_cast<CT>(h[2].value);
    s.decay_lr = static_cast<CT>(h[3].value);
  }

  fc::SgdCudaTensors<P, S> t;
  t.params = p.pointers();
  t.grads = g.const_pointers();
  t.m = m.pointers();
  t.sizes = uc.layout.sizes;
  require_ok(fc::sgd_cuda(t, scalars, uc.variant, uc.decay, clip.args, pred.predicate, nullptr),
             "sgd_cuda");
  g.check_unchanged("grads");
  p.check_leads("params");
  g.check_leads("grads");
  m.check_leads("momentums");
  if (!pred.applies) {
    p.check_unchanged("params");
    m.check_unchanged("momentums");
    return 0;
  }
  int64_t forms_differ = 0;
  for (size_t i = 0; i < n; ++i) {
    const ClipScalars<CT> c = clip.of_tensor<CT>(i);
    for (int64_t k = 0; k < uc.layout.sizes[i]; ++k) {
      const P p0 = p.initial[i][k], g0 = g.initial[i][k];
      const CT m0 = plain ? CT(0) : Host<S>::load(m.initial[i][k]);
      const ClipKind kind = clip.args.kind;
      const SgdExpected<P, S> keras = sgd_host<P, S>(p0, g0, m0, s, uc.variant, uc.decay, kind, c);
      const SgdExpected<P, S> want =
          uc.torch ? sgd_host<P, S>(p0, g0, m0, ts, uc.variant, uc.decay, kind, c) : keras;
      compare("params", i, k, (*p.buffers[i])[k], want.p);
      if (!plain) compare("momentums", i, k, (*m.buffers[i])[k], want.m);
      if (!same(keras.p, want.p) || (!plain && !same(keras.m, want.m))) ++forms_differ;
    }
  }
  return forms_differ;
}

// ---------------------------------------------------------------------------
// Squared norms: the device's order replayed on the host (block_reduce.cuh,
// norm_cuda.cu), with the per-element rule add_square.

constexpr int kThreads = fc::kBlockThreads;

// warp_sum, lane 0's result: five shuffle-down steps over 32 lanes at once.
double replay_warp_sum(const double* lanes) {
  double v[32];
  std::memcpy(v, lanes, sizeof(v));
  for (int offset = 16; offset > 0; offset /= 2) {
    double next[32];
    for (int l = 0; l < 32; ++l) next[l] = v[l] + (l + offset < 32 ? v[l + offset] : v[l]);
    std::memcpy(v, next, sizeof(v));
  }
  return v[0];
}

double replay_block_sum(const std::vector<double>& acc) {
  double warp_totals[32];
  for (int w = 0; w < 32; ++w) warp_totals[w] = 0.0;
  for (int w = 0; w < kThreads / 32; ++w) warp_totals[w] = replay_warp_sum(&acc[w * 32]);
  return replay_warp_sum(warp_totals);
}

// One chunk's partial: thread k's groups of G elements, then its tail element.
template <typename T>
double replay_chunk(const T* x, int n) {
  constexpr int G = fc::kVectorBytes / static_cast<int>(sizeof(T));
  std::vector<double> acc(kThreads, 0.0);
  const int groups = n / G;
  for (int t = 0; t < kThreads; ++t) {
    for (int j = t; j < groups; j += kThreads) {
      for (int k = 0; k < G; ++k) acc[t] = add_square(acc[t], to_double(x[j * G + k]));
    }
    if (groups * G + t < n) acc[t] = add_square(acc[t], to_double(x[groups * G + t]));
  }
  return replay_block_sum(acc);
}

template <typename T>
double replay_squared_norm(const T* x, int64_t size) {
  std::vector<double> partials;
  for (int64_t b = 0; b < size; b += C) {
    partials.push_back(replay_chunk(x + b, static_cast<int>(std::min<int64_t>(C, size - b))));
  }
  std::vector<double> acc(kThreads, 0.0);
  for (int t = 0; t < kThreads; ++t) {
    for (size_t c = t; c < partials.size(); c += kThreads) acc[t] += partials[c];
  }
  return replay_block_sum(acc);
}

template <typename T>
void norms_case(const Layout& layout, fc::ScalarType out_type, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  TensorList<T> x(rng, layout, 0, scale);
  const size_t n = layout.sizes.size();
  const size_t ws_bytes = fc::squared_norms_workspace_bytes(layout.sizes);
  Buffer<double> workspace(static_cast<int64_t>(ws_bytes / sizeof(double)), 0);
  Buffer<unsigned char> out(static_cast<int64_t>(n * type_bytes(out_type)), 0);
  std::memset(out.data(), 0xCD, n * type_bytes(out_type));  // poisoned
  require_ok(fc::squared_norms_cuda<T>(x.const_pointers(), layout.sizes, out_type, out.data(),
                                       workspace.data(), ws_bytes, nullptr),
             "squared_norms_cuda");
  x.check_unchanged("x");
  x.check_leads("x");
  for (size_t i = 0; i < n; ++i) {
    const double want = replay_squared_norm(x.buffers[i]->data(), layout.sizes[i]);
    const double got = read_as_double(out_type, out.data(), static_cast<int64_t>(i));
    // The device writes out_type from the double total: 16-bit via float32.
    double expect = want;
    if (out_type == fc::ScalarType::kFloat32) expect = static_cast<float>(want);
    if (out_type == fc::ScalarType::kFloat16) expect = to_double(Host<fc::Float16>::store(static_cast<float>(want)));
    if (out_type == fc::ScalarType::kBFloat16) expect = to_double(Host<fc::BFloat16>::store(static_cast<float>(want)));
    uint64_t gb, eb;
    std::memcpy(&gb, &got, 8);
    std::memcpy(&eb, &expect, 8);
    if (gb != eb) {
      char buf[200];
      std::snprintf(buf, sizeof(buf), "squared norm of x[%zu] (%s, %" PRId64 " elements, as %s): got %.17g, want %.17g",
                    i, Host<T>::name(), layout.sizes[i], type_name(out_type), got, expect);
      fail(buf);
    }
    // And near the exact sum (a wrong order or a skipped element shows).
    long double exact = 0.0L;
    for (int64_t k = 0; k < layout.sizes[i]; ++k) {
      const long double e = to_double((*x.buffers[i])[k]);
      exact += e * e;
    }
    require(std::fabs(static_cast<double>(exact) - want) <= 1e-12 * static_cast<double>(exact),
            "squared norm of x[" + std::to_string(i) + "] far from the exact sum");
  }
}

// ---------------------------------------------------------------------------
// Clip factors.

struct FactorInput {
  fc::ScalarType type;
  std::vector<double> values;
};

void factors_case(fc::ClipFactorKind kind, const std::vector<FactorInput>& inputs,
                  fc::ScalarType max_where, double max_norm_value, fc::ScalarType args_type) {
  std::vector<DeviceValue> storage;
  std::vector<fc::DeviceVector> vectors;
  std::vector<double> stored;  // the concatenation, as the kernel reads it
  for (const FactorInput& in : inputs) {
    storage.push_back(device_vector(in.type, in.values));
    vectors.push_back({in.type, storage.back().ptr(), static_cast<int64_t>(in.values.size())});
    for (size_t i = 0; i < in.values.size(); ++i) {
      stored.push_back(read_as_double(in.type, storage.back().ptr(), static_cast<int64_t>(i)));
    }
  }
  const int64_t n = static_cast<int64_t>(stored.size());
  const Hyper max_norm = hyper(max_norm_value, max_where);
  const int64_t args_n = kind == fc::ClipFactorKind::kNorm ? n + 1 : 1;
  Buffer<unsigned char> args(static_cast<int64_t>(args_n * type_bytes(args_type)), 0);
  std::memset(args.data(), 0xCD, args_n * type_bytes(args_type));
  Buffer<uint8_t> finite(1, 0);
  finite[0] = 7;
  require_ok(fc::clip_factors_cuda(kind, vectors, max_norm.scalar, args_type, args.data(),
                                   finite.data(), nullptr),
             "clip_factors_cuda");
  const double mx = max_norm.value;
  const bool wide = args_type == fc::ScalarType::kFloat64;
  // What the device writes: the C value, then as args_type.
  auto as_stored = [&](double c_value) {
    DeviceValue d = device_vector(args_type, {c_value});
    return read_as_double(args_type, d.ptr(), 0);
  };
  auto check_arg = [&](int64_t i, double want, const char* what) {
    const double got = read_as_double(args_type, args.data(), i);
    const bool both_nan = got != got && want != want;
    uint64_t gb, wb;
    std::memcpy(&gb, &got, 8);
    std::memcpy(&wb, &want, 8);
    if (!both_nan && gb != wb) {
      char buf[200];
      std::snprintf(buf, sizeof(buf), "clip_args[%" PRId64 "] (%s, %s): got %.17g, want %.17g", i,
                    what, type_name(args_type), got, want);
      fail(buf);
    }
  };
  bool all_finite = true;
  if (kind == fc::ClipFactorKind::kNorm) {
    check_arg(0, as_stored(wide ? mx : static_cast<float>(mx)), "max_norm");
    for (int64_t i = 0; i < n; ++i) {
      all_finite = all_finite && std::isfinite(stored[i]);
      const double b = wide ? clip_by_norm_scalars<double>(mx, stored[i]).b
                            : clip_by_norm_scalars<float>(mx, stored[i]).b;
      check_arg(1 + i, as_stored(b), "denominator");
    }
  } else {
    // The documented order: kFactorThreads stripes summed in order, then the
    // stripe sums in order.
    const int64_t per = (n + fc::kFactorThreads - 1) / fc::kFactorThreads;
    double total = 0.0;
    for (int t = 0; t < fc::kFactorThreads; ++t) {
      double stripe = 0.0;
      for (int64_t i = t * per; i < std::min(n, (t + 1) * per); ++i) stripe += stored[i];
      total += stripe;
    }
    if (n <= fc::kFactorThreads) {
      const double in_order = sum_in_order(stored.data(), n);
      require(std::memcmp(&in_order, &total, 8) == 0 || (total != total && in_order != in_order),
              "the stripe order must equal sum_in_order up to kFactorThreads elements");
    }
    all_finite = std::isfinite(total);
    if (kind == fc::ClipFactorKind::kTotalNorm) {
      check_arg(0, as_stored(std::sqrt(total)), "global norm");
    } else {
      const double scale = wide ? clip_by_global_norm_scalars<double>(mx, total).a
                                : clip_by_global_norm_scalars<float>(mx, total).a;
      check_arg(0, as_stored(scale), "scale");
    }
  }
  require(finite[0] == (all_finite ? 1 : 0), "finite flag: got " + std::to_string(finite[0]) +
                                                 ", want " + std::to_string(all_finite));
}

// ---------------------------------------------------------------------------
// All finite.

// preset >= 0: the flag holds preset before the call and the call runs with
// reset = false (a later format of a mixed list), so it must and its check
// into the flag: stay preset where every element is finite, else 0.
template <typename T>
void finite_case(const Layout& layout, const std::vector<std::pair<size_t, int64_t>>& bad,
                 double bad_value, int skip_if, uint64_t seed, int preset = -1) {
  Rng rng(seed);
  TensorList<T> x(rng, layout, 0, 100.0);
  for (auto [i, k] : bad) (*x.buffers[i])[k] = from_double<T>(bad_value);
  for (auto [i, k] : bad) x.initial[i][k] = (*x.buffers[i])[k];
  Buffer<uint8_t> out(1, 0);
  out[0] = preset >= 0 ? static_cast<uint8_t>(preset) : 9;
  Buffer<uint8_t> skip(1, 0);
  skip[0] = skip_if > 0 ? 1 : 0;
  std::vector<const void*> ptrs;
  for (auto* p : x.const_pointers()) ptrs.push_back(p);
  require_ok(fc::all_finite_cuda(Host<T>::kFormat, ptrs, layout.sizes, out.data(),
                                 skip_if >= 0 ? skip.data() : nullptr, nullptr,
                                 /*reset=*/preset < 0),
             "all_finite_cuda");
  x.check_unchanged("x");
  bool finite = true;
  for (size_t i = 0; i < layout.sizes.size(); ++i) {
    finite = finite && !any_nonfinite(Host<T>::kFormat, x.buffers[i]->data(), layout.sizes[i]);
  }
  if (skip_if > 0) finite = true;
  const int want = preset >= 0 ? (finite ? preset : 0) : (finite ? 1 : 0);
  require(out[0] == want,
          std::string("all_finite (") + Host<T>::name() + "): got " + std::to_string(out[0]) +
              ", want " + std::to_string(want));
}

// ---------------------------------------------------------------------------
// The planner alone, with fake pointers (never dereferenced).

template <int kDepth>
void check_plan(const std::vector<int64_t>& sizes, const fc::ByteLists<kDepth>& in, int width,
                int max_tensors, int max_blocks) {
  using Table = fc::TensorTable<kDepth>;
  const fc::Plan<kDepth> plan = fc::plan_launches<kDepth>(sizes, in, width, max_tensors, max_blocks);
  const int cap_t = std::min(max_tensors, Table::kMaxTensors);
  const int cap_b = std::min(max_blocks, Table::kMaxBlocks);
  // Every element of every tensor is covered exactly once, in order: walk
  // the blocks of every launch as the device does (block_work).
  std::vector<int64_t> next(sizes.size(), 0);  // next element expected per tensor
  int64_t chunk = 0;
  require(plan.tables.size() == plan.blocks.size(), "one block count per table");
  for (size_t l = 0; l < plan.tables.size(); ++l) {
    const Table& t = *plan.tables[l];
    const int blocks = plan.blocks[l];
    require(blocks >= 1 && blocks <= cap_b, "blocks per launch within the limit");
    require(t.chunk_base == chunk, "chunk_base continues the previous launch");
    int tensors_used = 0;
    for (int b = 0; b < blocks; ++b) {
      const fc::BlockWork w = fc::block_work(t, b);
      tensors_used = std::max(tensors_used, w.tensor + 1);
      require(w.tensor < cap_t, "table entry within the limit");
      const int32_t i = t.index[w.tensor];
      require(i >= 0 && static_cast<size_t>(i) < sizes.size(), "tensor index in range");
      const int64_t size = sizes[i];
      // The element this block starts at, from the pointer the table holds.
      const int64_t ptr_offset =
          (static_cast<const char*>(t.ptr[0][w.tensor]) - in.lists[0][i]) / in.elem_bytes[0];
      for (int d = 1; d < kDepth; ++d) {
        const int64_t o =
            (static_cast<const char*>(t.ptr[d][w.tensor]) - in.lists[d][i]) / in.elem_bytes[d];
        require(o == ptr_offset, "all lists advanced alike");
      }
      const int64_t start = ptr_offset + w.begin;
      require(start == next[i], "tensor " + std::to_string(i) + ": block starts at element " +
                                    std::to_string(start) + ", expected " + std::to_string(next[i]));
      require(w.n >= 1 && w.n <= C, "block size within a chunk");
      require(start + w.n <= size, "block ends inside its tensor");
      require(w.n == C || start + w.n == size, "only a tensor's last chunk is short");
      require(t.size[w.tensor] == size - ptr_offset, "the entry's size is what is left");
      require(w.begin + w.n <= (1ll << 31) - 1, "in-launch offsets fit 31 bits");
      bool vec = true;
      for (int d = 0; d < kDepth; ++d) {
        vec = vec && reinterpret_cast<uintptr_t>(in.lists[d][i]) %
                             (static_cast<uintptr_t>(in.elem_bytes[d]) * width) ==
                         0;
      }
      require((t.vector_ok[w.tensor] != 0) == vec, "vector path iff every pointer is aligned");
      next[i] = start + w.n;
      ++chunk;
    }
    require(tensors_used <= cap_t, "tensors per launch within the limit");
  }
  require(chunk == plan.chunks, "plan.chunks counts every block");
  for (size_t i = 0; i < sizes.size(); ++i) {
    require(next[i] == std::max<int64_t>(sizes[i], 0),
            "tensor " + std::to_string(i) + " covered up to " + std::to_string(next[i]) + " of " +
                std::to_string(sizes[i]));
  }
}

void planner_case() {
  const int64_t big31 = (1ll << 31) + 2 * C + 3;
  const int64_t big33 = (1ll << 33) + 5;
  const std::vector<int64_t> sizes = {3, big31, 0, C, big33, 1, 2 * C - 1, 7};
  // Fake, widely spaced addresses: lists of float32, float16 (8-byte
  // aligned for its vector of 4), and some one element off.
  fc::ByteLists<3> in;
  in.elem_bytes = {4, 2, 4};
  uintptr_t base = uintptr_t{1} << 44;
  for (size_t i = 0; i < sizes.size(); ++i) {
    for (int d = 0; d < 3; ++d) {
      const uintptr_t misalign = (i % 4 == 3 && d == 1) || (i % 5 == 4 && d == 2) ? in.elem_bytes[d] : 0;
      in.lists[d].push_back(reinterpret_cast<const char*>(base + misalign));
      base += (uintptr_t{1} << 36);
    }
  }
  // Beyond 2^31 and 2^33 elements: the table's capacity, and a few tensors
  // or blocks per launch (a tensor continuing over many launches).
  for (auto [tensors, blocks] : std::vector<std::pair<int, int>>{{1 << 30, 1 << 30}, {2, 1000}, {4, 4096}}) {
    check_plan<3>(sizes, in, 4, tensors, blocks);
  }
  // Tiny limits on the small tensors.
  const std::vector<int64_t> small = {3, 0, C, 1, 2 * C - 1, 7, 5 * C + 2};
  fc::ByteLists<3> some;
  some.elem_bytes = in.elem_bytes;
  for (int d = 0; d < 3; ++d) {
    for (size_t i = 0; i < small.size(); ++i) some.lists[d].push_back(in.lists[d][i]);
  }
  for (auto [tensors, blocks] : std::vector<std::pair<int, int>>{{1, 1}, {3, 5}, {1000, 3}, {2, 2}}) {
    check_plan<3>(small, some, 4, tensors, blocks);
  }
  // Many small tensors: the tensor limit closes launches.
  std::vector<int64_t> many(3000, 5);
  fc::ByteLists<1> one;
  one.elem_bytes = {8};
  for (size_t i = 0; i < many.size(); ++i) {
    one.lists[0].push_back(reinterpret_cast<const char*>((uintptr_t{1} << 40) + i * 4096 + (i % 2) * 8));
  }
  check_plan<1>(many, one, 2, 1 << 30, 1 << 30);
  const fc::Plan<1> plan = fc::plan_launches<1>(many, one, 2);
  require(plan.tables.size() == (3000 + fc::TensorTable<1>::kMaxTensors - 1) / fc::TensorTable<1>::kMaxTensors,
          "3000 one-chunk tensors: as many launches as the tensor limit needs");
}

const std::vector<int64_t> kContinuing = {1, 3 * C + 1, 5, 7 * C, 2, C + 1, C};
const std::vector<const char*> kLimits = {"1,1", "3,5", "2,1000", "1000,3"};

void with_limits(const char* limits, const std::function<void()>& fn) {
  setenv("FUSEDOPT_CUDA_LAUNCH_LIMITS", limits, 1);
  fn();
  unsetenv("FUSEDOPT_CUDA_LAUNCH_LIMITS");
}

using ST = fc::ScalarType;

Layout single(std::vector<int64_t> sizes, int mask_lists = 0) {
  Layout l;
  l.sizes = std::move(sizes);
  l.masks = alignment_masks(l.sizes.size(), mask_lists);
  return l;
}

// ---------------------------------------------------------------------------
// Launch errors: each launch's own error, not a stale one.

__global__ void probe_kernel(int* out) { out[threadIdx.x] = 1; }

void launch_errors_case() {
  Buffer<int> out(1024, 0);
  int* p = out.data();
  require(fc::launch(&probe_kernel, dim3(1), dim3(1025), 0, nullptr, p) ==
              cudaErrorInvalidConfiguration,
          "1025 threads per block: cudaErrorInvalidConfiguration");
  require(fc::launch(&probe_kernel, dim3(0), dim3(32), 0, nullptr, p) ==
              cudaErrorInvalidConfiguration,
          "an empty grid: cudaErrorInvalidConfiguration");
  require(fc::launch(&probe_kernel, dim3(1), dim3(32), 64 * 1024, nullptr, p) ==
              cudaErrorInvalidValue,
          "64 KB of dynamic shared memory: cudaErrorInvalidValue");
  // The failed launches left an error behind; a driver call that checks its
  // own launches succeeds regardless.
  Rng rng(5);
  Layout layout{{100, C + 1}, {0, 0}};
  TensorList<float> pl(rng, layout, 0, 1.0), g(rng, layout, 1, 1.0), m(rng, layout, 2, 0.1),
      v(rng, layout, 3, 0.01, true);
  fc::AdamCudaTensors<float, float> t{pl.pointers(), g.const_pointers(), m.pointers(), v.pointers(),
                                       layout.sizes};
  const auto s = fc::AdamCudaScalars::Precomputed(fc::Scalar::Host(1e-3), fc::Scalar::Host(0.1),
                                                  fc::Scalar::Host(0.001), fc::Scalar::Host(1e-7),
                                                  fc::Scalar::Host(1e-3), fc::Scalar::Host(0));
  require_ok(fc::adam_cuda(t, s, false, fc::ClipArgs::None(), fc::Predicate(), nullptr),
             "adam_cuda after a failed launch");
  require(fc::launch(&probe_kernel, dim3(2), dim3(512), 0, nullptr, p) == cudaSuccess,
          "a valid launch succeeds");
  for (int i = 0; i < 512; ++i) require(p[i] == 1, "probe kernel wrote every thread's element");
  // Host-side refusals, before any launch.
  const float before = pl.buffers[0]->data()[0];
  require(!fc::adam_cuda(t, s, false, fc::ClipArgs::Device(ClipKind::kRatio, fc::ScalarType::kFloat32, nullptr),
                         fc::Predicate(), nullptr).empty(),
          "a null clip argument pointer is refused");
  require(!fc::adam_cuda(t, s, false, fc::ClipArgs{ClipKind::kRatio, fc::ScalarType::kHost, nullptr, {1, 1}},
                         fc::Predicate(), nullptr).empty(),
          "clip='ratio' with host arguments is refused");
  require(pl.buffers[0]->data()[0] == before, "a refused call writes nothing");
}

// A kernel that cannot run (no code for the GPU, too many registers for 512
// threads) is refused before the first launch of the call: with one tensor
// per launch, nothing at all is launched or written.
void refuse_before_launch_case() {
  Rng rng(6);
  const Layout layout = single({5, C + 1, 3 * C, 7}, 4);
  TensorList<float> p(rng, layout, 0, 1.0), g(rng, layout, 1, 1.0), m(rng, layout, 2, 0.1),
      v(rng, layout, 3, 0.01, true);
  const auto s = fc::AdamCudaScalars::Precomputed(fc::Scalar::Host(1e-3), fc::Scalar::Host(0.1),
                                                  fc::Scalar::Host(0.001), fc::Scalar::Host(1e-7),
                                                  fc::Scalar::Host(1e-3), fc::Scalar::Host(0));
  Buffer<double> ws(static_cast<int64_t>(fc::squared_norms_workspace_bytes(layout.sizes) / 8), 0);
  Buffer<double> norms(4, 0);
  Buffer<uint8_t> flag(1, 0);
  flag[0] = 5;
  std::vector<const void*> graw;
  for (auto* q : g.const_pointers()) graw.push_back(q);
  for (const char* setting : {"FUSEDOPT_EMU_NO_KERNEL_CODE=1", "FUSEDOPT_EMU_MAX_THREADS=256"}) {
    const std::string kv(setting);
    const std::string key = kv.substr(0, kv.find('=')), value = kv.substr(kv.find('=') + 1);
    setenv(key.c_str(), value.c_str(), 1);
    with_limits("1,1", [&] {
      const long long before = emu::stats().launches;
      const std::string a = fc::adam_cuda(
          fc::AdamCudaTensors<float, float>{p.pointers(), g.const_pointers(), m.pointers(),
                                             v.pointers(), layout.sizes},
          s, false, fc::ClipArgs::None(), fc::Predicate(), nullptr);
      const std::string n = fc::squared_norms_cuda<float>(g.const_pointers(), layout.sizes,
                                                          ST::kFloat64, norms.data(), ws.data(),
                                                          static_cast<size_t>(ws.size()) * 8, nullptr);
      const std::string f = fc::all_finite_cuda(FloatFormat::kFloat32, graw, layout.sizes,
                                                flag.data(), nullptr, nullptr);
      require(!a.empty() && !n.empty() && !f.empty(), setting + std::string(": refused"));
      require(a.find("cannot run") != std::string::npos || a.find("threads per block") != std::string::npos,
              "the message says why: " + a);
      require(emu::stats().launches == before, setting + std::string(": nothing launched"));
    });
    unsetenv(key.c_str());
    p.check_unchanged("params");
    m.check_unchanged("m");
    v.check_unchanged("v");
    require(flag[0] == 5, "the finite flag untouched (not even the memset)");
  }
}

void driver_case() {
  require(fc::driver_problem(13000, 13000).empty(), "driver 13.0, runtime 13.0: fine");
  require(fc::driver_problem(13020, 13000).empty(), "driver 13.2, runtime 13.0: fine");
  require(fc::driver_problem(12080, 12040).empty(), "driver 12.8, runtime 12.4: fine");
  const std::string old = fc::driver_problem(12040, 13000);
  for (const char* part : {"CUDA 13.0", "580", "CUDA 12.4", "12040", "13000",
                           "CUDACXX=/usr/local/cuda-12.x/bin/nvcc"}) {
    require(old.find(part) != std::string::npos, "the old-driver message names " + std::string(part) + ": " + old);
  }
  const std::string none = fc::driver_problem(0, 13000);
  require(none.find("no NVIDIA driver") != std::string::npos, "no driver: " + none);
  require(fc::cuda_problem().empty(), "the emulated device is usable: " + fc::cuda_problem());
  require(fc::runtime_version() == CUDART_VERSION, "runtime_version");
}

// The emulation's own 16-bit conversions against csrc/kernels/half.h, two
// independent implementations: every float16/bfloat16 widens alike, and
// narrowing agrees on every non-NaN input.
void conversions_case() {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float e = __half2float(__half{static_cast<uint16_t>(b)});
    const float h = half_to_float(static_cast<uint16_t>(b));
    require(std::memcmp(&e, &h, 4) == 0 || (e != e && h != h), "half widening of " + std::to_string(b));
    const float eb = __bfloat162float(__nv_bfloat16{static_cast<uint16_t>(b)});
    const float hb = bfloat16_to_float(static_cast<uint16_t>(b));
    require(std::memcmp(&eb, &hb, 4) == 0 || (eb != eb && hb != hb), "bfloat16 widening");
  }
  Rng rng(11);
  std::vector<uint32_t> inputs = {0u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x477FEFFFu, 0x477FF000u,
                                  0x33000000u, 0x33000001u, 0x387FC000u, 0x38800000u, 0x7F7FFFFFu,
                                  0x00000001u, 0x3F808000u, 0x3F818000u};
  for (int i = 0; i < 2000000; ++i) inputs.push_back(static_cast<uint32_t>(rng.gen()));
  for (uint32_t u : inputs) {
    float f;
    std::memcpy(&f, &u, 4);
    if (f != f) {
      require(__float2half_rn(f).bits_ == 0x7FFF && __float2bfloat16_rn(f).bits_ == 0x7FFF,
              "NaN narrows to CUDA's canonical NaN");
      continue;
    }
    require(__float2half_rn(f).bits_ == float_to_half(f), "half narrowing of bits " + std::to_string(u));
    require(__float2bfloat16_rn(f).bits_ == float_to_bfloat16(f),
            "bfloat16 narrowing of bits " + std::to_string(u));
  }
}

// The emulation's barriers and shuffles on a kernel of this file: a block
// reversal through shared memory and a butterfly of shuffles.
__global__ void fiber_probe_kernel(const int* in, int* out) {
  __shared__ int tile[256];
  const int t = static_cast<int>(threadIdx.x);
  tile[t] = in[blockIdx.x * 256 + t];
  __syncthreads();
  int v = tile[255 - t];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  out[blockIdx.x * 256 + t] = v;
}

void fibers_case() {
  Buffer<int> in(3 * 256, 0), out(3 * 256, 0);
  for (int i = 0; i < 3 * 256; ++i) in[i] = i * 7 + 1;
  require(fc::launch(&fiber_probe_kernel, dim3(3), dim3(256), 0, nullptr,
                     static_cast<const int*>(in.data()), out.data()) == cudaSuccess,
          "probe launch");
  for (int b = 0; b < 3; ++b) {
    std::vector<int> v(256);
    for (int t = 0; t < 256; ++t) v[t] = in[b * 256 + 255 - t];
    for (int offset = 16; offset > 0; offset /= 2) {
      std::vector<int> next(v);
      for (int t = 0; t < 256; ++t) {
        const int lane = t % 32;
        next[t] = v[t] + (lane + offset < 32 ? v[t + offset] : v[t]);
      }
      v = next;
    }
    for (int t = 0; t < 256; ++t) require(out[b * 256 + t] == v[t], "fiber probe result");
  }
}

// ---------------------------------------------------------------------------
// The cases.

// Thousands of small tensors: several launches (the tensor limit).
Layout many_tensors(size_t count, uint64_t seed, int lists) {
  Rng rng(seed);
  Layout l;
  for (size_t i = 0; i < count; ++i) l.sizes.push_back(rng.integer(0, 300));
  l.sizes[count / 2] = C + 5;
  l.masks = alignment_masks(count, lists, static_cast<int>(seed));
  return l;
}

// Runs a case in the torch form (run: adam_case<P, S> or sgd_case<P, S>;
// variant: SGD's, adam_case ignores it); returns how many elements the Keras
// form would have stored differently.
using UpdateRun = std::function<int64_t(const UpdateCase&)>;

int64_t torch_run(const UpdateRun& run, UpdateCase uc, SgdVariant variant = SgdVariant::kMomentum) {
  uc.torch = true;
  uc.variant = variant;
  return run(uc);
}

// The torch form on one dtype pair (own: its state dtype): `first` (the odd
// sizes and every alignment mix), then over `layout` with the next seeds each
// clip kind with and without decay, the scalars and the clip arguments on the
// host or in device memory as float32, `own` or float64 (ratio arguments live
// in device memory only), and apply_if false and true. With forms_apart,
// somewhere the results must differ from the Keras form's on the same scalars,
// else a driver that ran the Keras form would pass. (Not in every run: a
// 16-bit value, rounded once more, seldom tells the forms apart.)
void torch_pair(const UpdateRun& run, ST own, const UpdateCase& first, const Layout& layout,
                SgdVariant variant = SgdVariant::kMomentum, bool forms_apart = true) {
  int64_t differ = torch_run(run, first, variant);
  uint64_t seed = first.seed;
  const std::vector<ST> wheres = {ST::kHost, ST::kFloat32, own, ST::kFloat64};
  size_t r = 0;
  for (ClipKind kind : {ClipKind::kNone, ClipKind::kValue, ClipKind::kRatio, ClipKind::kScale}) {
    for (bool decay : {false, true}) {
      const ST clip_where = wheres[(r + 1) % wheres.size()];
      const ClipSetup clip{kind, kind == ClipKind::kRatio && clip_where == ST::kHost ? own : clip_where};
      differ += torch_run(run, {layout, clip, decay, wheres[r % wheres.size()], false, ST::kHost, -1, ++seed}, variant);
      ++r;
    }
  }
  for (int predicate : {0, 1}) {
    differ += torch_run(run, {layout, {ClipKind::kRatio, own}, true, own, false, ST::kHost, predicate, ++seed}, variant);
  }
  require(differ > 0 || !forms_apart,
          "seeds " + std::to_string(first.seed) + " to " + std::to_string(seed) +
              ": the torch form stores what the Keras form stores everywhere");
}


std::map<std::string, std::function<void()>> cases() {
  std::map<std::string, std::function<void()>> c;
  c["conversions"] = conversions_case;
  c["fibers"] = fibers_case;
  c["planner"] = planner_case;
  c["launch_errors"] = launch_errors_case;
  c["refuse_before_launch"] = refuse_before_launch_case;
  c["driver"] = driver_case;

  // Adam: every dtype pair over the odd sizes and every alignment mix.
  c["adam_f32"] = [] { adam_case<float, float>({odd_layout(4), {}, true, ST::kHost, false, ST::kHost, -1, 1}); };
  c["adam_f64"] = [] { adam_case<double, double>({odd_layout(4), {}, false, ST::kHost, false, ST::kHost, -1, 2}); };
  c["adam_f16_f32"] = [] { adam_case<fc::Float16, float>({odd_layout(4), {}, true, ST::kHost, false, ST::kHost, -1, 3}); };
  c["adam_bf16_f32"] = [] { adam_case<fc::BFloat16, float>({odd_layout(4), {}, false, ST::kHost, false, ST::kHost, -1, 4}); };
  // The TF op on 16-bit variables: scalars and clip arguments in the
  // variables' dtype in device memory.
  c["adam_f16_tf"] = [] {
    adam_case<fc::Float16, fc::Float16>({odd_layout(4), {ClipKind::kRatio, ST::kFloat16}, true, ST::kFloat16, false, ST::kHost, 1, 5});
  };
  c["adam_bf16_tf"] = [] {
    adam_case<fc::BFloat16, fc::BFloat16>({odd_layout(4), {ClipKind::kValue, ST::kBFloat16}, false, ST::kBFloat16, false, ST::kHost, -1, 6});
  };
  c["adam_clips"] = [] {
    const Layout l = single({3, 17, C + 7, 1000, 0, 4096}, 4);
    uint64_t seed = 10;
    for (ClipSetup clip : {ClipSetup{ClipKind::kValue, ST::kHost}, ClipSetup{ClipKind::kValue, ST::kFloat32},
                           ClipSetup{ClipKind::kRatio, ST::kFloat32}, ClipSetup{ClipKind::kRatio, ST::kFloat64},
                           ClipSetup{ClipKind::kScale, ST::kHost}, ClipSetup{ClipKind::kScale, ST::kFloat64}}) {
      for (bool decay : {false, true}) {
        adam_case<float, float>({l, clip, decay, ST::kHost, false, ST::kHost, -1, seed++});
        adam_case<double, double>({l, clip, decay, ST::kFloat64, false, ST::kHost, -1, seed++});
      }
    }
  };
  c["adam_device_scalars"] = [] {
    const Layout l = single({5, C + 9, 33, 0}, 4);
    adam_case<float, float>({l, {}, true, ST::kFloat32, true, ST::kInt64, -1, 20});
    adam_case<float, float>({l, {}, false, ST::kFloat64, true, ST::kInt32, -1, 21});
    adam_case<float, float>({l, {}, true, ST::kHost, true, ST::kHost, -1, 22});
    adam_case<fc::BFloat16, float>({l, {ClipKind::kScale, ST::kFloat32}, true, ST::kFloat32, true, ST::kFloat32, -1, 23});
    adam_case<double, double>({l, {}, true, ST::kFloat32, false, ST::kHost, -1, 24});
  };
  c["adam_apply_if"] = [] {
    const Layout l = single({5, C + 9, 1000}, 4);
    adam_case<float, float>({l, {}, true, ST::kHost, false, ST::kHost, 0, 30});
    adam_case<float, float>({l, {}, true, ST::kHost, false, ST::kHost, 1, 31});
    adam_case<fc::Float16, fc::Float16>({l, {ClipKind::kRatio, ST::kFloat16}, true, ST::kFloat16, false, ST::kHost, 0, 32});
    adam_case<double, double>({l, {ClipKind::kScale, ST::kFloat64}, false, ST::kFloat64, true, ST::kFloat64, 0, 33});
  };
  c["adam_many_tensors"] = [] {
    const long long before = emu::stats().launches;
    adam_case<float, float>({many_tensors(2500, 40, 4), {ClipKind::kRatio, ST::kFloat32}, true, ST::kHost, false, ST::kHost, -1, 40});
    require(emu::stats().launches - before >= 4, "2,500 tensors take several launches");
  };
  c["adam_continuing"] = [] {
    uint64_t seed = 50;
    for (const char* limits : kLimits) {
      with_limits(limits, [&] {
        adam_case<float, float>({single(kContinuing, 4), {ClipKind::kRatio, ST::kFloat32}, true, ST::kHost, false, ST::kHost, -1, seed++});
      });
    }
    with_limits("2,3", [&] { adam_case<fc::Float16, float>({single(kContinuing, 4), {}, false, ST::kHost, false, ST::kHost, 1, seed++}); });
  };
  // The torch form (AdamForm::kTorch): every dtype pair over the odd sizes
  // and every alignment mix (the bfloat16 ones, of the same widths as the
  // float16 ones, over a few sizes), then torch_pair's sweep; many tensors;
  // continuing across launches.
  c["adam_torch"] = [] {
    const Layout odd = odd_layout(4), few = short_layout(4), l = single({3, 17, 1000, 0, 4097}, 4);
    torch_pair(adam_case<float, float>, ST::kFloat32, {odd, {}, true, ST::kHost, false, ST::kHost, -1, 200}, l);
    torch_pair(adam_case<double, double>, ST::kFloat64, {odd, {ClipKind::kValue, ST::kHost}, false, ST::kFloat64, false, ST::kHost, -1, 220}, l);
    torch_pair(adam_case<fc::Float16, float>, ST::kFloat32, {odd, {ClipKind::kScale, ST::kFloat32}, true, ST::kFloat32, false, ST::kHost, -1, 240}, l);
    torch_pair(adam_case<fc::BFloat16, float>, ST::kFloat32, {few, {ClipKind::kRatio, ST::kFloat32}, false, ST::kHost, false, ST::kHost, 1, 260}, l);
    torch_pair(adam_case<fc::Float16, fc::Float16>, ST::kFloat16, {odd, {ClipKind::kRatio, ST::kFloat16}, true, ST::kFloat16, false, ST::kHost, -1, 280}, l);
    torch_pair(adam_case<fc::BFloat16, fc::BFloat16>, ST::kBFloat16, {few, {ClipKind::kValue, ST::kBFloat16}, true, ST::kFloat32, false, ST::kHost, -1, 300}, l);
    const long long before = emu::stats().launches;
    torch_run(adam_case<float, float>, {many_tensors(1000, 320, 4), {ClipKind::kRatio, ST::kFloat32}, true, ST::kFloat32, false, ST::kHost, -1, 320});
    require(emu::stats().launches - before >= 2, "1,000 tensors take several launches");
    with_limits("3,5", [] {
      torch_run(adam_case<fc::BFloat16, float>, {single(kContinuing, 4), {ClipKind::kScale, ST::kHost}, true, ST::kHost, false, ST::kHost, -1, 321});
    });
  };

  // SGD.
  for (SgdVariant variant : {SgdVariant::kPlain, SgdVariant::kMomentum, SgdVariant::kNesterov}) {
    const std::string v = variant == SgdVariant::kPlain ? "plain" : variant == SgdVariant::kMomentum ? "momentum" : "nesterov";
    const int lists = variant == SgdVariant::kPlain ? 2 : 3;
    c["sgd_" + v] = [variant, lists] {
      UpdateCase uc{odd_layout(lists), {}, true, ST::kHost, false, ST::kHost, -1, 60};
      uc.variant = variant;
      sgd_case<float, float>(uc);
      uc.seed = 62;
      uc.clip = {ClipKind::kValue, ST::kHost};
      sgd_case<fc::Float16, float>(uc);
      uc.layout = short_layout(lists);
      uc.seed = 61;
      uc.decay = false;
      uc.clip = {};
      sgd_case<double, double>(uc);
      uc.seed = 63;
      uc.clip = {ClipKind::kScale, ST::kFloat32};
      sgd_case<fc::BFloat16, float>(uc);
      uc.seed = 64;
      uc.clip = {ClipKind::kRatio, ST::kFloat16};
      uc.scalars = ST::kFloat16;
      sgd_case<fc::Float16, fc::Float16>(uc);
      uc.seed = 65;
      uc.clip = {ClipKind::kValue, ST::kBFloat16};
      uc.scalars = ST::kBFloat16;
      uc.decay = true;
      sgd_case<fc::BFloat16, fc::BFloat16>(uc);
    };
  }
  c["sgd_clips_apply_if"] = [] {
    const Layout l = single({3, 17, C + 7, 1000, 0}, 3);
    uint64_t seed = 70;
    for (ClipSetup clip : {ClipSetup{ClipKind::kValue, ST::kFloat64}, ClipSetup{ClipKind::kRatio, ST::kFloat32},
                           ClipSetup{ClipKind::kScale, ST::kHost}}) {
      for (SgdVariant variant : {SgdVariant::kPlain, SgdVariant::kMomentum, SgdVariant::kNesterov}) {
        UpdateCase uc{l, clip, true, ST::kFloat32, false, ST::kHost, static_cast<int>(seed % 3) - 1, seed};
        uc.variant = variant;
        sgd_case<float, float>(uc);
        ++seed;
      }
    }
  };
  c["sgd_many_continuing"] = [] {
    UpdateCase uc{many_tensors(1000, 80, 3), {ClipKind::kScale, ST::kFloat32}, false, ST::kHost, false, ST::kHost, -1, 80};
    sgd_case<float, float>(uc);
    uint64_t seed = 81;
    for (const char* limits : kLimits) {
      with_limits(limits, [&] {
        UpdateCase u{single(kContinuing, 3), {ClipKind::kRatio, ST::kFloat32}, true, ST::kHost, false, ST::kHost, -1, seed++};
        u.variant = SgdVariant::kNesterov;
        sgd_case<float, float>(u);
      });
    }
  };
  // The torch form (SgdCudaScalars::Torch), each variant: every dtype pair
  // over the odd sizes and every alignment mix (<float, float> and
  // <Float16, float>; the others over a few sizes), then torch_pair's sweep;
  // many tensors; continuing across launches.
  c["sgd_torch"] = [] {
    uint64_t seed = 400;
    for (SgdVariant variant : {SgdVariant::kPlain, SgdVariant::kMomentum, SgdVariant::kNesterov}) {
      const int lists = variant == SgdVariant::kPlain ? 2 : 3;
      const Layout odd = odd_layout(lists), few = short_layout(lists), l = single({3, 17, 1000, 0, 4097}, lists);
      // Plain SGD on 16-bit parameters stores p alone, in 16 bits: the forms'
      // float32 results (fma(g, -lr, p) against p - g * lr) almost never
      // round apart there (in at most 1 of the 0.24 to 1.4 million elements
      // of a pair here), so those pairs check the torch form's results only.
      const bool apart16 = variant != SgdVariant::kPlain;
      auto pair = [&](const UpdateRun& run, ST own, const UpdateCase& first, bool apart) {
        torch_pair(run, own, first, l, variant, apart);
        seed += 20;
      };
      pair(sgd_case<float, float>, ST::kFloat32, {odd, {}, true, ST::kHost, false, ST::kHost, -1, seed}, true);
      pair(sgd_case<fc::Float16, float>, ST::kFloat32, {odd, {ClipKind::kValue, ST::kFloat32}, false, ST::kFloat32, false, ST::kHost, -1, seed}, apart16);
      pair(sgd_case<double, double>, ST::kFloat64, {few, {ClipKind::kScale, ST::kHost}, false, ST::kFloat64, false, ST::kHost, -1, seed}, true);
      pair(sgd_case<fc::BFloat16, float>, ST::kFloat32, {few, {ClipKind::kRatio, ST::kFloat32}, true, ST::kHost, false, ST::kHost, 1, seed}, apart16);
      pair(sgd_case<fc::Float16, fc::Float16>, ST::kFloat16, {few, {ClipKind::kRatio, ST::kFloat16}, true, ST::kFloat16, false, ST::kHost, -1, seed}, apart16);
      pair(sgd_case<fc::BFloat16, fc::BFloat16>, ST::kBFloat16, {few, {ClipKind::kValue, ST::kBFloat16}, false, ST::kFloat32, false, ST::kHost, -1, seed}, apart16);
    }
    const long long before = emu::stats().launches;
    torch_run(sgd_case<float, float>, {many_tensors(1000, 800, 3), {ClipKind::kScale, ST::kFloat32}, true, ST::kFloat32, false, ST::kHost, -1, 800}, SgdVariant::kNesterov);
    require(emu::stats().launches - before >= 2, "1,000 tensors take several launches");
    with_limits("3,5", [] {
      torch_run(sgd_case<fc::BFloat16, float>, {single(kContinuing, 3), {ClipKind::kRatio, ST::kFloat32}, true, ST::kHost, false, ST::kHost, -1, 801});
    });
  };

  // Squared norms.
  c["norms"] = [] {
    const Layout l1 = odd_layout(1);
    norms_case<float>(l1, ST::kFloat64, 90);
    norms_case<double>(l1, ST::kFloat64, 92);
    norms_case<fc::Float16>(l1, ST::kFloat16, 93, 0.05);
    norms_case<fc::BFloat16>(l1, ST::kFloat32, 96);
    const Layout s1 = short_layout(1);
    norms_case<float>(s1, ST::kFloat32, 91);
    norms_case<fc::Float16>(s1, ST::kFloat64, 94);
    norms_case<fc::BFloat16>(s1, ST::kBFloat16, 95);
  };
  c["norms_launches"] = [] {
    // Stage 1 cut across launches, stage 2 over several launches.
    uint64_t seed = 100;
    for (const char* limits : kLimits) {
      with_limits(limits, [&] { norms_case<float>(single(kContinuing, 1), ST::kFloat64, seed++); });
    }
    with_limits("7,4", [&] { norms_case<double>(many_tensors(40, 105, 1), ST::kFloat64, seed++); });
    norms_case<float>(single({}, 1), ST::kFloat64, seed++);
    norms_case<float>(single({0, 0, 0}, 1), ST::kFloat32, seed++);
  };
  c["norms_deterministic"] = [] {
    // The same inputs at other addresses: the same bits (the order does not
    // depend on alignment).
    const Layout aligned = single({C + 13, 4099, 77}, 0);
    Layout shifted = aligned;
    shifted.masks = {1, 1, 1};
    for (fc::ScalarType out : {ST::kFloat64}) {
      Rng r1(7), r2(7);
      TensorList<float> a(r1, aligned, 0, 1.0), b(r2, shifted, 0, 1.0);
      const size_t ws = fc::squared_norms_workspace_bytes(aligned.sizes);
      Buffer<double> w(static_cast<int64_t>(ws / 8), 0);
      Buffer<double> oa(3, 0), ob(3, 0);
      require_ok(fc::squared_norms_cuda<float>(a.const_pointers(), aligned.sizes, out, oa.data(), w.data(), ws, nullptr), "a");
      require_ok(fc::squared_norms_cuda<float>(b.const_pointers(), shifted.sizes, out, ob.data(), w.data(), ws, nullptr), "b");
      for (int i = 0; i < 3; ++i) require(std::memcmp(&oa[i], &ob[i], 8) == 0, "vector and scalar paths sum alike");
    }
    // A workspace too small is refused before any launch.
    Buffer<double> tiny(1, 0), o(1, 0);
    Rng r(8);
    TensorList<float> x(r, single({3 * C}, 0), 0, 1.0);
    require(!fc::squared_norms_cuda<float>(x.const_pointers(), {3 * C}, ST::kFloat64, o.data(), tiny.data(), 8, nullptr).empty(),
            "a workspace too small is refused");
  };

  // Clip factors.
  c["clip_factors"] = [] {
    Rng rng(120);
    auto squares = [&](size_t n, double scale) {
      std::vector<double> v;
      for (size_t i = 0; i < n; ++i) v.push_back(std::fabs(rng.normal()) * scale);
      return v;
    };
    using K = fc::ClipFactorKind;
    for (size_t n : {1, 5, 256, 257, 1000}) {
      factors_case(K::kNorm, {{ST::kFloat32, squares(n, 4.0)}}, ST::kHost, 1.5, ST::kFloat32);
      factors_case(K::kNorm, {{ST::kFloat64, squares(n, 4.0)}}, ST::kFloat64, 1.5, ST::kFloat64);
      factors_case(K::kNorm, {{ST::kFloat16, squares(n, 2.0)}}, ST::kFloat16, 1.25, ST::kFloat16);
      factors_case(K::kGlobalNorm, {{ST::kFloat32, squares(n, 4.0)}}, ST::kHost, 1.5, ST::kFloat32);
      factors_case(K::kGlobalNorm,
                   {{ST::kFloat32, squares(n, 1.0)}, {ST::kBFloat16, squares(3, 1.0)}, {ST::kFloat64, squares(n / 2, 1.0)}},
                   ST::kBFloat16, 2.0, ST::kBFloat16);
      factors_case(K::kGlobalNorm, {{ST::kFloat64, squares(n, 1e300)}}, ST::kFloat64, 1.0, ST::kFloat64);  // overflow
      factors_case(K::kTotalNorm, {{ST::kFloat64, squares(n, 3.0)}, {ST::kFloat32, squares(2, 1.0)}}, ST::kHost, 1.0, ST::kFloat64);
      factors_case(K::kTotalNorm, {{ST::kFloat64, squares(n, 3.0)}}, ST::kHost, 1.0, ST::kFloat32);
    }
    const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
    factors_case(K::kNorm, {{ST::kFloat32, {1.0, inf, 4.0, nan, 0.0}}}, ST::kHost, 1.0, ST::kFloat32);
    factors_case(K::kGlobalNorm, {{ST::kFloat32, {1.0, 2.0}}, {ST::kFloat16, {nan}}}, ST::kHost, 1.0, ST::kFloat32);
    factors_case(K::kGlobalNorm, {{ST::kFloat32, {}}}, ST::kHost, 1.0, ST::kFloat32);
    factors_case(K::kGlobalNorm, {}, ST::kHost, 3.0, ST::kFloat64);
  };

  // All finite.
  c["all_finite"] = [] {
    const Layout l = odd_layout(1);
    const Layout s = short_layout(1);
    const double inf = std::numeric_limits<double>::infinity();
    uint64_t seed = 130;
    // The n-th tensor of exactly `size` elements of a layout.
    auto tensor_of = [](const Layout& layout, int64_t size, int nth) {
      for (size_t i = 0; i < layout.sizes.size(); ++i) {
        if (layout.sizes[i] == size && nth-- == 0) return i;
      }
      fail("no such tensor");
    };
    // The last element of a two-chunk tensor, one after a misaligned start,
    // one inside a vector group, one in a tail.
    const std::vector<std::pair<size_t, int64_t>> last = {{tensor_of(l, 2 * C + 3, 0), 2 * C + 2}};
    finite_case<float>(l, {}, inf, -1, seed++);
    finite_case<float>(l, last, inf, -1, seed++);
    finite_case<fc::Float16>(l, {{tensor_of(l, 1025, 1), 1}}, std::nan(""), -1, seed++);
    for (double bad : {inf, -inf, std::nan("")}) {
      finite_case<float>(s, {}, bad, -1, seed++);
      finite_case<float>(s, {{tensor_of(s, 17, 0), 16}}, bad, -1, seed++);
      finite_case<double>(s, {{tensor_of(s, C + 1, 0), 5}}, bad, -1, seed++);
      finite_case<fc::Float16>(s, {{tensor_of(s, 5, 0), 1}}, bad, -1, seed++);
      finite_case<fc::BFloat16>(s, {{tensor_of(s, 1025, 0), 1024}}, bad, -1, seed++);
      finite_case<float>(s, {{tensor_of(s, 1, 0), 0}}, bad, 1, seed++);  // skip_if set: stays 1
      finite_case<float>(s, {{tensor_of(s, 1, 0), 0}}, bad, 0, seed++);  // skip_if clear: checked
    }
    finite_case<fc::Float16>(s, {{tensor_of(s, 1025, 0), 0}}, 70000.0, -1, seed++);  // float16 Inf
    finite_case<float>(single({}, 1), {}, 0, -1, seed++);
    // reset = false, the later formats of a mixed list: and into the flag.
    finite_case<float>(s, {}, inf, -1, seed++, /*preset=*/1);                      // stays 1
    finite_case<fc::Float16>(s, {{tensor_of(s, 17, 0), 3}}, inf, -1, seed++, 1);   // -> 0
    finite_case<double>(s, {}, inf, -1, seed++, /*preset=*/0);                     // stays 0
    finite_case<fc::BFloat16>(l, {{tensor_of(l, 2 * C + 3, 0), 2 * C + 2}}, std::nan(""), -1,
                              seed++, 1);                                          // -> 0
    for (const char* limits : kLimits) {
      with_limits(limits, [&] {
        finite_case<float>(single(kContinuing, 1), {{3, 7 * C - 1}}, inf, -1, seed++);
        finite_case<float>(single(kContinuing, 1), {}, inf, -1, seed++);
      });
    }
  };
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  auto all = cases();
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASE... | all | list\n", argv[0]);
    return 2;
  }
  std::vector<std::string> wanted;
  for (int i = 1; i < argc; ++i) wanted.push_back(argv[i]);
  if (wanted.size() == 1 && wanted[0] == "list") {
    for (auto& [name, fn] : all) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (wanted.size() == 1 && wanted[0] == "all") {
    wanted.clear();
    for (auto& [name, fn] : all) wanted.push_back(name);
  }
  for (const std::string& name : wanted) {
    auto it = all.find(name);
    if (it == all.end()) {
      std::fprintf(stderr, "unknown case %s\n", name.c_str());
      return 2;
    }
    g_case = name;
    it->second();
    const auto& s = emu::stats();
    std::printf("ok %s (launches %lld, blocks %lld, on fibers %lld, threads %lld)\n", name.c_str(),
                s.launches, s.blocks, s.fiber_blocks, s.threads);
    std::fflush(stdout);
  }
  return 0;
}

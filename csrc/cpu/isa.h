// Run-time choice of the CPU instruction set for the vectorized loops.
//
// The loops in isa_kernels.inc are compiled once per instruction set (see
// CMakeLists.txt); at run time the best one this CPU supports is chosen, so a
// distributed build never needs -march=native.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/adam.h"
#include "kernels/clip.h"
#include "kernels/sgd.h"

namespace fusedopt {

// Loops over one contiguous range. Pointers never alias (the callers refuse
// the same buffer twice).
struct IsaKernels {
  const char* name;
  // The gradient is clipped (kernels/clip.h) right before the rule.
  void (*adam_f32)(float* p, const float* g, float* m, float* v, int64_t n,
                   const AdamScalars<float>& s, bool decay, ClipKind clip,
                   const ClipScalars<float>& c);
  void (*adam_f64)(double* p, const double* g, double* m, double* v, int64_t n,
                   const AdamScalars<double>& s, bool decay, ClipKind clip,
                   const ClipScalars<double>& c);
  // m is unused (may be null) for SgdVariant::kPlain.
  void (*sgd_f32)(float* p, const float* g, float* m, int64_t n,
                  const SgdScalars<float>& s, SgdVariant variant, bool decay,
                  ClipKind clip, const ClipScalars<float>& c);
  void (*sgd_f64)(double* p, const double* g, double* m, int64_t n,
                  const SgdScalars<double>& s, SgdVariant variant, bool decay,
                  ClipKind clip, const ClipScalars<double>& c);
  // Sum of squares in double, in a fixed order (kernels/norm.h).
  double (*sum_of_squares_f32)(const float* x, int64_t n);
  double (*sum_of_squares_f64)(const double* x, int64_t n);
};

// The kernels for the best instruction set compiled in and supported here.
// FUSEDOPT_ISA=baseline|avx2|avx512 forces a lower one (for tests/benchmarks).
const IsaKernels& cpu_kernels();

// Instruction sets compiled into this build, best last.
std::vector<std::string> compiled_isas();
// Instruction sets compiled in and supported by this CPU.
std::vector<std::string> supported_isas();

template <typename T>
struct IsaAdam;
template <>
struct IsaAdam<float> {
  static auto get(const IsaKernels& k) { return k.adam_f32; }
};
template <>
struct IsaAdam<double> {
  static auto get(const IsaKernels& k) { return k.adam_f64; }
};

template <typename T>
struct IsaSumOfSquares;
template <>
struct IsaSumOfSquares<float> {
  static auto get(const IsaKernels& k) { return k.sum_of_squares_f32; }
};
template <>
struct IsaSumOfSquares<double> {
  static auto get(const IsaKernels& k) { return k.sum_of_squares_f64; }
};

template <typename T>
struct IsaSgd;
template <>
struct IsaSgd<float> {
  static auto get(const IsaKernels& k) { return k.sgd_f32; }
};
template <>
struct IsaSgd<double> {
  static auto get(const IsaKernels& k) { return k.sgd_f64; }
};

}  // namespace fusedopt

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
#include "kernels/half.h"
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
  // 16-bit storage, float32 math and scalars (kernels/half.h).
  void (*adam_f16)(Half* p, const Half* g, Half* m, Half* v, int64_t n,
                   const AdamScalars<float>& s, bool decay, ClipKind clip,
                   const ClipScalars<float>& c);
  void (*adam_bf16)(BFloat16* p, const BFloat16* g, BFloat16* m, BFloat16* v, int64_t n,
                    const AdamScalars<float>& s, bool decay, ClipKind clip,
                    const ClipScalars<float>& c);
  // m is unused (may be null) for SgdVariant::kPlain.
  void (*sgd_f32)(float* p, const float* g, float* m, int64_t n,
                  const SgdScalars<float>& s, SgdVariant variant, bool decay,
                  ClipKind clip, const ClipScalars<float>& c);
  void (*sgd_f64)(double* p, const double* g, double* m, int64_t n,
                  const SgdScalars<double>& s, SgdVariant variant, bool decay,
                  ClipKind clip, const ClipScalars<double>& c);
  void (*sgd_f16)(Half* p, const Half* g, Half* m, int64_t n, const SgdScalars<float>& s,
                  SgdVariant variant, bool decay, ClipKind clip,
                  const ClipScalars<float>& c);
  void (*sgd_bf16)(BFloat16* p, const BFloat16* g, BFloat16* m, int64_t n,
                   const SgdScalars<float>& s, SgdVariant variant, bool decay,
                   ClipKind clip, const ClipScalars<float>& c);
  // Sum of squares in double, in a fixed order (kernels/norm.h).
  double (*sum_of_squares_f32)(const float* x, int64_t n);
  double (*sum_of_squares_f64)(const double* x, int64_t n);
  double (*sum_of_squares_f16)(const Half* x, int64_t n);
  double (*sum_of_squares_bf16)(const BFloat16* x, int64_t n);
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
template <>
struct IsaAdam<Half> {
  static auto get(const IsaKernels& k) { return k.adam_f16; }
};
template <>
struct IsaAdam<BFloat16> {
  static auto get(const IsaKernels& k) { return k.adam_bf16; }
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
template <>
struct IsaSumOfSquares<Half> {
  static auto get(const IsaKernels& k) { return k.sum_of_squares_f16; }
};
template <>
struct IsaSumOfSquares<BFloat16> {
  static auto get(const IsaKernels& k) { return k.sum_of_squares_bf16; }
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
template <>
struct IsaSgd<Half> {
  static auto get(const IsaKernels& k) { return k.sgd_f16; }
};
template <>
struct IsaSgd<BFloat16> {
  static auto get(const IsaKernels& k) { return k.sgd_bf16; }
};

}  // namespace fusedopt

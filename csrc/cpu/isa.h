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
  // The torch forms of the rules (kernels/adam.h, kernels/sgd.h).
  void (*adam_torch_f32)(float* p, const float* g, float* m, float* v, int64_t n,
                         const AdamTorchScalars<float>& s, bool decay, ClipKind clip,
                         const ClipScalars<float>& c);
  void (*adam_torch_f64)(double* p, const double* g, double* m, double* v, int64_t n,
                         const AdamTorchScalars<double>& s, bool decay, ClipKind clip,
                         const ClipScalars<double>& c);
  void (*adam_torch_f16)(Half* p, const Half* g, Half* m, Half* v, int64_t n,
                         const AdamTorchScalars<float>& s, bool decay, ClipKind clip,
                         const ClipScalars<float>& c);
  void (*adam_torch_bf16)(BFloat16* p, const BFloat16* g, BFloat16* m, BFloat16* v,
                          int64_t n, const AdamTorchScalars<float>& s, bool decay,
                          ClipKind clip, const ClipScalars<float>& c);
  void (*sgd_torch_f32)(float* p, const float* g, float* m, int64_t n,
                        const SgdTorchScalars<float>& s, SgdVariant variant, bool decay,
                        ClipKind clip, const ClipScalars<float>& c);
  void (*sgd_torch_f64)(double* p, const double* g, double* m, int64_t n,
                        const SgdTorchScalars<double>& s, SgdVariant variant, bool decay,
                        ClipKind clip, const ClipScalars<double>& c);
  void (*sgd_torch_f16)(Half* p, const Half* g, Half* m, int64_t n,
                        const SgdTorchScalars<float>& s, SgdVariant variant, bool decay,
                        ClipKind clip, const ClipScalars<float>& c);
  void (*sgd_torch_bf16)(BFloat16* p, const BFloat16* g, BFloat16* m, int64_t n,
                         const SgdTorchScalars<float>& s, SgdVariant variant, bool decay,
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

// The range loop of storage type T for the scalars S (the rule's form):
// IsaAdam<T, AdamScalars<compute_t<T>>>::get(k) or the torch form's.
template <typename T, typename S>
struct IsaAdam;
#define FUSEDOPT_ISA_TRAIT(Trait, T, S, field) \
  template <>                                   \
  struct Trait<T, S> {                          \
    static auto get(const IsaKernels& k) { return k.field; } \
  };
FUSEDOPT_ISA_TRAIT(IsaAdam, float, AdamScalars<float>, adam_f32)
FUSEDOPT_ISA_TRAIT(IsaAdam, double, AdamScalars<double>, adam_f64)
FUSEDOPT_ISA_TRAIT(IsaAdam, Half, AdamScalars<float>, adam_f16)
FUSEDOPT_ISA_TRAIT(IsaAdam, BFloat16, AdamScalars<float>, adam_bf16)
FUSEDOPT_ISA_TRAIT(IsaAdam, float, AdamTorchScalars<float>, adam_torch_f32)
FUSEDOPT_ISA_TRAIT(IsaAdam, double, AdamTorchScalars<double>, adam_torch_f64)
FUSEDOPT_ISA_TRAIT(IsaAdam, Half, AdamTorchScalars<float>, adam_torch_f16)
FUSEDOPT_ISA_TRAIT(IsaAdam, BFloat16, AdamTorchScalars<float>, adam_torch_bf16)

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

template <typename T, typename S>
struct IsaSgd;
FUSEDOPT_ISA_TRAIT(IsaSgd, float, SgdScalars<float>, sgd_f32)
FUSEDOPT_ISA_TRAIT(IsaSgd, double, SgdScalars<double>, sgd_f64)
FUSEDOPT_ISA_TRAIT(IsaSgd, Half, SgdScalars<float>, sgd_f16)
FUSEDOPT_ISA_TRAIT(IsaSgd, BFloat16, SgdScalars<float>, sgd_bf16)
FUSEDOPT_ISA_TRAIT(IsaSgd, float, SgdTorchScalars<float>, sgd_torch_f32)
FUSEDOPT_ISA_TRAIT(IsaSgd, double, SgdTorchScalars<double>, sgd_torch_f64)
FUSEDOPT_ISA_TRAIT(IsaSgd, Half, SgdTorchScalars<float>, sgd_torch_f16)
FUSEDOPT_ISA_TRAIT(IsaSgd, BFloat16, SgdTorchScalars<float>, sgd_torch_bf16)
#undef FUSEDOPT_ISA_TRAIT

}  // namespace fusedopt

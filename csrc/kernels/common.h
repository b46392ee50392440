// Shared macros for the per-element update rules.
//
// Every rule in csrc/kernels/ is a header-only inline function that both the
// CPU drivers (csrc/cpu/) and the CUDA drivers (csrc/cuda/) call. Nothing in
// this folder knows about threads, launches, TensorFlow or Python.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FUSEDOPT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HOST_DEVICE inline
#endif

namespace fusedopt {

// sqrt for float and double that picks the correctly rounded single- or
// double-precision instruction on both host and device.
FUSEDOPT_HOST_DEVICE float rule_sqrt(float x) { return sqrtf(x); }
FUSEDOPT_HOST_DEVICE double rule_sqrt(double x) { return sqrt(x); }

// a * b + c rounded once, for the rules that follow an arithmetic with fused
// multiply-adds (the torch forms in adam.h and sgd.h). The builds use
// -ffp-contract=off / --fmad=false, so a product and a sum are never fused
// unless a rule asks for it here. With FMA instructions (AVX2, AVX-512, any
// GPU) this is one instruction and vectorizes; without them, a libm call.
FUSEDOPT_HOST_DEVICE float rule_fma(float a, float b, float c) { return fmaf(a, b, c); }
FUSEDOPT_HOST_DEVICE double rule_fma(double a, double b, double c) { return fma(a, b, c); }

}  // namespace fusedopt

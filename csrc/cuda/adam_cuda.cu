// Multi-tensor Adam/AdamW on the GPU: the operation plugged into
// multi_tensor_apply. The per-element math is adam_element and the clip
// clip_gradient, the scalar computation make_adam_scalars, all from
// csrc/kernels/ (shared with the CPU driver); this file only reads the
// scalars, loads, converts and stores.
//
// Compiled with --fmad=false (CMakeLists.txt) and IEEE division and square
// root (nvcc's defaults without --use_fast_math), so that float32 and float64
// results match the CPU kernels bit for bit given the same scalars.
#include "cuda/adam_cuda.h"

#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/device_values.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/runtime.h"
#include "kernels/adam.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN
namespace {

// P: parameter and gradient type on the device, S: state type, C: the type
// the rule computes in. kForm: the form of the scalars (adam_cuda.h); the raw
// form runs make_adam_scalars per block, and a separate instantiation keeps
// its double-precision pow out of the registers of the other forms; the
// torch form's scalars pick adam_element's torch overload. Decay and clip
// kind are uniform run-time branches.
template <AdamForm kForm, typename P, typename S>
struct AdamOp {
  using C = compute_of<S>;
  using Rule = std::conditional_t<kForm == AdamForm::kTorch, AdamTorchScalars<C>,
                                  AdamScalars<C>>;
  using Elements = TypeList<P, const P, S, S>;  // params, grads, m, v
  struct Context {
    Rule s;
    ClipScalars<C> clip;
  };

  AdamCudaScalars scalars;
  ClipArgs clip;
  Predicate apply_if;
  bool decay;

  // Every thread reads the (few, cached) scalars once per chunk.
  __device__ __forceinline__ bool block_context(int64_t index, Context* c) const {
    if (!predicate_holds(apply_if)) return false;
    constexpr int kCount = kForm == AdamForm::kTorch ? 7 : 6;
    double x[kCount];
#pragma unroll
    for (int k = 0; k < kCount; ++k) x[k] = read_scalar(scalars.v[k]);
    set_rule(x, &c->s);
    c->clip = read_clip<C>(clip, index);
    return true;
  }

  __device__ __forceinline__ static void set_rule(const double* x, AdamScalars<C>* s) {
    if (kForm == AdamForm::kRaw) {
      *s = make_adam_scalars<C>(x[0], x[1], x[2], x[3], static_cast<int64_t>(x[4]), x[5]);
    } else {
      s->alpha = static_cast<C>(x[0]);
      s->one_minus_beta_1 = static_cast<C>(x[1]);
      s->one_minus_beta_2 = static_cast<C>(x[2]);
      s->epsilon = static_cast<C>(x[3]);
      s->lr = static_cast<C>(x[4]);
      s->weight_decay = static_cast<C>(x[5]);
    }
  }
  __device__ __forceinline__ static void set_rule(const double* x, AdamTorchScalars<C>* s) {
    s->alpha = static_cast<C>(x[0]);
    s->beta_1 = static_cast<C>(x[1]);
    s->one_minus_beta_1 = static_cast<C>(x[2]);
    s->beta_2 = static_cast<C>(x[3]);
    s->one_minus_beta_2 = static_cast<C>(x[4]);
    s->epsilon = static_cast<C>(x[5]);
    s->decay_scale = static_cast<C>(x[6]);
  }

  __device__ __forceinline__ void operator()(const Context& c, P& p, const P& g, S& m,
                                             S& v) const {
    C param = to_compute(p);
    C mm = to_compute(m);
    C vv = to_compute(v);
    const C grad = clip_element(clip.kind, static_cast<C>(to_compute(g)), c.clip);
    if (decay) {
      adam_element<true>(param, grad, mm, vv, c.s);
    } else {
      adam_element<false>(param, grad, mm, vv, c.s);
    }
    p = from_compute<P>(param);
    m = from_compute<S>(mm);
    v = from_compute<S>(vv);
  }
};

template <AdamForm kForm, typename P, typename S>
std::string run(const AdamCudaTensors<P, S>& t, const AdamCudaScalars& scalars,
                bool weight_decay, const ClipArgs& clip, const Predicate& apply_if,
                Stream stream) {
  using Op = AdamOp<kForm, device_t<P>, device_t<S>>;
  const Op op{scalars, clip, apply_if, weight_decay};
  return multi_tensor_apply(op, "adam_cuda", t.sizes, stream, t.params, t.grads, t.m, t.v);
}

}  // namespace

template <typename P, typename S>
std::string adam_cuda(const AdamCudaTensors<P, S>& t, const AdamCudaScalars& scalars,
                      bool weight_decay, const ClipArgs& clip, const Predicate& apply_if,
                      Stream stream) {
  std::string err = cuda_problem();
  if (err.empty()) err = check_clip_args(clip);
  if (!err.empty()) return "adam_cuda: " + err;
  switch (scalars.form) {
    case AdamForm::kRaw:
      return run<AdamForm::kRaw>(t, scalars, weight_decay, clip, apply_if, stream);
    case AdamForm::kTorch:
      return run<AdamForm::kTorch>(t, scalars, weight_decay, clip, apply_if, stream);
    case AdamForm::kPrecomputed:
    default:
      return run<AdamForm::kPrecomputed>(t, scalars, weight_decay, clip, apply_if, stream);
  }
}

#define FUSEDOPT_INSTANTIATE(P, S)                                                       \
  template std::string adam_cuda<P, S>(const AdamCudaTensors<P, S>&, const AdamCudaScalars&, \
                                       bool, const ClipArgs&, const Predicate&, Stream);
FUSEDOPT_INSTANTIATE(float, float)
FUSEDOPT_INSTANTIATE(double, double)
FUSEDOPT_INSTANTIATE(Float16, float)
FUSEDOPT_INSTANTIATE(BFloat16, float)
FUSEDOPT_INSTANTIATE(Float16, Float16)
FUSEDOPT_INSTANTIATE(BFloat16, BFloat16)
#undef FUSEDOPT_INSTANTIATE

FUSEDOPT_CUDA_NAMESPACE_END

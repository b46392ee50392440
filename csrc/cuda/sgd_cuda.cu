// Multi-tensor SGD on the GPU: the operation plugged into multi_tensor_apply.
// The per-element math is sgd_element and clip_gradient from csrc/kernels/
// (shared with the CPU driver); this file only reads the scalars, loads,
// converts and stores. Built like adam_cuda.cu (--fmad=false, IEEE math).
#include "cuda/sgd_cuda.h"

#include <cuda_runtime.h>

#include "cuda/device_values.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/runtime.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN
namespace {

// The scalars of one form: SgdScalars<C> or SgdTorchScalars<C> (sgd_cuda.h
// says where the torch form's fields ride).
template <typename C>
__device__ __forceinline__ void read_rule(const SgdCudaScalars& scalars, SgdScalars<C>* s) {
  s->lr = static_cast<C>(read_scalar(scalars.lr));
  s->momentum = static_cast<C>(read_scalar(scalars.momentum));
  s->weight_decay = static_cast<C>(read_scalar(scalars.weight_decay));
  s->decay_lr = static_cast<C>(read_scalar(scalars.decay_lr));
}
template <typename C>
__device__ __forceinline__ void read_rule(const SgdCudaScalars& scalars, SgdTorchScalars<C>* s) {
  s->neg_lr = static_cast<C>(read_scalar(scalars.lr));
  s->momentum = static_cast<C>(read_scalar(scalars.momentum));
  s->decay_scale = static_cast<C>(read_scalar(scalars.weight_decay));
}

template <typename C, typename Rule>
__device__ __forceinline__ bool sgd_context(const SgdCudaScalars& scalars, const ClipArgs& clip,
                                            const Predicate& apply_if, int64_t index, Rule* s,
                                            ClipScalars<C>* c) {
  if (!predicate_holds(apply_if)) return false;
  read_rule<C>(scalars, s);
  *c = read_clip<C>(clip, index);
  return true;
}

// Plain SGD: params and grads only (no momentum buffer is read or written).
// Rule: SgdScalars<C> or SgdTorchScalars<C>, the form sgd_element follows.
template <typename P, typename C, typename Rule>
struct SgdPlainOp {
  using Elements = TypeList<P, const P>;
  struct Context {
    Rule s;
    ClipScalars<C> clip;
  };

  SgdCudaScalars scalars;
  ClipArgs clip;
  Predicate apply_if;
  bool decay;

  __device__ __forceinline__ bool block_context(int64_t index, Context* c) const {
    return sgd_context<C>(scalars, clip, apply_if, index, &c->s, &c->clip);
  }

  __device__ __forceinline__ void operator()(const Context& c, P& p, const P& g) const {
    C param = to_compute(p);
    C unused = C(0);
    const C grad = clip_element(clip.kind, static_cast<C>(to_compute(g)), c.clip);
    if (decay) {
      sgd_element<true, SgdVariant::kPlain>(param, grad, unused, c.s);
    } else {
      sgd_element<false, SgdVariant::kPlain>(param, grad, unused, c.s);
    }
    p = from_compute<P>(param);
  }
};

// Momentum and Nesterov: params, grads and the momentum buffers.
template <SgdVariant kVariant, typename P, typename S, typename Rule>
struct SgdMomentumOp {
  using C = compute_of<S>;
  using Elements = TypeList<P, const P, S>;
  struct Context {
    Rule s;
    ClipScalars<C> clip;
  };

  SgdCudaScalars scalars;
  ClipArgs clip;
  Predicate apply_if;
  bool decay;

  __device__ __forceinline__ bool block_context(int64_t index, Context* c) const {
    return sgd_context<C>(scalars, clip, apply_if, index, &c->s, &c->clip);
  }

  __device__ __forceinline__ void operator()(const Context& c, P& p, const P& g, S& m) const {
    C param = to_compute(p);
    C mm = to_compute(m);
    const C grad = clip_element(clip.kind, static_cast<C>(to_compute(g)), c.clip);
    if (decay) {
      sgd_element<true, kVariant>(param, grad, mm, c.s);
    } else {
      sgd_element<false, kVariant>(param, grad, mm, c.s);
    }
    p = from_compute<P>(param);
    m = from_compute<S>(mm);
  }
};


template <typename Rule, typename P, typename S>
std::string run(const SgdCudaTensors<P, S>& t, const SgdCudaScalars& scalars,
                SgdVariant variant, bool weight_decay, const ClipArgs& clip,
                const Predicate& apply_if, Stream stream) {
  using DP = device_t<P>;
  using DS = device_t<S>;
  switch (variant) {
    case SgdVariant::kPlain: {
      const SgdPlainOp<DP, compute_of<DS>, Rule> op{scalars, clip, apply_if, weight_decay};
      return multi_tensor_apply(op, "sgd_cuda", t.sizes, stream, t.params, t.grads);
    }
    case SgdVariant::kMomentum: {
      const SgdMomentumOp<SgdVariant::kMomentum, DP, DS, Rule> op{scalars, clip, apply_if,
                                                                 weight_decay};
      return multi_tensor_apply(op, "sgd_cuda", t.sizes, stream, t.params, t.grads, t.m);
    }
    case SgdVariant::kNesterov:
    default: {
      const SgdMomentumOp<SgdVariant::kNesterov, DP, DS, Rule> op{scalars, clip, apply_if,
                                                                 weight_decay};
      return multi_tensor_apply(op, "sgd_cuda", t.sizes, stream, t.params, t.grads, t.m);
    }
  }
}

}  // namespace

template <typename P, typename S>
std::string sgd_cuda(const SgdCudaTensors<P, S>& t, const SgdCudaScalars& scalars,
                     SgdVariant variant, bool weight_decay, const ClipArgs& clip,
                     const Predicate& apply_if, Stream stream) {
  std::string err = cuda_problem();
  if (err.empty()) err = check_clip_args(clip);
  if (!err.empty()) return "sgd_cuda: " + err;
  using C = compute_of<device_t<S>>;
  return scalars.torch
             ? run<SgdTorchScalars<C>>(t, scalars, variant, weight_decay, clip, apply_if, stream)
             : run<SgdScalars<C>>(t, scalars, variant, weight_decay, clip, apply_if, stream);
}

#define FUSEDOPT_INSTANTIATE(P, S)                                                           \
  template std::string sgd_cuda<P, S>(const SgdCudaTensors<P, S>&, const SgdCudaScalars&,   \
                                      SgdVariant, bool, const ClipArgs&, const Predicate&, \
                                      Stream);
FUSEDOPT_INSTANTIATE(float, float)
FUSEDOPT_INSTANTIATE(double, double)
FUSEDOPT_INSTANTIATE(Float16, float)
FUSEDOPT_INSTANTIATE(BFloat16, float)
FUSEDOPT_INSTANTIATE(Float16, Float16)
FUSEDOPT_INSTANTIATE(BFloat16, BFloat16)
#undef FUSEDOPT_INSTANTIATE

FUSEDOPT_CUDA_NAMESPACE_END

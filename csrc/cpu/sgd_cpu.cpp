#include "cpu/sgd_cpu.h"

#include "cpu/isa.h"
#include "cpu/multi_tensor.h"

namespace fusedopt {
namespace {

// S: the rule's scalars, whose type picks its form (kernels/sgd.h).
template <typename T, typename S>
void run_sgd(const SgdTensors<T>& t, const S& s, SgdVariant variant, bool weight_decay,
             const ParallelFor& parallel, const GradClip<compute_t<T>>& clip) {
  const auto range = IsaSgd<T, S>::get(cpu_kernels());
  const bool plain = variant == SgdVariant::kPlain;
  // Plain: reads p, g and writes p. Momentum: reads p, g, m and writes p, m.
  const int64_t bytes_per_element = (plain ? 3 : 5) * static_cast<int64_t>(sizeof(T));
  for_each_chunk(t.sizes, bytes_per_element, parallel, [&](const Chunk& c) {
    const int i = c.tensor;
    T* m = plain ? nullptr : t.m[i] + c.begin;
    range(t.params[i] + c.begin, t.grads[i] + c.begin, m, c.end - c.begin, s, variant,
          weight_decay, clip.kind,
          clip.kind == ClipKind::kNone ? ClipScalars<compute_t<T>>{} : clip.of_tensor(i));
  });
}

}  // namespace

template <typename T>
void sgd_cpu(const SgdTensors<T>& t, const SgdScalars<compute_t<T>>& s, SgdVariant variant,
             bool weight_decay, const ParallelFor& parallel,
             const GradClip<compute_t<T>>& clip) {
  run_sgd(t, s, variant, weight_decay, parallel, clip);
}

template <typename T>
void sgd_cpu(const SgdTensors<T>& t, const SgdTorchScalars<compute_t<T>>& s,
             SgdVariant variant, bool weight_decay, const ParallelFor& parallel,
             const GradClip<compute_t<T>>& clip) {
  run_sgd(t, s, variant, weight_decay, parallel, clip);
}

#define FUSEDOPT_INSTANTIATE(T, C)                                                      \
  template void sgd_cpu<T>(const SgdTensors<T>&, const SgdScalars<C>&, SgdVariant, bool, \
                           const ParallelFor&, const GradClip<C>&);                     \
  template void sgd_cpu<T>(const SgdTensors<T>&, const SgdTorchScalars<C>&, SgdVariant, \
                           bool, const ParallelFor&, const GradClip<C>&);
FUSEDOPT_INSTANTIATE(float, float)
FUSEDOPT_INSTANTIATE(double, double)
FUSEDOPT_INSTANTIATE(Half, float)
FUSEDOPT_INSTANTIATE(BFloat16, float)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt

#include "cpu/sgd_cpu.h"

#include "cpu/isa.h"
#include "cpu/multi_tensor.h"

namespace fusedopt {

template <typename T>
void sgd_cpu(const SgdTensors<T>& t, const SgdScalars<compute_t<T>>& s, SgdVariant variant,
             bool weight_decay, const ParallelFor& parallel,
             const GradClip<compute_t<T>>& clip) {
  const auto range = IsaSgd<T>::get(cpu_kernels());
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

template void sgd_cpu<float>(const SgdTensors<float>&, const SgdScalars<float>&,
                             SgdVariant, bool, const ParallelFor&,
                             const GradClip<float>&);
template void sgd_cpu<double>(const SgdTensors<double>&, const SgdScalars<double>&,
                              SgdVariant, bool, const ParallelFor&,
                              const GradClip<double>&);
template void sgd_cpu<Half>(const SgdTensors<Half>&, const SgdScalars<float>&, SgdVariant,
                            bool, const ParallelFor&, const GradClip<float>&);
template void sgd_cpu<BFloat16>(const SgdTensors<BFloat16>&, const SgdScalars<float>&,
                                SgdVariant, bool, const ParallelFor&, const GradClip<float>&);

}  // namespace fusedopt

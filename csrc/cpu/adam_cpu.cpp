#include "cpu/adam_cpu.h"

#include "cpu/isa.h"
#include "cpu/multi_tensor.h"

namespace fusedopt {

template <typename T>
void adam_cpu(const AdamTensors<T>& t, const AdamScalars<compute_t<T>>& s,
              bool weight_decay, const ParallelFor& parallel,
              const GradClip<compute_t<T>>& clip) {
  const auto range = IsaAdam<T>::get(cpu_kernels());
  // Reads p, g, m, v and writes p, m, v.
  const int64_t bytes_per_element = 7 * sizeof(T);
  for_each_chunk(t.sizes, bytes_per_element, parallel, [&](const Chunk& c) {
    const int i = c.tensor;
    range(t.params[i] + c.begin, t.grads[i] + c.begin, t.m[i] + c.begin,
          t.v[i] + c.begin, c.end - c.begin, s, weight_decay, clip.kind,
          clip.kind == ClipKind::kNone ? ClipScalars<compute_t<T>>{} : clip.of_tensor(i));
  });
}

template void adam_cpu<float>(const AdamTensors<float>&, const AdamScalars<float>&,
                              bool, const ParallelFor&, const GradClip<float>&);
template void adam_cpu<double>(const AdamTensors<double>&, const AdamScalars<double>&,
                               bool, const ParallelFor&, const GradClip<double>&);
template void adam_cpu<Half>(const AdamTensors<Half>&, const AdamScalars<float>&, bool,
                             const ParallelFor&, const GradClip<float>&);
template void adam_cpu<BFloat16>(const AdamTensors<BFloat16>&, const AdamScalars<float>&,
                                 bool, const ParallelFor&, const GradClip<float>&);

}  // namespace fusedopt

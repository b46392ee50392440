#include "cpu/adam_cpu.h"

#include "cpu/isa.h"
#include "cpu/multi_tensor.h"

namespace fusedopt {
namespace {

// S: the rule's scalars, whose type picks its form (kernels/adam.h).
template <typename T, typename S>
void run_adam(const AdamTensors<T>& t, const S& s, bool weight_decay,
              const ParallelFor& parallel, const GradClip<compute_t<T>>& clip) {
  const auto range = IsaAdam<T, S>::get(cpu_kernels());
  // Reads p, g, m, v and writes p, m, v.
  const int64_t bytes_per_element = 7 * sizeof(T);
  for_each_chunk(t.sizes, bytes_per_element, parallel, [&](const Chunk& c) {
    const int i = c.tensor;
    range(t.params[i] + c.begin, t.grads[i] + c.begin, t.m[i] + c.begin,
          t.v[i] + c.begin, c.end - c.begin, s, weight_decay, clip.kind,
          clip.kind == ClipKind::kNone ? ClipScalars<compute_t<T>>{} : clip.of_tensor(i));
  });
}

}  // namespace

template <typename T>
void adam_cpu(const AdamTensors<T>& t, const AdamScalars<compute_t<T>>& s,
              bool weight_decay, const ParallelFor& parallel,
              const GradClip<compute_t<T>>& clip) {
  run_adam(t, s, weight_decay, parallel, clip);
}

template <typename T>
void adam_cpu(const AdamTensors<T>& t, const AdamTorchScalars<compute_t<T>>& s,
              bool weight_decay, const ParallelFor& parallel,
              const GradClip<compute_t<T>>& clip) {
  run_adam(t, s, weight_decay, parallel, clip);
}

#define FUSEDOPT_INSTANTIATE(T, C)                                                       \
  template void adam_cpu<T>(const AdamTensors<T>&, const AdamScalars<C>&, bool,          \
                            const ParallelFor&, const GradClip<C>&);                     \
  template void adam_cpu<T>(const AdamTensors<T>&, const AdamTorchScalars<C>&, bool,     \
                            const ParallelFor&, const GradClip<C>&);
FUSEDOPT_INSTANTIATE(float, float)
FUSEDOPT_INSTANTIATE(double, double)
FUSEDOPT_INSTANTIATE(Half, float)
FUSEDOPT_INSTANTIATE(BFloat16, float)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt

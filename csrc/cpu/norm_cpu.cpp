#include "cpu/norm_cpu.h"

#include "cpu/isa.h"
#include "cpu/multi_tensor.h"

namespace fusedopt {

template <typename T>
void squared_norms_cpu(const std::vector<const T*>& x, const std::vector<int64_t>& sizes,
                       double* out, const ParallelFor& parallel) {
  const auto range = IsaSumOfSquares<T>::get(cpu_kernels());
  for (size_t i = 0; i < sizes.size(); ++i) out[i] = 0.0;
  // Either way a tensor's chunk sums are added in chunk order: the same bits
  // whether one thread or many computed them.
  if (runs_serially(total_elements(sizes) * static_cast<int64_t>(sizeof(T)))) {
    for_each_chunk_in_order(sizes, [&](const Chunk& c) {
      out[c.tensor] += range(x[c.tensor] + c.begin, c.end - c.begin);
    });
    return;
  }
  const std::vector<Chunk> chunks = make_chunks(sizes);
  std::vector<double> partial(chunks.size(), 0.0);
  parallel(static_cast<int64_t>(chunks.size()), kChunkElements * sizeof(T),
           [&](int64_t begin, int64_t end) {
             for (int64_t k = begin; k < end; ++k) {
               const Chunk& c = chunks[k];
               partial[k] = range(x[c.tensor] + c.begin, c.end - c.begin);
             }
           });
  for (size_t k = 0; k < chunks.size(); ++k) out[chunks[k].tensor] += partial[k];
}

template void squared_norms_cpu<float>(const std::vector<const float*>&,
                                       const std::vector<int64_t>&, double*,
                                       const ParallelFor&);
template void squared_norms_cpu<double>(const std::vector<const double*>&,
                                        const std::vector<int64_t>&, double*,
                                        const ParallelFor&);
template void squared_norms_cpu<Half>(const std::vector<const Half*>&,
                                      const std::vector<int64_t>&, double*,
                                      const ParallelFor&);
template void squared_norms_cpu<BFloat16>(const std::vector<const BFloat16*>&,
                                          const std::vector<int64_t>&, double*,
                                          const ParallelFor&);

}  // namespace fusedopt

#include "cpu/stream.h"

#include "cpu/multi_tensor.h"

namespace fusedopt {

void stream_scale_inplace(float* data, int64_t n, float scale, int repeats,
                          const ParallelFor& parallel) {
  for (int r = 0; r < repeats; ++r) {
    // Chunked like the optimizer kernels, so both see the same scheduling.
    for_each_chunk({n}, 8, parallel, [&](const Chunk& c) {
      float* __restrict d = data + c.begin;
      const int64_t len = c.end - c.begin;
      for (int64_t i = 0; i < len; ++i) d[i] = d[i] * scale;
    });
  }
}

}  // namespace fusedopt

#include "cpu/finite_cpu.h"

#include <atomic>

#include "cpu/multi_tensor.h"

namespace fusedopt {

bool all_finite_cpu(FloatFormat format, const std::vector<const void*>& x,
                    const std::vector<int64_t>& sizes, const ParallelFor& parallel) {
  const int64_t bytes = format_bytes(format);
  std::atomic<bool> found{false};
  for_each_chunk(sizes, bytes, parallel, [&](const Chunk& c) {
    // Once one chunk has found a bad value the answer is known; the others
    // return without reading.
    if (found.load(std::memory_order_relaxed)) return;
    const char* base = static_cast<const char*>(x[c.tensor]) + c.begin * bytes;
    if (any_nonfinite(format, base, c.end - c.begin)) found.store(true, std::memory_order_relaxed);
  });
  return !found.load();
}

}  // namespace fusedopt

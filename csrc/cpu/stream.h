// The machine's own memory-bandwidth floor: an in-place streaming loop.
//
// Optimizer kernels read and write the same buffers, so the fair floor is a
// multi-threaded loop that reads and writes one buffer in place (no
// write-allocate traffic, unlike a copy). Benchmarks time this beside the
// kernels and turn it into a floor per case from the bytes each one moves.
#pragma once

#include <cstdint>

#include "cpu/parallel.h"

namespace fusedopt {

// data[i] = data[i] * scale, `repeats` times over the whole buffer, split over
// `parallel`. Moves 2 * 4 * n bytes per repeat.
void stream_scale_inplace(float* data, int64_t n, float scale, int repeats,
                          const ParallelFor& parallel);

}  // namespace fusedopt

// Splitting a list of tensors into equal-sized chunks of work.
//
// Every tensor is cut into chunks of at most kChunkElements elements; a task
// is one (tensor, range) pair. Small tensors become one task each, large ones
// many, so threads get balanced work whatever the mix of sizes.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/parallel.h"

namespace fusedopt {

// 32K elements: 128 KiB per float32 array, four arrays fit in L2 and a thread
// streams long enough to amortize the task hand-out.
constexpr int64_t kChunkElements = 32 * 1024;

struct Chunk {
  int32_t tensor;
  int64_t begin;
  int64_t end;
};

// Calls fn(chunk) for every chunk of `sizes`, tensor by tensor, in order.
template <typename Fn>
void for_each_chunk_in_order(const std::vector<int64_t>& sizes, Fn&& fn) {
  for (size_t t = 0; t < sizes.size(); ++t) {
    for (int64_t b = 0; b < sizes[t]; b += kChunkElements) {
      const int64_t e = b + kChunkElements < sizes[t] ? b + kChunkElements : sizes[t];
      fn(Chunk{static_cast<int32_t>(t), b, e});
    }
  }
}

inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& sizes) {
  size_t count = 0;
  for (int64_t n : sizes) count += static_cast<size_t>((n + kChunkElements - 1) / kChunkElements);
  std::vector<Chunk> chunks;
  chunks.reserve(count);
  for_each_chunk_in_order(sizes, [&](const Chunk& c) { chunks.push_back(c); });
  return chunks;
}

inline int64_t total_elements(const std::vector<int64_t>& sizes) {
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  return total;
}

// Whether a call moving `bytes` stays on the calling thread: below two
// threads' worth of work (parallel.h), not even the pool is asked.
inline bool runs_serially(int64_t bytes) { return useful_threads(bytes, 2) == 1; }

// Calls fn(chunk) for every chunk of `sizes`, spread over `parallel`.
// bytes_per_element is the traffic of one element: it decides how many threads
// the call is worth (parallel.h).
template <typename Fn>
void for_each_chunk(const std::vector<int64_t>& sizes, int64_t bytes_per_element,
                    const ParallelFor& parallel, Fn&& fn) {
  const int64_t total = total_elements(sizes);
  if (total == 0) return;
  if (runs_serially(total * bytes_per_element)) {
    for_each_chunk_in_order(sizes, fn);
    return;
  }
  const std::vector<Chunk> chunks = make_chunks(sizes);
  const int64_t cost = bytes_per_element * (total / static_cast<int64_t>(chunks.size()));
  parallel(static_cast<int64_t>(chunks.size()), cost, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(chunks[i]);
  });
}

}  // namespace fusedopt

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

inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& sizes,
                                      int64_t chunk_elements = kChunkElements) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < sizes.size(); ++t) {
    for (int64_t b = 0; b < sizes[t]; b += chunk_elements) {
      const int64_t e = b + chunk_elements < sizes[t] ? b + chunk_elements : sizes[t];
      chunks.push_back({static_cast<int32_t>(t), b, e});
    }
  }
  return chunks;
}

// Calls fn(chunk) for every chunk of `sizes`, spread over `parallel`.
// bytes_per_element is the traffic of one element (for pools that weigh cost).
template <typename Fn>
void for_each_chunk(const std::vector<int64_t>& sizes, int64_t bytes_per_element,
                    const ParallelFor& parallel, Fn&& fn) {
  const std::vector<Chunk> chunks = make_chunks(sizes);
  if (chunks.empty()) return;
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  // Below one chunk of work the hand-off to other threads costs more than the
  // work itself.
  if (total <= kChunkElements) {
    for (const Chunk& c : chunks) fn(c);
    return;
  }
  const int64_t cost = bytes_per_element * (total / static_cast<int64_t>(chunks.size()));
  parallel(static_cast<int64_t>(chunks.size()), cost, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(chunks[i]);
  });
}

}  // namespace fusedopt

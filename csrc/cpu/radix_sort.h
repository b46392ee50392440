// Sorting records by an address in O(N), for the per-call checks of the
// bindings (the overlap check of _C's arrays, the lock order of the TF ops'
// variables). std::sort on a few hundred addresses mispredicts a branch for
// about every other comparison: it was the largest part of those checks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fusedopt {

// Sorts `items` by key(item) (a uintptr_t), ties in no particular order: a
// least-significant-digit radix sort of the keys' offsets from the lowest key,
// on only the bits in which they differ (two passes for addresses spread over
// a few MB of one heap). Few items go to std::sort.
template <typename T, typename Key>
void sort_by_address(std::vector<T>& items, Key key) {
  if (items.size() < 64) {
    std::sort(items.begin(), items.end(),
              [&](const T& x, const T& y) { return key(x) < key(y); });
    return;
  }
  uintptr_t lo = key(items[0]);
  for (const T& item : items) lo = std::min<uintptr_t>(lo, key(item));
  // The offsets' significant bits: below their common alignment, above their
  // spread, all are the same.
  uintptr_t any = 0;
  for (const T& item : items) any |= key(item) - lo;
  int low = 0, bits = 0;
  while (low < 63 && ((any >> low) & 1) == 0) ++low;
  while (low + bits < 64 && (any >> (low + bits)) != 0) ++bits;
  const int passes = (bits + 11) / 12;  // digits of at most 12 bits
  const int width = passes > 0 ? (bits + passes - 1) / passes : 0;
  const uintptr_t mask = (uintptr_t(1) << width) - 1;
  std::vector<T> buffer(items.size());
  std::vector<size_t> start(mask + 2);
  for (int shift = low; shift < low + passes * width; shift += width) {
    std::fill(start.begin(), start.end(), 0);
    for (const T& item : items) ++start[((key(item) - lo) >> shift & mask) + 1];
    for (size_t d = 0; d <= mask; ++d) start[d + 1] += start[d];
    for (const T& item : items) buffer[start[(key(item) - lo) >> shift & mask]++] = item;
    items.swap(buffer);
  }
}

}  // namespace fusedopt

#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace fusedopt {

extern const IsaKernels kIsaKernels_baseline;
#if defined(FUSEDOPT_HAVE_AVX2)
extern const IsaKernels kIsaKernels_avx2;
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
extern const IsaKernels kIsaKernels_avx512;
#endif

namespace {

struct Candidate {
  const IsaKernels* kernels;
  bool supported;
};

std::vector<Candidate> candidates() {
  std::vector<Candidate> c;
  c.push_back({&kIsaKernels_baseline, true});
#if defined(FUSEDOPT_HAVE_AVX2)
  c.push_back({&kIsaKernels_avx2,
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")});
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
  c.push_back({&kIsaKernels_avx512, __builtin_cpu_supports("avx512f") &&
                                        __builtin_cpu_supports("avx512vl") &&
                                        __builtin_cpu_supports("avx512dq") &&
                                        __builtin_cpu_supports("avx512bw")});
#endif
  return c;
}

const IsaKernels* choose() {
  const char* forced = std::getenv("FUSEDOPT_ISA");
  const IsaKernels* best = &kIsaKernels_baseline;
  for (const Candidate& c : candidates()) {
    if (!c.supported) continue;
    best = c.kernels;
    if (forced != nullptr && std::strcmp(forced, c.kernels->name) == 0) return best;
  }
  return best;
}

}  // namespace

const IsaKernels& cpu_kernels() {
  static const IsaKernels* chosen = choose();
  return *chosen;
}

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const Candidate& c : candidates()) names.push_back(c.kernels->name);
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Candidate& c : candidates()) {
    if (c.supported) names.push_back(c.kernels->name);
  }
  return names;
}

}  // namespace fusedopt

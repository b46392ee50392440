// The all-finite check on the GPU (see finite_cuda.h). The rule is
// any_nonfinite_bits (csrc/kernels/finite.h); this file only cuts the work.
#include "cuda/finite_cuda.h"

#include <cuda_runtime.h>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/runtime.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN
namespace {

// Bits: the unsigned integer of the element's size; mask: its exponent field.
template <typename Bits>
__global__ void __launch_bounds__(kBlockThreads)
    all_finite_kernel(const __grid_constant__ TensorTable<1> table, Bits mask,
                      uint8_t* __restrict__ out, const uint8_t* __restrict__ skip_if) {
  if (skip_if != nullptr && *skip_if != 0) return;
  constexpr int G = kVectorBytes / static_cast<int>(sizeof(Bits));
  using Group = Regs<Bits, G, kVectorBytes>;
  const BlockWork w = block_work(table, static_cast<int>(blockIdx.x));
  const Bits* x = static_cast<const Bits*>(table.ptr[0][w.tensor]) + w.begin;
  bool bad = false;
  int scalar_from = 0;
  if (table.vector_ok[w.tensor]) {
    const int groups = w.n / G;
    for (int j = threadIdx.x; j < groups; j += kBlockThreads) {
      const Group r = reinterpret_cast<const Group*>(x)[j];
      bad = any_nonfinite_bits(r.v, G, mask) || bad;
    }
    scalar_from = groups * G;
  }
  for (int i = scalar_from + static_cast<int>(threadIdx.x); i < w.n; i += kBlockThreads) {
    bad = any_nonfinite_bits(x + i, 1, mask) || bad;
  }
  if (bad) *out = 0;
}

template <typename Bits>
std::string run(const std::vector<const void*>& x, const std::vector<int64_t>& sizes, Bits mask,
                uint8_t* out, const uint8_t* skip_if, Stream stream, bool reset) {
  const char* name = "all_finite_cuda";
  ByteLists<1> in;
  in.elem_bytes[0] = static_cast<int>(sizeof(Bits));
  in.lists[0] = detail::as_bytes(x);
  int max_tensors = TensorTable<1>::kMaxTensors;
  int max_blocks = TensorTable<1>::kMaxBlocks;
  launch_limits(max_tensors, max_blocks);
  const Plan<1> plan = plan_launches<1>(
      sizes, in, kVectorBytes / static_cast<int>(sizeof(Bits)), max_tensors, max_blocks);
  std::string err = check_kernel(&all_finite_kernel<Bits>, kBlockThreads, name);
  if (!err.empty()) return err;
  if (reset) {
    const cudaError_t e = cudaMemsetAsync(out, 1, 1, stream);
    if (e != cudaSuccess) return std::string(name) + ": " + error_string(e);
  }
  return launch_plan(&all_finite_kernel<Bits>, name, plan, stream, mask, out, skip_if);
}

}  // namespace

std::string all_finite_cuda(FloatFormat format, const std::vector<const void*>& x,
                            const std::vector<int64_t>& sizes, uint8_t* out,
                            const uint8_t* skip_if, Stream stream, bool reset) {
  std::string err = cuda_problem();
  if (!err.empty()) return "all_finite_cuda: " + err;
  if (x.size() != sizes.size()) return "all_finite_cuda: x and sizes differ in length";
  if (out == nullptr) return "all_finite_cuda: out is null";
  const uint64_t mask = exponent_mask(format);
  switch (format) {
    case FloatFormat::kFloat16:
    case FloatFormat::kBFloat16:
      return run<uint16_t>(x, sizes, static_cast<uint16_t>(mask), out, skip_if, stream, reset);
    case FloatFormat::kFloat32:
      return run<uint32_t>(x, sizes, static_cast<uint32_t>(mask), out, skip_if, stream, reset);
    case FloatFormat::kFloat64:
    default:
      return run<uint64_t>(x, sizes, mask, out, skip_if, stream, reset);
  }
}

FUSEDOPT_CUDA_NAMESPACE_END

// Squared norms and clip factors on the GPU (see norm_cuda.h). The
// per-element rule is add_square (csrc/kernels/norm.h) and the factors are
// clip_by_norm_scalars / clip_by_global_norm_scalars (csrc/kernels/clip.h);
// this file only orders the sums.
#include "cuda/norm_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <memory>

#include "cuda/block_reduce.cuh"
#include "cuda/device_values.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/runtime.h"
#include "kernels/clip.h"
#include "kernels/norm.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN
namespace {

// Stage 1: block b's chunk summed into partials[chunk_base + b]. Each thread
// sums groups of G = 16 / sizeof(T) consecutive elements (group j, then
// j + kBlockThreads, ...; one 16-byte load each where the tensor is aligned,
// G scalar loads otherwise: the same order either way, so the bits do not
// depend on the tensor's address), then the elements after the last full
// group (thread k: the k-th one), then block_sum.
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    squared_norm_partials_kernel(const __grid_constant__ TensorTable<1> table,
                                 double* __restrict__ partials) {
  constexpr int G = kVectorBytes / static_cast<int>(sizeof(T));
  using Group = Regs<T, G, kVectorBytes>;
  const BlockWork w = block_work(table, static_cast<int>(blockIdx.x));
  const T* x = static_cast<const T*>(table.ptr[0][w.tensor]) + w.begin;
  const int groups = w.n / G;
  double acc = 0.0;
  if (table.vector_ok[w.tensor]) {
    for (int j = threadIdx.x; j < groups; j += kBlockThreads) {
      const Group r = reinterpret_cast<const Group*>(x)[j];
#pragma unroll
      for (int k = 0; k < G; ++k) acc = add_square(acc, static_cast<double>(to_compute(r.v[k])));
    }
  } else {
    for (int j = threadIdx.x; j < groups; j += kBlockThreads) {
      Regs<T, G> r;
#pragma unroll
      for (int k = 0; k < G; ++k) r.v[k] = x[j * G + k];
#pragma unroll
      for (int k = 0; k < G; ++k) acc = add_square(acc, static_cast<double>(to_compute(r.v[k])));
    }
  }
  const int tail = groups * G + static_cast<int>(threadIdx.x);
  if (tail < w.n) acc = add_square(acc, static_cast<double>(to_compute(x[tail])));
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partials[table.chunk_base + blockIdx.x] = total;
}

// Stage 2: block b sums tensor (first_tensor + b)'s slots
// [first_chunk[b], first_chunk[b + 1]): thread k the slots k, k +
// kBlockThreads, ... in order, then block_sum.
constexpr int kTotalsPerLaunch = 3900;
struct NormTotalsTable {
  int64_t first_tensor;
  int64_t first_chunk[kTotalsPerLaunch + 1];
};
static_assert(sizeof(NormTotalsTable) + 32 <= kMaxKernelParamBytes, "kernel parameters");

__global__ void __launch_bounds__(kBlockThreads)
    squared_norm_totals_kernel(const __grid_constant__ NormTotalsTable table,
                               const double* __restrict__ partials, ScalarType out_type,
                               void* out) {
  const int b = static_cast<int>(blockIdx.x);
  const int64_t end = table.first_chunk[b + 1];
  double acc = 0.0;
  for (int64_t c = table.first_chunk[b] + threadIdx.x; c < end; c += kBlockThreads) {
    acc += partials[c];
  }
  const double total = block_sum(acc);
  if (threadIdx.x == 0) write_element(out_type, out, table.first_tensor + b, total);
}

__host__ __device__ __forceinline__ bool is_finite(double x) {
  return x - x == 0.0;  // NaN - NaN and Inf - Inf are NaN
}

struct FactorParams {
  ClipFactorKind kind;
  int num_vectors;
  ScalarType type[kMaxClipFactorVectors];
  const void* data[kMaxClipFactorVectors];
  // The concatenation's element i is element i - offset[v] of vector v where
  // offset[v] <= i < offset[v + 1].
  int64_t offset[kMaxClipFactorVectors + 1];
  Scalar max_norm;
  ScalarType args_type;
  void* args;
  uint8_t* finite;
};

// clip_by_norm_scalars(...).b in C, as double (exact).
template <typename C>
__device__ __forceinline__ double norm_denominator(double max_norm, double squared) {
  return static_cast<double>(clip_by_norm_scalars<C>(max_norm, squared).b);
}
template <typename C>
__device__ __forceinline__ double global_scale(double max_norm, double total) {
  return static_cast<double>(clip_by_global_norm_scalars<C>(max_norm, total).a);
}

__global__ void __launch_bounds__(kFactorThreads)
    clip_factors_kernel(const __grid_constant__ FactorParams p) {
  __shared__ double stripe_sum[kFactorThreads];
  __shared__ int stripe_finite[kFactorThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t n = p.offset[p.num_vectors];
  const int64_t per = (n + kFactorThreads - 1) / kFactorThreads;
  const int64_t begin = tid * per < n ? tid * per : n;
  const int64_t end = begin + per < n ? begin + per : n;
  const double max_norm = read_scalar(p.max_norm);
  const bool wide = p.args_type == ScalarType::kFloat64;  // compute in double
  int v = 0;
  double sum = 0.0;
  bool finite = true;
  for (int64_t i = begin; i < end; ++i) {
    while (i >= p.offset[v + 1]) ++v;
    const double squared = read_element(p.type[v], p.data[v], i - p.offset[v]);
    if (p.kind == ClipFactorKind::kNorm) {
      finite = finite && is_finite(squared);
      write_element(p.args_type, p.args, 1 + i,
                    wide ? norm_denominator<double>(max_norm, squared)
                         : norm_denominator<float>(max_norm, squared));
    } else {
      sum += squared;
    }
  }
  stripe_sum[tid] = sum;
  stripe_finite[tid] = finite ? 1 : 0;
  __syncthreads();
  if (tid != 0) return;
  bool all_finite = true;
  if (p.kind == ClipFactorKind::kNorm) {
    for (int k = 0; k < kFactorThreads; ++k) all_finite = all_finite && stripe_finite[k] != 0;
    write_element(p.args_type, p.args, 0,
                  wide ? max_norm : static_cast<double>(static_cast<float>(max_norm)));
  } else {
    double total = 0.0;
    for (int k = 0; k < kFactorThreads; ++k) total += stripe_sum[k];
    all_finite = is_finite(total);
    if (p.kind == ClipFactorKind::kTotalNorm) {
      write_element(p.args_type, p.args, 0, ::sqrt(total));
    } else {
      write_element(p.args_type, p.args, 0,
                    wide ? global_scale<double>(max_norm, total)
                         : global_scale<float>(max_norm, total));
    }
  }
  if (p.finite != nullptr) *p.finite = all_finite ? 1 : 0;
}

bool is_float_type(ScalarType t) {
  return t == ScalarType::kFloat16 || t == ScalarType::kBFloat16 || t == ScalarType::kFloat32 ||
         t == ScalarType::kFloat64;
}

int64_t chunks_of(int64_t size) { return size > 0 ? (size + kChunkElements - 1) / kChunkElements : 0; }

}  // namespace

size_t squared_norms_workspace_bytes(const std::vector<int64_t>& sizes) {
  int64_t chunks = 0;
  for (int64_t s : sizes) chunks += chunks_of(s);
  return static_cast<size_t>(chunks) * sizeof(double);
}

template <typename T>
std::string squared_norms_cuda(const std::vector<const T*>& x, const std::vector<int64_t>& sizes,
                               ScalarType out_type, void* out, void* workspace,
                               size_t workspace_bytes, Stream stream) {
  const char* name = "squared_norms_cuda";
  std::string err = cuda_problem();
  if (!err.empty()) return std::string(name) + ": " + err;
  if (x.size() != sizes.size()) return std::string(name) + ": x and sizes differ in length";
  if (!is_float_type(out_type)) return std::string(name) + ": out_type must be a float type";
  if (sizes.empty()) return std::string();
  if (out == nullptr) return std::string(name) + ": out is null";
  const size_t need = squared_norms_workspace_bytes(sizes);
  if (workspace_bytes < need || (need > 0 && (workspace == nullptr || !aligned(workspace, 8)))) {
    return std::string(name) + ": the workspace must hold " + std::to_string(need) +
           " bytes, 8-byte aligned (squared_norms_workspace_bytes)";
  }
  using D = device_t<T>;
  // Every launch of both stages planned and both kernels checked first.
  ByteLists<1> in;
  in.elem_bytes[0] = static_cast<int>(sizeof(T));
  in.lists[0] = detail::as_bytes(x);
  int max_tensors = TensorTable<1>::kMaxTensors;
  int max_blocks = TensorTable<1>::kMaxBlocks;
  launch_limits(max_tensors, max_blocks);
  const Plan<1> plan = plan_launches<1>(sizes, in, kVectorBytes / static_cast<int>(sizeof(T)),
                                        max_tensors, max_blocks);
  const int per_launch = max_tensors < kTotalsPerLaunch ? max_tensors : kTotalsPerLaunch;
  std::vector<std::unique_ptr<NormTotalsTable>> totals;
  int64_t chunk = 0;
  for (size_t first = 0; first < sizes.size(); first += per_launch) {
    totals.push_back(std::make_unique<NormTotalsTable>());
    NormTotalsTable& t = *totals.back();
    t.first_tensor = static_cast<int64_t>(first);
    const size_t count = sizes.size() - first < static_cast<size_t>(per_launch)
                             ? sizes.size() - first
                             : static_cast<size_t>(per_launch);
    for (size_t k = 0; k < count; ++k) {
      t.first_chunk[k] = chunk;
      chunk += chunks_of(sizes[first + k]);
    }
    t.first_chunk[count] = chunk;
  }
  err = check_kernel(&squared_norm_totals_kernel, kBlockThreads, name);
  if (!err.empty()) return err;
  double* partials = static_cast<double*>(workspace);
  err = launch_plan(&squared_norm_partials_kernel<D>, name, plan, stream, partials);
  if (!err.empty()) return err;
  const double* cpartials = partials;
  for (size_t k = 0; k < totals.size(); ++k) {
    const int64_t first = totals[k]->first_tensor;
    const int64_t count = std::min<int64_t>(per_launch, static_cast<int64_t>(sizes.size()) - first);
    const cudaError_t e =
        launch(&squared_norm_totals_kernel, dim3(static_cast<unsigned>(count)), dim3(kBlockThreads),
               0, stream, *totals[k], cpartials, out_type, out);
    if (e != cudaSuccess) return std::string(name) + ": " + error_string(e);
  }
  return std::string();
}

template std::string squared_norms_cuda<float>(const std::vector<const float*>&,
                                               const std::vector<int64_t>&, ScalarType, void*,
                                               void*, size_t, Stream);
template std::string squared_norms_cuda<double>(const std::vector<const double*>&,
                                                const std::vector<int64_t>&, ScalarType, void*,
                                                void*, size_t, Stream);
template std::string squared_norms_cuda<Float16>(const std::vector<const Float16*>&,
                                                 const std::vector<int64_t>&, ScalarType, void*,
                                                 void*, size_t, Stream);
template std::string squared_norms_cuda<BFloat16>(const std::vector<const BFloat16*>&,
                                                  const std::vector<int64_t>&, ScalarType, void*,
                                                  void*, size_t, Stream);

std::string clip_factors_cuda(ClipFactorKind kind, const std::vector<DeviceVector>& squared,
                              Scalar max_norm, ScalarType args_type, void* clip_args,
                              uint8_t* finite, Stream stream) {
  const char* name = "clip_factors_cuda";
  std::string err = cuda_problem();
  if (!err.empty()) return std::string(name) + ": " + err;
  if (kind == ClipFactorKind::kNorm && squared.size() != 1) {
    return std::string(name) + ": kind 'norm' takes one vector of squared norms, got " +
           std::to_string(squared.size());
  }
  if (squared.size() > static_cast<size_t>(kMaxClipFactorVectors)) {
    return std::string(name) + ": at most " + std::to_string(kMaxClipFactorVectors) +
           " vectors of squared norms per call, got " + std::to_string(squared.size());
  }
  if (!is_float_type(args_type)) return std::string(name) + ": args_type must be a float type";
  if (clip_args == nullptr) return std::string(name) + ": clip_args is null";
  if (max_norm.type != ScalarType::kHost &&
      (!is_float_type(max_norm.type) || max_norm.device == nullptr)) {
    return std::string(name) + ": max_norm must be a host value or a float in device memory";
  }
  auto p = std::make_unique<FactorParams>();
  p->kind = kind;
  p->num_vectors = static_cast<int>(squared.size());
  p->offset[0] = 0;
  for (size_t v = 0; v < squared.size(); ++v) {
    if (!is_float_type(squared[v].type) || squared[v].size < 0 ||
        (squared[v].size > 0 && squared[v].data == nullptr)) {
      return std::string(name) + ": squared[" + std::to_string(v) +
             "] must be a vector of a float type in device memory";
    }
    p->type[v] = squared[v].type;
    p->data[v] = squared[v].data;
    p->offset[v + 1] = p->offset[v] + squared[v].size;
  }
  p->max_norm = max_norm;
  p->args_type = args_type;
  p->args = clip_args;
  p->finite = finite;
  err = check_kernel(&clip_factors_kernel, kFactorThreads, name);
  if (!err.empty()) return err;
  const cudaError_t e =
      launch(&clip_factors_kernel, dim3(1), dim3(kFactorThreads), 0, stream, *p);
  return e == cudaSuccess ? std::string() : std::string(name) + ": " + error_string(e);
}

FUSEDOPT_CUDA_NAMESPACE_END

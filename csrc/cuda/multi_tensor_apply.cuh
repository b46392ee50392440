// Multi-tensor apply on the GPU: one kernel launch runs an element-wise
// update (or one pass of a reduction) over many tensors, a whole optimizer
// step in a few launches.
//
// How the work is cut:
// - Every tensor is split into chunks of kChunkElements (64K) elements; one
//   thread block works on one chunk. A tensor of 4,096 elements is one block,
//   a tensor of 16M elements is 256 blocks, and a list of small tensors is one
//   launch.
// - Each launch carries a TensorTable in its kernel parameters (no device
//   memory, no host-to-device copy, nothing to keep alive: a launch captured in
//   a CUDA graph replays as it was recorded): per tensor, its kDepth pointers,
//   its size, its index in the call's lists and its first block; per block,
//   the tensor it works on. A launch holds up to TensorTable::kMaxTensors
//   tensors and kMaxBlocksPerLaunch blocks; when either is full the launch is
//   closed and the next one starts, a tensor cut at that point continuing in
//   the next launch from where the previous one stopped.
// - plan_launches() builds every table of a call on the host before the first
//   launch, and launch_plan() checks the kernel before launching any of them:
//   a call that cannot run fails before anything is written.
// - The table uses the 32 KB kernel-parameter space of CUDA >= 12.1 on Volta
//   and newer (nvcc 13 only targets sm_75+, and its runtime needs a driver
//   that supports it), so about 400 Adam tensors fit one launch (Apex and
//   PyTorch's 4 KB tables: 36).
// - 64-bit indexing: the host advances each tensor's pointers to the first
//   element of its part of the launch (int64 arithmetic), and inside a launch
//   offsets stay below kMaxBlocksPerLaunch * kChunkElements = 2^28, so tensors
//   of more than 2^31 elements need no 64-bit math on the device.
// - Vector access: when all kDepth pointers of a tensor are aligned for a
//   16-byte access of the widest element type (checked on the host per tensor,
//   and chunk starts keep that alignment), each thread moves 16 bytes per list
//   per access (float32: 4 elements, float64: 2, float16 with float32 state: 4
//   elements of each); the few elements past the last full vector take the
//   scalar path. Tensors with any misaligned pointer (views at odd offsets)
//   take the scalar path, kScalarIlp elements per thread in flight.
//
// An element-wise operation `Op` plugs into multi_tensor_kernel with:
//   using Elements = TypeList<T0, T1, ...>;  // device element type per list,
//                                            // const for read-only lists
//   using Context = ...;                     // what a block computes once
//   // false: the block writes nothing (apply_if); `index`: the tensor's
//   // position in the call's lists (per-tensor clip arguments)
//   __device__ bool block_context(int64_t index, Context*) const;
//   __device__ void operator()(const Context&, T0& a0, T1& a1, ...) const;
// The call operator is the per-element rule and must only call the shared
// rules of csrc/kernels/ (one source of truth for the math). Written lists are
// stored back after every element of a vector was computed; read-only lists
// are never written.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/launch.cuh"
#include "cuda/types.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// Threads per block, elements per chunk (one block's work).
constexpr int kBlockThreads = 512;
constexpr int kChunkElements = 64 * 1024;
// Scalar path: elements per thread loaded before the first one is computed.
constexpr int kScalarIlp = 4;
// Vector path: bytes of the widest element type per access.
constexpr int kVectorBytes = 16;

// Kernel parameters may take 32,764 bytes (CUDA >= 12.1, sm_70+). The table
// takes 31 KB, the operation's own parameters (scalars) the rest.
constexpr size_t kMaxKernelParamBytes = 32764;
constexpr size_t kTableBytes = 31 * 1024;
constexpr int kMaxBlocksPerLaunch = 4096;

constexpr int table_max_tensors(int depth) {
  // Per tensor: depth pointers, size, index, first block, vector flag.
  return static_cast<int>((kTableBytes - 2 * kMaxBlocksPerLaunch - 64) /
                          (8 * depth + 8 + 4 + 4 + 1));
}

template <typename... Ts>
struct TypeList {
  static constexpr int size = sizeof...(Ts);
};

// One launch's work, passed by value as a kernel parameter.
template <int kDepth>
struct TensorTable {
  static constexpr int kMaxTensors = table_max_tensors(kDepth);
  static constexpr int kMaxBlocks = kMaxBlocksPerLaunch;
  static_assert(kMaxTensors > 0 && kMaxTensors <= 65535, "block_tensor is 16-bit");

  // ptr[list][k]: the first element of this launch's part of tensor k.
  void* ptr[kDepth][kMaxTensors];
  // Elements of tensor k from ptr[.][k] to the tensor's end (a launch may stop
  // short of the end; the next launch continues).
  int64_t size[kMaxTensors];
  // The call's chunk number of this launch's block 0: block b works on chunk
  // chunk_base + b of the call (chunks numbered in order over all tensors),
  // the slot of its partial result in reductions.
  int64_t chunk_base;
  // Tensor k's position in the call's lists.
  int32_t index[kMaxTensors];
  // First block of this launch working on tensor k; block b works on chunk
  // (b - first_block[k]) of it.
  int32_t first_block[kMaxTensors];
  // block_tensor[b]: the tensor block b works on.
  uint16_t block_tensor[kMaxBlocks];
  // 1 if every pointer of tensor k allows the 16-byte vector path.
  uint8_t vector_ok[kMaxTensors];
};

// What block `block` of a launch works on: table entry `tensor`, elements
// [begin, begin + n) from ptr[.][tensor]. The one place the device derives
// its work from the table (the planner tests call it on the host too).
struct BlockWork {
  int tensor;
  int64_t begin;
  int n;
};
template <int kDepth>
__host__ __device__ __forceinline__ BlockWork block_work(const TensorTable<kDepth>& table,
                                                         int block) {
  BlockWork w;
  w.tensor = table.block_tensor[block];
  // 64-bit: the chunk's offset from this launch's start of the tensor.
  w.begin = static_cast<int64_t>(block - table.first_block[w.tensor]) * kChunkElements;
  const int64_t left = table.size[w.tensor] - w.begin;
  w.n = left < kChunkElements ? static_cast<int>(left) : kChunkElements;
  return w;
}

// Registers of one list: N elements, aligned for one vector access when N
// elements make one (alignment only matters when it is loaded from memory).
template <typename T, int N, int kAlign = alignof(T)>
struct alignas(kAlign) Regs {
  T v[N];
};

// Elements per vector access, set by the widest element type.
template <typename... Ts>
__host__ __device__ constexpr int vector_width() {
  size_t widest = 1;
  ((widest = sizeof(Ts) > widest ? sizeof(Ts) : widest), ...);
  return static_cast<int>(kVectorBytes / widest);
}

// ---------------------------------------------------------------------------
// The planner (host).

// The tables of one call: every launch's work, built before the first launch.
template <int kDepth>
struct Plan {
  std::vector<std::unique_ptr<TensorTable<kDepth>>> tables;
  std::vector<int> blocks;  // blocks of each launch
  int64_t chunks = 0;       // chunks of the whole call (reductions' partial slots)
};

// The pointers of one call as bytes: lists[l][i] is tensor i of list l,
// elements of elem_bytes[l] bytes.
template <int kDepth>
struct ByteLists {
  std::array<std::vector<const char*>, kDepth> lists;
  std::array<int, kDepth> elem_bytes;
};

inline bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Tensors and blocks per launch: the table's capacity, or less when
// FUSEDOPT_CUDA_LAUNCH_LIMITS="tensors,blocks" says so (for tests: many
// launches, and tensors continuing across them, from a few small tensors).
inline void launch_limits(int& max_tensors, int& max_blocks) {
  const char* env = std::getenv("FUSEDOPT_CUDA_LAUNCH_LIMITS");
  int tensors = 0;
  int blocks = 0;
  if (env == nullptr || std::sscanf(env, "%d,%d", &tensors, &blocks) != 2) return;
  if (tensors >= 1 && tensors < max_tensors) max_tensors = tensors;
  if (blocks >= 1 && blocks < max_blocks) max_blocks = blocks;
}

// Cuts sizes.size() tensors into launches of at most max_tensors tensors and
// max_blocks blocks (at most the table's capacity). `vector_width` elements
// per vector access: a tensor takes the vector path when each of its pointers
// is aligned to vector_width elements of its list. Empty tensors get no block.
template <int kDepth>
Plan<kDepth> plan_launches(const std::vector<int64_t>& sizes, const ByteLists<kDepth>& in,
                           int vector_width, int max_tensors = TensorTable<kDepth>::kMaxTensors,
                           int max_blocks = TensorTable<kDepth>::kMaxBlocks) {
  using Table = TensorTable<kDepth>;
  if (max_tensors > Table::kMaxTensors || max_tensors < 1) max_tensors = Table::kMaxTensors;
  if (max_blocks > Table::kMaxBlocks || max_blocks < 1) max_blocks = Table::kMaxBlocks;
  Plan<kDepth> plan;
  Table* table = nullptr;
  int tensors = 0;
  int blocks = 0;
  auto close = [&]() {
    plan.blocks.push_back(blocks);
    table = nullptr;
  };
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t size = sizes[i];
    if (size <= 0) continue;
    const int64_t chunks = (size + kChunkElements - 1) / kChunkElements;
    bool vector_ok = true;
    for (int l = 0; l < kDepth; ++l) {
      vector_ok = vector_ok &&
                  aligned(in.lists[l][i], static_cast<size_t>(in.elem_bytes[l]) * vector_width);
    }
    int64_t chunk = 0;
    while (chunk < chunks) {
      if (table == nullptr) {
        plan.tables.push_back(std::make_unique<Table>());
        table = plan.tables.back().get();
        table->chunk_base = plan.chunks;
        tensors = 0;
        blocks = 0;
      }
      const int64_t offset = chunk * kChunkElements;  // 64-bit pointer arithmetic
      for (int l = 0; l < kDepth; ++l) {
        table->ptr[l][tensors] =
            const_cast<char*>(in.lists[l][i] + offset * in.elem_bytes[l]);
      }
      table->size[tensors] = size - offset;
      table->index[tensors] = static_cast<int32_t>(i);
      table->first_block[tensors] = blocks;
      table->vector_ok[tensors] = vector_ok ? 1 : 0;
      const int64_t room = max_blocks - blocks;
      const int take = static_cast<int>(chunks - chunk < room ? chunks - chunk : room);
      for (int b = 0; b < take; ++b) {
        table->block_tensor[blocks + b] = static_cast<uint16_t>(tensors);
      }
      blocks += take;
      chunk += take;
      plan.chunks += take;
      ++tensors;
      if (blocks == max_blocks || tensors == max_tensors) close();
    }
  }
  if (table != nullptr) close();
  return plan;
}

// Checks `kernel`, then launches it once per table of `plan` with
// (table, extra...) as its parameters. Returns the first error: a kernel that
// cannot run fails before the first launch; a launch error stops the call.
template <int kDepth, typename... Params, typename... Extra>
std::string launch_plan(void (*kernel)(Params...), const char* name, const Plan<kDepth>& plan,
                        cudaStream_t stream, const Extra&... extra) {
  if (plan.tables.empty()) return std::string();
  std::string err = check_kernel(kernel, kBlockThreads, name);
  if (!err.empty()) return err;
  for (size_t k = 0; k < plan.tables.size(); ++k) {
    const cudaError_t e = launch(kernel, dim3(static_cast<unsigned>(plan.blocks[k])),
                                 dim3(kBlockThreads), 0, stream, *plan.tables[k], extra...);
    if (e != cudaSuccess) {
      return std::string(name) + ": launch " + std::to_string(k + 1) + " of " +
             std::to_string(plan.tables.size()) + " failed (" + error_string(e) + ")";
    }
  }
  return std::string();
}

// ---------------------------------------------------------------------------
// The element-wise kernel.

namespace detail {

// The registers of list type T: aligned for one access when they are loaded
// as a vector.
template <typename T, int N, bool kVector>
using RegsOf = Regs<std::remove_const_t<T>, N,
                    kVector ? static_cast<int>(sizeof(T)) * N : static_cast<int>(alignof(T))>;

// The registers of every list of an operation: Slot<I, ...> holds list I.
template <size_t I, typename T, int N, bool kVector>
struct Slot {
  RegsOf<T, N, kVector> r;
};
template <int N, bool kVector, typename Seq, typename... Ts>
struct Pack;
template <int N, bool kVector, size_t... I, typename... Ts>
struct Pack<N, kVector, std::index_sequence<I...>, Ts...> : Slot<I, Ts, N, kVector>... {
  template <size_t J, typename T>
  __device__ __forceinline__ RegsOf<T, N, kVector>& get() {
    return static_cast<Slot<J, T, N, kVector>&>(*this).r;
  }
};

template <typename T>
__device__ __forceinline__ void store(T* p, int i, const T& x) {
  p[i] = x;
}
template <typename T>
__device__ __forceinline__ void store(const T*, int, const T&) {}  // read-only list

template <typename R, typename T>
__device__ __forceinline__ void store_vector(T* p, int j, const R& r) {
  reinterpret_cast<R*>(p)[j] = r;
}
template <typename R, typename T>
__device__ __forceinline__ void store_vector(const T*, int, const R&) {}  // read-only list

// Vector path: element j * W .. j * W + W - 1 of every list per access, the
// few elements after the last full vector one by one.
template <typename Op, size_t... I, typename... Ts>
__device__ __forceinline__ void vector_chunk(const Op& op, const typename Op::Context& ctx,
                                             int n, std::index_sequence<I...>,
                                             Ts* __restrict__... p) {
  constexpr int W = vector_width<Ts...>();
  using P = Pack<W, true, std::index_sequence<I...>, Ts...>;
  const int nv = n / W;
  for (int j = threadIdx.x; j < nv; j += kBlockThreads) {
    P r;
    // Every load is issued before the first element is computed.
    ((r.template get<I, Ts>() = reinterpret_cast<const RegsOf<Ts, W, true>*>(p)[j]), ...);
#pragma unroll
    for (int k = 0; k < W; ++k) op(ctx, r.template get<I, Ts>().v[k]...);
    (store_vector(p, j, r.template get<I, Ts>()), ...);
  }
  const int i = nv * W + static_cast<int>(threadIdx.x);
  if (i < n) {
    Pack<1, false, std::index_sequence<I...>, Ts...> r;
    ((r.template get<I, Ts>().v[0] = p[i]), ...);
    op(ctx, r.template get<I, Ts>().v[0]...);
    (store(p, i, r.template get<I, Ts>().v[0]), ...);
  }
}

// Scalar path: kScalarIlp elements per thread, coalesced across the block.
template <typename Op, size_t... I, typename... Ts>
__device__ __forceinline__ void scalar_chunk(const Op& op, const typename Op::Context& ctx,
                                             int n, std::index_sequence<I...>,
                                             Ts* __restrict__... p) {
  using P = Pack<kScalarIlp, false, std::index_sequence<I...>, Ts...>;
  for (int base = threadIdx.x; base < n; base += kBlockThreads * kScalarIlp) {
    P r;
#pragma unroll
    for (int k = 0; k < kScalarIlp; ++k) {
      const int i = base + k * kBlockThreads;
      if (i < n) ((r.template get<I, Ts>().v[k] = p[i]), ...);
    }
#pragma unroll
    for (int k = 0; k < kScalarIlp; ++k) {
      const int i = base + k * kBlockThreads;
      if (i < n) op(ctx, r.template get<I, Ts>().v[k]...);
    }
#pragma unroll
    for (int k = 0; k < kScalarIlp; ++k) {
      const int i = base + k * kBlockThreads;
      if (i < n) (store(p, i, r.template get<I, Ts>().v[k]), ...);
    }
  }
}

template <typename Op, size_t... I, typename... Ts>
__device__ __forceinline__ void run_block(const TensorTable<sizeof...(Ts)>& table, const Op& op,
                                          std::index_sequence<I...> seq, TypeList<Ts...>) {
  const BlockWork w = block_work(table, static_cast<int>(blockIdx.x));
  typename Op::Context ctx;
  if (!op.block_context(table.index[w.tensor], &ctx)) return;
  if (table.vector_ok[w.tensor]) {
    vector_chunk(op, ctx, w.n, seq, (static_cast<Ts*>(table.ptr[I][w.tensor]) + w.begin)...);
  } else {
    scalar_chunk(op, ctx, w.n, seq, (static_cast<Ts*>(table.ptr[I][w.tensor]) + w.begin)...);
  }
}

}  // namespace detail

template <typename Op>
__global__ void __launch_bounds__(kBlockThreads)
    multi_tensor_kernel(const __grid_constant__ TensorTable<Op::Elements::size> table,
                        const __grid_constant__ Op op) {
  detail::run_block(table, op, std::make_index_sequence<Op::Elements::size>{},
                    typename Op::Elements{});
}

namespace detail {

template <typename H>
std::vector<const char*> as_bytes(const std::vector<H*>& pointers) {
  std::vector<const char*> out;
  out.reserve(pointers.size());
  for (H* p : pointers) out.push_back(reinterpret_cast<const char*>(p));
  return out;
}

template <typename Op, typename... Ks, typename... Hs>
std::string apply(const Op& op, const char* name, const std::vector<int64_t>& sizes,
                  cudaStream_t stream, TypeList<Ks...>, const std::vector<Hs*>&... lists) {
  constexpr int kDepth = sizeof...(Ks);
  static_assert(sizeof...(Hs) == kDepth, "one pointer list per element type of Op");
  static_assert(((sizeof(Ks) == sizeof(Hs)) && ...),
                "host and device element types must have the same size");
  static_assert(((std::is_const<Ks>::value == std::is_const<Hs>::value) && ...),
                "read-only lists are const on the host and on the device");
  static_assert(sizeof(TensorTable<kDepth>) + sizeof(Op) <= kMaxKernelParamBytes,
                "kernel parameters exceed 32,764 bytes");
  const size_t n = sizes.size();
  if (((lists.size() != n) || ...)) return std::string(name) + ": lists differ in length";
  ByteLists<kDepth> in;
  int l = 0;
  ((in.elem_bytes[l] = static_cast<int>(sizeof(Hs)), in.lists[l] = as_bytes(lists), ++l), ...);
  int max_tensors = TensorTable<kDepth>::kMaxTensors;
  int max_blocks = TensorTable<kDepth>::kMaxBlocks;
  launch_limits(max_tensors, max_blocks);
  const Plan<kDepth> plan =
      plan_launches<kDepth>(sizes, in, vector_width<Ks...>(), max_tensors, max_blocks);
  return launch_plan(&multi_tensor_kernel<Op>, name, plan, stream, op);
}

}  // namespace detail

// Enqueues `op` over every tensor on `stream`: lists[l][i] points to tensor
// i's sizes[i] contiguous elements of list l (host element types of the same
// size and constness as Op::Elements). Never synchronizes, allocates nothing
// on the device: safe inside CUDA graph capture. Returns "" when every launch
// was enqueued, else the error.
template <typename Op, typename... Hs>
std::string multi_tensor_apply(const Op& op, const char* name, const std::vector<int64_t>& sizes,
                               cudaStream_t stream, const std::vector<Hs*>&... lists) {
  return detail::apply(op, name, sizes, stream, typename Op::Elements{}, lists...);
}

FUSEDOPT_CUDA_NAMESPACE_END

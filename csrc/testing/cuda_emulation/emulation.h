// A host emulation of the parts of CUDA that fusedopt's kernels use, so that
// the project's real .cu files compile as C++ (g++ -x c++, this folder first
// on the include path: <cuda_runtime.h> and friends are the files here) and
// every block and thread of every launch runs on the CPU, under ASan and UBSan.
//
// - Launches: cudaLaunchKernel (called by csrc/cuda/launch.cuh's launch())
//   checks the launch's limits (block and grid size, kernel-parameter bytes
//   <= 32,764, dynamic shared memory <= 48 KB) and returns CUDA's error for a
//   bad one; otherwise it copies the parameters once (as the runtime does at
//   launch), then runs the blocks one after another, each thread calling the
//   kernel with its own copy of the parameters (by-value parameters are
//   copied per call). Launches run synchronously; streams are recorded.
// - Threads: a launch's first block runs one fiber per thread (emulation.cpp). If
//   no thread of it used __syncthreads or a warp shuffle, the other blocks
//   run their threads as plain calls (fast); if one did, every block runs on
//   fibers, so barriers and shuffles work. A barrier or shuffle in a block
//   that runs without fibers aborts with a message (a kernel whose first
//   block differs from the others; FUSEDOPT_EMU_FIBERS=all runs every block
//   on fibers). Fibers resume in a shuffled order after every barrier, so a
//   missing barrier shows up as a wrong or varying result. Barriers not
//   reached by every thread of the block abort (as a deadlock on a GPU).
// - __shared__ is `static`: blocks run one at a time on one OS thread.
// - __half / __nv_bfloat16: 16-bit structs, converted bit-exactly as CUDA does
//   (round to nearest even, CUDA's canonical NaN 0x7FFF), written here
//   independently of csrc/kernels/half.h.
// - The driver version cudaDriverGetVersion reports is CUDART_VERSION, or
//   FUSEDOPT_EMU_DRIVER_VERSION; cudaFuncGetAttributes can be made to report a
//   kernel that cannot run (func_attributes below).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define FUSEDOPT_CUDA_EMULATION 1
#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchOutOfResources = 701,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
};

const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);

// ---------------------------------------------------------------------------
// 16-bit floats.

struct __half {
  uint16_t bits_;
};
struct __nv_bfloat16 {
  uint16_t bits_;
};

namespace emu {
float half_bits_to_float(uint16_t h);
uint16_t float_to_half_bits_rn(float f);
float bfloat16_bits_to_float(uint16_t b);
uint16_t float_to_bfloat16_bits_rn(float f);
}  // namespace emu

inline float __half2float(__half h) { return emu::half_bits_to_float(h.bits_); }
inline __half __float2half_rn(float f) { return __half{emu::float_to_half_bits_rn(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bfloat16_bits_to_float(b.bits_); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16{emu::float_to_bfloat16_bits_rn(f)};
}

// ---------------------------------------------------------------------------
// Threads of a block.

namespace emu {

// Blocks until every thread of the block has arrived.
void syncthreads();
// Shuffle support: publishes `bytes` of this lane's value, waits for the
// warp, copies lane `src_lane`'s value into `out`, waits again.
void warp_exchange(unsigned mask, const void* value, void* out, size_t bytes, int src_lane);
int lane_id();

struct LaunchStats {
  long long launches = 0;
  long long blocks = 0;
  long long fiber_blocks = 0;
  long long threads = 0;
};
LaunchStats& stats();

// What the next cudaLaunchKernel is checked against, and the checks.
cudaError_t check_launch(dim3 grid, dim3 block, size_t shared_bytes, size_t param_bytes,
                         cudaStream_t stream);
// Runs `thread` once for every thread of every block of the grid.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread);

// Kernel-parameter bytes as the CUDA ABI lays them out (each aligned).
template <typename... Ps>
constexpr size_t param_bytes() {
  size_t offset = 0;
  ((offset = (offset + alignof(Ps) - 1) / alignof(Ps) * alignof(Ps) + sizeof(Ps)), ...);
  return offset;
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle type");
  const int lane = emu::lane_id();
  const int segment = lane / width * width;
  const int src = lane - segment + static_cast<int>(delta) < width ? lane + static_cast<int>(delta)
                                                                    : lane;
  T out = var;
  emu::warp_exchange(mask, &var, &out, sizeof(T), src);
  return out;
}

// ---------------------------------------------------------------------------
// Launches.

namespace emu {
// What cudaFuncGetAttributes reports: maxThreadsPerBlock 1024, or
// FUSEDOPT_EMU_MAX_THREADS (a kernel whose registers allow fewer threads);
// FUSEDOPT_EMU_NO_KERNEL_CODE=1: cudaErrorInvalidDeviceFunction (no code for
// this GPU). For the tests that every driver refuses before its first launch.
cudaError_t func_attributes(cudaFuncAttributes* attr);
}  // namespace emu

template <typename... Ps>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void (*kernel)(Ps...)) {
  if (attr == nullptr || kernel == nullptr) return cudaErrorInvalidValue;
  return emu::func_attributes(attr);
}

template <typename... Ps, size_t... I>
void emu_run_kernel(void (*kernel)(Ps...), dim3 grid, dim3 block, void** args,
                    std::index_sequence<I...>) {
  // The launch's snapshot of its parameters, taken now as the runtime takes
  // it (the caller may change or free its objects once the launch returned);
  // each thread's call then copies them into its own by-value parameters.
  std::tuple<std::unique_ptr<std::remove_cv_t<Ps>>...> copies(
      std::make_unique<std::remove_cv_t<Ps>>(*static_cast<std::remove_cv_t<Ps>*>(args[I]))...);
  emu::run_grid(grid, block, [&]() { kernel(*std::get<I>(copies)...); });
}

template <typename... Ps>
cudaError_t cudaLaunchKernel(void (*kernel)(Ps...), dim3 grid, dim3 block, void** args,
                             size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
  if (kernel == nullptr) return cudaErrorInvalidDeviceFunction;
  const cudaError_t err =
      emu::check_launch(grid, block, shared_bytes, emu::param_bytes<std::remove_cv_t<Ps>...>(), stream);
  if (err != cudaSuccess) return err;
  emu_run_kernel(kernel, grid, block, args, std::index_sequence_for<Ps...>{});
  return cudaSuccess;
}

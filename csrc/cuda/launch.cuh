// Every kernel launch of fusedopt goes through launch() below: one place
// where the launch happens, whose return value is that launch's own error.
//
// Under nvcc it is cudaLaunchKernel, the runtime's launch: its return value
// is the error of this launch (an invalid configuration, a kernel without
// code for this GPU, a driver too old), never a stale error of an earlier
// asynchronous call, which cudaGetLastError after a <<<...>>> launch can
// return instead. Compiled as C++ against the host emulation
// (csrc/testing/cuda_emulation/), the same call runs every block and thread
// of the kernel on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "cuda/types.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

inline std::string error_string(cudaError_t err) {
  if (err == cudaSuccess) return std::string();
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// Launches kernel<<<grid, block, shared, stream>>>(args...). The arguments
// must have the kernel's parameter types exactly (no conversion: the runtime
// copies each parameter's bytes from the address given).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                   cudaStream_t stream, const Args&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "one argument per kernel parameter");
  static_assert((std::is_same<std::remove_cv_t<Params>, Args>::value && ...),
                "launch() arguments must have the kernel's parameter types");
  void* pointers[] = {const_cast<void*>(static_cast<const void*>(&args))...};
  return cudaLaunchKernel(kernel, grid, block, pointers, shared, stream);
}

// Whether `kernel` can be launched with `threads` threads per block on the
// current device: it has code for this GPU (or PTX the driver compiles) and
// its registers allow that many threads. Called for every kernel of a step
// before the step's first launch, so that a kernel that cannot run fails the
// call before anything is written.
template <typename... Params>
std::string check_kernel(void (*kernel)(Params...), int threads, const char* name) {
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
  if (err != cudaSuccess) {
    return std::string(name) + ": the kernel cannot run on this device (" + error_string(err) +
           ")";
  }
  if (attr.maxThreadsPerBlock < threads) {
    return std::string(name) + ": the kernel allows " + std::to_string(attr.maxThreadsPerBlock) +
           " threads per block on this device, it needs " + std::to_string(threads);
  }
  return std::string();
}

FUSEDOPT_CUDA_NAMESPACE_END

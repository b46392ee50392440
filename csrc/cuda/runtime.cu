// See runtime.h.
#include "cuda/runtime.h"

#include <cuda_runtime.h>

#include "cuda/launch.cuh"

FUSEDOPT_CUDA_NAMESPACE_BEGIN
namespace {

// The oldest Linux driver of each CUDA major version (NVIDIA's CUDA
// compatibility table): a driver runs every runtime of its own major version
// and older ones.
int minimum_driver(int major) {
  switch (major) {
    case 11:
      return 450;
    case 12:
      return 525;
    case 13:
      return 580;
    default:
      return 0;
  }
}

std::string version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace

int runtime_version() { return CUDART_VERSION; }

std::string driver_problem(int driver, int runtime) {
  const int major = runtime / 1000;
  const int minimum = minimum_driver(major);
  const std::string needs =
      "fusedopt's CUDA kernels were built with CUDA " + version_string(runtime) +
      ", which needs an NVIDIA driver for CUDA " + std::to_string(major) + ".0 or newer" +
      (minimum > 0 ? " (driver version " + std::to_string(minimum) + " or newer)" : "");
  const std::string rebuild =
      "Update the NVIDIA driver, or rebuild fusedopt from source with the CUDA toolkit your "
      "driver supports, e.g. CUDA 12 for drivers 525 to 579: "
      "CUDACXX=/usr/local/cuda-12.x/bin/nvcc pip install --no-build-isolation . "
      "(docs/gpu.md). Until then the GPU paths are off.";
  if (driver <= 0) {
    return needs + ", but no NVIDIA driver was found (cudaDriverGetVersion reports " +
           std::to_string(driver) + "). " + rebuild;
  }
  if (driver / 1000 < major) {
    return needs + ", but this machine's driver supports CUDA " + version_string(driver) +
           " only (cudaDriverGetVersion " + std::to_string(driver) + ", runtime " +
           std::to_string(runtime) + "). " + rebuild;
  }
  return std::string();
}

std::string cuda_problem() {
  // Once per process (thread-safe static initialization).
  static const std::string problem = []() -> std::string {
    int driver = 0;
    const cudaError_t err = cudaDriverGetVersion(&driver);
    if (err != cudaSuccess) return "cudaDriverGetVersion failed (" + error_string(err) + ")";
    std::string p = driver_problem(driver, CUDART_VERSION);
    if (!p.empty()) return p;
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();  // not sticky, but clear it for the callers' own checks
      return "no usable CUDA device (cudaGetDeviceCount: " + error_string(e) + ")";
    }
    if (count <= 0) return "no CUDA device is visible to this process";
    return std::string();
  }();
  return problem;
}

std::string check_clip_args(const ClipArgs& clip) {
  if (clip.kind == ClipKind::kNone) return std::string();
  if (clip.type == ScalarType::kHost) {
    if (clip.kind == ClipKind::kRatio) {
      return "clip='ratio' takes its arguments (one denominator per tensor) in device memory";
    }
    return std::string();
  }
  if (clip.device == nullptr) return "the clip arguments' device pointer is null";
  if (clip.type == ScalarType::kInt32 || clip.type == ScalarType::kInt64) {
    return "the clip arguments must be of a float type";
  }
  return std::string();
}

std::string copy_device_async(void* dst, const void* src, int64_t bytes, Stream stream) {
  if (bytes <= 0) return std::string();
  return error_string(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                      cudaMemcpyDeviceToDevice, stream));
}

FUSEDOPT_CUDA_NAMESPACE_END

// The CUDA runtime as fusedopt's drivers use it: whether the GPU paths can run
// on this machine (driver against runtime), device-to-device copies, and the
// host-side checks every driver runs before its first launch. Plain C++.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/types.h"

FUSEDOPT_CUDA_NAMESPACE_BEGIN

// The CUDA runtime version the kernels were built with (CUDART_VERSION, e.g.
// 13000 for CUDA 13.0).
int runtime_version();

// Why a driver of version `driver` (cudaDriverGetVersion: 1000 * major +
// 10 * minor, 0 without a driver) cannot run kernels built with runtime
// `runtime`, naming both and how to rebuild; "" when it can.
std::string driver_problem(int driver, int runtime);

// "" when the GPU paths can run here; else why not: no NVIDIA driver, a driver
// older than the runtime the kernels were built for (driver_problem), or no
// CUDA device. Checked once per process, at first use; every driver function
// returns it as its error, so the GPU paths refuse with this message rather
// than fail at the first launch.
std::string cuda_problem();

// Host-side check of a clip request: "" or what is wrong with it.
std::string check_clip_args(const ClipArgs& clip);

// Enqueues a device-to-device copy of `bytes` bytes on `stream` ("" or the
// error). For copy-on-write of TF variables without Eigen's GPU device.
std::string copy_device_async(void* dst, const void* src, int64_t bytes, Stream stream);

FUSEDOPT_CUDA_NAMESPACE_END

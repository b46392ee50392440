// What the GPU OpKernels share: the op's CUDA stream and the copy-on-write
// copy, as plain C++ (no Eigen::GpuDevice, no CUDA headers; DESIGN.md).
#pragma once

#include <string>

#include "cuda/adam_cuda.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/fused_update.h"
#include "xla/stream_executor/stream.h"

namespace fusedopt {

// The CUDA stream TF runs this op on, or nullptr (no GPU device context).
inline cuda::Stream GpuStream(tf::OpKernelContext* ctx) {
  tf::DeviceContext* dc = ctx->op_device_context();
  if (dc == nullptr || dc->stream() == nullptr) return nullptr;
  return static_cast<cuda::Stream>(dc->stream()->platform_specific_handle().stream);
}

// Copy-on-write for FusedUpdate<GpuDevice, T>: a device-to-device copy
// enqueued on the op's stream, ahead of the update kernels.
inline BufferCopy GpuBufferCopy(cuda::Stream stream) {
  return [stream](const tf::Tensor& from, tf::Tensor* to) -> absl::Status {
    const std::string err = cuda::copy_device_async(
        to->data(), from.data(), static_cast<int64_t>(from.TotalBytes()), stream);
    if (!err.empty()) return tf::errors::Internal("copy-on-write of a variable failed: ", err);
    return absl::OkStatus();
  };
}

// A 0-d input of type T as a device-memory hyperparameter (GPU kernels get
// their non-HostMemory inputs in device memory): the kernel reads it when it
// runs, so no host synchronization is needed.
template <typename T>
cuda::Scalar DeviceScalarInput(tf::OpKernelContext* ctx, const char* name) {
  const tf::Tensor* t = nullptr;
  TF_CHECK_OK(ctx->input(name, &t));  // FusedUpdate::Prepare checked it exists and is 0-d
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "float or double scalars");
  return cuda::Scalar::Device(
      std::is_same<T, float>::value ? cuda::ScalarType::kFloat32 : cuda::ScalarType::kFloat64,
      t->data());
}

}  // namespace fusedopt

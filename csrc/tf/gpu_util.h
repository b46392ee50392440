// What the GPU OpKernels share, as plain C++ (no Eigen::GpuDevice, no CUDA
// headers; DESIGN.md): the op's CUDA stream, the driver check, the
// copy-on-write copy, TF types as the CUDA drivers' types, and the inputs that
// stay in device memory (hyperparameters, clip_args, apply_if) described for
// the drivers without reading them on the host.
#pragma once

#include <string>
#include <type_traits>

#include "cuda/runtime.h"
#include "cuda/types.h"
#include "kernels/clip.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf/fused_update.h"
#include "xla/stream_executor/stream.h"

namespace fusedopt {

// TF element type -> the drivers' host type (cuda/types.h) and its
// ScalarType.
template <typename T>
struct CudaTypeOf {
  using type = T;
};
template <>
struct CudaTypeOf<Eigen::half> {
  using type = cuda::Float16;
};
template <>
struct CudaTypeOf<tf::bfloat16> {
  using type = cuda::BFloat16;
};
template <typename T>
using cuda_t = typename CudaTypeOf<T>::type;

template <typename T>
constexpr cuda::ScalarType CudaScalarType() {
  if constexpr (std::is_same<T, Eigen::half>::value) {
    return cuda::ScalarType::kFloat16;
  } else if constexpr (std::is_same<T, tf::bfloat16>::value) {
    return cuda::ScalarType::kBFloat16;
  } else if constexpr (std::is_same<T, float>::value) {
    return cuda::ScalarType::kFloat32;
  } else {
    static_assert(std::is_same<T, double>::value, "half, bfloat16, float or double");
    return cuda::ScalarType::kFloat64;
  }
}

// A float DataType as a ScalarType (kHost: not a float type).
inline cuda::ScalarType CudaScalarTypeOf(tf::DataType dtype) {
  switch (dtype) {
    case tf::DT_HALF:
      return cuda::ScalarType::kFloat16;
    case tf::DT_BFLOAT16:
      return cuda::ScalarType::kBFloat16;
    case tf::DT_FLOAT:
      return cuda::ScalarType::kFloat32;
    case tf::DT_DOUBLE:
      return cuda::ScalarType::kFloat64;
    default:
      return cuda::ScalarType::kHost;
  }
}

// The CUDA stream TF runs this op on, or nullptr (no GPU device context).
inline cuda::Stream GpuStream(tf::OpKernelContext* ctx) {
  tf::DeviceContext* dc = ctx->op_device_context();
  if (dc == nullptr || dc->stream() == nullptr) return nullptr;
  return static_cast<cuda::Stream>(dc->stream()->platform_specific_handle().stream);
}

// The op's stream, after the check that the kernels can run here at all (the
// NVIDIA driver against the CUDA runtime they were built with: a CUDA 13
// build on a driver older than 580 fails here with the message naming both,
// before anything is written).
inline absl::Status GpuLaunchStream(tf::OpKernelContext* ctx, const char* op, cuda::Stream* s) {
  const std::string problem = cuda::cuda_problem();
  if (!problem.empty()) return tf::errors::FailedPrecondition(op, ": ", problem);
  *s = GpuStream(ctx);
  if (*s == nullptr) return tf::errors::Internal(op, ": no CUDA stream for the GPU kernel");
  return absl::OkStatus();
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
  return cuda::Scalar::Device(CudaScalarType<T>(), t->data());
}

// clip_args (csrc/tf/clip_args.h) in device memory: its shape is checked here
// (known on the host); its values are read by the update kernel when it runs,
// unchecked (the CPU kernel's lo <= hi and denominator > 0 checks would need
// a host synchronization; the optimizers produce valid arguments).
template <typename T>
absl::Status DeviceClipArgs(tf::OpKernelContext* ctx, ClipKind kind, int64_t num_tensors,
                            cuda::ClipArgs* clip) {
  const tf::Tensor* args;
  TF_RETURN_IF_ERROR(ctx->input("clip_args", &args));
  *clip = cuda::ClipArgs::None();
  if (kind == ClipKind::kNone) return absl::OkStatus();
  const int64_t expected = kind == ClipKind::kValue   ? 2
                           : kind == ClipKind::kRatio ? num_tensors + 1
                                                      : 1;
  if (args->dims() != 1 || args->dim_size(0) != expected) {
    return tf::errors::InvalidArgument("clip_args must be a vector of ", expected,
                                       " values for this clip kind, got shape ",
                                       args->shape().DebugString());
  }
  *clip = cuda::ClipArgs::Device(kind, CudaScalarType<T>(), args->data());
  return absl::OkStatus();
}

// apply_if (csrc/tf/apply_if.h) in device memory: at most one scalar bool,
// read by the update kernels (a false predicate: they write nothing).
inline absl::Status DevicePredicate(tf::OpKernelContext* ctx, cuda::Predicate* predicate) {
  tf::OpInputList list;
  TF_RETURN_IF_ERROR(ctx->input_list("apply_if", &list));
  *predicate = cuda::Predicate();
  if (list.size() == 0) return absl::OkStatus();
  if (list.size() > 1) {
    return tf::errors::InvalidArgument("apply_if takes at most one predicate, got ",
                                       list.size());
  }
  if (!tf::TensorShapeUtils::IsScalar(list[0].shape())) {
    return tf::errors::InvalidArgument("apply_if[0] must be a scalar bool, got shape ",
                                       list[0].shape().DebugString());
  }
  predicate->device = static_cast<const uint8_t*>(list[0].data());
  return absl::OkStatus();
}

// `bytes` of device memory for a driver's workspace, alive until Compute
// returns (TF's GPU allocator reuses it only for work enqueued later on the
// op's stream). *data is nullptr for 0 bytes.
inline absl::Status AllocateWorkspace(tf::OpKernelContext* ctx, size_t bytes, tf::Tensor* holder,
                                      void** data) {
  *data = nullptr;
  if (bytes == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      tf::DT_UINT8, tf::TensorShape({static_cast<int64_t>(bytes)}), holder));
  *data = holder->data();
  return absl::OkStatus();
}

}  // namespace fusedopt

// Registers the GPU kernel class template OP<T> of op NAME for every element
// type the fused ops take. Nothing in host memory: hyperparameters, clip_args
// and apply_if are read by the kernels from device memory.
#define FUSEDOPT_REGISTER_GPU_KERNELS(NAME, OP)                                                \
  REGISTER_KERNEL_BUILDER(                                                                     \
      Name(NAME).Device(::tensorflow::DEVICE_GPU).TypeConstraint<Eigen::half>("T"),            \
      OP<Eigen::half>);                                                                        \
  REGISTER_KERNEL_BUILDER(                                                                     \
      Name(NAME).Device(::tensorflow::DEVICE_GPU).TypeConstraint<::tensorflow::bfloat16>("T"), \
      OP<::tensorflow::bfloat16>);                                                             \
  REGISTER_KERNEL_BUILDER(                                                                     \
      Name(NAME).Device(::tensorflow::DEVICE_GPU).TypeConstraint<float>("T"), OP<float>);      \
  REGISTER_KERNEL_BUILDER(                                                                     \
      Name(NAME).Device(::tensorflow::DEVICE_GPU).TypeConstraint<double>("T"), OP<double>)

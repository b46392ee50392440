// TF element types -> the kernels' storage types (csrc/kernels/half.h).
//
// float and double pass through. Eigen::half and tf::bfloat16 are 16-bit
// structs holding the IEEE float16 / bfloat16 bit pattern, the same layout as
// fusedopt::Half / fusedopt::BFloat16, so the ops hand their buffers to the
// CPU drivers as such; the drivers compute in float32.
//
// Scalars: the fused ops keep T for their scalar inputs (alpha, lr, clip
// arguments, ...). For float16/bfloat16 variables the Python optimizers then
// compute those scalars with the same TF ops, in the same 16-bit dtype, as the
// stock Keras update_step, so they are the very values stock Keras uses; the
// kernels widen them to float32 (exactly) and run the rule in float32.
#pragma once

#include "kernels/clip.h"
#include "kernels/half.h"
#include "tensorflow/core/framework/numeric_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace fusedopt {

template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<Eigen::half> {
  using type = Half;
};
template <>
struct KernelType<::tensorflow::bfloat16> {
  using type = BFloat16;
};
static_assert(sizeof(Eigen::half) == sizeof(Half) &&
                  sizeof(::tensorflow::bfloat16) == sizeof(BFloat16),
              "16-bit TF types and kernel storage types must share their layout");

// The storage type the drivers see for TF type T, and its compute type.
template <typename T>
using kernel_t = typename KernelType<T>::type;
template <typename T>
using kernel_compute_t = compute_t<kernel_t<T>>;

// A tensor's elements as the drivers' storage type. The callers know the
// element type (checked for variables, declared for inputs): data() spares
// flat<T>()'s out-of-line type and alignment checks, four per variable per
// call (the kernels need element alignment only, which every tensor has).
template <typename T>
kernel_t<T>* KernelData(::tensorflow::Tensor& t) {
  return static_cast<kernel_t<T>*>(t.data());
}
template <typename T>
const kernel_t<T>* KernelData(const ::tensorflow::Tensor& t) {
  return static_cast<const kernel_t<T>*>(t.data());
}

// A scalar of type T in the drivers' compute type (exact: float16 and
// bfloat16 widen to float32 without rounding).
template <typename T>
kernel_compute_t<T> ComputeScalar(T x) {
  return static_cast<kernel_compute_t<T>>(x);
}

// Clip arguments read as T (ReadClipArgs), in the drivers' compute type.
template <typename T>
GradClip<kernel_compute_t<T>> ComputeClip(const GradClip<T>& in) {
  GradClip<kernel_compute_t<T>> out;
  out.kind = in.kind;
  for (const ClipScalars<T>& c : in.scalars) {
    out.scalars.push_back({ComputeScalar(c.a), ComputeScalar(c.b)});
  }
  return out;
}

}  // namespace fusedopt

// Registers the CPU kernel class template OP<T> of op NAME for every element
// type the fused ops take ("T: {half, bfloat16, float, double}").
#define FUSEDOPT_REGISTER_CPU_KERNELS(NAME, OP)                                      \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name(NAME).Device(::tensorflow::DEVICE_CPU).TypeConstraint<Eigen::half>("T"),  \
      OP<Eigen::half>);                                                              \
  REGISTER_KERNEL_BUILDER(Name(NAME)                                                 \
                              .Device(::tensorflow::DEVICE_CPU)                      \
                              .TypeConstraint<::tensorflow::bfloat16>("T"),          \
                          OP<::tensorflow::bfloat16>);                               \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name(NAME).Device(::tensorflow::DEVICE_CPU).TypeConstraint<float>("T"),        \
      OP<float>);                                                                    \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name(NAME).Device(::tensorflow::DEVICE_CPU).TypeConstraint<double>("T"), OP<double>)

// The XLA FFI handlers of fusedopt: one per kernel, registered under the same
// target name into whichever XLA is present (TensorFlow's, csrc/tf/xla_ops.cc;
// jaxlib's, python/fusedopt/backends/jax/ffi.py). docs/xla.md describes each
// call's operands, results, aliasing and attributes.
//
// Operands and results (N tensors, T their element type; every result aliases
// the operand of the same index):
//
//   fusedopt_adam           operands  params[N], m[N], v[N], grads[N],
//                                     scalars: T[6] = alpha, 1 - beta_1,
//                                       1 - beta_2, epsilon, lr, weight_decay,
//                                     clip_args: T[k], apply_if: bool[0 or 1]
//                           results   params[N], m[N], v[N]
//                           attrs     decay: bool, clip: string
//   fusedopt_sgd            operands  params[N], momentums[M], grads[N],
//                                     scalars: T[4] = lr, momentum,
//                                       weight_decay, decay_lr,
//                                     clip_args: T[k], apply_if: bool[0 or 1]
//                           results   params[N], momentums[M]
//                           attrs     variant: 'plain' (M = 0) | 'momentum' |
//                                     'nesterov' (M = N), decay: bool,
//                                     clip: string
//   fusedopt_squared_norms  operands  x[N]      results  T[N]
//   fusedopt_clip_factors   operands  squared_norms[K] (float vectors of any
//                                     type), max_norm: T[]
//                           results   clip_args: T[k], finite: bool[]
//                           attrs     kind: 'norm' | 'global_norm'
//   fusedopt_all_finite     operands  x[N] (any float types)
//                           results   bool[]
//
// Hyperparameters and per-step values are buffers, never attributes:
// attributes are compiled into the executable, so a new learning rate would
// recompile.
#pragma once

#include "xla/ffi/api/api.h"

namespace fusedopt {
namespace ffi_handlers {

// Target names (the same on every platform and in both registries).
inline constexpr const char* kAdamTarget = "fusedopt_adam";
inline constexpr const char* kSgdTarget = "fusedopt_sgd";
inline constexpr const char* kSquaredNormsTarget = "fusedopt_squared_norms";
inline constexpr const char* kClipFactorsTarget = "fusedopt_clip_factors";
inline constexpr const char* kAllFiniteTarget = "fusedopt_all_finite";

}  // namespace ffi_handlers
}  // namespace fusedopt

// CPU handlers (XLA platform "Host" in TensorFlow, "cpu" in JAX).
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiAdamCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiSgdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiSquaredNormsCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiClipFactorsCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiAllFiniteCpu);

#if defined(FUSEDOPT_WITH_CUDA)
// CUDA handlers (platform "CUDA"): launch the CUDA drivers on XLA's stream
// (csrc/ffi/cuda_handlers.cc: which are command-buffer compatible).
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiAdamCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiSgdCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiSquaredNormsCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiClipFactorsCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FusedoptFfiAllFiniteCuda);
#endif

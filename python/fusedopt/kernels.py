"""The fused kernels on NumPy arrays (and CUDA arrays), updated in place.

These call the same C++ kernels as the TensorFlow ops (`fusedopt._C`). Every
argument is validated before anything is written: a bad call raises
``TypeError`` or ``ValueError`` naming the argument and leaves every array as
it was.

Where fusedopt was built with CUDA (``fusedopt.build_info()["cuda"]``), the
same functions take CUDA arrays instead: objects with
``__cuda_array_interface__`` (CuPy, PyTorch, Numba) or ``__dlpack__`` on a
CUDA device (PyTorch, JAX; JAX arrays are immutable, so pass them as
gradients only). The update is enqueued on ``stream`` (default: CUDA's legacy
default stream) and the call returns without waiting for it; arrays must stay
alive until it has run. Arrays of one call are all NumPy or all on one CUDA
device.

NumPy arrays must be C-contiguous and aligned (not a view at an odd byte
offset), in native byte order, and not masked (``numpy.ma``: the kernels would
ignore the mask); anything else is refused, not copied, since an update of a
copy would be lost. Arrays that are written must be writeable and must not
share memory with any other array of the call. Empty arrays and empty lists
are valid (nothing to do). The kernels run without the GIL and keep their own
references to the arrays; like NumPy's in-place operations they do not lock
them, so no other thread may write the same arrays during a call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusedopt import _C

__all__ = ["adam", "all_finite", "global_norm", "sgd"]


def adam(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    m: Sequence[np.ndarray],
    v: Sequence[np.ndarray],
    *,
    lr: float,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    step: int,
    weight_decay: float = 0.0,
    clip_value: float | None = None,
    clip_norm: float | None = None,
    global_clip_norm: float | None = None,
    skip_nonfinite: bool = False,
    stream=None,
) -> bool | None:
    """Multi-tensor Adam/AdamW step with Keras semantics, in place.

    For every element of every ``params[i]`` (with ``t = step``, counted from 1)::

        p -= p * weight_decay * lr                 # only if weight_decay != 0
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        p -= (lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)) * m / (sqrt(v) + epsilon)

    ``epsilon`` is added outside the square root ("epsilon hat", as in Keras)
    and the weight decay is decoupled (AdamW), applied before the update.

    Args:
      params, grads, m, v: lists (or tuples) of C-contiguous float32 or float64
        NumPy arrays, one per parameter; ``m`` and ``v`` are the first and
        second moments. ``params``, ``m`` and ``v`` are updated in place and
        must be writeable, separate buffers. All arrays share one dtype and
        ``grads[i]``, ``m[i]``, ``v[i]`` have the shape of ``params[i]``.
      lr: learning rate, >= 0.
      beta_1, beta_2: decay rates of the moments, in [0, 1).
      epsilon: >= 0.
      step: the 1-based step number (bias correction).
      weight_decay: decoupled weight decay coefficient, >= 0 (0 = Adam).
      clip_value, clip_norm, global_clip_norm: at most one, a threshold > 0;
        the gradients are clipped inside the update pass (the arrays in
        ``grads`` are not modified): ``clip_value=c`` clips every element to
        [-c, c]; ``clip_norm=c`` scales each ``grads[i]`` by
        ``c / max(||grads[i]||, c)``; ``global_clip_norm=c`` scales all by
        ``c / max(global_norm(grads), c)`` (NaN if that norm is not finite,
        as in Keras). The norms take one extra read of the gradients.
      skip_nonfinite: if True and any element of any gradient is Inf or
        NaN, nothing is written and the call returns False (one extra
        multi-threaded read of the gradients first). With clip_norm or
        global_clip_norm the norms decide (a float64 norm that overflows
        with finite elements falls back to the element check). On CUDA
        arrays the check runs on the device and the call returns None.
      stream: CUDA arrays only: the stream to run on, as a
        ``torch.cuda.Stream``, ``cupy.cuda.Stream``, an object with
        ``__cuda_stream__``, or a ``cudaStream_t`` handle as int; None is the
        legacy default stream. Producers' streams are waited for (DLPack's
        ``stream`` argument, ``__cuda_array_interface__``'s ``stream``).

    CUDA arrays may also be float16 or bfloat16 ``params`` and ``grads`` with
    float32 ``m`` and ``v`` (the rule runs in float32, the new parameters are
    rounded to nearest).

    With CUDA arrays, every hyperparameter may also be a one-element CUDA array
    (float32 or float64; ``step`` also int32 or int64), read by the kernel when
    it runs: no host synchronization, so the step can be captured in a CUDA
    graph. Device values are not range-checked.

    Returns:
      True if the step was applied, False if skip_nonfinite skipped it;
      None for CUDA arrays with skip_nonfinite (the outcome is on the device).
    """
    return _C.adam(
        params, grads, m, v,
        lr=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step,
        weight_decay=weight_decay, clip_value=clip_value, clip_norm=clip_norm,
        global_clip_norm=global_clip_norm, skip_nonfinite=skip_nonfinite, stream=stream,
    )


def sgd(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    momentums: Sequence[np.ndarray] | None,
    *,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    clip_value: float | None = None,
    clip_norm: float | None = None,
    global_clip_norm: float | None = None,
    skip_nonfinite: bool = False,
    stream=None,
) -> bool | None:
    """Multi-tensor SGD step (plain, momentum or Nesterov) with Keras semantics,
    in place.

    For every element of every ``params[i]``::

        p -= p * weight_decay * lr                 # only if weight_decay != 0
        # momentums is None (plain SGD):
        p -= g * lr
        # otherwise, with m = momentums[i]:
        m = m * momentum - g * lr
        p += m                                     # nesterov=False
        p += m * momentum - g * lr                 # nesterov=True (the new m)

    The operations and their order are those of
    ``keras.optimizers.SGD.update_step`` (and the weight decay that of every
    Keras optimizer, applied before the update).

    Args:
      params, grads: lists (or tuples) of C-contiguous float32 or float64
        NumPy arrays, one per parameter. ``params`` is updated in place and
        must be writeable, separate buffers. All arrays share one dtype and
        ``grads[i]`` has the shape of ``params[i]``.
      momentums: the momentum buffers (a list like ``params``, updated in
        place), or None for plain SGD, which keeps no buffer. None requires
        ``momentum == 0``; buffers given with ``momentum == 0`` are updated
        (to ``-g * lr``), with the same result for ``params``.
      lr: learning rate, >= 0.
      momentum: in [0, 1].
      nesterov: Nesterov momentum (a bool); ignored when ``momentums`` is None.
      weight_decay: decoupled weight decay coefficient, >= 0.
      clip_value, clip_norm, global_clip_norm: at most one, a threshold > 0;
        the gradients are clipped inside the update pass (the arrays in
        ``grads`` are not modified): ``clip_value=c`` clips every element to
        [-c, c]; ``clip_norm=c`` scales each ``grads[i]`` by
        ``c / max(||grads[i]||, c)``; ``global_clip_norm=c`` scales all by
        ``c / max(global_norm(grads), c)`` (NaN if that norm is not finite,
        as in Keras). The norms take one extra read of the gradients.
      skip_nonfinite: if True and any element of any gradient is Inf or
        NaN, nothing is written and the call returns False (one extra
        multi-threaded read of the gradients first; as in ``adam``). On
        CUDA arrays the check runs on the device and the call returns None.
      stream: CUDA arrays only, as in ``adam``.

    CUDA arrays may also be float16 or bfloat16 ``params`` and ``grads`` with
    float32 ``momentums``, and ``lr``, ``momentum``, ``weight_decay`` one-element
    float32/float64 CUDA arrays read by the kernel (not range-checked).

    Returns:
      True if the step was applied, False if skip_nonfinite skipped it;
      None for CUDA arrays with skip_nonfinite.
    """
    return _C.sgd(
        params, grads, momentums,
        lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        clip_value=clip_value, clip_norm=clip_norm, global_clip_norm=global_clip_norm,
        skip_nonfinite=skip_nonfinite, stream=stream,
    )


def global_norm(arrays: Sequence[np.ndarray], *, out=None, stream=None) -> float | None:
    """sqrt of the sum of squares of every element of every array.

    One multi-threaded pass, accumulated in float64 in a fixed order: the same
    inputs give the same result whatever the thread count or CPU. ``arrays``
    is a list (or tuple) of C-contiguous float32 or float64 NumPy arrays of one
    dtype; an empty list gives 0.0.

    CUDA arrays (float16 and bfloat16 too): a deterministic two-stage
    reduction on the device (its own fixed order: the same bits on every run,
    within float64 rounding of the CPU's). Without ``out`` the call waits for
    ``stream`` and returns the float; with ``out`` (a one-element float32 or
    float64 CUDA array) the norm is written there and the call returns None
    without waiting.
    """
    return _C.global_norm(arrays, out=out, stream=stream)


def all_finite(arrays: Sequence[np.ndarray], *, out=None, stream=None) -> bool | None:
    """True if no element of any array is Inf or NaN.

    One multi-threaded pass over the bit patterns (the check behind
    ``skip_nonfinite``). ``arrays`` is a list (or tuple) of C-contiguous
    float32 or float64 NumPy arrays of one dtype; an empty list gives True.

    CUDA arrays (float16 and bfloat16 too): without ``out`` the call waits
    for ``stream`` and returns the bool; with ``out`` (a one-element bool or
    uint8 CUDA array) 1 or 0 is written there and the call returns None
    without waiting.
    """
    return _C.all_finite(arrays, out=out, stream=stream)

"""The fused kernels as PyTorch custom ops (``torch.ops.fusedopt.*``).

Each op is a ``torch.library.custom_op`` whose implementation checks its
tensors and calls one of ``fusedopt._C``'s raw-pointer entries
(csrc/python/pointer_ops.cpp) with their ``data_ptr()``s, so no extension is
compiled against torch. The update ops write their tensors in place (storage
unchanged) and declare it (``mutates_args``), and every op has a fake
implementation, so that ``torch.compile(fullgraph=True)`` traces them as one
node each, without a graph break.

- ``adam_(params, grads, m, v, scalars, decay, clip, clip_args, apply_if)``
- ``sgd_(params, grads, momentums, scalars, variant, decay, clip, clip_args, apply_if)``
  update in place with the torch form of the rules (csrc/kernels/adam.h,
  sgd.h): Keras' torch backend's arithmetic. ``scalars``: a 1-D tensor of
  the compute dtype (float32 for 16-bit tensors) on the tensors' device, in
  the order of pointer_ops.cpp; ``clip_args`` in the same dtype;
  ``apply_if``: a bool 0-d tensor (False: nothing is written) or None.
- ``squared_norms(x) -> Tensor``: per-tensor squared L2 norms (double, fixed
  order, rounded to x's dtype).
- ``clip_factors(squared_norms, max_norm, kind) -> (clip_args, finite)``.
- ``all_finite(x) -> Tensor``: bool, no element of any tensor is Inf or NaN.

Every tensor of a call is on one device: the CPU (the CPU drivers, on the
host) or one CUDA device, in builds with CUDA (``_C.pointer_cuda()``): the
CUDA drivers, enqueued on torch's current stream of that device, with the
scalars, clip arguments and ``apply_if`` read by the kernels from device
memory (no host sync, capturable in a CUDA graph). On CUDA the values the CPU
entries check on the host (``clip_args`` lo <= hi, denominators > 0,
``max_norm > 0``) are not checked: that would need a sync (docs/gpu.md).
"""

from __future__ import annotations

from typing import Optional

import torch

from fusedopt import _C

DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
          torch.float64: "float64"}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the rules compute in (and take their scalars in) for tensors of `dtype`."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _name(dtype) -> str:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise TypeError(f"fusedopt kernels take float16, bfloat16, float32 or float64 tensors, "
                        f"got {dtype}") from None


def cuda_kernels() -> bool:
    """Whether this build's ops take CUDA tensors (a build with CUDA)."""
    return bool(getattr(_C, "pointer_cuda", lambda: False)())


def _check_device(t: torch.Tensor, what: str, device: torch.device) -> None:
    """t is on `device`, a device the kernels run on."""
    if t.device != device:
        raise ValueError(f"{what} is on {t.device} but the call's tensors are on {device}; "
                         "one call takes one device")
    if device.type == "cuda":
        if not cuda_kernels():
            raise ValueError(f"{what} is on {device}, but this build of fusedopt has no CUDA "
                             "kernels; rebuild with CUDA (docs/build.md) or use CPU tensors")
    elif device.type != "cpu":
        raise ValueError(f"{what} is on {device}; the fusedopt torch ops run on CPU and CUDA "
                         "tensors")


def _device_args(device: torch.device) -> dict:
    """The entries' device (-1: host memory) and stream (torch's current one)."""
    if device.type != "cuda":
        return {"device": -1, "stream": 0}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"device": index, "stream": torch.cuda.current_stream(index).cuda_stream}


def _check_lists(lists) -> tuple:
    """Checks the tensor lists of one update call before anything is written
    (one dtype, the shapes of the first list, contiguous, on the device of
    the first tensor); the C++ entry checks that no written tensor overlaps
    another. lists: (name, list) pairs, the parameters first. Returns
    (sizes, dtype name, device)."""
    first_name, first = lists[0]
    n = len(first)
    for name, lst in lists[1:]:
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors but {first_name} has {n}; "
                             "pass one per parameter")
    if n == 0:
        return [], "float32", torch.device("cpu")
    dtype = first[0].dtype
    dtype_name = _name(dtype)
    device = first[0].device
    _check_device(first[0], f"{first_name}[0]", device)
    shapes = [t.shape for t in first]
    for name, lst in lists:
        # One pass of each check over the list; the loop below only names
        # the first bad tensor.
        if (all(t.dtype == dtype for t in lst) and [t.shape for t in lst] == shapes
                and all(t.is_contiguous() and t.device == device for t in lst)):
            continue
        for i, t in enumerate(lst):
            if t.dtype != dtype:
                raise TypeError(f"{name}[{i}] has dtype {t.dtype} but {first_name}[0] has "
                                f"{dtype}; one call takes one dtype")
            if t.shape != shapes[i]:
                raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)} but {first_name}[{i}] "
                                 f"has {tuple(shapes[i])}")
            if not t.is_contiguous():
                raise ValueError(f"{name}[{i}] is not contiguous")
            _check_device(t, f"{name}[{i}]", device)
    return [t.numel() for t in first], dtype_name, device


def _check_scalars(scalars: torch.Tensor, count: int, dtype: torch.dtype, device) -> None:
    if scalars.dtype != dtype or scalars.shape != (count,) or not scalars.is_contiguous():
        raise ValueError(f"scalars must be a contiguous vector of {count} {dtype} values, got "
                         f"shape {tuple(scalars.shape)} of {scalars.dtype}")
    _check_device(scalars, "scalars", device)


def _clip_pointer(clip: str, clip_args: Optional[torch.Tensor], n: int, dtype, device) -> int:
    expected = {"none": 0, "value": 2, "ratio": n + 1, "scale": 1}
    if clip not in expected:
        raise ValueError(f"clip must be 'none', 'value', 'ratio' or 'scale', got {clip!r}")
    if clip == "none":
        return 0
    if (clip_args is None or clip_args.dtype != dtype or clip_args.shape != (expected[clip],)
            or not clip_args.is_contiguous()):
        got = None if clip_args is None else (tuple(clip_args.shape), clip_args.dtype)
        raise ValueError(f"clip={clip!r} takes clip_args, a contiguous vector of "
                         f"{expected[clip]} {dtype} values; got {got}")
    _check_device(clip_args, "clip_args", device)
    return clip_args.data_ptr()


def _apply_if_pointer(apply_if: Optional[torch.Tensor], device) -> int:
    if apply_if is None:
        return 0
    if apply_if.dtype != torch.bool or apply_if.shape != ():
        raise ValueError(f"apply_if must be a bool 0-d tensor, got shape {tuple(apply_if.shape)} "
                         f"of {apply_if.dtype}")
    _check_device(apply_if, "apply_if", device)
    return apply_if.data_ptr()


def _pointers(tensors) -> list:
    return [t.data_ptr() for t in tensors]


ADAM_SCALARS = 7  # alpha, beta_1, 1 - beta_1, beta_2, 1 - beta_2, epsilon, decay_scale
SGD_SCALARS = 3  # -lr, momentum, decay_scale


@torch.library.custom_op("fusedopt::adam_", mutates_args=("params", "m", "v"))
def adam_(params: list[torch.Tensor], grads: list[torch.Tensor], m: list[torch.Tensor],
          v: list[torch.Tensor], scalars: torch.Tensor, decay: bool, clip: str,
          clip_args: Optional[torch.Tensor], apply_if: Optional[torch.Tensor]) -> None:
    sizes, dtype, device = _check_lists([("params", params), ("grads", grads), ("m", m),
                                         ("v", v)])
    cdt = compute_dtype(params[0].dtype) if params else torch.float32
    _check_scalars(scalars, ADAM_SCALARS, cdt, device)
    clip_ptr = _clip_pointer(clip, clip_args, len(params), cdt, device)
    _C.pointer_adam(_pointers(params), _pointers(grads), _pointers(m), _pointers(v), sizes,
                    dtype, scalars.data_ptr(), form="torch", decay=decay, clip=clip,
                    clip_args=clip_ptr, apply_if=_apply_if_pointer(apply_if, device),
                    **_device_args(device))


@adam_.register_fake
def _(params, grads, m, v, scalars, decay, clip, clip_args, apply_if):
    return None


@torch.library.custom_op("fusedopt::sgd_", mutates_args=("params", "momentums"))
def sgd_(params: list[torch.Tensor], grads: list[torch.Tensor], momentums: list[torch.Tensor],
         scalars: torch.Tensor, variant: str, decay: bool, clip: str,
         clip_args: Optional[torch.Tensor], apply_if: Optional[torch.Tensor]) -> None:
    lists = [("params", params), ("grads", grads)]
    if variant != "plain":
        lists.append(("momentums", momentums))
    elif momentums:
        raise ValueError("variant 'plain' keeps no momentum buffers; pass momentums=[]")
    sizes, dtype, device = _check_lists(lists)
    cdt = compute_dtype(params[0].dtype) if params else torch.float32
    _check_scalars(scalars, SGD_SCALARS, cdt, device)
    clip_ptr = _clip_pointer(clip, clip_args, len(params), cdt, device)
    _C.pointer_sgd(_pointers(params), _pointers(grads), _pointers(momentums), sizes, dtype,
                   scalars.data_ptr(), form="torch", variant=variant, decay=decay, clip=clip,
                   clip_args=clip_ptr, apply_if=_apply_if_pointer(apply_if, device),
                   **_device_args(device))


@sgd_.register_fake
def _(params, grads, momentums, scalars, variant, decay, clip, clip_args, apply_if):
    return None


def _read_list(x, what) -> tuple:
    """Checks a list of tensors that is only read: one dtype, contiguous, one
    device. Returns (sizes, dtype name, device)."""
    if not x:
        raise ValueError(f"{what} needs at least one tensor")
    dtype, device = x[0].dtype, x[0].device
    for i, t in enumerate(x):
        if t.dtype != dtype:
            raise TypeError(f"{what}[{i}] has dtype {t.dtype} but {what}[0] has {dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{what}[{i}] is not contiguous")
        _check_device(t, f"{what}[{i}]", device)
    return [t.numel() for t in x], _name(dtype), device


@torch.library.custom_op("fusedopt::squared_norms", mutates_args=())
def squared_norms(x: list[torch.Tensor]) -> torch.Tensor:
    sizes, dtype, device = _read_list(x, "x")
    out = torch.empty(len(x), dtype=x[0].dtype, device=device)
    # The CUDA reduction's per-chunk sums (0 bytes on the CPU), from torch's
    # allocator on the current stream.
    workspace = torch.empty(_C.pointer_squared_norms_workspace_bytes(sizes)
                            if device.type == "cuda" else 0, dtype=torch.uint8, device=device)
    _C.pointer_squared_norms(_pointers(x), sizes, dtype, out.data_ptr(),
                             workspace=workspace.data_ptr() if workspace.numel() else 0,
                             workspace_bytes=workspace.numel(), **_device_args(device))
    return out


@squared_norms.register_fake
def _(x):
    return x[0].new_empty(len(x))


@torch.library.custom_op("fusedopt::clip_factors", mutates_args=())
def clip_factors(squared_norms: list[torch.Tensor], max_norm: torch.Tensor,
                 kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    device = max_norm.device
    for i, s in enumerate(squared_norms):
        if s.dim() != 1 or not s.is_contiguous():
            raise ValueError(f"squared_norms[{i}] must be a contiguous vector, got shape "
                             f"{tuple(s.shape)}")
        _name(s.dtype)
        _check_device(s, f"squared_norms[{i}]", device)
    if max_norm.shape != ():
        raise ValueError(f"max_norm must be a 0-d tensor, got shape {tuple(max_norm.shape)}")
    _check_device(max_norm, "max_norm", device)
    size = 1 if kind == "global_norm" else squared_norms[0].numel() + 1
    out = torch.empty(size, dtype=max_norm.dtype, device=device)
    finite = torch.empty((), dtype=torch.bool, device=device)
    _C.pointer_clip_factors(_pointers(squared_norms), [s.numel() for s in squared_norms],
                            [_name(s.dtype) for s in squared_norms], max_norm.data_ptr(),
                            _name(max_norm.dtype), kind, out.data_ptr(), finite.data_ptr(),
                            **_device_args(device))
    return out, finite


@clip_factors.register_fake
def _(squared_norms, max_norm, kind):
    size = 1 if kind == "global_norm" else squared_norms[0].shape[0] + 1
    return max_norm.new_empty(size), max_norm.new_empty((), dtype=torch.bool)


@torch.library.custom_op("fusedopt::all_finite", mutates_args=())
def all_finite(x: list[torch.Tensor]) -> torch.Tensor:
    device = x[0].device if x else torch.device("cpu")
    for i, t in enumerate(x):
        if not t.is_contiguous():
            raise ValueError(f"x[{i}] is not contiguous")
        _check_device(t, f"x[{i}]", device)
    out = torch.empty((), dtype=torch.bool, device=device)
    _C.pointer_all_finite(_pointers(x), [t.numel() for t in x], [_name(t.dtype) for t in x],
                          out.data_ptr(), **_device_args(device))
    return out


@all_finite.register_fake
def _(x):
    return x[0].new_empty((), dtype=torch.bool) if x else torch.empty((), dtype=torch.bool)

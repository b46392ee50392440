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

The kernels run on the host; CUDA tensors are refused (the executor sends
them to the stock update, see docs/backends.md).
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


def _check_cpu(t: torch.Tensor, what: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; the fusedopt torch ops run on CPU tensors")


def _check_lists(lists) -> tuple:
    """Checks the tensor lists of one update call before anything is written
    (one dtype, the shapes of the first list, contiguous, on the CPU); the C++
    entry checks that no written tensor overlaps another. lists: (name, list)
    pairs, the parameters first. Returns (sizes, dtype name)."""
    first_name, first = lists[0]
    n = len(first)
    for name, lst in lists[1:]:
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors but {first_name} has {n}; "
                             "pass one per parameter")
    if n == 0:
        return [], "float32"
    dtype = first[0].dtype
    dtype_name = _name(dtype)
    shapes = [t.shape for t in first]
    for name, lst in lists:
        # One pass of each check over the list; the loop below only names
        # the first bad tensor.
        if (all(t.dtype == dtype for t in lst) and [t.shape for t in lst] == shapes
                and all(t.is_contiguous() and t.is_cpu for t in lst)):
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
            _check_cpu(t, f"{name}[{i}]")
    return [t.numel() for t in first], dtype_name


def _check_scalars(scalars: torch.Tensor, count: int, dtype: torch.dtype) -> None:
    if scalars.dtype != dtype or scalars.shape != (count,) or not scalars.is_contiguous():
        raise ValueError(f"scalars must be a contiguous vector of {count} {dtype} values, got "
                         f"shape {tuple(scalars.shape)} of {scalars.dtype}")
    _check_cpu(scalars, "scalars")


def _clip_pointer(clip: str, clip_args: Optional[torch.Tensor], n: int, dtype) -> int:
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
    _check_cpu(clip_args, "clip_args")
    return clip_args.data_ptr()


def _apply_if_pointer(apply_if: Optional[torch.Tensor]) -> int:
    if apply_if is None:
        return 0
    if apply_if.dtype != torch.bool or apply_if.shape != ():
        raise ValueError(f"apply_if must be a bool 0-d tensor, got shape {tuple(apply_if.shape)} "
                         f"of {apply_if.dtype}")
    _check_cpu(apply_if, "apply_if")
    return apply_if.data_ptr()


def _pointers(tensors) -> list:
    return [t.data_ptr() for t in tensors]


ADAM_SCALARS = 7  # alpha, beta_1, 1 - beta_1, beta_2, 1 - beta_2, epsilon, decay_scale
SGD_SCALARS = 3  # -lr, momentum, decay_scale


@torch.library.custom_op("fusedopt::adam_", mutates_args=("params", "m", "v"))
def adam_(params: list[torch.Tensor], grads: list[torch.Tensor], m: list[torch.Tensor],
          v: list[torch.Tensor], scalars: torch.Tensor, decay: bool, clip: str,
          clip_args: Optional[torch.Tensor], apply_if: Optional[torch.Tensor]) -> None:
    sizes, dtype = _check_lists([("params", params), ("grads", grads), ("m", m), ("v", v)])
    cdt = compute_dtype(params[0].dtype) if params else torch.float32
    _check_scalars(scalars, ADAM_SCALARS, cdt)
    clip_ptr = _clip_pointer(clip, clip_args, len(params), cdt)
    _C.pointer_adam(_pointers(params), _pointers(grads), _pointers(m), _pointers(v), sizes,
                    dtype, scalars.data_ptr(), form="torch", decay=decay, clip=clip,
                    clip_args=clip_ptr, apply_if=_apply_if_pointer(apply_if))


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
    sizes, dtype = _check_lists(lists)
    cdt = compute_dtype(params[0].dtype) if params else torch.float32
    _check_scalars(scalars, SGD_SCALARS, cdt)
    clip_ptr = _clip_pointer(clip, clip_args, len(params), cdt)
    _C.pointer_sgd(_pointers(params), _pointers(grads), _pointers(momentums), sizes, dtype,
                   scalars.data_ptr(), form="torch", variant=variant, decay=decay, clip=clip,
                   clip_args=clip_ptr, apply_if=_apply_if_pointer(apply_if))


@sgd_.register_fake
def _(params, grads, momentums, scalars, variant, decay, clip, clip_args, apply_if):
    return None


def _read_list(x, what) -> tuple:
    """Checks a list of tensors that is only read: one dtype, contiguous, CPU."""
    if not x:
        raise ValueError(f"{what} needs at least one tensor")
    dtype = x[0].dtype
    for i, t in enumerate(x):
        if t.dtype != dtype:
            raise TypeError(f"{what}[{i}] has dtype {t.dtype} but {what}[0] has {dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{what}[{i}] is not contiguous")
        _check_cpu(t, f"{what}[{i}]")
    return [t.numel() for t in x], _name(dtype)


@torch.library.custom_op("fusedopt::squared_norms", mutates_args=())
def squared_norms(x: list[torch.Tensor]) -> torch.Tensor:
    sizes, dtype = _read_list(x, "x")
    out = torch.empty(len(x), dtype=x[0].dtype)
    _C.pointer_squared_norms(_pointers(x), sizes, dtype, out.data_ptr())
    return out


@squared_norms.register_fake
def _(x):
    return x[0].new_empty(len(x))


@torch.library.custom_op("fusedopt::clip_factors", mutates_args=())
def clip_factors(squared_norms: list[torch.Tensor], max_norm: torch.Tensor,
                 kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    for i, s in enumerate(squared_norms):
        if s.dim() != 1 or not s.is_contiguous():
            raise ValueError(f"squared_norms[{i}] must be a contiguous vector, got shape "
                             f"{tuple(s.shape)}")
        _name(s.dtype)
        _check_cpu(s, f"squared_norms[{i}]")
    if max_norm.shape != ():
        raise ValueError(f"max_norm must be a 0-d tensor, got shape {tuple(max_norm.shape)}")
    _check_cpu(max_norm, "max_norm")
    size = 1 if kind == "global_norm" else squared_norms[0].numel() + 1
    out = torch.empty(size, dtype=max_norm.dtype)
    finite = torch.empty((), dtype=torch.bool)
    _C.pointer_clip_factors(_pointers(squared_norms), [s.numel() for s in squared_norms],
                            [_name(s.dtype) for s in squared_norms], max_norm.data_ptr(),
                            _name(max_norm.dtype), kind, out.data_ptr(), finite.data_ptr())
    return out, finite


@clip_factors.register_fake
def _(squared_norms, max_norm, kind):
    size = 1 if kind == "global_norm" else squared_norms[0].shape[0] + 1
    return max_norm.new_empty(size), max_norm.new_empty((), dtype=torch.bool)


@torch.library.custom_op("fusedopt::all_finite", mutates_args=())
def all_finite(x: list[torch.Tensor]) -> torch.Tensor:
    out = torch.empty((), dtype=torch.bool)
    for i, t in enumerate(x):
        if not t.is_contiguous():
            raise ValueError(f"x[{i}] is not contiguous")
        _check_cpu(t, f"x[{i}]")
    _C.pointer_all_finite(_pointers(x), [t.numel() for t in x], [_name(t.dtype) for t in x],
                          out.data_ptr())
    return out


@all_finite.register_fake
def _(x):
    return torch.empty((), dtype=torch.bool)

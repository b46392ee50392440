"""fusedopt's fused kernels as XLA FFI calls, for JAX (low level).

Each function emits one ``jax.ffi.ffi_call`` to a handler of csrc/ffi/ (the
same handlers TensorFlow's XLA runs, docs/xla.md), over all the tensors of a
group. They are jit-friendly: call them inside ``jax.jit``; with the
parameters and slots donated, the update writes them in place (the results
alias the inputs, ``input_output_aliases``) and the compiled program holds one
custom call per group and no copy of any parameter or slot.

Per-step values (the update's scalars, clip arguments, the apply predicate)
are operands, never attributes: a new learning rate does not recompile. Only
the group size, the decay flag, the SGD variant and the clip kind are static.

The update rules are Keras' (csrc/kernels/adam.h, sgd.h); the scalars are the
ones the TF op takes, computed by the caller in the parameters' dtype:

- Adam: ``[alpha, 1 - beta_1, 1 - beta_2, epsilon, lr, weight_decay]`` with
  ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``;
- SGD: ``[lr, momentum, weight_decay, decay_lr]``.

Clipping (csrc/kernels/clip.h) is applied to each gradient element right
before the rule: ``clip_kind="value"`` with ``clip_args=[lo, hi]``,
``"ratio"`` with ``[numerator, den_0, ..., den_{N-1}]``, ``"scale"`` with
``[scale]`` (the outputs of :func:`clip_factors`). ``apply_if``: a scalar bool;
when false the call writes nothing (every output equals its input).

float16 / bfloat16 tensors are computed in float32 and rounded once, as the
CPU kernels do. In CUDA builds every target has a CUDA handler too
(``cuda_targets()``; csrc/ffi/cuda_handlers.cc): the updates take float32
and float64 there, and the values the CPU handlers check by reading them
(``clip_args`` lo <= hi, denominators > 0, ``max_norm > 0``) are not read on
the host on CUDA (docs/gpu.md).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CLIP_KINDS = ("none", "value", "ratio", "scale")
_FLOAT_TYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)

ADAM_TARGET = "fusedopt_adam"
SGD_TARGET = "fusedopt_sgd"
SQUARED_NORMS_TARGET = "fusedopt_squared_norms"
CLIP_FACTORS_TARGET = "fusedopt_clip_factors"
ALL_FINITE_TARGET = "fusedopt_all_finite"


@functools.lru_cache(maxsize=None)
def _registered() -> tuple[frozenset, frozenset]:
    """Registers the handlers with jax (once); returns the CPU and CUDA targets."""
    try:
        from fusedopt import _xla_ffi
    except ImportError as e:  # a build without the FFI headers (CMakeLists.txt)
        raise ImportError(
            "this fusedopt build has no XLA FFI handlers (fusedopt._xla_ffi is missing: the "
            "build found neither TensorFlow's nor jax's XLA FFI headers); reinstall fusedopt "
            "with tensorflow or jax installed in the build environment"
        ) from e
    cpu = _xla_ffi.cpu_handlers()
    for name, capsule in cpu.items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    cuda = _xla_ffi.cuda_handlers()
    for name, capsule in cuda.items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    return frozenset(cpu), frozenset(cuda)


def cpu_targets() -> frozenset:
    """The FFI targets registered for the CPU."""
    return _registered()[0]


def cuda_targets() -> frozenset:
    """The FFI targets registered for CUDA (empty in a CPU-only build)."""
    return _registered()[1]


# ---------------------------------------------------------------------------
# Argument checks (at trace time: shapes and dtypes are static).


def _float_dtype(x, name: str):
    dtype = jnp.dtype(x.dtype)
    if dtype not in [jnp.dtype(t) for t in _FLOAT_TYPES]:
        raise TypeError(f"{name} has dtype {dtype}; expected float16, bfloat16, float32 or float64")
    return dtype


def _tensor_lists(op: str, lists: dict[str, Sequence]) -> tuple[list[list], np.dtype]:
    """Checks that every list has params' length, dtype and shapes."""
    names = list(lists)
    values = [list(lists[k]) for k in names]
    params = values[0]
    if not params:
        raise ValueError(f"{op}: params is empty; pass at least one tensor")
    dtype = _float_dtype(params[0], "params[0]")
    for name, xs in zip(names, values):
        if len(xs) != len(params):
            raise ValueError(f"{op}: {name} has {len(xs)} tensors but params has {len(params)}")
        for i, (x, p) in enumerate(zip(xs, params)):
            if jnp.dtype(x.dtype) != dtype:
                raise TypeError(f"{op}: {name}[{i}] has dtype {jnp.dtype(x.dtype)} but params[0] "
                                f"has {dtype}")
            if tuple(x.shape) != tuple(p.shape):
                raise ValueError(f"{op}: {name}[{i}] has shape {tuple(x.shape)} but params[{i}] "
                                 f"has shape {tuple(p.shape)}")
    return values, dtype


def _vector(values, dtype, count: int, name: str, layout: str):
    """A 1-D operand of `count` values of `dtype`: an array of that dtype, or a
    sequence of numbers / 0-d arrays of that dtype (stacked)."""
    if hasattr(values, "shape") and hasattr(values, "dtype"):
        if jnp.dtype(values.dtype) != dtype:
            raise TypeError(f"{name} has dtype {jnp.dtype(values.dtype)}; expected {dtype} "
                            "(the parameters' dtype)")
        if tuple(values.shape) != (count,):
            raise ValueError(f"{name} must have shape ({count},) ({layout}), got "
                             f"{tuple(values.shape)}")
        return values
    values = list(values)
    if len(values) != count:
        raise ValueError(f"{name} must hold {count} values ({layout}), got {len(values)}")
    parts = []
    for i, x in enumerate(values):
        if hasattr(x, "dtype") and jnp.dtype(x.dtype) != dtype:
            raise TypeError(f"{name}[{i}] has dtype {jnp.dtype(x.dtype)}; expected {dtype}")
        x = jnp.asarray(x, dtype)
        if x.shape != ():
            raise ValueError(f"{name}[{i}] must be a scalar, got shape {x.shape}")
        parts.append(x)
    return jnp.stack(parts)


def _clip_operand(clip_kind: str, clip_args, dtype, n: int):
    if clip_kind not in CLIP_KINDS:
        raise ValueError(f"clip_kind must be one of {CLIP_KINDS}, got {clip_kind!r}")
    if clip_kind == "none":
        if clip_args is not None and np.size(clip_args) != 0:
            raise ValueError("clip_args must be None (or empty) with clip_kind='none'")
        return jnp.zeros((0,), dtype)
    count = {"value": 2, "ratio": n + 1, "scale": 1}[clip_kind]
    layout = {"value": "[lo, hi]", "ratio": "[numerator, den_0, ..., den_{N-1}]",
              "scale": "[scale]"}[clip_kind]
    if clip_args is None:
        raise ValueError(f"clip_kind={clip_kind!r} needs clip_args {layout}")
    return _vector(clip_args, dtype, count, "clip_args", layout)


def _apply_if_operand(apply_if):
    if apply_if is None:
        return jnp.zeros((0,), jnp.bool_)
    pred = jnp.asarray(apply_if)
    if pred.dtype != jnp.bool_ or pred.shape != ():
        raise TypeError(f"apply_if must be a scalar bool, got {pred.dtype} of shape {pred.shape}")
    return pred


def _aliased_call(target: str, written: Sequence, operands: Sequence, **attrs) -> list:
    """One FFI call whose result j is written[j], aliased to operand j."""
    _registered()
    out_types = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in written]
    call = jax.ffi.ffi_call(
        target,
        out_types,
        input_output_aliases={j: j for j in range(len(written))},
        # Under vmap: one call per batch element (the operands' layout is per
        # group, so batching them into one call would be wrong).
        vmap_method="sequential",
    )
    return list(call(*operands, **attrs))


# ---------------------------------------------------------------------------
# The kernels.


def adam_update(params, grads, m, v, scalars, *, decay: bool = False, clip_kind: str = "none",
                clip_args=None, apply_if=None):
    """Adam / AdamW over a group: returns the new ``(params, m, v)`` lists.

    scalars: ``[alpha, 1 - beta_1, 1 - beta_2, epsilon, lr, weight_decay]`` in
    the parameters' dtype (weight_decay and lr are used only with
    ``decay=True``: ``p -= p * weight_decay * lr`` before the update).
    """
    (params, grads, m, v), dtype = _tensor_lists(
        "adam_update", {"params": params, "grads": grads, "m": m, "v": v})
    n = len(params)
    operands = [*params, *m, *v, *grads,
                _vector(scalars, dtype, 6, "scalars",
                        "alpha, 1 - beta_1, 1 - beta_2, epsilon, lr, weight_decay"),
                _clip_operand(clip_kind, clip_args, dtype, n),
                _apply_if_operand(apply_if)]
    out = _aliased_call(ADAM_TARGET, [*params, *m, *v], operands, decay=bool(decay),
                        clip=clip_kind)
    return out[:n], out[n:2 * n], out[2 * n:]


def sgd_update(params, grads, momentums, scalars, *, nesterov: bool = False,
               decay: bool = False, clip_kind: str = "none", clip_args=None, apply_if=None):
    """SGD over a group: returns the new ``(params, momentums)`` lists.

    momentums: one buffer per parameter (momentum / Nesterov), or None / [] for
    plain SGD (then the returned momentums are []). scalars:
    ``[lr, momentum, weight_decay, decay_lr]`` in the parameters' dtype
    (``p -= p * weight_decay * decay_lr`` with ``decay=True``).
    """
    momentums = list(momentums or [])
    lists = {"params": params, "grads": grads}
    if momentums:
        lists["momentums"] = momentums
    elif nesterov:
        raise ValueError("sgd_update: nesterov=True needs momentum buffers")
    values, dtype = _tensor_lists("sgd_update", lists)
    params, grads = values[0], values[1]
    momentums = values[2] if momentums else []
    n = len(params)
    variant = "plain" if not momentums else "nesterov" if nesterov else "momentum"
    operands = [*params, *momentums, *grads,
                _vector(scalars, dtype, 4, "scalars", "lr, momentum, weight_decay, decay_lr"),
                _clip_operand(clip_kind, clip_args, dtype, n),
                _apply_if_operand(apply_if)]
    out = _aliased_call(SGD_TARGET, [*params, *momentums], operands, decay=bool(decay),
                        clip=clip_kind, variant=variant)
    return out[:n], out[n:]


def squared_norms(xs):
    """Per-tensor squared L2 norms of one dtype: a vector of len(xs) in that
    dtype (summed in double in a fixed order, rounded once; csrc/kernels/norm.h)."""
    xs = list(xs)
    if not xs:
        raise ValueError("squared_norms: xs is empty")
    dtype = _float_dtype(xs[0], "xs[0]")
    for i, x in enumerate(xs):
        if jnp.dtype(x.dtype) != dtype:
            raise TypeError(f"squared_norms: xs[{i}] has dtype {jnp.dtype(x.dtype)} but xs[0] "
                            f"has {dtype}")
    _registered()
    call = jax.ffi.ffi_call(SQUARED_NORMS_TARGET, jax.ShapeDtypeStruct((len(xs),), dtype),
                            vmap_method="sequential")
    return call(*xs)


def clip_factors(squared_norms, max_norm, *, kind: str, dtype=None):
    """Clip arguments from squared norms (csrc/kernels/clip.h): returns
    ``(clip_args, finite)``.

    kind='norm': ``squared_norms`` is one vector of the N squared norms of a
    group; clip_args = ``[max_norm, b_0, ..., b_{N-1}]`` for clip_kind='ratio'.
    kind='global_norm': any number of vectors (every group of the step, any
    float dtypes), summed in order in double; clip_args = ``[scale]`` for
    clip_kind='scale'. finite: the squared norm(s) are finite (the step's
    non-finite check under skip_nonfinite). dtype: of clip_args and max_norm
    (default: the first vector's).
    """
    if kind not in ("norm", "global_norm"):
        raise ValueError(f"kind must be 'norm' or 'global_norm', got {kind!r}")
    if hasattr(squared_norms, "shape"):
        squared_norms = [squared_norms]
    norms = list(squared_norms)
    if not norms:
        raise ValueError("clip_factors: squared_norms is empty")
    if kind == "norm" and len(norms) != 1:
        raise ValueError(f"kind='norm' takes the squared norms of one group (one vector), got "
                         f"{len(norms)}")
    for i, x in enumerate(norms):
        _float_dtype(x, f"squared_norms[{i}]")
        if x.ndim != 1:
            raise ValueError(f"squared_norms[{i}] must be a vector, got shape {tuple(x.shape)}")
    dtype = jnp.dtype(dtype or norms[0].dtype)
    if hasattr(max_norm, "dtype") and jnp.dtype(max_norm.dtype) != dtype:
        raise TypeError(f"max_norm has dtype {jnp.dtype(max_norm.dtype)}; expected {dtype}")
    max_norm = jnp.asarray(max_norm, dtype)
    if max_norm.shape != ():
        raise ValueError(f"max_norm must be a scalar, got shape {max_norm.shape}")
    count = 1 if kind == "global_norm" else norms[0].shape[0] + 1
    _registered()
    call = jax.ffi.ffi_call(CLIP_FACTORS_TARGET,
                            [jax.ShapeDtypeStruct((count,), dtype),
                             jax.ShapeDtypeStruct((), jnp.bool_)],
                            vmap_method="sequential")
    clip_args, finite = call(*norms, max_norm, kind=kind)
    return clip_args, finite


def all_finite(xs):
    """Whether no element of any of `xs` (float tensors, any mix of dtypes) is
    Inf or NaN: a scalar bool (an exponent-bit test, csrc/kernels/finite.h)."""
    xs = list(xs)
    for i, x in enumerate(xs):
        _float_dtype(x, f"xs[{i}]")
    if not xs:
        return jnp.asarray(True)
    _registered()
    call = jax.ffi.ffi_call(ALL_FINITE_TARGET, jax.ShapeDtypeStruct((), jnp.bool_),
                            vmap_method="sequential")
    return call(*xs)

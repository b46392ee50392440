"""Raw multi-tensor kernels, without TensorFlow, and PyTorch's optimizers.

- ``kernels``: ``fusedopt.kernels.<optimizer>`` on lists of NumPy arrays
  (the CPU kernels with no framework around them);
- ``torch-cpu``: ``torch.optim.<Optimizer>(foreach=True)`` on CPU tensors;
- ``kernels-cuda``: ``fusedopt.kernels.<optimizer>`` on CUDA arrays (PyTorch
  tensors, or CuPy arrays without PyTorch), when the build has CUDA kernels;
- ``torch-fused``: ``torch.optim.<Optimizer>(fused=True)`` on CUDA tensors,
  the GPU baseline.

These allocate several copies of their tensors when asked (rotating buffers),
so that cache-sized cases are timed from memory. A missing library or device
is a Skip, never an error.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import itertools

import numpy as np

from fusedopt.bench.cases import (Case, Runner, Skip, implementation, random_normal,
                                  require_stock_arguments)

_MAX_COPIES = 256


# ------------------------------------------------------- fusedopt.kernels API


def _kernel_step(case: Case):
    """Returns ``call(arrays, step_number)`` running one kernel step.

    ``arrays`` is the tuple of lists the kernel takes (params, grads, then the
    optimizer's state lists). Raises Skip when this fusedopt has no such kernel.
    """
    from fusedopt import kernels

    spec, kw = case.optimizer, case.optimizer.kwargs
    if spec.keras_class in ("Adam", "AdamW"):
        extra = {}
        if "global_clipnorm" in kw:
            if "global_clip_norm" not in inspect.signature(kernels.adam).parameters:
                raise Skip("fusedopt.kernels.adam has no global_clip_norm= yet")
            extra["global_clip_norm"] = kw["global_clipnorm"]
        if kw.get("skip_nonfinite"):
            extra["skip_nonfinite"] = True

        def call(arrays, step):
            kernels.adam(*arrays, lr=kw["learning_rate"], beta_1=kw.get("beta_1", 0.9),
                         beta_2=kw.get("beta_2", 0.999), epsilon=kw.get("epsilon", 1e-7),
                         step=step, weight_decay=kw.get("weight_decay", 0.0), **extra)

        return call, 2  # m and v
    if spec.keras_class == "SGD":
        sgd = getattr(kernels, "sgd", None)
        if sgd is None:
            raise Skip("fusedopt.kernels.sgd does not exist in this version")

        def call(arrays, step):
            sgd(*arrays, lr=kw["learning_rate"], momentum=kw.get("momentum", 0.0),
                nesterov=kw.get("nesterov", False))

        return call, 1  # momentums
    raise Skip(f"no fusedopt kernel for {spec.keras_class}")


def _rotating_steps(call, copies_of_arrays):
    """One step function per copy; each counts its own step number from 1."""
    steps = []
    for arrays in copies_of_arrays:
        counter = itertools.count(1)
        steps.append(functools.partial(lambda a, c: call(a, next(c)), arrays, counter))
    return steps


def _numpy_arrays(case: Case, n_state: int, rng):
    """(params, grads, *state) lists of random (non-zero) NumPy arrays."""
    shapes, dtype = case.shape.tensor_shapes, case.dtype

    def normal(scale=1.0):
        return [random_normal(rng, s, dtype, scale) for s in shapes]

    state = [normal(1e-2)]  # first moment / momentum
    if n_state == 2:
        state.append([np.abs(a) for a in normal(1e-4)])  # second moment, >= 0
    return (normal(), normal(1e-2), *state)


@implementation("kernels", ours=True, max_copies=_MAX_COPIES,
                description="fusedopt.kernels.<optimizer> on NumPy arrays (no TensorFlow)")
def numpy_kernels(case: Case, copies: int) -> Runner:
    call, n_state = _kernel_step(case)
    rng = np.random.default_rng(0)
    return Runner(_rotating_steps(call, [_numpy_arrays(case, n_state, rng)
                                         for _ in range(copies)]))


# ------------------------------------------------------------------- PyTorch


@functools.cache
def _torch():
    if importlib.util.find_spec("torch") is None:
        raise Skip("PyTorch is not installed")
    import torch

    return torch


@functools.cache
def _torch_cuda():
    torch = _torch()
    if not torch.cuda.is_available():
        raise Skip("no CUDA GPU visible to PyTorch")
    return torch


def _torch_optimizer(torch, case: Case, params, **flags):
    spec, kw = case.optimizer, case.optimizer.kwargs
    require_stock_arguments(spec, "torch.optim")
    if spec.keras_class in ("Adam", "AdamW"):
        cls = torch.optim.AdamW if spec.keras_class == "AdamW" else torch.optim.Adam
        extra = {"weight_decay": kw["weight_decay"]} if "weight_decay" in kw else {}
        return cls(params, lr=kw["learning_rate"],
                   betas=(kw.get("beta_1", 0.9), kw.get("beta_2", 0.999)),
                   eps=kw.get("epsilon", 1e-7), **extra, **flags)
    if spec.keras_class == "SGD":
        return torch.optim.SGD(params, lr=kw["learning_rate"], momentum=kw.get("momentum", 0.0),
                               nesterov=kw.get("nesterov", False), **flags)
    raise Skip(f"no torch.optim equivalent of {spec.keras_class}")


def _torch_runner(torch, case: Case, copies: int, device: str, **flags) -> Runner:
    dtype = getattr(torch, case.dtype)
    clipnorm = case.optimizer.kwargs.get("global_clipnorm")
    gen = torch.Generator(device=device).manual_seed(0)
    steps = []
    for _ in range(copies):
        params = []
        for shape in case.shape.tensor_shapes:
            p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device,
                                               dtype=dtype))
            p.grad = torch.randn(shape, generator=gen, device=device, dtype=dtype) * 1e-2
            params.append(p)
        opt = _torch_optimizer(torch, case, params, **flags)

        def step(opt=opt, params=params):
            if clipnorm is not None:
                torch.nn.utils.clip_grad_norm_(params, clipnorm, foreach=True)
            opt.step()

        steps.append(step)
    if device == "cuda":
        return Runner(steps, sync=torch.cuda.synchronize,
                      clock=functools.partial(_cuda_events, torch))
    return Runner(steps)


def _cuda_events(torch):
    """A (start, stop) pair timing one step with CUDA events, in seconds."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def stop() -> float:
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return start.record, stop


@implementation("torch-cpu", max_copies=_MAX_COPIES,
                description="torch.optim.<Optimizer>(foreach=True) on CPU tensors")
def torch_cpu(case: Case, copies: int) -> Runner:
    return _torch_runner(_torch(), case, copies, "cpu", foreach=True)


# --------------------------------------------------------- fusedopt on CUDA


def _cuda_array_module():
    """(name, module) of an importable CUDA array library with a visible GPU."""
    try:
        return "torch", _torch_cuda()
    except Skip as torch_reason:
        if importlib.util.find_spec("cupy") is None:
            raise Skip(f"{torch_reason}; CuPy is not installed") from None
        import cupy

        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise Skip("no CUDA GPU visible to CuPy")
        except cupy.cuda.runtime.CUDARuntimeError as e:
            raise Skip(f"no CUDA GPU visible to CuPy ({e})") from None
        return "cupy", cupy


def _device_arrays(name: str, xp, case: Case, n_state: int, seed: int):
    """Like ``_numpy_arrays``, generated on the GPU (1B parameters are too many for NumPy)."""
    shapes = case.shape.tensor_shapes
    if name == "torch":
        gen = xp.Generator(device="cuda").manual_seed(seed)
        dtype = getattr(xp, case.dtype)

        def normal(scale):
            return [xp.randn(s, generator=gen, device="cuda", dtype=dtype).mul_(scale)
                    for s in shapes]
    else:
        rs = xp.random.RandomState(seed)

        def normal(scale):
            return [rs.standard_normal(s, dtype=case.dtype) * scale for s in shapes]

    state = [normal(1e-2)]
    if n_state == 2:
        state.append([abs(a) for a in normal(1e-4)])
    return (normal(1.0), normal(1e-2), *state)


@implementation("kernels-cuda", device="cuda", ours=True, max_copies=64,
                description="fusedopt.kernels.<optimizer> on CUDA arrays (PyTorch or CuPy)")
def cuda_kernels(case: Case, copies: int) -> Runner:
    import fusedopt

    if not fusedopt.build_info().get("cuda"):
        raise Skip("this fusedopt build has no CUDA kernels")
    if case.optimizer.kwargs.get("skip_nonfinite"):
        raise Skip("skip_nonfinite is not supported on CUDA arrays yet")
    call, n_state = _kernel_step(case)
    name, xp = _cuda_array_module()
    copies_of_arrays = [_device_arrays(name, xp, case, n_state, seed)
                        for seed in range(copies)]
    if name == "torch":
        return Runner(_rotating_steps(call, copies_of_arrays), sync=xp.cuda.synchronize,
                      clock=functools.partial(_cuda_events, xp))
    return Runner(_rotating_steps(call, copies_of_arrays),
                  sync=xp.cuda.Device().synchronize)


@implementation("torch-fused", device="cuda", max_copies=64,
                description="torch.optim.<Optimizer>(fused=True) on CUDA tensors")
def torch_fused(case: Case, copies: int) -> Runner:
    return _torch_runner(_torch_cuda(), case, copies, "cuda", fused=True)

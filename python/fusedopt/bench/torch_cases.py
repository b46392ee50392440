"""Whole optimizer steps on Keras' torch backend (``fusedopt-bench --backend torch``).

Each case times one ``optimizer.apply(grads, variables)`` on CPU tensors,
under ``torch.no_grad()`` as Keras-torch's train step runs it:

- ``torch-fusedopt``: ``fusedopt.<Optimizer>`` (its torch executor: one
  ``torch.ops.fusedopt`` custom op per group);
- ``keras-torch``: ``keras.optimizers.<Optimizer>``, which Keras swaps for its
  foreach class (``keras/src/backend/torch/optimizers/``);
- ``keras-torch-subclass``: a subclass of the stock class, which Keras runs
  with the per-variable ``update_step`` loop (what a fusedopt optimizer would
  run without its executor);
- ``torch-fused-cpu``: ``torch.optim.<Optimizer>(fused=True).step()`` on CPU
  tensors; ``torch-cpu`` (kernel_cases) is the foreach one.

They need ``KERAS_BACKEND=torch`` (``--backend torch`` sets it before Keras
is imported); elsewhere they skip. Gradients are fixed random tensors (no
backward pass is timed); the first calls (building the optimizer) are the
warm-up.
"""

from __future__ import annotations

import functools

from fusedopt.bench.cases import Case, Runner, Skip, implementation, require_stock_arguments
from fusedopt.bench.kernel_cases import _torch, _torch_runner

# What --backend torch runs by default.
TORCH_IMPLS = ("torch-fusedopt", "keras-torch", "keras-torch-subclass", "torch-fused-cpu",
               "torch-cpu")


def _keras_torch():
    """(keras, torch) on Keras' torch backend, else Skip."""
    torch = _torch()
    import keras

    if keras.backend.backend() != "torch":
        raise Skip(f"needs Keras' torch backend (--backend torch); Keras runs on "
                   f"{keras.backend.backend()}")
    return keras, torch


@functools.cache
def _subclass(stock):
    """A subclass of a stock Keras optimizer: TorchOptimizer.__new__ swaps in
    the foreach class only for the exact stock class."""
    return type(f"{stock.__name__}Subclass", (stock,), {})


def _keras_runner(case: Case, copies: int, make_optimizer) -> Runner:
    keras, torch = _keras_torch()
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator().manual_seed(0)
    steps, optimizers = [], []
    for _ in range(copies):
        variables = [keras.Variable(torch.randn(s, generator=gen, dtype=dtype))
                     for s in case.shape.tensor_shapes]
        grads = [torch.randn(s, generator=gen, dtype=dtype) * 1e-2
                 for s in case.shape.tensor_shapes]
        opt = make_optimizer(keras)
        opt.build(variables)
        optimizers.append(opt)

        def step(opt=opt, grads=grads, variables=variables):
            with torch.no_grad():
                opt.apply(grads, variables)

        steps.append(step)

    def after_warmup():
        paths = getattr(optimizers[0], "fused_paths", None)
        if paths is None:
            return ""
        fused = sum(p == "fused" for p in paths.values())
        return f"fused {fused}/{len(paths)}"

    return Runner(steps, after_warmup=after_warmup)


@implementation("torch-fusedopt", ours=True, max_copies=16, default=False,
                description="fusedopt.<Optimizer>.apply on Keras' torch backend (CPU)")
def torch_fusedopt(case: Case, copies: int) -> Runner:
    import fusedopt

    spec = case.optimizer
    return _keras_runner(case, copies,
                         lambda keras: getattr(fusedopt, spec.keras_class)(**spec.kwargs))


@implementation("keras-torch", max_copies=16, default=False,
                description="keras.optimizers.<Optimizer> on the torch backend (its foreach "
                "class)")
def keras_torch(case: Case, copies: int) -> Runner:
    spec = case.optimizer
    require_stock_arguments(spec, "keras.optimizers")
    return _keras_runner(case, copies, lambda keras: getattr(
        keras.optimizers, spec.keras_class)(**spec.kwargs))


@implementation("keras-torch-subclass", max_copies=16, default=False,
                description="a subclass of keras.optimizers.<Optimizer> on the torch "
                "backend (per-variable update_step)")
def keras_torch_subclass(case: Case, copies: int) -> Runner:
    spec = case.optimizer
    require_stock_arguments(spec, "keras.optimizers")
    return _keras_runner(case, copies, lambda keras: _subclass(
        getattr(keras.optimizers, spec.keras_class))(**spec.kwargs))


@implementation("torch-fused-cpu", max_copies=16, default=False,
                description="torch.optim.<Optimizer>(fused=True) on CPU tensors")
def torch_fused_cpu(case: Case, copies: int) -> Runner:
    return _torch_runner(_torch(), case, copies, "cpu", fused=True)

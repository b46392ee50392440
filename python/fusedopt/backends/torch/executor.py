"""Runs a step plan with PyTorch: the only module that calls the fused torch ops.

`apply_plan` is what a fusedopt optimizer's update does on Keras' torch
backend (docs/design.md, "Plan, then execute"; docs/backends.md, "PyTorch"):
it describes the step's pairs, builds the plan
(`fusedopt.core.plan.build_plan`) and runs it: per group one
``torch.ops.fusedopt.adam_`` / ``sgd_`` call over the variables' tensors, in
place, with the folded clip's arguments (``squared_norms`` ->
``clip_factors``) and the skip predicate (``apply_if``); the pairs that fall
back take the stock torch backend's own foreach update
(``torch_adam.Adam._parallel_update_step`` ...) and weight decay, under the
same predicate.

The arithmetic is the stock torch backend's, not the TF backend's: its
foreach ops round ``m * beta_1 + (1 - beta_1) * g`` with one fused
multiply-add, and its weight decay scales ``p *= 1 - wd * lr``; the kernels'
torch form (csrc/kernels/adam.h, sgd.h) is that arithmetic, and the scalars
are computed here with the stock code's ops, dtypes and order.

Nothing here branches on a tensor's value in Python: the skip predicate stays
a tensor (no host sync, no graph break under ``torch.compile``).
"""

from __future__ import annotations

import os
import warnings

import keras
import torch
from keras.src.backend.torch.optimizers import torch_adam, torch_sgd

from fusedopt.core import plan as plan_mod

try:
    from fusedopt.backends.torch import ops as fused_ops
except (ImportError, AttributeError) as e:  # a _C without the pointer entries
    fused_ops, _OPS_ERROR = None, e
else:
    _OPS_ERROR = None

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The stock torch backend's update of each rule: what the exact stock class
# runs (TorchOptimizer.__new__ swaps it in for keras.optimizers.Adam, AdamW,
# SGD) and what the fallback pairs take here.
_STOCK_UPDATE = {
    "adam": torch_adam.Adam._parallel_update_step,
    "sgd": torch_sgd.SGD._parallel_update_step,
}


# ------------------------------------------------------------------ context


def step_fallback(optimizer) -> str | None:
    """Why no pair of this step can take the fused path, or None."""
    if fused_ops is None:
        return f"fused torch ops unavailable ({_OPS_ERROR})"
    return optimizer._fused_unsupported_reason()


def can_fold_clip(optimizer) -> bool:
    """Whether a built-in clip can go into the fused ops this step."""
    return step_fallback(optimizer) is None


def executing_eagerly() -> bool:
    # The skip predicate is always a tensor input of the ops (apply_if), as
    # in a traced TF graph: branching on it in Python would wait for the
    # device and break a torch.compile graph.
    return False


# --------------------------------------------------------------- the check


def apply_if_finite(optimizer, stock_apply, grads, trainable_variables):
    """skip_nonfinite where the plan cannot gate the step (EMA, accumulation,
    constraints, user transformers): the whole stock apply runs only if every
    gradient is finite, decided on the host (a sync with a CUDA device, and a
    graph break under torch.compile; docs/backends.md, PyTorch)."""
    if bool(all_finite(grads)):
        stock_apply(grads, trainable_variables)
    return None


def all_finite(grads) -> torch.Tensor:
    """A bool 0-d tensor: no element of any gradient is Inf or NaN. One fused
    pass per device over the gradients of the fused dtypes on a device the
    kernels run on (`kernel_device`); the stock torch ops for the others.
    On the device of the first check."""
    values = [g for g in grads if g is not None]
    fused, other = {}, []
    for g in values:
        if (fused_ops is not None and g.dtype in FUSED_DTYPES and g.layout == torch.strided
                and kernel_device(g.device) == g.device):
            fused.setdefault(g.device, []).append(g.contiguous())
        else:
            other.append(g)
    checks = [fused_ops.all_finite(group) for group in fused.values()]
    checks += [torch.isfinite(g.to_dense() if g.layout != torch.strided else g).all()
               for g in other]
    if not checks:
        return torch.tensor(True)
    result = checks[0]
    for c in checks[1:]:
        result = torch.logical_and(result, c.to(result.device))
    return result


# ------------------------------------------------------------- CUDA opt-in

# Set to 1 to run CUDA tensors through the fused CUDA kernels (docs/gpu.md).
TORCH_GPU_ENV = "FUSEDOPT_TORCH_GPU"


def gpu_reason() -> str | None:
    """Why CUDA variables take the stock update, or None where they are fused.

    The torch CUDA path is opt-in (FUSEDOPT_TORCH_GPU=1, read at every step)
    until a GPU run has verified it (tests/backends/torch/test_torch_gpu.py,
    run by bench/gpu_checks.sh). With the opt-in, a build without CUDA
    kernels or a machine where they cannot run (fusedopt._C.cuda_problem())
    falls back with a warning, once per process.
    """
    if os.environ.get(TORCH_GPU_ENV) != "1":
        return (f"variable on a CUDA device (the torch CUDA path is opt-in until verified on a "
                f"GPU: set {TORCH_GPU_ENV}=1, docs/gpu.md)")
    return _gpu_problem()


_GPU_PROBLEM = []  # [the problem or None], once known


# Called, not traced, under torch.compile (it asks _C, which dynamo cannot
# trace); the result is fixed for the process.
@torch.compiler.assume_constant_result
def _gpu_problem() -> str | None:
    if not _GPU_PROBLEM:
        from fusedopt import _C

        problem = (None if fused_ops.cuda_kernels()
                   else "this build of fusedopt has no CUDA kernels") or _C.cuda_problem()
        if problem is not None:
            warnings.warn(f"{TORCH_GPU_ENV}=1 but the fused CUDA kernels cannot run, so CUDA "
                          f"variables take the stock update: {problem}", RuntimeWarning,
                          stacklevel=3)
        _GPU_PROBLEM.append(problem)
    problem = _GPU_PROBLEM[0]
    return None if problem is None else f"variable on a CUDA device ({problem})"


def kernel_device(device: torch.device) -> torch.device:
    """Where the fused ops run for tensors on `device`: there when the
    kernels take it (the CPU; a CUDA device under the opt-in), else the CPU."""
    if device.type == "cuda" and gpu_reason() is None:
        return device
    return torch.device("cpu")


# ------------------------------------------------------------- the update


@torch.no_grad()  # as the stock torch backend's update (an in-place write of parameters)
def apply_plan(optimizer, clip, gate, grads, variables, learning_rate, check_grads):
    """The update of one step (what the stock `_apply_weight_decay` and
    `_backend_update_step` do), with the folded clip.

    clip, gate: the step's folded clip and skip mode (fusedopt.core.plan).
    check_grads: the gradients the skip check reads (as apply() got them).
    Returns the skip predicate (a bool tensor: the step was applied), or
    None when the step is not gated here.
    """
    finite = all_finite(check_grads) if gate == plan_mod.GATE_CHECK else None
    grads, variables = list(grads), list(variables)
    pairs = [_describe(optimizer, g, v) for g, v in zip(grads, variables)]
    plan = plan_mod.build_plan(pairs, step_fallback=step_fallback(optimizer), clip=clip,
                               gate=gate)
    optimizer._last_plan = plan  # for fused_paths (inspection only)
    return execute(optimizer, plan, grads, variables, learning_rate, finite)


def _tensor(variable) -> torch.Tensor:
    """The tensor a Keras variable holds, which the update writes in place.
    (`variable.value` returns the same tensor after stateless-scope and
    autocast checks that cost more than the update of a small tensor, and
    under an autocast scope could return a cast copy.)"""
    return variable._value


def _describe(optimizer, grad, var) -> plan_mod.Pair:
    """The planner's view of one pair (see fusedopt.core.plan.Pair)."""
    value = _tensor(var)
    decayed = optimizer.weight_decay is not None and optimizer._use_weight_decay(var)
    return plan_mod.Pair(path=_path(optimizer, var), dtype=str(value.dtype),
                         device=str(value.device), decayed=bool(decayed),
                         fallback=_fallback_reason(grad, value))


def _fallback_reason(grad, value) -> str | None:
    """Why this (grad, variable tensor) pair takes the stock update, or None."""
    if grad.layout != torch.strided:
        return f"sparse ({grad.layout}) gradient"
    if value.dtype not in FUSED_DTYPES:
        return f"dtype {value.dtype} (fused: float16, bfloat16, float32, float64)"
    if grad.dtype != value.dtype:
        # The stock foreach update promotes per op (e.g. a float16 gradient's
        # square rounds to float16 before it meets a float32 moment).
        return f"gradient dtype {grad.dtype} differs from the variable's {value.dtype}"
    if value.device.type == "cuda":
        reason = gpu_reason()
        if reason:
            return reason
    elif value.device.type != "cpu":
        return f"variable on {value.device} (the fused torch ops run on CPU and CUDA tensors)"
    if grad.device != value.device:
        return f"gradient on {grad.device}, variable on {value.device}"
    if not value.is_contiguous():
        return "variable tensor not contiguous"
    return None


def _path(optimizer, variable) -> str:
    """The Keras path ("dense/kernel") of a model variable."""
    index = optimizer._get_variable_index(variable)
    tracked = optimizer._trainable_variables[index]
    return getattr(tracked, "path", None) or f"{tracked.name}[{index}]"


def execute(optimizer, plan, grads, variables, learning_rate, finite):
    """Runs `plan` (fusedopt.core.plan.run_plan): the fused groups, then the
    fallback pairs with the stock torch update, both under the skip
    predicate where the plan gates. Returns the predicate."""
    rule = (_Rule(optimizer, learning_rate, _tensor(variables[0]).dtype,
                  any(group.decayed for group in plan.groups))
            if plan.groups else None)
    return plan_mod.run_plan(
        plan, optimizer, list(zip(grads, variables)), finite,
        prepare=lambda g, v: (g.contiguous(), v), fold=_fold_clip,
        call_group=lambda group, pairs, clip_args, finite: rule.call(group.decayed, pairs,
                                                                     clip_args, finite),
        stock_update=lambda fallback, finite: _stock_update(optimizer, plan, fallback,
                                                            learning_rate, finite))


def _scalar(value, dtype, device) -> torch.Tensor:
    """A 0-d tensor of `dtype` holding `value` (number, tensor or variable).
    Python numbers are converted straight to `dtype`, as torch converts a
    Python scalar operand to the op's compute dtype."""
    if isinstance(value, keras.Variable):
        value = value.value
    if torch.is_tensor(value):
        return value.detach().to(device=device, dtype=dtype).reshape(())
    return torch.tensor(value, dtype=dtype, device=device)


class _Rule:
    """One step's scalars and op calls for the optimizer's rule.

    The scalars are those of the stock torch backend's update: Adam's alpha
    from `_fused_scalars` in the dtype of the step's first variable
    (torch_adam.py computes it once, in `variables[0].dtype`, for all
    variables), its Python-number hyperparameters converted straight to each
    group's compute dtype (torch's scalar operands); SGD's learning rate and
    momentum cast to the compute dtype (torch's `alpha=` and scalar
    operands). The weight decay scale is TorchOptimizer._apply_weight_decay's
    `1 - weight_decay * lr`.
    """

    def __init__(self, optimizer, learning_rate, first_dtype, decays):
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.name = optimizer._fused_rule
        self.adam = (optimizer._fused_scalars(learning_rate, _keras_dtype(first_dtype))
                     if self.name == "adam" else None)
        self.decay_scale = (1 - optimizer.weight_decay * optimizer._get_current_learning_rate()
                            if decays else None)

    def _vector(self, values, dtype, device):
        return torch.stack([_scalar(x, dtype, device) for x in values])

    def call(self, decayed, pairs, clip, finite):
        optimizer = self.optimizer
        params = [_tensor(v) for _, v in pairs]
        grads = [g for g, _ in pairs]
        cdt = fused_ops.compute_dtype(params[0].dtype)
        device = params[0].device
        decay = self.decay_scale if decayed else 1.0
        kind, args = clip
        if finite is not None and finite.device != device:
            finite = finite.to(device)
        slots = [[_slot(optimizer, slot_list, v) for _, v in pairs]
                 for slot_list in optimizer._fused_slots()]
        if self.name == "adam":
            s = self.adam
            scalars = self._vector(
                (s["alpha"], s["beta_1"], s["one_minus_beta_1"], s["beta_2"],
                 s["one_minus_beta_2"], s["epsilon"], decay), cdt, device)
            fused_ops.adam_(params, grads, slots[0], slots[1], scalars, decayed, kind, args,
                            finite)
        else:
            # torch_sgd.py passes the learning rate as `alpha=-learning_rate`
            # and the momentum as a scalar operand: each converted once,
            # straight to the compute dtype (no float32 detour for float64).
            scalars = self._vector((-_scalar(self.learning_rate, cdt, device),
                                    optimizer.momentum, decay), cdt, device)
            variant = ("plain" if not slots else "nesterov" if optimizer.nesterov
                       else "momentum")
            fused_ops.sgd_(params, grads, slots[0] if slots else [], scalars, variant, decayed,
                           kind, args, finite)


def _keras_dtype(dtype: torch.dtype) -> str:
    return keras.backend.standardize_dtype(dtype)


def _slot(optimizer, slot_list, variable) -> torch.Tensor:
    """The tensor of `variable`'s slot in the Keras list `slot_list`."""
    return _tensor(slot_list[optimizer._get_variable_index(variable)])


# --------------------------------------------------------- the stock update


def _stock_update(optimizer, plan, fallback, learning_rate, finite):
    """The fallback pairs' update as the stock torch backend runs it: its
    foreach weight decay, then its foreach update (`_parallel_update_step`
    of the exact stock class). Under a skip predicate the tensors it writes
    are restored where the predicate is false (no host sync)."""
    grads = [g for _, (g, _) in fallback]
    variables = [v for _, (_, v) in fallback]
    decayed = [v for i, (_, v) in fallback if i in plan.decayed]

    def run():
        if decayed:
            optimizer._apply_weight_decay(decayed)
        _STOCK_UPDATE[optimizer._fused_rule](optimizer, grads, variables, learning_rate)

    if finite is None:
        run()
        return
    written = [_tensor(v) for v in variables] + _slot_tensors(optimizer, variables)
    saved = [t.clone() for t in written]
    run()
    for t, old in zip(written, saved):
        t.copy_(torch.where(finite, t, old))


def _slot_tensors(optimizer, variables) -> list:
    """Every slot tensor of `variables` (the state the stock update writes)."""
    out = []
    for attribute in optimizer._slot_attributes().values():
        slot_list = getattr(optimizer, attribute)
        for v in variables:
            slot = slot_list[optimizer._get_variable_index(v)]
            if slot is not None:
                out.append(_tensor(slot))
    return out


# --------------------------------------------------------------- clipping


def _fold_clip(kernel_clip, groups, fallback, optimizer, transformer):
    """The update ops' clip arguments per group, the fallback pairs with
    their gradients clipped the same way, and whether the norms are finite.

    The norms come from the squared_norms op, the factors from clip_factors
    (the formulas of csrc/kernels/clip.h); fallback gradients of clip by
    value or by norm go through the transformer itself (stock ops), and for
    clip by global norm are scaled by the same factor, their squares counted
    in the global norm. Thresholds are in each group's compute dtype.
    """
    step = optimizer.iterations
    kind = kernel_clip.kind

    def compute(pairs):
        value = _tensor(pairs[0][1])
        return fused_ops.compute_dtype(value.dtype), value.device

    if kind == "value":
        lo, hi = kernel_clip.args
        args = {}
        for group, pairs in groups.items():
            cdt, device = compute(pairs)
            args[group] = ("value", torch.stack([_scalar(lo, cdt, device),
                                                 _scalar(hi, cdt, device)]))
        return args, _clip_fallback(transformer, fallback, step), None

    (max_norm,) = kernel_clip.args
    squared = {group: fused_ops.squared_norms([g for g, _ in pairs])
               for group, pairs in groups.items()}
    if kind == "norm":
        args = {}
        for group, pairs in groups.items():
            cdt, device = compute(pairs)
            factors, _ = fused_ops.clip_factors([squared[group]], _scalar(max_norm, cdt, device),
                                                "norm")
            args[group] = ("ratio", factors)
        return args, _clip_fallback(transformer, fallback, step), None

    # Global norm over every gradient of the step, fused and fallback alike.
    sums = list(squared.values()) + [_squared_norm(g) for _, (g, _) in fallback]

    def on(device):  # the squared norms, each moved to `device` where it is not there
        return [x if x.device == device else x.to(device) for x in sums]

    args, finite = {}, None
    for group, pairs in groups.items():
        cdt, device = compute(pairs)
        factors, ok = fused_ops.clip_factors(on(device), _scalar(max_norm, cdt, device),
                                             "global_norm")
        args[group] = ("scale", factors)
        finite = ok if finite is None else finite
    clipped = []
    for i, (grad, var) in fallback:
        factor_dtype = grad.dtype if grad.dtype in FUSED_DTYPES else torch.float64
        device = kernel_device(grad.device)
        factors, ok = fused_ops.clip_factors(on(device), _scalar(max_norm, factor_dtype, device),
                                             "global_norm")
        finite = ok if finite is None else finite
        clipped.append((i, (grad * factors[0].to(device=grad.device, dtype=grad.dtype), var)))
    return args, clipped, finite


def _squared_norm(grad) -> torch.Tensor:
    """A one-element vector: the squared norm of a fallback gradient."""
    if grad.layout != torch.strided:
        grad = grad.coalesce().values()
    if grad.dtype in FUSED_DTYPES and kernel_device(grad.device) == grad.device:
        return fused_ops.squared_norms([grad.contiguous()])
    return torch.sum(torch.abs(grad).to(torch.float64) ** 2).reshape(1)


def _clip_fallback(transformer, fallback, step):
    """The fallback pairs with their gradients clipped by the transformer's
    own (stock) ops."""
    if not fallback:
        return fallback
    clipped = transformer([pair for _, pair in fallback], step=step)
    return [(i, pair) for (i, _), pair in zip(fallback, clipped)]

"""Runs a step plan with JAX: the only module that calls the fused XLA FFI
handlers for the Keras optimizers.

The interface is the TensorFlow executor's (`fusedopt.backends.tensorflow.
executor`): `apply_plan` describes the step's pairs, builds the plan
(`fusedopt.core.plan.build_plan`) and runs it: per group one custom call
(`ffi.adam_update` / `ffi.sgd_update`: `fusedopt_adam` / `fusedopt_sgd`) over
the values of the group's variables and slots, with the folded clip's
arguments (`ffi.squared_norms` -> `ffi.clip_factors`) and the skip predicate
(`apply_if`, from `ffi.all_finite` or the global norm's `finite`); the pairs
that fall back take the stock update (`_backend_update_step`, the stock
weight decay), under the same predicate.

Keras-JAX runs the optimizer inside its jitted, stateless train step
(`optimizer.stateless_apply` with the state donated): variables' values are
traced arrays of a `StatelessScope`, and `assign` records a new value. The
custom calls' results alias their operands, so with the donation XLA updates
every parameter and slot in place (no copy: tests/backends/jax read the
compiled HLO). Conditionals are values, as in Keras' JaxOptimizer: both
outcomes are computed and `lax.cond` keeps one (`_keep_if`).

Under `keras.distribution.DataParallel` / `ModelParallel` each custom call
runs inside `jax.shard_map`, every operand as its variable's PartitionSpec:
each device updates its replica or its shard, and XLA gathers nothing (the
"distribution" section below; docs/backends.md).

`backend_apply_gradients` is Keras' `JaxOptimizer._backend_apply_gradients`
(Keras 3.15: gradient accumulation, EMA) with its update (clip, weight decay,
`_backend_update_step`) replaced by the planned update.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import keras
from keras import ops

from fusedopt.backends.jax import ffi
from fusedopt.core import plan as plan_mod

# float16 / bfloat16 fall back: under XLA (every JAX step) the stock update
# rounds in half precision as XLA compiles it, the kernels in float32 (the
# same choice as the TF executor inside an XLA cluster).
FUSED_DTYPES = ("float32", "float64")

# Each rule's slot lists, in the order of the optimizer's `_fused_slots()`.
_SLOT_COUNT = {"adam": 2, "sgd": 1}


# ------------------------------------------------------------------ context


def _handlers_error() -> str | None:
    try:
        ffi.cpu_targets()  # registers the handlers (once)
    except ImportError as e:
        return str(e)
    return None


def step_fallback(optimizer) -> str | None:
    """Why no pair of this step can take the fused path, or None."""
    error = _handlers_error()
    if error:
        return f"fused XLA FFI handlers unavailable ({error})"
    reason = optimizer._fused_unsupported_reason()
    if reason:
        return reason
    distribution = keras.distribution.distribution()
    if distribution is not None and not isinstance(distribution, _DISTRIBUTIONS):
        return (f"under keras.distribution {type(distribution).__name__} (fused under "
                "DataParallel and ModelParallel only)")
    return platform_reason(jax.default_backend())


# Set to 1 to run Keras-JAX on a GPU through the CUDA FFI handlers (docs/gpu.md).
JAX_GPU_ENV = "FUSEDOPT_JAX_GPU"


def platform_reason(platform: str) -> str | None:
    """Why a step on JAX platform `platform` takes the stock update, or None.

    The CPU handlers run on "cpu". On "gpu" the CUDA handlers are opt-in
    (FUSEDOPT_JAX_GPU=1, read at every trace) until a GPU run has verified
    them (tests/backends/jax/test_jax_gpu.py, run by bench/gpu_checks.sh);
    with the opt-in a build without them falls back, naming what is missing.
    """
    if platform == "cpu":
        return None
    if platform != "gpu":
        return f"JAX platform {platform!r} (fused on cpu, and on gpu with {JAX_GPU_ENV}=1)"
    if os.environ.get(JAX_GPU_ENV) != "1":
        return (f"JAX platform 'gpu' (the CUDA FFI handlers are opt-in until verified on a GPU: "
                f"set {JAX_GPU_ENV}=1, docs/gpu.md)")
    missing = sorted(set(ffi.cpu_targets()) - set(ffi.cuda_targets()))
    if missing:
        return (f"JAX platform 'gpu' ({JAX_GPU_ENV}=1, but this build has no CUDA handler for "
                f"{', '.join(missing)}: it was built without CUDA)")
    return None


def can_fold_clip(optimizer) -> bool:
    """Whether a built-in clip can go into the fused calls this step: always
    where the step is fused (the norm and factor handlers run under XLA;
    under a distribution the norms of sharded gradients are summed over
    their shards, `_squared_norms`)."""
    return step_fallback(optimizer) is None


def executing_eagerly() -> bool:
    """A Keras-JAX step is a function of the state's values, jitted or not:
    the skip decision is always a value (apply_if, lax.cond), never Python."""
    return False


# ----------------------------------------------------------- distribution
#
# An XLA FFI custom call is opaque to XLA's SPMD partitioner: given sharded
# (or replicated) operands under jit it would gather them and run the call on
# whole arrays on every device. Under a keras.distribution the executor calls
# the handlers inside `jax.shard_map` instead, with each operand's
# PartitionSpec the one of its variable's layout: every device runs the
# handler on its own shards (DataParallel: the whole replicated variable and
# its all-reduced gradient; ModelParallel: the variable's shard). The update
# is element-wise, so this is the update of the whole array; the reductions
# (the clip norms, the non-finite check) are summed (psum) or and-ed (pmin)
# over the mesh axes that shard each gradient.

_DISTRIBUTIONS = (keras.distribution.DataParallel, keras.distribution.ModelParallel)


def _sharding(variable):
    """The variable's `jax.sharding.NamedSharding` (its Keras layout), or None."""
    layout = getattr(variable, "_layout", None)
    if isinstance(layout, keras.distribution.TensorLayout):
        layout = layout.backend_layout
    return layout if isinstance(layout, jax.sharding.NamedSharding) else None


def _spec(variable) -> tuple:
    """The variable's PartitionSpec as a tuple of one entry per dimension
    (None, or a tuple of mesh axis names)."""
    spec = tuple(_sharding(variable).spec)
    spec = spec + (None,) * (len(variable.shape) - len(spec))
    return tuple(None if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec)


def _partition_spec(spec) -> jax.sharding.PartitionSpec:
    return jax.sharding.PartitionSpec(*spec)


def _sharded_axes(spec) -> tuple:
    """The mesh axes that shard a variable of this spec (sorted)."""
    return tuple(sorted({a for e in spec if e is not None for a in e}))


def _mesh():
    return keras.distribution.distribution().device_mesh.backend_mesh


def _layout_reason(variable) -> str | None:
    """Why shard_map cannot take this variable's layout as its operands'
    PartitionSpec, or None."""
    sharding = _sharding(variable)
    if sharding is None:
        return ("variable has no layout of the keras.distribution (created outside its "
                "scope?)")
    mesh = _mesh()
    if sharding.mesh != mesh:
        return "variable's layout is on another device mesh than the keras.distribution's"
    for dim, (size, entry) in enumerate(zip(variable.shape, _spec(variable))):
        shards = 1
        for axis in entry or ():
            shards *= mesh.shape[axis]
        if size % shards:
            return (f"sharded unevenly: dimension {dim} of size {size} over mesh axes "
                    f"{entry} ({shards} shards; the fused update takes equal shards)")
    return None


def _sharding_reason(optimizer, variable) -> str | None:
    """Why this variable cannot be updated shard by shard under the current
    keras.distribution, or None (also None without a distribution)."""
    distribution = keras.distribution.distribution()
    if distribution is None or not isinstance(distribution, _DISTRIBUTIONS):
        return None
    reason = _layout_reason(variable)
    if reason:
        return reason
    index = optimizer._get_variable_index(variable)
    for slot_list in optimizer._fused_slots():
        slot = slot_list[index]
        if _layout_reason(slot) or _spec(slot) != _spec(variable):
            return f"optimizer slot {slot.path!r} is not laid out as its variable"
    return None


def _on_shards_of(grad, variable) -> bool:
    """Whether `grad` can go into shard_map as `variable`'s PartitionSpec."""
    return (hasattr(grad, "shape") and tuple(grad.shape) == tuple(variable.shape)
            and _layout_reason(variable) is None)


def _on_shards(fn, in_specs, out_specs):
    """`fn` run by every device on its shards of the operands (jax.shard_map
    over the distribution's mesh). check_vma=False: the FFI calls carry no
    varying-axes types; the out_specs are exact (an output is replicated
    only where every device computed the same value)."""
    return jax.shard_map(fn, mesh=_mesh(), in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)


def _reduce_over_axes(values, specs, reduce):
    """`values` (a vector: one entry per tensor) with entry i reduced by
    `reduce(x, axes)` over the mesh axes that shard tensor i (inside
    shard_map); tensors sharded over the same axes are reduced together."""
    by_axes = {}
    for i, spec in enumerate(specs):
        axes = _sharded_axes(spec)
        if axes:
            by_axes.setdefault(axes, []).append(i)
    for axes, index in by_axes.items():
        index = jnp.asarray(index)
        values = values.at[index].set(reduce(values[index], axes))
    return values


def _squared_norms(grads, variables):
    """`ffi.squared_norms(grads)`; under a distribution each device's sum
    over its shards, summed (psum) over the mesh axes that shard each
    gradient: replicated gradients (DataParallel) are not reduced at all."""
    if keras.distribution.distribution() is None:
        return ffi.squared_norms(grads)
    specs = [_spec(v) for v in variables]

    def local(*shards):
        return _reduce_over_axes(ffi.squared_norms(shards), specs, jax.lax.psum)

    return _on_shards(local, tuple(_partition_spec(s) for s in specs),
                      jax.sharding.PartitionSpec())(*grads)


def _all_of(checks):
    """The logical and of a list of bool scalars (True for none)."""
    if not checks:
        return jnp.asarray(True)
    result = checks[0]
    for check in checks[1:]:
        result = jnp.logical_and(result, check)
    return result


def _sharded_all_finite(grads, variables):
    """all_finite under a distribution: the floating-point gradients of
    their variables' shapes whose layouts shard_map takes, checked by each
    device on its shards (`fusedopt_all_finite`) and and-ed over the mesh
    axes that shard them (pmin); any other gradient by the stock
    jnp.isfinite (XLA partitions it); so is every gradient under another
    distribution, or where the variables are not given."""
    grads = list(grads)
    variables = [None] * len(grads) if variables is None else list(variables)
    present = [(g, v) for g, v in zip(grads, variables) if g is not None]
    distribution = keras.distribution.distribution()
    if (_handlers_error() is not None or not isinstance(distribution, _DISTRIBUTIONS)
            or any(v is None for _, v in present)):
        sharded, other = [], [g for g, _ in present]
    else:
        sharded = [(g, v) for g, v in present
                   if _dtype(g) in ("float16", "bfloat16", "float32", "float64")
                   and _on_shards_of(g, v)]
        other = [g for g, _ in present if not any(g is s for s, _ in sharded)]
    checks = [jnp.all(jnp.isfinite(g)) for g in other]
    if sharded:
        specs = [_spec(v) for _, v in sharded]
        axes = tuple(sorted({a for spec in specs for a in _sharded_axes(spec)}))

        def local(*shards):
            ok = ffi.all_finite(shards)
            if axes:
                ok = jax.lax.pmin(ok.astype(jnp.int32), axes) > 0
            return ok

        checks.insert(0, _on_shards(local, tuple(_partition_spec(s) for s in specs),
                                    jax.sharding.PartitionSpec())(*[g for g, _ in sharded]))
    return _all_of(checks)


# --------------------------------------------------------------- the check


def all_finite(grads, variables=None):
    """A bool scalar: no element of any gradient is Inf or NaN (one
    `fusedopt_all_finite` call over the float32/float64 gradients, the stock
    `jnp.isfinite` for other dtypes or without the handlers).

    variables: the gradients' variables (aligned with `grads`); under a
    keras.distribution the check runs on each device's shards
    (`_sharded_all_finite`)."""
    if keras.distribution.distribution() is not None:
        return _sharded_all_finite(grads, variables)
    values = [jnp.asarray(g) for g in grads if g is not None]
    if _handlers_error() is None:
        fused = [v for v in values if keras.backend.standardize_dtype(v.dtype) in
                 ("float16", "bfloat16", "float32", "float64")]
    else:
        fused = []
    other = [v for v in values if not any(v is f for f in fused)]
    checks = [ffi.all_finite(fused)] if fused else []
    checks += [jnp.all(jnp.isfinite(v)) for v in other]
    return _all_of(checks)


def _keep_if(predicate, variables, run):
    """Runs `run()` (which assigns to some of `variables`) and keeps its
    writes only where `predicate` holds: both outcomes are values, `lax.cond`
    picks one, as Keras' JaxOptimizer does for gradient accumulation."""
    old = [v.value for v in variables]
    run()
    new = [v.value for v in variables]
    changed = [i for i, (o, n) in enumerate(zip(old, new)) if n is not o]
    if not changed:
        return
    kept = jax.lax.cond(predicate, lambda: [new[i] for i in changed],
                        lambda: [old[i] for i in changed])
    for i, value in zip(changed, kept):
        variables[i].assign(value)


def _unique(variables):
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def apply_if_finite(optimizer, stock_apply, grads, trainable_variables):
    """skip_nonfinite where the plan cannot gate the step (EMA, gradient
    accumulation, constraints, ...): the whole stock `apply` runs, and its
    writes (variables, slots, accumulators, EMA, iterations) are kept only if
    every gradient is finite."""
    finite = all_finite(grads, trainable_variables)
    variables = _unique(list(optimizer._trainable_variables) + list(optimizer.variables))
    _keep_if(finite, variables, lambda: stock_apply(grads, trainable_variables))


# ------------------------------------------------------------- Keras' flow


def backend_apply_gradients(optimizer, grads, trainable_variables):
    """Keras' JaxOptimizer._backend_apply_gradients (Keras 3.15) with the
    update (clip, weight decay, `_backend_update_step`) replaced by the
    planned update; gradient accumulation and EMA are Keras' code."""
    executor = sys.modules[__name__]
    self = optimizer
    if self.gradient_accumulation_steps:
        is_update_step = (self._iterations + 1) % self.gradient_accumulation_steps == 0
        steps = self.gradient_accumulation_steps

        current_trainable_vars_value = [v.value for v in trainable_variables]
        current_optimizer_vars_value = [v.value for v in self.variables]

        # `trainable_variables` might have been filtered in previous
        # processing steps: map them to their accumulators.
        acc_grads = [self._accumulated_gradients[self._get_variable_index(v)]
                     for v in trainable_variables]

        new_g_accs = jax.lax.cond(
            is_update_step,
            lambda: [jnp.zeros(g.shape, dtype=g.dtype) for g in acc_grads],
            lambda: [g + acc_g.value for g, acc_g in zip(grads, acc_grads)],
        )

        grads = jax.lax.cond(
            is_update_step,
            lambda: [(g + acc_g.value) / steps for g, acc_g in zip(grads, acc_grads)],
            lambda: list(grads),
        )

        # Keras: clip, weight decay, _backend_update_step.
        self._planned_update(executor, grads, trainable_variables)

        new_trainable_vars = jax.lax.cond(
            is_update_step,
            lambda: [v.value for v in trainable_variables],
            lambda: current_trainable_vars_value,
        )
        new_opt_vars = jax.lax.cond(
            is_update_step,
            lambda: [v.value for v in self.variables],
            lambda: current_optimizer_vars_value,
        )

        for value, v in zip(new_trainable_vars, trainable_variables):
            v.assign(value)

        for value, v in zip(new_opt_vars, self.variables):
            v.assign(value)

        for n_g_acc, g_acc in zip(new_g_accs, acc_grads):
            g_acc.assign(n_g_acc)

    else:
        applied = self._planned_update(executor, grads, trainable_variables)
        if applied is not None:
            # Keras counts every step after this returns; a skipped one is
            # taken back here.
            self._iterations.assign_sub(
                ops.cast(ops.logical_not(applied), self._iterations.dtype))

    if self.use_ema:
        self._update_model_variables_moving_average(self._trainable_variables)
        if self.ema_overwrite_frequency is not None:
            should_overwrite_model_vars = (
                self.iterations + 1) % self.ema_overwrite_frequency == 0
            should_overwrite_model_vars_int = should_overwrite_model_vars.astype("int32")
            should_not_overwrite_model_vars_int = jnp.logical_not(
                should_overwrite_model_vars).astype("int32")
            for var, average_var in zip(self._trainable_variables,
                                        self._model_variables_moving_average):
                var.assign(average_var * should_overwrite_model_vars_int
                           + var.value * should_not_overwrite_model_vars_int)


# ------------------------------------------------------------- the update


def apply_plan(optimizer, clip, gate, grads, variables, learning_rate, check_grads):
    """The update of one step (what Keras-JAX's clip, `_apply_weight_decay`
    and `_backend_update_step` do), planned.

    clip, gate: the step's folded clip and skip mode (fusedopt.core.plan).
    check_grads: the gradients the skip check reads (as apply() got them).
    Returns the skip predicate (a bool array: the step was applied), or None
    when the step is not gated here.
    """
    finite = all_finite(check_grads, variables) if gate == plan_mod.GATE_CHECK else None
    pairs = [_describe(optimizer, g, v) for g, v in zip(grads, variables)]
    plan = plan_mod.build_plan(pairs, step_fallback=step_fallback(optimizer), clip=clip,
                               gate=gate)
    optimizer._last_plan = plan  # for fused_paths (inspection only)
    return execute(optimizer, plan, list(zip(grads, variables)), learning_rate, finite)


def _describe(optimizer, grad, var) -> plan_mod.Pair:
    decayed = optimizer.weight_decay is not None and optimizer._use_weight_decay(var)
    return plan_mod.Pair(path=_path(optimizer, var), dtype=_dtype(var),
                         device=jax.default_backend(), decayed=bool(decayed),
                         fallback=_describe_fallback(optimizer, grad, var))


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _fallback_reason(grad, var) -> str | None:
    """Why this (grad, var) pair takes the stock update, or None."""
    dtype = _dtype(var)
    if dtype not in FUSED_DTYPES:
        if dtype in ("float16", "bfloat16"):
            return (f"dtype {dtype} (under XLA the stock update rounds in {dtype}; "
                    "fused on JAX: float32, float64)")
        return f"dtype {dtype} (fused on JAX: float32, float64)"
    if not hasattr(grad, "shape") or tuple(grad.shape) != tuple(var.shape):
        return "gradient is not a dense array of the variable's shape"
    return None


def _describe_fallback(optimizer, grad, var) -> str | None:
    return _fallback_reason(grad, var) or _sharding_reason(optimizer, var)


def _path(optimizer, variable) -> str:
    index = optimizer._get_variable_index(variable)
    tracked = optimizer._trainable_variables[index]
    return getattr(tracked, "path", None) or f"{tracked.name}[{index}]"


def execute(optimizer, plan, grads_and_vars, learning_rate, finite):
    """Runs `plan` (fusedopt.core.plan.run_plan): the fused groups, then the
    fallback pairs, both under the skip predicate where the plan gates.
    Returns the predicate."""
    def call_group(group, pairs, clip_args, finite):
        _call(optimizer, [g for g, _ in pairs], [v for _, v in pairs], learning_rate,
              group.decayed, clip_args, finite)

    def stock_update(fallback, finite):
        def run():
            decayed = [v for i, (_, v) in fallback if i in plan.decayed]
            if decayed:
                optimizer._apply_weight_decay(decayed)
            optimizer._backend_update_step([g for _, (g, _) in fallback],
                                           [v for _, (_, v) in fallback], learning_rate)

        if finite is None:
            run()
        else:
            written = _unique([v for _, (_, v) in fallback] + list(optimizer.variables))
            _keep_if(finite, written, run)

    return plan_mod.run_plan(plan, optimizer, grads_and_vars, finite,
                             prepare=lambda g, v: (ops.cast(g, v.dtype), v), fold=_fold_clip,
                             call_group=call_group, stock_update=stock_update)


# ------------------------------------------------------------ the FFI call


def _scalar(value, dtype):
    """A 0-d array of `dtype`: Python numbers converted straight to it (as
    the stock `tensor * (1 - beta_1)` converts a weakly typed number)."""
    if isinstance(value, keras.Variable):
        value = value.value
    return jnp.asarray(value, dtype)


def _call(optimizer, grads, variables, learning_rate, decayed, clip, finite):
    """One custom call over `variables` (one dtype); assigns the results.
    Under a keras.distribution the call runs in `jax.shard_map`, each
    parameter, gradient and slot as its variable's PartitionSpec, the
    scalars, clip arguments and predicate replicated."""
    dtype = _dtype(variables[0])
    rule = optimizer._fused_rule
    s = optimizer._fused_scalars(learning_rate, dtype)
    lr = _scalar(s.pop("lr"), dtype)
    # The stock decay (BaseOptimizer._apply_weight_decay): v - v * wd * lr.
    wd = ops.cast(optimizer.weight_decay, dtype) if decayed else jnp.zeros((), dtype)
    slot_lists = optimizer._fused_slots()
    index = [optimizer._get_variable_index(v) for v in variables]
    slots = [[slot_list[i] for i in index] for slot_list in slot_lists]
    params = [v.value for v in variables]
    clip_kind, clip_values = clip
    if rule == "adam":
        scalars = [_scalar(s["alpha"], dtype), _scalar(s["one_minus_beta_1"], dtype),
                   _scalar(s["one_minus_beta_2"], dtype), _scalar(s["epsilon"], dtype),
                   lr, _scalar(wd, dtype)]

        def update(params, grads, slots, scalars, clip_values, finite):
            m, v = slots
            new_p, new_m, new_v = ffi.adam_update(
                params, grads, m, v, scalars, decay=decayed, clip_kind=clip_kind,
                clip_args=clip_values, apply_if=finite)
            return new_p, [new_m, new_v]
    else:
        scalars = [lr, _scalar(s["momentum"], dtype), _scalar(wd, dtype), lr]
        nesterov = bool(s["nesterov"])

        def update(params, grads, slots, scalars, clip_values, finite):
            new_p, new_mom = ffi.sgd_update(
                params, grads, slots[0] if slots else [], scalars, nesterov=nesterov,
                decay=decayed, clip_kind=clip_kind, clip_args=clip_values, apply_if=finite)
            return new_p, [new_mom] if slots else []

    slot_values = [[x.value for x in slot_list] for slot_list in slots]
    if keras.distribution.distribution() is not None:
        specs = [_partition_spec(_spec(v)) for v in variables]
        replicated = jax.sharding.PartitionSpec()
        update = _on_shards(
            update,
            in_specs=(specs, specs, [specs] * len(slots), replicated, replicated, replicated),
            out_specs=(specs, [specs] * len(slots)))
    new_p, new_slots = update(params, grads, slot_values, scalars, clip_values, finite)
    written = list(zip(variables, new_p))
    for slot_list, new_values in zip(slots, new_slots):
        written += list(zip(slot_list, new_values))
    for var, value in written:
        var.assign(value)


# --------------------------------------------------------------- clipping


def _fold_clip(kernel_clip, groups, fallback, optimizer, transformer):
    """The calls' clip arguments per group, the fallback pairs with their
    gradients clipped the same way, and whether the norms are finite (the
    TF executor's `_fold_clip`, with the FFI handlers)."""
    step = optimizer.iterations
    kind = kernel_clip.kind
    if kind == "value":
        lo, hi = kernel_clip.args
        args = {group: ("value", [_scalar(lo, _group_dtype(pairs)),
                                  _scalar(hi, _group_dtype(pairs))])
                for group, pairs in groups.items()}
        return args, _clip_fallback(transformer, fallback, step), None

    (max_norm,) = kernel_clip.args
    squared = {group: _squared_norms([g for g, _ in pairs], [v for _, v in pairs])
               for group, pairs in groups.items()}
    if kind == "norm":
        args = {}
        for group, pairs in groups.items():
            factors, _ = ffi.clip_factors(squared[group], _scalar(max_norm, _group_dtype(pairs)),
                                          kind="norm")
            args[group] = ("ratio", factors)
        return args, _clip_fallback(transformer, fallback, step), None

    # Global norm over every gradient of the step, fused and fallback alike.
    sums = list(squared.values()) + [_squared_norm(g, v) for _, (g, v) in fallback]
    args, finite = {}, None
    for group, pairs in groups.items():
        factors, ok = ffi.clip_factors(sums, _scalar(max_norm, _group_dtype(pairs)),
                                       kind="global_norm")
        args[group] = ("scale", factors)
        finite = ok if finite is None else finite
    clipped = []
    for i, (grad, var) in fallback:
        gdtype = _dtype(grad)
        factor_dtype = gdtype if gdtype in ("float16", "bfloat16", "float32", "float64") else "float64"
        factors, ok = ffi.clip_factors(sums, _scalar(max_norm, factor_dtype), kind="global_norm",
                                       dtype=factor_dtype)
        finite = ok if finite is None else finite
        clipped.append((i, (grad * ops.cast(factors[0], gdtype), var)))
    return args, clipped, finite


def _group_dtype(pairs):
    return _dtype(pairs[0][1])


def _squared_norm(grad, var):
    """A one-element vector: the squared norm of a fallback gradient (under
    a distribution: on its shards where its variable's layout allows, else
    the stock jnp ops, which XLA partitions)."""
    if _dtype(grad) in ("float16", "bfloat16", "float32", "float64"):
        if keras.distribution.distribution() is None:
            return ffi.squared_norms([grad])
        if _on_shards_of(grad, var):
            return _squared_norms([grad], [var])
        return jnp.reshape(jnp.sum(jnp.square(grad)), (1,))
    return jnp.reshape(jnp.sum(jnp.square(jnp.abs(grad))).astype(jnp.float64), (1,))


def _clip_fallback(transformer, fallback, step):
    """The fallback pairs with their gradients clipped by the transformer's
    own (stock) ops."""
    if not fallback:
        return fallback
    clipped = transformer([pair for _, pair in fallback], step=step)
    return [(i, pair) for (i, _), pair in zip(fallback, clipped)]

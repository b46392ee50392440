"""Runs a step plan with TensorFlow: the only module that calls the fused TF ops.

`apply_plan` is what a fusedopt optimizer's update does on the TensorFlow
backend (docs/design.md, "Plan, then execute"): it describes the step's
pairs (`describe`), builds the plan (`fusedopt.core.plan.build_plan`) and
runs it (`execute`): per group one FusedoptAdam / FusedoptSgd call over the
variables' handles, with the folded clip's arguments (FusedoptSquaredNorms
-> FusedoptClipFactors) and the skip predicate (`apply_if`); the pairs that
fall back take the stock per-variable update, under the same predicate.

Under MirroredStrategy and MultiWorkerMirroredStrategy the update runs in
cross-replica context on the all-reduced gradients, once per local device
on that device's copies (`_run_mirrored`).
"""

from __future__ import annotations

import functools
import os
import warnings

import keras
import tensorflow as tf
from tensorflow.python.distribute import distribute_lib, mirrored_strategy

from fusedopt import _ops
from fusedopt.core import plan as plan_mod

# float16/bfloat16 variables (Keras "float16"/"bfloat16" policies; slots share
# the variable's dtype): the kernels compute in float32 and round on store.
FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# Each rule's slot inputs of its op, in the order of the optimizer's
# `_fused_slots()` (its Keras slot lists).
_SLOT_INPUTS = {"adam": ("m", "v"), "sgd": ("momentums",)}

in_xla_context = _ops.in_xla_context


# ------------------------------------------------------------------ context


def _is_mirrored(strategy) -> bool:
    """MirroredStrategy, or MultiWorkerMirroredStrategy (whose extended,
    CollectiveAllReduceExtended, subclasses MirroredExtended): every variable
    is a MirroredVariable with one copy per local device."""
    return isinstance(strategy.extended, mirrored_strategy.MirroredExtended)


def _strategy_reason(strategy) -> str | None:
    """Why the fused path does not run under `strategy`, or None."""
    name = type(strategy).__name__
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return f"under tf.distribute {name} (the fused ops have no TPU kernels)"
    if isinstance(strategy, (tf.distribute.ParameterServerStrategy,
                             tf.distribute.experimental.CentralStorageStrategy)):
        return (f"under tf.distribute {name} (variables live on parameter servers or "
                "one central device; fused: MirroredStrategy, MultiWorkerMirroredStrategy)")
    if _is_mirrored(strategy):
        return None
    return (f"under tf.distribute {name} (fused: MirroredStrategy, "
            "MultiWorkerMirroredStrategy)")


def step_fallback(optimizer, distribution=None) -> str | None:
    """Why no pair of this step can take the fused path, or None."""
    if _ops.library() is None:
        return "fused TF ops unavailable (" + str(_ops.load_error()) + ")"
    reason = optimizer._fused_unsupported_reason()
    if reason:
        return reason
    if in_xla_context() and not _ops.xla_kernels():
        return "inside an XLA cluster (jit_compile=True); the op has no XLA kernel"
    strategy = tf.distribute.get_strategy()
    if distribution is not None and distribution is not strategy:
        return ("the optimizer's tf.distribute strategy is not the one running the step "
                "(create the optimizer under the strategy's scope)")
    if tf.distribute.has_strategy():
        return _strategy_reason(strategy)
    return None


def can_fold_clip(optimizer) -> bool:
    """Whether a built-in clip can go into the fused ops this step."""
    # Inside XLA too: the norm and factor ops have XLA kernels (one custom
    # call each, docs/xla.md) wherever the update op has.
    if step_fallback(optimizer) is not None:
        return False
    # Keras clips (and fusedopt runs the transformers on) each replica's
    # gradients before the cross-replica sum, and the update sees only the
    # sum: a clip folded into it would clip the sum instead. With one
    # replica in sync the sum is the gradient itself.
    return tf.distribute.get_strategy().num_replicas_in_sync == 1


def executing_eagerly() -> bool:
    return tf.executing_eagerly()


# --------------------------------------------------------------- the check


def all_finite(grads) -> tf.Tensor:
    """A bool scalar tensor: no element of any gradient is Inf or NaN.

    CPU gradients are checked by one FusedoptAllFinite op per dtype and
    device (one multi-threaded pass; inside an XLA cluster one custom call);
    others (GPU tensors, or without the op library or its XLA kernels) with
    the stock per-tensor ops.
    """
    values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
    values = [tf.convert_to_tensor(v) for v in values]
    lib = None if in_xla_context() and not _ops.xla_kernels() else _ops.library()
    fused, other = {}, []
    for v in values:
        on_cpu = "GPU" not in v.device.upper() and "TPU" not in v.device.upper()
        if lib is not None and on_cpu and v.dtype in FUSED_DTYPES:
            fused.setdefault((v.dtype, v.device), []).append(v)
        else:
            other.append(v)
    checks = []
    for (_, device), group in fused.items():
        # On the gradients' own CPU device (each replica's, under a strategy).
        with tf.device(device or None):
            checks.append(lib.fusedopt_all_finite(group))
    checks += [tf.reduce_all(tf.math.is_finite(v)) for v in other]
    if not checks:
        return tf.constant(True)
    if len(checks) == 1:
        return checks[0]
    return tf.reduce_all(tf.stack(checks))


def all_finite_in_every_replica(grads) -> tf.Tensor:
    """`all_finite` of this replica's gradients, agreed by every replica (in
    replica context, before the gradients are all-reduced): true only if all
    of them are finite, so that every replica takes or skips the step."""
    finite = all_finite(grads)
    context = tf.distribute.get_replica_context()
    if context is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return finite
    # ReduceOp has SUM and MEAN only: count the replicas with a bad value.
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM,
                             tf.cast(tf.logical_not(finite), tf.int32))
    return tf.equal(bad, 0)


# ------------------------------------------------------------- the update


def apply_plan(optimizer, clip, gate, grads, variables, learning_rate, check_grads):
    """The update of one step (the part Keras' `_backend_update_step` does,
    plus the clip and weight decay of the fused pairs).

    clip, gate: the step's folded clip and skip mode (fusedopt.core.plan).
    check_grads: the gradients the skip check reads (as apply() got them).
    Returns the skip predicate (a bool tensor: the step was applied), or
    None when the step is not gated here.
    """
    finite = all_finite_in_every_replica(check_grads) if gate == plan_mod.GATE_CHECK else None
    tf_variables = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    grads_and_vars = optimizer._all_reduce_sum_gradients(list(zip(grads, tf_variables)))
    return tf.__internal__.distribute.interim.maybe_merge_call(
        _run, optimizer._distribution_strategy, optimizer, clip, gate, grads_and_vars,
        learning_rate, finite)


def _run(distribution, optimizer, clip, gate, grads_and_vars, learning_rate, finite):
    mirrored = _is_mirrored(distribution) and tf.distribute.in_cross_replica_context()
    devices = tuple(distribution.extended.worker_devices) if mirrored else ()
    pairs = [_describe(optimizer, distribution, devices, g, v) for g, v in grads_and_vars]
    plan = plan_mod.build_plan(pairs, step_fallback=step_fallback(optimizer, distribution),
                               clip=clip, gate=gate)
    optimizer._last_plan = plan  # for fused_paths (inspection only)
    if mirrored:
        return _run_mirrored(distribution, devices, optimizer, plan, grads_and_vars,
                             learning_rate, finite)

    def stock_update(pairs, learning_rate):
        decayed = [v for i, (_, v) in pairs if i in plan.decayed]
        if decayed:
            _stock_weight_decay(optimizer, distribution, decayed)
        optimizer._distributed_tf_update_step(
            distribution, [pair for _, pair in pairs], learning_rate)

    return execute(optimizer, plan, list(grads_and_vars), learning_rate, finite, stock_update)


def _run_mirrored(distribution, devices, optimizer, plan, grads_and_vars, learning_rate,
                  finite):
    """The update under MirroredStrategy / MultiWorkerMirroredStrategy.

    Cross-replica context: the gradients are the all-reduced per-device
    values, the variables MirroredVariables with one copy per local device.
    `update_non_slot` calls `on_device` once per local device, inside that
    device's scope and UpdateContext, with that device's gradients and
    learning rate; it updates that device's copies as the stock
    per-variable `extended.update` would, but in one fused op per group.
    """
    def local(var):
        # This device's copy; inside the UpdateContext, `.handle` of a
        # MirroredVariable (the slots) resolves to the same device's copy.
        replica = distribute_lib.get_update_replica_id()
        return distribution.experimental_local_results(var)[replica]

    def stock_update(pairs, learning_rate):
        # What the stock update does per variable and device: the decay as
        # in the stock TF backend, then update_step on the copy.
        for i, (grad, var) in pairs:
            if i in plan.decayed:
                _decay_variable(optimizer, var)
            optimizer.update_step(grad, var, learning_rate)

    def on_device(grads_and_vars, learning_rate, finite):
        local_pairs = [(g, local(v)) for g, v in grads_and_vars]
        return execute(optimizer, plan, local_pairs, learning_rate, finite, stock_update)

    result = distribution.extended.update_non_slot(
        devices, on_device, args=(list(grads_and_vars), learning_rate, finite), group=False)
    if finite is None and plan.gate == plan_mod.GATE_NORM:
        # Folded clipping means one replica (can_fold_clip): one device's norm.
        return distribution.experimental_local_results(result)[0]
    return finite


def _describe(optimizer, distribution, devices, grad, var) -> plan_mod.Pair:
    """The planner's view of one pair (see fusedopt.core.plan.Pair)."""
    decayed = optimizer.weight_decay is not None and optimizer._use_weight_decay(var)
    if devices:
        reason = _mirrored_fallback_reason(distribution, devices, grad, var)
    else:
        reason = _fallback_reason(grad, var)
    return plan_mod.Pair(path=_path(optimizer, var), dtype=var.dtype.name, device=var.device,
                         decayed=bool(decayed), fallback=reason)


def _fallback_reason(grad, var) -> str | None:
    """Why this (grad, var) pair takes the stock update, or None."""
    if isinstance(grad, tf.IndexedSlices):
        return "sparse (IndexedSlices) gradient"
    if var.dtype not in FUSED_DTYPES:
        return f"dtype {var.dtype.name} (fused: float16, bfloat16, float32, float64)"
    if in_xla_context() and var.dtype not in (tf.float32, tf.float64):
        # The CPU kernels' float32 arithmetic would not round like the
        # stock half-precision update compiled by XLA.
        return f"dtype {var.dtype.name} inside an XLA cluster (XLA kernels: float32, float64)"
    if "GPU" in var.device.upper():
        if in_xla_context():
            return ("variable on a GPU inside an XLA cluster (TensorFlow's XLA registers "
                    "only Adam's CUDA handler, not verified on a TF GPU; docs/xla.md)")
        return gpu_reason()
    return None


# Set to 1 to run GPU variables through the fused TF GPU kernels (docs/gpu.md).
TF_GPU_ENV = "FUSEDOPT_TF_GPU"


def gpu_reason() -> str | None:
    """Why GPU variables take the stock update, or None where they are fused.

    The TF GPU kernels are opt-in (FUSEDOPT_TF_GPU=1) until a TensorFlow GPU
    run has verified them (tests/test_tf_op_fused_gpu.py is that run). With
    the opt-in, a build without CUDA or a driver too old for the kernels
    (fusedopt._C.cuda_problem()) falls back with a warning, once per process.
    """
    if os.environ.get(TF_GPU_ENV) != "1":
        return (f"variable on a GPU (the TF GPU kernels are opt-in until verified on a GPU: "
                f"set {TF_GPU_ENV}=1, docs/gpu.md)")
    return _gpu_problem()


@functools.cache
def _gpu_problem() -> str | None:
    from fusedopt import _C

    problem = _C.cuda_problem()
    if problem is None:
        return None
    warnings.warn(f"{TF_GPU_ENV}=1 but the fused GPU kernels cannot run, so GPU variables "
                  f"take the stock update: {problem}", RuntimeWarning, stacklevel=2)
    return f"variable on a GPU ({problem})"


def _mirrored_fallback_reason(distribution, devices, grad, var) -> str | None:
    """`_fallback_reason` for a MirroredVariable: the pair is fused only if
    it can be on every local device."""
    copies = distribution.experimental_local_results(var)
    grads = distribution.experimental_local_results(grad)
    if len(copies) != len(devices):
        return (f"variable has {len(copies)} copies for the strategy's {len(devices)} "
                "local devices")
    if len(grads) == 1:
        grads = grads * len(devices)  # the same tensor for every device
    for g, v in zip(grads, copies):
        reason = _fallback_reason(g, v)
        if reason:
            return reason
    return None


def execute(optimizer, plan, grads_and_vars, learning_rate, finite, stock_update):
    """Runs `plan` on one device's pairs (fusedopt.core.plan.run_plan): the
    fused groups, then the fallback pairs (`stock_update([(index, (grad,
    var)), ...], lr)`), both under the skip predicate where the plan gates.
    Returns the predicate."""
    def call_group(group, pairs, clip_args, finite):
        # The variables' own device: under a mirrored strategy this device's
        # copies (the plan's group names the primary copies' device).
        with tf.device(pairs[0][1].device):
            _call_op(optimizer, [g for g, _ in pairs], [v for _, v in pairs], learning_rate,
                     group.decayed, clip_args, finite)

    def gated_stock_update(fallback, finite):
        if finite is None:
            stock_update(fallback, learning_rate)
        else:
            tf.cond(finite, lambda: stock_update(fallback, learning_rate), lambda: None)

    return plan_mod.run_plan(plan, optimizer, grads_and_vars, finite,
                             prepare=lambda g, v: (tf.cast(g, v.dtype), v), fold=_fold_clip,
                             call_group=call_group, stock_update=gated_stock_update)


# ------------------------------------------------------------ the op call


def scalar(value, dtype) -> tf.Tensor:
    """A 0-d tensor of `dtype` holding `value` (number, tensor or variable).

    Python numbers are converted straight to `dtype` (not through float32,
    which would round a float64 hyperparameter), as the stock code's
    `tensor * (1 - beta_1)` converts them.
    """
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype=dtype)


def decay_scalars(optimizer, lr, dtype, decayed: bool):
    """The (lr, weight_decay) pair the kernels use for p -= p * wd * lr.

    The kernels compute (p * wd) * lr, as the stock Keras code is written
    and runs eagerly. In a traced graph, Grappler's arithmetic optimizer
    rewrites the stock `variable * wd * lr` into `variable * (wd * lr)` (it
    hoists the scalar product to minimize broadcasts), which rounds
    differently; passing (1, wd * lr) computes exactly that, since
    multiplying by 1 is exact (docs/design.md, "Parity").
    """
    if not decayed:
        return lr, tf.zeros([], dtype)
    # tf.cast, like the stock TF-backend decay (a Python float goes through
    # float32 there, and so here).
    wd = tf.cast(optimizer.weight_decay, dtype)
    if tf.executing_eagerly() or in_xla_context():  # no Grappler inside XLA
        return lr, wd
    return tf.ones([], dtype), wd * lr


def _call_op(optimizer, grads, variables, learning_rate, decayed, clip, finite):
    """One fused op call over `variables` (one dtype and device)."""
    dtype = variables[0].dtype
    rule = optimizer._fused_rule
    s = optimizer._fused_scalars(learning_rate, dtype)
    lr = scalar(s.pop("lr"), dtype)
    decay_lr, wd = decay_scalars(optimizer, lr, dtype, decayed)
    slots = {name: [_slot(optimizer, slot_list, v).handle for v in variables]
             for name, slot_list in zip(_SLOT_INPUTS[rule], optimizer._fused_slots())}
    common = dict(
        params=[v.handle for v in variables], grads=grads,
        weight_decay=wd, apply_weight_decay=decayed,
        clip=clip[0], clip_args=tf.zeros([0], dtype) if clip[1] is None else clip[1],
        apply_if=[] if finite is None else [finite])
    lib = _ops.library()
    if rule == "adam":
        lib.fusedopt_adam(
            **common, m=slots["m"], v=slots["v"], alpha=scalar(s["alpha"], dtype),
            one_minus_beta_1=scalar(s["one_minus_beta_1"], dtype),
            one_minus_beta_2=scalar(s["one_minus_beta_2"], dtype),
            epsilon=scalar(s["epsilon"], dtype), lr=decay_lr)
    else:
        lib.fusedopt_sgd(
            **common, momentums=slots.get("momentums", []), lr=lr,
            momentum=scalar(s["momentum"], dtype), decay_lr=decay_lr,
            nesterov=bool(s["nesterov"]))


def _slot(optimizer, slot_list, variable):
    """The tf.Variable of `variable`'s slot in the Keras list `slot_list`."""
    return slot_list[optimizer._get_variable_index(variable)].value


def _path(optimizer, variable) -> str:
    """The Keras path ("dense/kernel") of a model variable's tf.Variable;
    for plain tf.Variables (whose names may repeat), name[index]."""
    index = optimizer._get_variable_index(variable)
    tracked = optimizer._trainable_variables[index]
    return getattr(tracked, "path", None) or f"{tracked.name}[{index}]"


# --------------------------------------------------------------- clipping


def _fold_clip(kernel_clip, groups, fallback, optimizer, transformer):
    """The update ops' clip arguments per group, the fallback pairs with
    their gradients clipped the same way, and whether the norms are finite.

    kernel_clip: the transformer's KernelClip for this step. The norms come
    from FusedoptSquaredNorms, the factors from FusedoptClipFactors (the
    formulas of csrc/kernels/clip.h); fallback gradients of clip by value
    or by norm go through the transformer itself (stock ops), and for clip
    by global norm are scaled by the same factor, their squares counted in
    the global norm.
    """
    lib = _ops.library()
    step = optimizer.iterations
    kind = kernel_clip.kind
    if kind == "value":
        lo, hi = kernel_clip.args
        args = {group: ("value", tf.stack([scalar(lo, group_dtype(pairs)),
                                           scalar(hi, group_dtype(pairs))]))
                for group, pairs in groups.items()}
        return args, _clip_fallback(transformer, fallback, step), None

    (max_norm,) = kernel_clip.args
    squared = {group: lib.fusedopt_squared_norms([g for g, _ in pairs])
               for group, pairs in groups.items()}
    if kind == "norm":
        args = {}
        for group, pairs in groups.items():
            factors, _ = lib.fusedopt_clip_factors(
                [squared[group]], scalar(max_norm, group_dtype(pairs)), kind="norm")
            args[group] = ("ratio", factors)
        return args, _clip_fallback(transformer, fallback, step), None

    # Global norm over every gradient of the step, fused and fallback alike.
    sums = list(squared.values())
    sums += [_squared_norm(lib, _values(g)) for _, (g, _) in fallback]
    args, finite = {}, None
    for group, pairs in groups.items():
        factors, ok = lib.fusedopt_clip_factors(
            sums, scalar(max_norm, group_dtype(pairs)), kind="global_norm")
        args[group] = ("scale", factors)
        finite = ok if finite is None else finite
    clipped = []
    for i, (grad, var) in fallback:
        dtype = _values(grad).dtype
        factor_dtype = dtype if dtype in FUSED_DTYPES else tf.float64
        factors, ok = lib.fusedopt_clip_factors(
            sums, scalar(max_norm, factor_dtype), kind="global_norm")
        finite = ok if finite is None else finite
        clipped.append((i, (_scale(grad, tf.cast(factors[0], dtype)), var)))
    return args, clipped, finite


def group_dtype(pairs):
    return pairs[0][1].dtype


def _values(grad):
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _squared_norm(lib, values):
    """A one-element vector: the squared norm of a fallback gradient."""
    values = tf.convert_to_tensor(values)
    if values.dtype in FUSED_DTYPES:
        return lib.fusedopt_squared_norms([values])
    return tf.reshape(tf.cast(tf.reduce_sum(tf.square(tf.abs(values))), tf.float64), [1])


def _clip_fallback(transformer, fallback, step):
    """The fallback pairs with their gradients clipped by the transformer's
    own (stock) ops."""
    if not fallback:
        return fallback
    clipped = transformer([pair for _, pair in fallback], step=step)
    return [(i, pair) for (i, _), pair in zip(fallback, clipped)]


def _scale(grad, factor):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


# ----------------------------------------------------- stock weight decay


def _stock_weight_decay(optimizer, distribution, variables):
    """The stock decay of fallback variables. The stock method merge-calls,
    which needs a replica context; in cross-replica context (any strategy)
    it is the same per-variable `extended.update`, called directly."""
    if tf.distribute.in_cross_replica_context():
        for var in variables:
            distribution.extended.update(
                var, lambda v: _decay_variable(optimizer, v), group=False)
    else:
        optimizer._apply_weight_decay(variables)


def _decay_variable(optimizer, variable):
    # The stock TF backend's weight_decay_fn (keras/src/backend/tensorflow/
    # optimizer.py, Keras 3.15), same ops in the same order.
    lr = tf.cast(optimizer.learning_rate, variable.dtype)
    wd = tf.cast(optimizer.weight_decay, variable.dtype)
    variable.assign_sub(variable * wd * lr)


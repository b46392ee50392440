"""Whole optimizer steps under JAX (``fusedopt-bench --backend jax``), on the CPU.

Each case times one call of a ``jax.jit`` function that performs one full
step over every parameter, with the parameters and optimizer state donated
(as Keras-JAX's train step donates them):

- ``fusedopt-jax``: ``fusedopt.<Optimizer>.stateless_apply`` (one XLA FFI
  custom call per group; docs/backends.md);
- ``keras-jax``: ``keras.optimizers.<Optimizer>.stateless_apply`` (XLA's
  fusions of the stock per-variable update);
- ``optax``: ``optax.adam`` / ``adamw`` / ``sgd`` with the same
  hyperparameters, ``tx.update`` + ``optax.apply_updates``.

With ``--steps-per-call N`` one call runs N steps in a ``lax.fori_loop``
inside the one jitted function (every implementation here loops), and the
timer divides by N: the per-call cost of passing every array is then paid
once per N steps, as in a jitted multi-step training loop.

Gradients are fixed random arrays passed to the function (not donated). The
step blocks until its results are ready. These cases need KERAS_BACKEND=jax
(`--backend jax` sets it); they are only run when asked for.
"""

from __future__ import annotations

import collections

import numpy as np

from fusedopt.bench.cases import (Case, Runner, Skip, implementation, random_normal,
                                  require_stock_arguments)


def _jax():
    try:
        import jax
        import keras
    except ImportError as e:
        raise Skip(f"jax/Keras is not installed ({e})") from None
    if keras.backend.backend() != "jax":
        raise Skip("needs KERAS_BACKEND=jax (fusedopt-bench --backend jax)")
    return jax, keras


def _arrays(case: Case, seed: int = 0):
    """Parameters ~ N(0, 1) and gradients ~ N(0, 0.01²), never zeros."""
    jax, _ = _jax()
    rng = np.random.default_rng(seed)
    shapes, dtype = case.shape.tensor_shapes, case.dtype
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise Skip("float64 needs JAX_ENABLE_X64=1")
    params = [random_normal(rng, s, dtype) for s in shapes]
    grads = [jax.numpy.asarray(random_normal(rng, s, dtype, 1e-2)) for s in shapes]
    return params, grads


def _loop(step, n: int):
    """`step(state, grads) -> state` repeated n times in one jitted call."""
    jax, _ = _jax()
    if n == 1:
        return step
    return lambda state, grads: jax.lax.fori_loop(0, n, lambda _, s: step(s, grads), state)


def _keras_runner(case: Case, optimizer_class) -> Runner:
    jax, keras = _jax()
    params, grads = _arrays(case)
    variables = [keras.Variable(p, dtype=case.dtype, name=f"p{i}") for i, p in enumerate(params)]
    optimizer = optimizer_class(**case.optimizer.kwargs)
    optimizer.build(variables)

    def step(state, grads):
        trainable, opt_vars = state
        return optimizer.stateless_apply(opt_vars, grads, trainable)

    jitted = jax.jit(_loop(step, case.steps_per_call), donate_argnums=0)
    state = {"s": ([v.value for v in variables], [v.value for v in optimizer.variables])}
    # The variables keep no reference: the state lives in `state` only.
    del variables

    def call():
        state["s"] = jax.block_until_ready(jitted(state["s"], grads))

    def note() -> str:
        paths = getattr(optimizer, "fused_paths", None)
        if paths is None:
            return ""
        counts = collections.Counter(
            "fused" if p == "fused" else p.removeprefix("fallback: ") for p in paths.values())
        parts = [f"fused {counts.pop('fused', 0)}/{len(paths)}"]
        parts += [f"fallback ({n}): {reason}" for reason, n in counts.items()]
        return "; ".join(parts)

    return Runner([call], after_warmup=note, steps_per_call=case.steps_per_call)


@implementation("fusedopt-jax", ours=True, default=False,
                description="fusedopt.<Optimizer>.stateless_apply in jax.jit, donated")
def fusedopt_jax_step(case: Case, copies: int) -> Runner:
    _jax()
    import fusedopt

    cls = getattr(fusedopt, case.optimizer.keras_class, None)
    if cls is None:
        raise Skip(f"fusedopt.{case.optimizer.keras_class} does not exist in this version")
    return _keras_runner(case, cls)


@implementation("keras-jax", default=False,
                description="keras.optimizers.<Optimizer>.stateless_apply in jax.jit, donated")
def keras_jax_step(case: Case, copies: int) -> Runner:
    _, keras = _jax()
    require_stock_arguments(case.optimizer, "keras.optimizers")
    return _keras_runner(case, getattr(keras.optimizers, case.optimizer.keras_class))


@implementation("optax", default=False,
                description="optax.<adam|adamw|sgd> update + apply_updates in jax.jit, donated")
def optax_step(case: Case, copies: int) -> Runner:
    jax, _ = _jax()
    try:
        import optax
    except ImportError as e:
        raise Skip(f"optax is not installed ({e})") from None
    spec = case.optimizer
    kw = dict(spec.kwargs)
    require_stock_arguments(spec, "optax")
    if spec.name == "adam":
        tx = optax.adam(kw["learning_rate"], b1=0.9, b2=0.999, eps=1e-7)
    elif spec.name == "adamw":
        tx = optax.adamw(kw["learning_rate"], b1=0.9, b2=0.999, eps=1e-7,
                         weight_decay=kw["weight_decay"])
    elif spec.name == "sgd":
        tx = optax.sgd(kw["learning_rate"], momentum=kw["momentum"])
    else:
        raise Skip(f"no optax counterpart of {spec.name} here")
    params, grads = _arrays(case)
    params = [jax.numpy.asarray(p) for p in params]

    def step(state, grads):
        params, opt_state = state
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    jitted = jax.jit(_loop(step, case.steps_per_call), donate_argnums=0)
    state = {"s": (params, tx.init(params))}

    def call():
        state["s"] = jax.block_until_ready(jitted(state["s"], grads))

    return Runner([call], steps_per_call=case.steps_per_call)


JAX_IMPLEMENTATIONS = ("fusedopt-jax", "keras-jax", "optax")

"""Whole optimizer steps in TensorFlow, on the CPU.

Each case times one call of a ``tf.function`` that performs one full step
over every variable, as a training loop would run it:

- ``fusedopt``: ``fusedopt.<Optimizer>.apply(grads, variables)``, graph mode;
- ``keras``: ``keras.optimizers.<Optimizer>.apply(grads, variables)``, graph mode;
- ``keras-xla``: the same with ``tf.function(jit_compile=True)``;
- ``fusedopt-xla``: fusedopt in ``tf.function(jit_compile=True)``, next to
  ``keras-xla``: what a user who compiles the train step gets. The fused ops'
  XLA kernels (where the build has them; note ``fused N/N``) emit one custom
  call to the fused CPU kernel, run on XLA's thread pool (docs/xla.md);
  without them the stock per-variable update runs inside the cluster (note
  ``fallback (N): inside an XLA cluster``);
- ``tf-raw``: TensorFlow's own per-variable training ops
  (``tf.raw_ops.ResourceApplyAdam`` / ``ResourceApplyKerasMomentum``), one call
  per variable, hyperparameters and beta powers passed as tensors. TF's Adam
  op puts epsilon inside the bias correction (``epsilon`` vs Keras'
  ``epsilon hat``): different numbers, the same work.

With ``--steps-per-call N`` (``case.steps_per_call``) one call runs N steps
in a ``tf.range`` loop inside the one ``tf.function`` (every implementation
here loops, XLA included) and the timer divides by N: TensorFlow's per-call
cost of passing every captured tensor (about 1.3 us each, four per variable
for Adam) is then paid once per N steps, as with model.fit's
``steps_per_execution``.

Gradients are fixed random tensors captured by the function (no backward
pass is timed). Tracing (and XLA compilation) happens in the warm-up and is
reported separately as the first call's time.
"""

from __future__ import annotations

import collections

import numpy as np

from fusedopt.bench.cases import (Case, Runner, Skip, implementation, random_normal,
                                  require_stock_arguments)

_DEVICE = "/CPU:0"


def _tf():
    """(tensorflow, keras), or Skip when they are not installed."""
    try:
        import keras
        import tensorflow as tf
    except ImportError as e:
        raise Skip(f"TensorFlow/Keras is not installed ({e})") from None
    return tf, keras


def _random_arrays(case: Case, seed: int):
    """Parameters ~ N(0, 1) and gradients ~ N(0, 0.01²), never zeros."""
    rng = np.random.default_rng(seed)
    shapes, dtype = case.shape.tensor_shapes, case.dtype
    params = [random_normal(rng, s, dtype) for s in shapes]
    grads = [random_normal(rng, s, dtype, 1e-2) for s in shapes]
    return params, grads


def _first_call_guard(step, what: str):
    """Wraps ``step`` so that a failure of its first call becomes a Skip.

    Used where the failure means "this baseline is unavailable here" (e.g. no
    XLA JIT for the device) rather than a bug.
    """
    state = {"ok": False}

    def call():
        if state["ok"]:
            return step()
        try:
            result = step()
        except Exception as e:  # noqa: BLE001 - any failure means "unavailable"
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            raise Skip(f"{what}: {type(e).__name__}: {first_line}") from e
        state["ok"] = True
        return result

    return call


def _custom_gradient_releaser():
    """Returns a function that drops the custom gradients registered from now on.

    Keras' ``apply`` in a traced step all-reduces the gradients through
    ``tf.custom_gradient``, which in graph mode registers a gradient function
    in TensorFlow's process-wide registry. That function holds the traced
    graph, and with it every variable the step captured: without this, each
    Keras case would keep its tensors (hundreds of MB) until the process ends.
    """
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry
    except AttributeError:  # another TF layout: nothing to release
        return lambda: None
    before = set(registry)

    def release():
        for key in [k for k in registry if k not in before]:
            if key.startswith("CustomGradient-"):
                del registry[key]

    return release


def _keras_runner(case: Case, optimizer_class, *, jit_compile: bool) -> Runner:
    tf, keras = _tf()
    release = _custom_gradient_releaser()

    params, grads = _random_arrays(case, seed=0)
    with tf.device(_DEVICE):
        variables = [keras.Variable(p, dtype=case.dtype, name=f"p{i}")
                     for i, p in enumerate(params)]
        grad_tensors = [tf.constant(g) for g in grads]
        optimizer = optimizer_class(**case.optimizer.kwargs)
        optimizer.build(variables)

    n = case.steps_per_call

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.device(_DEVICE):
            if n == 1:
                optimizer.apply(grad_tensors, variables)
            else:
                for _ in tf.range(n):
                    optimizer.apply(grad_tensors, variables)

    def fused_paths_note() -> str:
        paths = getattr(optimizer, "fused_paths", None)
        if paths is None:
            return ""
        counts = collections.Counter(
            "fused" if p == "fused" else p.removeprefix("fallback: ") for p in paths.values()
        )
        parts = [f"fused {counts.pop('fused', 0)}/{len(paths)}"]
        parts += [f"fallback ({n}): {reason}" for reason, n in counts.items()]
        return "; ".join(parts)

    if jit_compile:
        step = _first_call_guard(step, "XLA (jit_compile=True) unavailable")
    return Runner([step], after_warmup=fused_paths_note, cleanup=release, steps_per_call=n)


def _fusedopt_class(case: Case):
    import fusedopt

    _tf()
    cls = getattr(fusedopt, case.optimizer.keras_class, None)
    if cls is None:
        raise Skip(f"fusedopt.{case.optimizer.keras_class} does not exist in this version")
    return cls


@implementation("fusedopt", ours=True,
                description="fusedopt.<Optimizer>.apply(grads, vars) in a tf.function")
def fusedopt_step(case: Case, copies: int) -> Runner:
    return _keras_runner(case, _fusedopt_class(case), jit_compile=False)


@implementation("fusedopt-xla", ours=True,
                description="fusedopt.<Optimizer>.apply in tf.function(jit_compile=True)")
def fusedopt_xla_step(case: Case, copies: int) -> Runner:
    return _keras_runner(case, _fusedopt_class(case), jit_compile=True)


@implementation("keras",
                description="keras.optimizers.<Optimizer>.apply(grads, vars) in a tf.function")
def keras_step(case: Case, copies: int) -> Runner:
    _, keras = _tf()
    require_stock_arguments(case.optimizer, "keras.optimizers")
    return _keras_runner(case, getattr(keras.optimizers, case.optimizer.keras_class),
                         jit_compile=False)


@implementation("keras-xla",
                description="keras.optimizers.<Optimizer>.apply in tf.function(jit_compile=True)")
def keras_xla_step(case: Case, copies: int) -> Runner:
    _, keras = _tf()
    require_stock_arguments(case.optimizer, "keras.optimizers")
    return _keras_runner(case, getattr(keras.optimizers, case.optimizer.keras_class),
                         jit_compile=True)


@implementation("tf-raw",
                description="tf.raw_ops.ResourceApply* once per variable in a tf.function")
def tf_raw_step(case: Case, copies: int) -> Runner:
    tf, _ = _tf()
    spec = case.optimizer
    kw = spec.kwargs
    require_stock_arguments(spec, "TensorFlow's training ops")
    if spec.keras_class not in ("Adam", "SGD"):
        raise Skip(f"TensorFlow has no per-variable {spec.keras_class} training op")
    params, grads = _random_arrays(case, seed=0)
    dtype = tf.as_dtype(case.dtype)
    with tf.device(_DEVICE):
        variables = [tf.Variable(p) for p in params]
        grad_tensors = [tf.constant(g) for g in grads]
        slots = [[tf.Variable(tf.zeros_like(p)) for p in params]
                 for _ in range(2 if spec.keras_class == "Adam" else 1)]
        iterations = tf.Variable(0, dtype=tf.int64)
        learning_rate = tf.Variable(kw["learning_rate"], dtype=dtype)
    clipnorm = kw.get("global_clipnorm")
    n = case.steps_per_call

    def one_step():
        with tf.device(_DEVICE):
            gs = grad_tensors
            if clipnorm is not None:
                gs, _ = tf.clip_by_global_norm(gs, clipnorm)
            lr = learning_rate.read_value()
            if spec.keras_class == "Adam":
                beta_1 = tf.constant(kw.get("beta_1", 0.9), dtype)
                beta_2 = tf.constant(kw.get("beta_2", 0.999), dtype)
                epsilon = tf.constant(kw.get("epsilon", 1e-7), dtype)
                t = tf.cast(iterations + 1, dtype)
                beta_1_power, beta_2_power = tf.pow(beta_1, t), tf.pow(beta_2, t)
                for p, g, m, v in zip(variables, gs, *slots, strict=True):
                    tf.raw_ops.ResourceApplyAdam(
                        var=p.handle, m=m.handle, v=v.handle,
                        beta1_power=beta_1_power, beta2_power=beta_2_power,
                        lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon, grad=g)
            else:
                momentum = tf.constant(kw.get("momentum", 0.0), dtype)
                for p, g, m in zip(variables, gs, *slots, strict=True):
                    tf.raw_ops.ResourceApplyKerasMomentum(
                        var=p.handle, accum=m.handle, lr=lr, grad=g, momentum=momentum,
                        use_nesterov=kw.get("nesterov", False))
            iterations.assign_add(1)

    @tf.function
    def step():
        if n == 1:
            one_step()
        else:
            for _ in tf.range(n):
                one_step()

    return Runner([step], steps_per_call=n)

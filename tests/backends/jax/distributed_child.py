"""The child process of test_jax_distribution.py: Keras-JAX on two host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=2, set by the
parent before jax is imported here), fusedopt against the stock optimizer
under the same keras.distribution.

Usage: python distributed_child.py CASE [CASE ...]; prints one JSON line per
case: {"case", "ulps", "paths", "fused", "stock"}, "fused" / "stock" being
the counts of custom calls and collectives in the compiled train step.
"""

import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: parity
# Keras-JAX needs no TensorFlow here; where it is installed, importing it
# (keras.utils.set_random_seed seeds TF too) costs several seconds.
sys.modules["tensorflow"] = None

import numpy as np

import jax
import keras
from keras.src.backend.jax.trainer import _distribute_data

import fusedopt
from parity import per_step_ulps

assert keras.backend.backend() == "jax", keras.backend.backend()
assert len(jax.devices()) == 2, (jax.devices(), os.environ.get("XLA_FLAGS"))

BATCH = 16
# Every dimension ModelParallel shards is even (Keras and shard_map take
# equal shards only).
DIMS = (12, 16, 8, 4)


def make_model():
    return keras.Sequential([
        keras.Input((DIMS[0],)),
        keras.layers.Dense(DIMS[1], activation="tanh", name="hidden"),
        keras.layers.Dense(DIMS[2], activation="relu", name="hidden2"),
        keras.layers.Dense(DIMS[3], name="out"),
    ])


def make_data(n=4 * BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIMS[0])).astype("float32"),
            rng.standard_normal((n, DIMS[3])).astype("float32"))


def data_parallel():
    return keras.distribution.DataParallel(devices=jax.devices())


def model_parallel():
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices=jax.devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    # Keys are regexes, matched in full against variable paths.
    layout_map[".*/hidden/kernel"] = (None, "model")   # columns over the 2 devices
    layout_map[".*/hidden/bias"] = ("model",)
    layout_map[".*/hidden2/kernel"] = ("model", None)  # rows over the 2 devices
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


# case: (distribution, fusedopt class, stock class, kwargs);
# and "reasons" (fallback_reasons).
CASES = {
    "dp-adam": (data_parallel, fusedopt.Adam, keras.optimizers.Adam,
                dict(learning_rate=0.01)),
    "dp-sgd": (data_parallel, fusedopt.SGD, keras.optimizers.SGD,
               dict(learning_rate=0.05, momentum=0.9)),
    "mp-adam": (model_parallel, fusedopt.Adam, keras.optimizers.Adam,
                dict(learning_rate=0.01)),
    "mp-sgd-nesterov-clipvalue": (model_parallel, fusedopt.SGD, keras.optimizers.SGD,
                                  dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                                       clipvalue=0.02)),
    "mp-adamw-clipnorm": (model_parallel, fusedopt.AdamW, keras.optimizers.AdamW,
                          dict(learning_rate=0.01, weight_decay=0.05, clipnorm=0.1)),
    "mp-global_clipnorm": (model_parallel, fusedopt.SGD, keras.optimizers.SGD,
                           dict(learning_rate=0.05, momentum=0.9, global_clipnorm=0.1)),
    "dp-clipnorm": (data_parallel, fusedopt.Adam, keras.optimizers.Adam,
                    dict(learning_rate=0.01, clipnorm=0.1)),
    "mp-skip_nonfinite": (model_parallel, fusedopt.Adam, keras.optimizers.Adam,
                          dict(learning_rate=0.01, skip_nonfinite=True)),
}


def compile_model(distribution, make_optimizer):
    # Everything created in the scope: a variable created outside (the
    # optimizer's iterations too) is on one device.
    with distribution.scope():
        keras.utils.set_random_seed(1234)
        model = make_model()
        model.compile(optimizer=make_optimizer(), loss="mse")
    return model


def hlo_counts(model, distribution, x, y):
    """Custom calls and collectives in the compiled train step, jitted as
    Keras' make_train_function does under a distribution (state donated,
    out_shardings the state's shardings)."""
    with distribution.scope():
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        )
        step = jax.jit(model.train_step, donate_argnums=0,
                       out_shardings=(None, model._get_state_sharding_spec()))
        data = _distribute_data((x[:BATCH], y[:BATCH]))
        hlo = step.lower(state, data).compile().as_text()
    counts = {}
    for target in ("fusedopt_adam", "fusedopt_sgd", "fusedopt_squared_norms",
                   "fusedopt_clip_factors", "fusedopt_all_finite"):
        counts[target] = len(re.findall(rf'custom_call_target="{target}"', hlo))
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter"):
        counts[op] = len(re.findall(rf"\b{op}(-start)?\(", hlo))
    counts["in_place"] = in_place(hlo)
    return counts


def in_place(hlo):
    """Of the fused update call's parameters and slots (its results, aliased
    to its first operands): how many are the step's own (donated) entry
    parameters, not copies. [that many, how many] or None without a call."""
    lines = [line for line in hlo.splitlines()
             if re.search(r'custom_call_target="fusedopt_(adam|sgd)"', line)]
    if len(lines) != 1:
        return None
    results = re.search(r"= \((.*?)\) custom-call\(", lines[0]).group(1)
    written = len(re.findall(r"\b[fsu]\d+\[", results))
    operands = re.search(r"custom-call\((.*?)\), custom_call_target", lines[0]).group(1)
    operands = [o.strip() for o in re.sub(r"/\*.*?\*/", "", operands).split(",")]
    return [sum(o.startswith("%param") for o in operands[:written]), written]


def run_case(name):
    if name == "reasons":
        return fallback_reasons()
    make_distribution, cls, stock_cls, kwargs = CASES[name]
    distribution = make_distribution()
    fused = compile_model(distribution, lambda: cls(**kwargs))
    stock_kwargs = {k: v for k, v in kwargs.items() if k != "skip_nonfinite"}
    stock = compile_model(distribution, lambda: stock_cls(**stock_kwargs))
    x, y = make_data()
    # 4 fit steps (per_step_ulps: each from the stock model's state).
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    with distribution.scope():
        if name == "mp-skip_nonfinite":
            bad = batches[1][0].copy()
            bad[3, 2] = np.inf
            batches[1] = (bad, batches[1][1])
            ulps = skip_case(fused, stock, batches, bad=1)
        else:
            ulps = per_step_ulps(fused, stock, batches)
    result = dict(case=name, ulps=ulps, paths=fused.optimizer.fused_paths,
                  fused=hlo_counts(fused, distribution, x, y),
                  stock=hlo_counts(stock, distribution, x, y))
    # The variables keep their layouts (Keras does not reshard them).
    result["layouts_kept"] = all(
        v.value.sharding.is_equivalent_to(v._layout.backend_layout, len(v.shape))
        for v in list(fused.trainable_variables) + list(fused.optimizer.variables)
        if v._layout is not None)
    print(json.dumps(result), flush=True)


def skip_case(fused, stock, batches, bad):
    """skip_nonfinite, step by step from the stock model's state: the step
    of batch `bad` (an Inf in x) leaves every variable as it was; the others
    as per_step_ulps. Returns {"skipped_changed": how many variables the
    bad step changed, "ulps": the finite steps' largest step ulps}."""
    from parity import step_ulps

    worst, changed = 0.0, None
    for i, (x, y) in enumerate(batches):
        stock_vars = list(stock.weights) + list(stock.optimizer.variables)
        fused_vars = list(fused.weights) + list(fused.optimizer.variables)
        old = [v.numpy() for v in stock_vars]
        for var, value in zip(fused_vars, old):
            var.assign(value)
        fused.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        if i == bad:
            changed = sum(not np.array_equal(v.numpy(), o) for v, o in zip(fused_vars, old))
            continue
        stock.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for a, b, o in zip(fused_vars, stock_vars, old):
            worst = max(worst, step_ulps(a.numpy(), b.numpy(), o))
    return dict(skipped_changed=changed, ulps=worst)


def fallback_reasons():
    """The fallback reasons Keras' own checks make unreachable through fit
    (an uneven shard: jax.device_put refuses it; a variable without a
    layout: Keras' jit refuses the mix), read from the executor's checks, and
    a distribution other than DataParallel / ModelParallel (the whole step)."""
    from types import SimpleNamespace

    from jax.sharding import NamedSharding, PartitionSpec

    from fusedopt.backends.jax import executor

    distribution = model_parallel()
    mesh = distribution.device_mesh.backend_mesh
    with distribution.scope():
        uneven = SimpleNamespace(shape=(7, 4), _layout=NamedSharding(mesh, PartitionSpec("model")))
        even = SimpleNamespace(shape=(8, 4), _layout=NamedSharding(mesh, PartitionSpec("model")))
        unplaced = SimpleNamespace(shape=(8, 4), _layout=None)
        reasons = dict(uneven=executor._layout_reason(uneven),
                       even=executor._layout_reason(even),
                       unplaced=executor._layout_reason(unplaced))

    from keras.src.distribution.distribution_lib import Distribution  # not exported

    class OtherDistribution(Distribution):
        pass

    other = OtherDistribution(distribution.device_mesh)
    opt = fusedopt.Adam(0.01)  # (outside: the base class lays out no variable)
    with other.scope():
        reasons["other"] = executor.step_fallback(opt)
    print(json.dumps(dict(case="reasons", reasons=reasons)), flush=True)


if __name__ == "__main__":
    for case in sys.argv[1:]:
        run_case(case)

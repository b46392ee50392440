"""fusedopt optimizers under tf.distribute, against the stock Keras optimizers
under the same strategy.

- MirroredStrategy over two logical CPU devices: real `model.fit`; every
  model and optimizer variable equals the stock run's bit for bit, on each
  device; the copies of each MirroredVariable stay identical; the traced
  train function holds one fused update op per device (and group).
- MultiWorkerMirroredStrategy: two worker processes on localhost (TF_CONFIG),
  three steps of Keras' train step each (`strategy.run(model.train_step)`:
  Keras 3.15's `model.fit` itself fails under this strategy, stock optimizers
  included), fused and stock; both workers end with the same weights, equal
  to the stock run's, and each ran the fused op on its device.
- Other strategies (OneDeviceStrategy, CentralStorageStrategy) fall back,
  saying so, bit-identical.

Logical devices must be configured before TensorFlow initializes its devices,
and a process joins one multi-worker cluster at most, so the training runs in
fresh subprocesses: this file is also their script (`python
test_distribute.py mirrored OUT` / `worker OUT`). The MirroredStrategy
subprocess runs once (a module fixture); the tests check its results per case.
"""

import json
import os
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = ("/cpu:0", "/cpu:1")
EPOCHS = 1  # 192 samples, global batch 32: 6 steps
WORKER_TIMEOUT_S = 120  # both multi-worker processes together


# --------------------------------------------------------------- subprocesses
# Everything below up to the tests runs in the subprocesses (TensorFlow is
# imported there, after the device setup).

def _optimizers(fusedopt, keras):
    """case -> (fused optimizer, equivalent stock optimizer, model kind); the
    optimizers as factories, since they must be created in the strategy's scope."""
    tr = fusedopt.transformers
    return {
        "adam": (lambda: fusedopt.Adam(learning_rate=0.01),
                 lambda: keras.optimizers.Adam(learning_rate=0.01), "dense"),
        # Weight decay on both paths: the embedding's sparse gradient falls
        # back, the dense variables are fused.
        "adamw_embedding": (
            lambda: fusedopt.AdamW(learning_rate=0.01, weight_decay=0.05),
            lambda: keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05),
            "embedding"),
        "sgd_momentum": (
            lambda: fusedopt.SGD(learning_rate=0.05, momentum=0.9, weight_decay=0.01),
            lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, weight_decay=0.01),
            "dense"),
        # Clipping (Keras' or a built-in transformer) runs per replica before
        # the all-reduce, as in stock Keras: with two replicas it is not
        # folded into the fused op.
        "sgd_nesterov_clip_transformer": (
            lambda: fusedopt.SGD(learning_rate=0.05, momentum=0.8, nesterov=True,
                                 gradient_transformers=[tr.ClipByGlobalNorm(0.1)]),
            lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.8, nesterov=True,
                                         global_clipnorm=0.1),
            "dense"),
        # LossScaleOptimizer applies the inner optimizer in replica context,
        # inside a cond.
        "loss_scale_adamw": (
            lambda: keras.optimizers.LossScaleOptimizer(
                fusedopt.AdamW(learning_rate=0.01, weight_decay=0.05)),
            lambda: keras.optimizers.LossScaleOptimizer(
                keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05)),
            "dense"),
        # run_eagerly=True: the same per-device update, op by op.
        "adamw_eager": (
            lambda: fusedopt.AdamW(learning_rate=0.01, weight_decay=0.05),
            lambda: keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05),
            "dense_eager"),
        "adam_global_clipnorm": (
            lambda: fusedopt.Adam(learning_rate=0.01, global_clipnorm=0.1),
            lambda: keras.optimizers.Adam(learning_rate=0.01, global_clipnorm=0.1),
            "dense"),
        # skip_nonfinite: two of the six batches hold a NaN / Inf target, each
        # in one replica's half only; those steps are skipped on every device.
        # The stock run trains on the data without those batches.
        "adam_skip_nonfinite": (
            lambda: fusedopt.Adam(learning_rate=0.01, skip_nonfinite=True),
            lambda: keras.optimizers.Adam(learning_rate=0.01),
            "poisoned"),
    }


POISONED_BATCHES = (1, 4)  # of 6 global batches of 32; samples 3 and 30 (replicas 0 and 1)


def _poisoned_data(training, clean):
    x, y = training.make_data()
    keep = np.ones(len(x), bool)
    for b in POISONED_BATCHES:
        keep[b * 32:(b + 1) * 32] = False
    if clean:
        return x[keep], y[keep]
    y = y.copy()
    y[POISONED_BATCHES[0] * 32 + 3, 1] = np.nan
    y[POISONED_BATCHES[1] * 32 + 30, 0] = np.inf
    return x, y


def _make_embedding_model(keras):
    return keras.Sequential([
        keras.Input((4,), dtype="int32"),
        keras.layers.Embedding(11, 5, name="embed"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="out"),
    ])


def _fit(tf, keras, strategy, make_opt, kind):
    """Trains a fresh, identically initialized model under `strategy`."""
    import training

    if kind in ("dense", "dense_eager"):
        with strategy.scope():
            return training.train(make_opt(), epochs=EPOCHS, run_eagerly=kind == "dense_eager")
    if kind in ("poisoned", "poisoned_reference"):
        x, y = _poisoned_data(training, clean=kind == "poisoned_reference")
        with strategy.scope():
            keras.utils.set_random_seed(1234)
            model = training.make_model()
            model.compile(optimizer=make_opt(), loss="mse")
        model.fit(x, y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0)
        return model
    rng = np.random.default_rng(3)
    # Repeated indices within and across samples: duplicate sparse rows.
    x = rng.integers(0, 11, (192, 4)).astype("int32")
    y = rng.standard_normal((192, 3)).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(1234)
        model = _make_embedding_model(keras)
        model.compile(optimizer=make_opt(), loss="mse")
    model.fit(x, y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0)
    return model


def _copies(strategy, model):
    """Per model and optimizer variable: its value on each local device."""
    variables = list(model.weights) + list(model.optimizer.variables)
    return [[c.numpy() for c in strategy.experimental_local_results(v.value)]
            for v in variables]


def _train_functions(tf, model):
    # Keras' train_function is a plain closure over the tf.function(s) it
    # runs; their traced concrete functions hold the step.
    functions = [c.cell_contents for c in model.train_function.__closure__ or ()
                 if isinstance(c.cell_contents, tf.types.experimental.GenericFunction)]
    assert functions, "no tf.function found in model.train_function"
    return functions


def _fused_ops(functions):
    """(op type, device) of every Fusedopt op in the traced `functions`,
    nested function bodies included."""
    found = []
    for fn in functions:
        for concrete in fn._list_all_concrete_functions():
            graph_def = concrete.graph.as_graph_def()
            nodes = list(graph_def.node)
            nodes += [n for f in graph_def.library.function for n in f.node_def]
            found += [(n.op, n.device) for n in nodes if n.op.startswith("Fusedopt")]
    return found


def _run_case(tf, keras, strategy, make_fused, make_stock, kind):
    fused = _fit(tf, keras, strategy, make_fused, kind)
    stock = _fit(tf, keras, strategy, make_stock,
                 "poisoned_reference" if kind == "poisoned" else kind)
    return {
        "fused": _copies(strategy, fused),
        "stock": _copies(strategy, stock),
        "paths": getattr(fused.optimizer, "inner_optimizer", fused.optimizer).fused_paths,
        "ops": None if kind == "dense_eager" else _fused_ops(_train_functions(tf, fused)),
        "devices": list(strategy.extended.worker_devices),
    }


def _import_tf(logical_cpus):
    import tensorflow as tf

    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    import keras

    import fusedopt

    sys.path.insert(0, HERE)  # training.py
    return tf, keras, fusedopt


def _main_mirrored(out):
    tf, keras, fusedopt = _import_tf(len(DEVICES))
    strategy = tf.distribute.MirroredStrategy(list(DEVICES))
    results = {case: _run_case(tf, keras, strategy, *spec)
               for case, spec in _optimizers(fusedopt, keras).items()}
    # One replica in sync: the all-reduce is the identity, so a clip can be
    # folded into the fused op (per device, here the only one).
    one = tf.distribute.MirroredStrategy([DEVICES[0]])
    results["one_replica_folded_clipnorm"] = _run_case(
        tf, keras, one, lambda: fusedopt.Adam(learning_rate=0.01, global_clipnorm=0.1),
        lambda: keras.optimizers.Adam(learning_rate=0.01, global_clipnorm=0.1), "dense")
    with open(out, "wb") as f:
        pickle.dump(results, f)


def _train_multi_worker(tf, keras, strategy, make_opt):
    """A few training steps under MultiWorkerMirroredStrategy; returns the
    model and the step function.

    Keras 3.15's model.fit fails under MultiWorkerMirroredStrategy with the
    stock optimizers too (its first-batch build reduces the (x, y) tuple with
    one strategy.reduce, and its per-step loss reduction asks for axis=0 of a
    scalar), so the workers run the loop fit runs: model.train_step under
    strategy.run in a tf.function, over the distributed dataset.
    """
    import training

    with strategy.scope():
        keras.utils.set_random_seed(1234)
        model = training.make_model()
        model.compile(optimizer=make_opt(), loss="mse")
        model.optimizer.build(model.trainable_variables)
    x, y = training.make_data(n=96)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 3 steps

    @tf.function
    def step(batch):
        strategy.run(model.train_step, args=(batch,))

    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    return model, step


def _main_worker(out):
    tf, keras, fusedopt = _import_tf(1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    fused, step = _train_multi_worker(tf, keras, strategy,
                                      lambda: fusedopt.Adam(learning_rate=0.01))
    stock, _ = _train_multi_worker(tf, keras, strategy,
                                   lambda: keras.optimizers.Adam(learning_rate=0.01))
    import training

    keras.utils.set_random_seed(1234)
    initial = [v.numpy() for v in training.make_model().weights]
    result = {
        "fused": _copies(strategy, fused),
        "stock": _copies(strategy, stock),
        "initial": initial,
        "paths": fused.optimizer.fused_paths,
        "ops": _fused_ops([step]),
        "num_replicas": strategy.num_replicas_in_sync,
    }
    with open(out, "wb") as f:
        pickle.dump(result, f)


# ---------------------------------------------------------------------- tests

def _env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("TF_CONFIG", None)
    return env


def _check(returncode, what, log):
    assert returncode == 0, f"{what} failed (exit code {returncode}):\n{log[-6000:]}"


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "results.pkl"
    proc = subprocess.run([sys.executable, __file__, "mirrored", str(out)], env=_env(),
                          cwd=str(out.parent), capture_output=True, text=True, timeout=300)
    _check(proc.returncode, "the MirroredStrategy subprocess", proc.stdout + proc.stderr)
    with open(out, "rb") as f:
        return pickle.load(f)


def _assert_replicas_identical(copies, devices):
    for i, values in enumerate(copies):
        assert len(values) == len(devices), f"variable {i}: {len(values)} copies"
        for d, value in enumerate(values[1:], 1):
            np.testing.assert_array_equal(
                value, values[0], err_msg=f"variable {i}: copy on {devices[d]} differs")


def _assert_same(fused, stock, close=False):
    assert len(fused) == len(stock)
    for i, (f, s) in enumerate(zip(fused, stock)):
        for d, (a, b) in enumerate(zip(f, s)):
            if close:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7,
                                           err_msg=f"variable {i}, device {d}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"variable {i}, device {d}")


def _update_ops_per_device(result):
    counts = {}
    for op, device in result["ops"]:
        if op in ("FusedoptAdam", "FusedoptSgd"):
            counts[device] = counts.get(device, 0) + 1
    return counts


def _canonical(device):
    import tensorflow as tf

    return tf.DeviceSpec.from_string(device).to_string()


GRAPH_CASES = ["adam", "adamw_embedding", "sgd_momentum", "sgd_nesterov_clip_transformer",
               "adam_global_clipnorm", "loss_scale_adamw", "adam_skip_nonfinite"]
MIRRORED_CASES = GRAPH_CASES + ["adamw_eager"]


@pytest.mark.parametrize("case", MIRRORED_CASES)
def test_mirrored_matches_stock(mirrored, case):
    result = mirrored[case]
    devices = result["devices"]
    assert len(devices) == 2
    _assert_replicas_identical(result["fused"], devices)
    _assert_replicas_identical(result["stock"], devices)
    # Same ops as the stock update, on the same all-reduced gradients: bit
    # for bit, on every device.
    _assert_same(result["fused"], result["stock"])


def _assert_fused_paths(result, case):
    paths = dict(result["paths"])
    if case == "adamw_embedding":
        [embedding] = [p for p in paths if p.endswith("/embed/embeddings")]
        assert paths.pop(embedding) == "fallback: sparse (IndexedSlices) gradient", paths
    assert paths and set(paths.values()) == {"fused"}, paths


def test_mirrored_eager_takes_fused_path(mirrored):
    _assert_fused_paths(mirrored["adamw_eager"], "adamw_eager")


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_mirrored_fused_op_on_each_device(mirrored, case):
    result = mirrored[case]
    _assert_fused_paths(result, case)
    # One fused update op per device and step (all dense variables are
    # float32 in one group; the train function runs one step per call).
    counts = _update_ops_per_device(result)
    assert {_canonical(d) for d in counts} == {_canonical(d) for d in result["devices"]}, counts
    assert set(counts.values()) == {1}, counts
    # Two replicas: clipping stays before the all-reduce, nothing folded.
    assert not [op for op, _ in result["ops"] if op == "FusedoptSquaredNorms"], result["ops"]


def test_mirrored_skip_nonfinite_checks_every_replica(mirrored):
    result = mirrored["adam_skip_nonfinite"]
    # Iterations counts the applied steps only: 6 batches, 2 skipped (each
    # poisoned in one replica's half: the other replica's finite gradients
    # alone must not let the step through).
    iterations = [copies for copies in result["fused"] if np.ndim(copies[0]) == 0
                  and np.issubdtype(np.asarray(copies[0]).dtype, np.integer)]
    assert [int(c[0]) for c in iterations] == [4], iterations
    # One all-finite check per replica, on its device.
    checks = {_canonical(d) for op, d in result["ops"] if op == "FusedoptAllFinite"}
    assert checks == {_canonical(d) for d in result["devices"]}, result["ops"]


def test_mirrored_one_replica_folds_clip(mirrored):
    result = mirrored["one_replica_folded_clipnorm"]
    assert set(result["paths"].values()) == {"fused"}, result["paths"]
    # The global norm comes from the fused reduction (another summation
    # order than TF's reduce_sum): equal to float32 rounding, as without a
    # strategy.
    _assert_same(result["fused"], result["stock"], close=True)
    device = _canonical(result["devices"][0])
    assert [(op, _canonical(d)) for op, d in result["ops"]] == [
        ("FusedoptSquaredNorms", device), ("FusedoptClipFactors", device),
        ("FusedoptAdam", device)], result["ops"]


@pytest.mark.parametrize("name", ["OneDeviceStrategy", "CentralStorageStrategy"])
def test_other_strategy_falls_back_to_stock(name):
    # In this process: these strategies need no device setup. Strategies
    # other than the mirrored ones take the stock update, weight decay
    # included (which runs in cross-replica context there), and say why.
    import keras
    import tensorflow as tf

    import fusedopt
    from training import assert_same_state, train

    if name == "OneDeviceStrategy":
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        why = "fused: MirroredStrategy, MultiWorkerMirroredStrategy"
    else:
        strategy = tf.distribute.experimental.CentralStorageStrategy()
        why = "variables live on parameter servers or one central device"
    with strategy.scope():
        fused = train(fusedopt.AdamW(learning_rate=0.01, weight_decay=0.05), epochs=EPOCHS)
        stock = train(keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05),
                      epochs=EPOCHS)
    reasons = set(fused.optimizer.fused_paths.values())
    assert len(reasons) == 1, reasons
    [reason] = reasons
    assert reason.startswith(f"fallback: under tf.distribute {name} (") and why in reason, reason
    assert _fused_ops(_train_functions(tf, fused)) == []
    assert_same_state(fused, stock)


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_mirrored(tmp_path):
    try:
        ports = _free_ports(2)
    except OSError as e:
        pytest.skip(f"cannot open localhost ports for the workers: {e}")
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs, outs = [], []
    for index in range(2):
        out = tmp_path / f"worker{index}.pkl"
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, "worker", str(out)],
                                       env=env, cwd=str(tmp_path), stdout=log,
                                       stderr=subprocess.STDOUT), log))
        outs.append(out)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for index, (proc, _) in enumerate(procs):
        _check(proc.returncode, f"worker {index}",
               (tmp_path / f"worker{index}.log").read_text())

    results = []
    for out in outs:
        with open(out, "rb") as f:
            results.append(pickle.load(f))
    for index, result in enumerate(results):
        assert result["num_replicas"] == 2
        assert set(result["paths"].values()) == {"fused"}, result["paths"]
        # The step ran the fused op once, on this worker's one device.
        counts = _update_ops_per_device(result)
        assert list(counts.values()) == [1], counts
        assert f"/task:{index}/" in next(iter(counts)), counts
        _assert_same(result["fused"], result["stock"])
        # It trained: every model weight moved.
        for i, start in enumerate(result["initial"]):
            assert not np.array_equal(result["fused"][i][0], start), f"weight {i} unchanged"
    # Both workers hold the same values (one local copy each).
    _assert_same(results[0]["fused"], results[1]["fused"])


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _main_mirrored(sys.argv[2])
    elif sys.argv[1] == "worker":
        _main_worker(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}; expected 'mirrored' or 'worker'")

"""``fusedopt-bench --fit``: real ``model.fit`` with fusedopt against the stock optimizer.

The kernel bench times one optimizer step alone; this times whole training
steps of small real Keras models, where the forward and backward passes
dilute what the optimizer saves. A *group* is one model in one compile mode
(graph or ``jit_compile=True``, a ``steps_per_execution``); its *rows* are
optimizers. Per group the bench builds, from the same initial weights:

- one model per (optimizer, implementation): the stock ``keras.optimizers``
  class and fusedopt's class of the same name, with the same arguments;
- one model with a *no-update* optimizer (:func:`no_update_optimizer`), the
  baseline for the optimizer's share of the step.

It then trains them in rounds: one round is one ``model.fit(epochs=1)`` per
model, in turns (the order reversed every other round, so that each pair of
stock and fusedopt models alternates A B B A ...), on the same batches
(``shuffle=False``). A round's time per step is the wall time from the end of
its first train-function call to the end of its last, over the steps between
(the first call, with the iterator's start and the first round's tracing or
XLA compilation, is not timed). The first ``warmup`` rounds are not timed
either. Per row: the medians and quartiles over the rounds of each model's
time per step, the median and quartiles of the per-round ratio stock /
fusedopt, the optimizer's time (per round: the model's time minus the no-update
model's, then the median) and its share of the step.

Because the stock and fusedopt models started equal and trained on the same
batches for the same number of steps, their weights at the end must be equal
under the parity contract (:func:`parity_contract`): the bench compares them
element by element in units in the last place (:func:`weights_distance`) and
flags a difference beyond the contract. It also reads ``fused_paths`` of each
fusedopt optimizer and lists every variable that did not take the fused path.

Only Keras' public API is used (``keras.layers``, ``keras.ops``, callbacks,
``model.fit``; ``fusedopt.<Optimizer>(...)``), so that the models and the
timing loop run under any Keras backend; Keras picks its backend once per
process (``KERAS_BACKEND``), so a run on another backend is another process.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import statistics
import time
import traceback
from collections.abc import Callable

import numpy as np

from fusedopt.bench.cases import FUSEDOPT_ONLY_ARGUMENTS, OPTIMIZERS, matches
from fusedopt.bench.timing import _rss_bytes

SCHEMA = "fusedopt-bench-fit/1"
# Timed rounds before --max-case-seconds may stop a group.
MIN_ROUNDS = 3

# ------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class FitModel:
    """A model the bench trains.

    Attributes:
      name: short name used in row names (``mlp``).
      description: one line for reports.
      build: ``build(keras) -> keras.Model``, uncompiled, built (an ``Input``).
      input_shape: one example's shape; inputs are N(0, 1) float32.
      classes: labels are uniform in ``range(classes)``; the loss is sparse
        categorical cross-entropy on logits.
      batch_size: examples per step.
    """

    name: str
    description: str
    build: Callable
    input_shape: tuple
    classes: int = 10
    batch_size: int = 64


def _mlp(widths):
    def build(keras):
        layers = [keras.Input((widths[0],))]
        layers += [keras.layers.Dense(w, activation="relu") for w in widths[1:-1]]
        layers.append(keras.layers.Dense(widths[-1]))
        return keras.Sequential(layers)

    return build


def _dense_layernorm(blocks, width=64):
    def build(keras):
        layers = [keras.Input((width,))]
        for _ in range(blocks):
            layers += [keras.layers.Dense(width, activation="relu"),
                       keras.layers.LayerNormalization()]
        layers.append(keras.layers.Dense(10))
        return keras.Sequential(layers)

    return build


def _conv(keras):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(10),
    ])


MODELS: dict[str, FitModel] = {m.name: m for m in [
    FitModel("mlp", "MLP 2048-4096-4096-10 (relu): 25.2M parameters in 6 variables",
             _mlp((2048, 4096, 4096, 10)), (2048,)),
    FitModel("dense-ln", "100 x [Dense(64, relu), LayerNormalization], Dense(10): "
             "402 variables, 0.4M parameters", _dense_layernorm(100), (64,)),
    FitModel("conv", "conv net on 32x32x3: 3 Conv2D (32, 64, 64; 3x3), 2 max-pools, global "
             "average pool, Dense(10): 57K parameters, the convolutions dominate",
             _conv, (32, 32, 3)),
    # The --quick versions: the same kinds at a quarter of the size (tracing a
    # 402-variable train step takes 10-60 s per model on a 2-core machine).
    FitModel("mlp-small", "MLP 1024-2048-2048-10 (relu): 6.3M parameters in 6 variables",
             _mlp((1024, 2048, 2048, 10)), (1024,)),
    FitModel("dense-ln-small", "25 x [Dense(64, relu), LayerNormalization], Dense(10): "
             "102 variables, 0.1M parameters", _dense_layernorm(25), (64,)),
]}


# --------------------------------------------------------------- the grid


# What each backend's fit() runs with jit_compile False / True, as the row
# names say it: Keras-TF traces a graph (XLA with jit_compile); Keras-torch
# runs the train step eagerly, and with jit_compile=True wraps it in
# torch.compile (TorchTrainer.make_train_function: Dynamo and Inductor).
MODE_WORDS = {"torch": ("eager", "compile")}
_DEFAULT_MODE_WORDS = ("graph", "xla")


def mode_words(backend: str) -> tuple[str, str]:
    """(word for jit_compile=False, word for jit_compile=True) on `backend`."""
    return MODE_WORDS.get(backend, _DEFAULT_MODE_WORDS)


@dataclasses.dataclass(frozen=True)
class FitGroup:
    """One model in one compile mode, with the optimizers to compare in it."""

    model: str
    jit_compile: bool
    steps_per_execution: int
    optimizers: tuple
    backend: str = "tensorflow"  # the Keras backend it runs on (its mode words)

    @property
    def _word(self) -> str:
        return mode_words(self.backend)[bool(self.jit_compile)]

    @property
    def name(self) -> str:
        spe = f"/spe{self.steps_per_execution}" if self.steps_per_execution > 1 else ""
        return f"{self.model}/{self._word}{spe}"

    @property
    def mode(self) -> str:
        """'graph' or 'xla' (jit_compile=True; on torch 'eager' or 'compile'),
        and ' spe=N' for steps_per_execution=N."""
        spe = f" spe={self.steps_per_execution}" if self.steps_per_execution > 1 else ""
        return self._word + spe

    def row_names(self) -> list[str]:
        return [f"{self.name}/{o}" for o in self.optimizers]


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How to time each group: rounds of ``calls_per_round`` train-function calls."""

    rounds: int = 5  # timed rounds (fewer if max_seconds runs out)
    warmup: int = 1  # untimed rounds first (the first traces / compiles)
    calls_per_round: int = 4  # train-function calls per fit(); the first is not timed
    max_seconds: float = 60.0  # per group: stop after this, once MIN_ROUNDS are timed


@dataclasses.dataclass(frozen=True)
class FitPreset:
    groups: tuple
    settings: FitSettings


_ALL = ("adam", "adamw", "sgd")
FULL = FitPreset(
    groups=tuple(
        [FitGroup("mlp", jit, 1, _ALL) for jit in (False, True)]
        + [FitGroup("dense-ln", jit, 1, _ALL) for jit in (False, True)]
        + [FitGroup("dense-ln", jit, 20, ("adam",)) for jit in (False, True)]
        + [FitGroup("conv", jit, 1, _ALL) for jit in (False, True)]),
    settings=FitSettings(rounds=5, warmup=1, calls_per_round=4, max_seconds=60.0),
)
QUICK = FitPreset(
    groups=(FitGroup("mlp-small", False, 1, ("adam",)),
            FitGroup("dense-ln-small", False, 1, ("adam",)),
            FitGroup("mlp-small", True, 1, ("adam",))),
    settings=FitSettings(rounds=3, warmup=1, calls_per_round=3, max_seconds=8.0),
)


def fit_optimizers() -> list[str]:
    """The optimizer names ``--fit`` takes: those the stock Keras class has
    every argument of (fusedopt-only options have no stock model to match)."""
    return [name for name, spec in OPTIMIZERS.items()
            if not any(k in spec.kwargs for k in FUSEDOPT_ONLY_ARGUMENTS)]


# Keras-torch's fit takes steps_per_execution=1 only (TorchTrainer raises a
# ValueError for more).
MAX_STEPS_PER_EXECUTION = {"torch": 1}


def unsupported_groups(preset: FitPreset, backend: str) -> list[str]:
    """The names of the preset's groups that `backend` cannot run (see
    MAX_STEPS_PER_EXECUTION); select_groups drops them."""
    limit = MAX_STEPS_PER_EXECUTION.get(backend)
    return [dataclasses.replace(g, backend=backend).name for g in preset.groups
            if limit is not None and g.steps_per_execution > limit]


def select_groups(preset: FitPreset, optimizers=None, steps_per_execution=None,
                  patterns=(), backend="tensorflow") -> list[FitGroup]:
    """The preset's groups on `backend` (its mode words; the groups it cannot
    run, unsupported_groups, dropped) with ``optimizers`` /
    ``steps_per_execution`` replacing each group's own (duplicates merged),
    and only the optimizers whose row name matches ``patterns``
    (cases.matches); empty groups dropped."""
    groups = {}
    dropped = set(unsupported_groups(preset, backend))
    for g in preset.groups:
        g = dataclasses.replace(g, backend=backend)
        if g.name in dropped:
            continue
        g = dataclasses.replace(
            g, optimizers=tuple(optimizers) if optimizers else g.optimizers,
            steps_per_execution=steps_per_execution or g.steps_per_execution)
        kept = tuple(o for o, row in zip(g.optimizers, g.row_names())
                     if matches(row, patterns))
        if kept:
            key = (g.model, g.jit_compile, g.steps_per_execution)
            old = groups[key].optimizers if key in groups else ()
            groups[key] = dataclasses.replace(
                g, optimizers=tuple(dict.fromkeys(old + kept)))
    return list(groups.values())


# --------------------------------------------------------------- optimizers


def make_optimizers(name: str):
    """(stock, fusedopt) optimizers for the bench's optimizer ``name``, with
    the same constructor arguments (cases.OPTIMIZERS)."""
    import keras

    import fusedopt

    spec = OPTIMIZERS[name]
    return (getattr(keras.optimizers, spec.keras_class)(**spec.kwargs),
            getattr(fusedopt, spec.keras_class)(**spec.kwargs))


@functools.lru_cache(maxsize=None)
def _no_update_class():
    import keras
    from keras import ops

    class NoUpdate(keras.optimizers.Optimizer):
        """Changes no weight, but reads every gradient once (its sum), so that
        no graph optimizer or compiler can drop the backward pass."""

        def __init__(self):
            super().__init__(learning_rate=0.0, name="no_update")

        def build(self, variables):
            super().build(variables)
            self.gradient_sum = self.add_variable((), initializer="zeros", dtype="float32",
                                                  name="gradient_sum")

        def apply(self, grads, trainable_variables=None):
            if not self.built:
                self.build(trainable_variables)
                self.built = True
            sums = [ops.cast(ops.sum(g), "float32") for g in grads if g is not None]
            self.gradient_sum.assign(ops.sum(ops.stack(sums)))

        def update_step(self, gradient, variable, learning_rate):  # never called
            raise AssertionError("NoUpdate.apply does not call update_step")

    return NoUpdate


def no_update_optimizer():
    """A Keras optimizer whose step is one sum per gradient and one write: the
    step of a model trained with it is the forward and backward pass (plus
    that read of the gradients, about 4 of Adam's 28 bytes per parameter)."""
    return _no_update_class()()


def parity_contract(name: str, jit_compile: bool,
                    backend: str = "tensorflow") -> tuple[int | None, str]:
    """(max ulp allowed, why) between the stock and the fusedopt weights.

    None: the distance is reported, not judged.
    """
    spec = OPTIMIZERS[name]
    clip = [k for k in ("clipnorm", "global_clipnorm") if k in spec.kwargs]
    if jit_compile:
        if backend == "torch":
            return None, ("under torch.compile: reported (Inductor compiles the stock "
                          "foreach update; fusedopt's custom op is opaque to it)")
        return None, "under XLA: reported (the XLA contract is being redefined)"
    if clip:
        return None, f"{clip[0]}: fusedopt's own norm reduction, reported"
    if backend == "torch" and spec.keras_class != "SGD":
        # docs/backends.md, PyTorch: within 2 step ulps of each step, not bit
        # for bit; over a run the trajectories drift, so the final weights'
        # distance has no fixed bound.
        return None, ("Keras-torch Adam: within 2 step ulps per step (torch's CPU sqrt is "
                      "not correctly rounded; tests/backends/torch), reported")
    if backend == "torch":
        return 0, "bit-identical (Keras-torch's foreach SGD, float32 on the CPU)"
    return 0, "bit-identical (float32 on the CPU without XLA)"


# ------------------------------------------------------------------- ulps


def _ordered_magnitudes(a: np.ndarray):
    """(sign, magnitude bits) of float array ``a`` as unsigned integers: two
    finite floats of one sign are ``|m_a - m_b|`` ulps apart, of opposite
    signs ``m_a + m_b`` (through zero; +0 and -0 are 0 apart)."""
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    bits = np.ascontiguousarray(a).view(uint).astype(np.uint64)
    top = np.uint64(1) << np.uint64(8 * a.dtype.itemsize - 1)
    return (bits & top) != 0, bits & (top - np.uint64(1))


def weights_distance(a_list, b_list) -> dict:
    """Element-wise distance in ulps between two lists of float arrays.

    Returns ``max_ulp`` (an int; None when the lists do not pair up or a NaN
    stands against a number), ``max_ulp_at_scale`` (the largest
    ``|a - b|`` in ulps of its array's largest magnitude in ``b``, a float:
    a value that crosses zero or stays near it is millions of its own ulps
    off after a last-bit difference anywhere upstream, but not of the
    array's), ``elements``, ``differing`` (elements not bit-identical, NaN
    against NaN counting as equal) and ``note``.
    """
    if len(a_list) != len(b_list):
        return {"max_ulp": None, "max_ulp_at_scale": None, "elements": None,
                "differing": None, "note": f"{len(a_list)} arrays against {len(b_list)}"}
    worst, scaled, elements, differing, note = 0, 0.0, 0, 0, ""
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype or a.dtype.kind != "f":
            return {"max_ulp": None, "max_ulp_at_scale": None, "elements": None,
                    "differing": None, "note": f"array {i}: {a.dtype}{list(a.shape)} against "
                                               f"{b.dtype}{list(b.shape)}"}
        elements += a.size
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if np.any(nan_a != nan_b):
            worst, note = None, f"array {i}: NaN against a number"
        sa, ma = _ordered_magnitudes(a)
        sb, mb = _ordered_magnitudes(b)
        same = np.where(ma >= mb, ma - mb, mb - ma)
        dist = np.where(sa == sb, same, ma + mb)
        dist[nan_a & nan_b] = 0
        differing += int(np.count_nonzero(dist))
        if worst is not None and dist.size:
            finite = ~(nan_a | nan_b)
            if np.any(finite):
                worst = max(worst, int(dist[finite].max()))
                wide_a, wide_b = (x[finite].astype(np.float64) for x in (a, b))
                unit = float(np.spacing(np.abs(b[finite]).max()))
                scaled = max(scaled, float(np.abs(wide_a - wide_b).max()) / unit)
    return {"max_ulp": worst, "max_ulp_at_scale": None if worst is None else scaled,
            "elements": elements, "differing": differing, "note": note}


# ------------------------------------------------------------------ timing


@functools.lru_cache(maxsize=None)
def _step_clock_class():
    import keras

    class StepClock(keras.callbacks.Callback):
        """The host clock at the end of every train-function call."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepClock


@dataclasses.dataclass
class _Member:
    """One model of a group: the no-update baseline or one (optimizer, impl)."""

    label: str  # "no-update", or "<optimizer>/stock", "<optimizer>/fusedopt"
    model: object
    times_s: list = dataclasses.field(default_factory=list)
    first_round_s: float | None = None


def _data(model: FitModel, batches: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = batches * model.batch_size
    x = rng.standard_normal((n, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, model.classes, n).astype("int32")
    return x, y


def _one_round(member: _Member, x, y, batch_size: int, calls: int, spe: int) -> float:
    """One fit() over the data; the time per step after the first call."""
    clock = _step_clock_class()()
    # No collection inside the timed calls; none forced before either (a full
    # collection of TensorFlow's heap takes most of a second).
    gc.disable()
    try:
        member.model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                         callbacks=[clock])
    finally:
        gc.enable()
    if len(clock.ends) != calls:
        raise RuntimeError(f"{member.label}: fit made {len(clock.ends)} train-function calls, "
                           f"expected {calls}")
    return (clock.ends[-1] - clock.ends[0]) / ((calls - 1) * spe)


def _quartiles(values):
    """(q25, median, q75); q25 = q75 = the value for one value, None for none."""
    if not values:
        return None, None, None
    if len(values) == 1:
        return values[0], values[0], values[0]
    q25, q50, q75 = statistics.quantiles(values, n=4, method="inclusive")
    return q25, q50, q75


def _compile(keras, model, optimizer, group: FitGroup):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=group.jit_compile,
                  steps_per_execution=group.steps_per_execution)
    # Build the optimizer's variables now: created inside the first trace,
    # they would make TensorFlow trace the train step twice.
    optimizer.build(model.trainable_variables)


def _fused_paths_summary(optimizer, n_variables: int) -> dict:
    paths = getattr(optimizer, "fused_paths", None)
    if paths is None:
        return {"fused": None, "total": n_variables, "not_fused": {},
                "note": "the optimizer has no fused_paths"}
    not_fused = {k: v for k, v in paths.items() if v != "fused"}
    fused = len(paths) - len(not_fused)
    note = ""
    if len(paths) != n_variables:
        note = f"fused_paths lists {len(paths)} variables, the model trains {n_variables}"
    return {"fused": fused, "total": n_variables, "not_fused": not_fused, "note": note}


def _release_graphs():
    """Releases what TensorFlow keeps of the traced train steps (see
    tf_cases._custom_gradient_releaser); nothing to do on other backends."""
    import keras

    if keras.backend.backend() == "torch":
        # torch.compile's caches hold the compiled train steps (and through
        # them the models): reset them with the group.
        import torch

        return torch._dynamo.reset
    if keras.backend.backend() != "tensorflow":
        return lambda: None
    from fusedopt.bench.tf_cases import _custom_gradient_releaser

    return _custom_gradient_releaser()


def run_group(group: FitGroup, settings: FitSettings, progress=None) -> list[dict]:
    """Builds, trains and compares the models of ``group``; one record per optimizer.

    Never raises (except KeyboardInterrupt): a failure becomes records with
    status "error".
    """
    model_spec = MODELS[group.model]
    spe, calls = group.steps_per_execution, settings.calls_per_round
    if progress is not None:
        progress.starting(group.name)
    release = None
    members, record_base = [], _record_base(group, settings)
    try:
        import keras

        release = _release_graphs()
        keras.utils.set_random_seed(0)
        reference = model_spec.build(keras)
        initial = reference.get_weights()
        record_base.update(
            params=int(sum(np.prod(w.shape) for w in reference.trainable_weights)),
            variables=len(reference.trainable_weights))
        x, y = _data(model_spec, calls * spe)

        # The reference model itself trains with the no-update optimizer.
        _compile(keras, reference, no_update_optimizer(), group)
        members.append(_Member("no-update", reference))
        for name in group.optimizers:
            stock, fused = make_optimizers(name)
            for impl, optimizer in (("stock", stock), ("fusedopt", fused)):
                model = model_spec.build(keras)
                model.set_weights(initial)
                _compile(keras, model, optimizer, group)
                members.append(_Member(f"{name}/{impl}", model))

        started = None
        for r in range(settings.warmup + settings.rounds):
            timed = r >= settings.warmup
            if timed and started is None:
                started = time.perf_counter()
            for member in (members if r % 2 == 0 else reversed(members)):
                t0 = time.perf_counter()
                per_step = _one_round(member, x, y, model_spec.batch_size, calls, spe)
                if r == 0:
                    member.first_round_s = time.perf_counter() - t0
                if timed:
                    member.times_s.append(per_step)
            n_timed = r + 1 - settings.warmup
            if (timed and n_timed >= MIN_ROUNDS
                    and time.perf_counter() - started > settings.max_seconds):
                break
        records = [_row_record(record_base, name, members) for name in group.optimizers]
    except Exception as e:  # noqa: BLE001 - one broken group must not stop the run
        note = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        records = [dict(record_base, name=f"{group.name}/{o}", optimizer=o, status="error",
                        note=note, error=traceback.format_exc()) for o in group.optimizers]
    finally:
        # Drop every reference to the models and their optimizers before collecting.
        members = reference = model = stock = fused = optimizer = None
        if release is not None:  # keras was imported
            release()
            import keras

            keras.backend.clear_session(free_memory=False)  # collected just below
        gc.collect()
    rss = _rss_bytes()  # after the group's models are released
    for r in records:
        r["loadavg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        r["rss_bytes"] = rss
        if progress is not None:
            progress.finished(r["name"], _outcome(r))
    return records


def _record_base(group: FitGroup, settings: FitSettings) -> dict:
    model = MODELS[group.model]
    return {
        "group": group.name, "backend": group.backend, "model": group.model,
        "model_description": model.description,
        "params": None, "variables": None, "batch_size": model.batch_size,
        "jit_compile": group.jit_compile, "steps_per_execution": group.steps_per_execution,
        "mode": group.mode, "calls_per_round": settings.calls_per_round,
        "warmup_rounds": settings.warmup,
        "steps_timed_per_round": (settings.calls_per_round - 1) * group.steps_per_execution,
    }


def _row_record(base: dict, name: str, members: list[_Member]) -> dict:
    by_label = {m.label: m for m in members}
    noop, stock, fused = (by_label["no-update"], by_label[f"{name}/stock"],
                          by_label[f"{name}/fusedopt"])
    spec = OPTIMIZERS[name]
    record = dict(base, name=f"{base['group']}/{name}", optimizer=name,
                  keras_class=spec.keras_class, optimizer_kwargs=spec.kwargs,
                  status="ok", note="", rounds=len(stock.times_s))
    for label, m in (("stock", stock), ("fusedopt", fused), ("no_update", noop)):
        q25, median, q75 = _quartiles(m.times_s)
        record.update({f"{label}_times_s": m.times_s, f"{label}_median_s": median,
                       f"{label}_q25_s": q25, f"{label}_q75_s": q75,
                       f"{label}_first_round_s": m.first_round_s})
    ratios = [s / f for s, f in zip(stock.times_s, fused.times_s)]
    q25, median, q75 = _quartiles(ratios)
    record.update(ratios=ratios, ratio_median=median, ratio_q25=q25, ratio_q75=q75)
    for label, m in (("stock", stock), ("fusedopt", fused)):
        # Per round, beside the no-update model of the same round.
        opt = [t - n for t, n in zip(m.times_s, noop.times_s)]
        opt_median = statistics.median(opt) if opt else None
        record[f"{label}_optimizer_s"] = opt_median
        record[f"{label}_optimizer_share"] = (
            opt_median / record[f"{label}_median_s"] if opt else None)

    distance = weights_distance(stock.model.get_weights(), fused.model.get_weights())
    allowed, why = parity_contract(name, base["jit_compile"], base["backend"])
    record.update(weights_max_ulp=distance["max_ulp"],
                  weights_max_ulp_at_scale=distance["max_ulp_at_scale"],
                  weights_elements=distance["elements"],
                  weights_differing=distance["differing"], parity_max_ulp=allowed,
                  parity=why)
    if allowed is None:
        record["weights_match"] = None
    else:
        record["weights_match"] = (distance["max_ulp"] is not None
                                   and distance["max_ulp"] <= allowed)
    notes = [distance["note"]] if distance["note"] else []

    paths = _fused_paths_summary(fused.model.optimizer, len(fused.model.trainable_weights))
    record.update(fused_variables=paths["fused"], fused_paths_total=paths["total"],
                  not_fused=paths["not_fused"])
    if paths["note"]:
        notes.append(paths["note"])
    if paths["not_fused"]:
        reasons = sorted(set(paths["not_fused"].values()))
        notes.append(f"not fused ({len(paths['not_fused'])}): {'; '.join(reasons)}")
    record["note"] = "; ".join(notes)
    return record


def _outcome(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']} ({r['note']})"
    return (f"{_ms(r['stock_median_s'])} ms stock, {_ms(r['fusedopt_median_s'])} ms fusedopt "
            f"({r['ratio_median']:.2f}x), weights {weights_text(r)}")


# ----------------------------------------------------------------- report


def _ms(seconds):
    from fusedopt.bench.report import fmt_time

    return fmt_time(seconds)


def _pct(share):
    return "-" if share is None else f"{100 * share:.0f}%"


def weights_text(r: dict) -> str:
    """'identical', '0 ulp' wording for the table: the distance and the verdict."""
    ulp = r.get("weights_max_ulp")
    if ulp is None:
        text = "not comparable"
    elif ulp == 0:
        text = "identical"
    else:
        text = f"max {ulp} ulp"
    if r.get("weights_match") is False:
        return f"MISMATCH: {text}"
    at_scale = r.get("weights_max_ulp_at_scale")
    if ulp and at_scale is not None:
        text += f" ({at_scale:.3g} at the array's scale)"
    if r.get("weights_match") is None and ulp:
        return f"{text} (reported)"
    return text


def fused_text(r: dict) -> str:
    if r.get("fused_variables") is None:
        return "-"
    return f"{r['fused_variables']}/{r['fused_paths_total']}"


HEADER = ["model", "mode", "optimizer", "keras ms", "fusedopt ms", "speedup", "[q1, q3]",
          "no-update ms", "opt. share keras", "opt. share fusedopt", "weights", "fused",
          "note"]


def table_sections(records: list[dict]):
    """(title, header, rows, styles) in the shape report.print_tables takes."""
    ran = [r for r in records if r["status"] == "ok"]
    if not ran:
        return
    rows, styles = [], []
    for r in ran:
        quart = (f"[{r['ratio_q25']:.2f}, {r['ratio_q75']:.2f}]"
                 if r["ratio_q25"] is not None else "-")
        rows.append([r["model"], r["mode"], r["optimizer"], _ms(r["stock_median_s"]),
                     _ms(r["fusedopt_median_s"]), f"{r['ratio_median']:.2f}x", quart,
                     _ms(r["no_update_median_s"]), _pct(r["stock_optimizer_share"]),
                     _pct(r["fusedopt_optimizer_share"]), weights_text(r), fused_text(r),
                     r["note"][:60]])
        styles.append("bold red" if r["weights_match"] is False else "")
    rounds = sorted({r["rounds"] for r in ran})
    steps = sorted({r["steps_timed_per_round"] for r in ran})
    title = (f"model.fit, median time per step over {'/'.join(map(str, rounds))} rounds of "
             f"{'/'.join(map(str, steps))} timed steps; speedup = keras / fusedopt")
    yield title, HEADER, rows, styles


def problem_lines(records: list[dict]) -> list[str]:
    """The loud lines: weights beyond the contract, variables not fused, errors."""
    lines = []
    for r in records:
        if r["status"] != "ok":
            lines.append(f"ERROR {r['name']}: {r['note']}")
            continue
        if r["weights_match"] is False:
            apart = (f"are up to {r['weights_max_ulp']} ulp apart ({r['weights_differing']} "
                     f"of {r['weights_elements']} elements differ)"
                     if r["weights_max_ulp"] is not None else f"are not comparable ({r['note']})")
            lines.append(
                f"WEIGHTS DIFFER: {r['name']}: after {r['warmup_rounds']} warm-up and "
                f"{r['rounds']} timed rounds the fusedopt and stock weights {apart}; "
                f"the contract is {r['parity']}")
        by_reason = {}
        for var, why in r["not_fused"].items():
            by_reason.setdefault(why, []).append(var)
        for why, names in by_reason.items():
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5
                                            else "")
            lines.append(f"NOT FUSED {r['name']}: {len(names)} of {r['fused_paths_total']} "
                         f"variables, {why} ({shown})")
    return lines


def model_lines(records: list[dict]) -> list[str]:
    seen = {}
    for r in records:
        seen.setdefault(r["model"], f"{r['model']}: {r['model_description']}, batch "
                                    f"{r['batch_size']}")
    return list(seen.values())


def print_report(records: list[dict], console=None) -> None:
    from fusedopt.bench.report import print_tables

    console = print_tables(table_sections(records), console, left=3)
    for line in model_lines(records):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def markdown(records: list[dict]) -> str:
    from fusedopt.bench.report import markdown_tables

    text = markdown_tables(table_sections(records), drop=("note",), left=3)
    return "\n".join([text, *[f"- {line}" for line in model_lines(records)]])


CSV_FIELDS = [
    "name", "group", "backend", "model", "mode", "jit_compile", "steps_per_execution", "optimizer",
    "params", "variables", "batch_size", "status", "rounds", "calls_per_round",
    "steps_timed_per_round", "stock_median_s", "stock_q25_s", "stock_q75_s",
    "fusedopt_median_s", "fusedopt_q25_s", "fusedopt_q75_s", "no_update_median_s",
    "no_update_q25_s", "no_update_q75_s", "ratio_median", "ratio_q25", "ratio_q75",
    "stock_optimizer_s", "fusedopt_optimizer_s", "stock_optimizer_share",
    "fusedopt_optimizer_share", "weights_max_ulp", "weights_max_ulp_at_scale",
    "weights_differing", "weights_elements",
    "parity_max_ulp", "weights_match", "fused_variables", "fused_paths_total",
    "stock_first_round_s", "fusedopt_first_round_s", "no_update_first_round_s", "rss_bytes",
    "note",
]


def write_csv(path, records: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow(r)

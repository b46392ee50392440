"""16-bit training on Keras' torch backend (KERAS_BACKEND=torch): fusedopt
against stock Keras-torch over real ``model.fit``.

- "float16" / "bfloat16" policies: the variables and slots are 16-bit and
  take the fused path (docs/backends.md, PyTorch: the kernels load them into
  float32, run the torch form of the rule there and round each stored value
  once; stock Keras-torch's foreach ops round after every op). Not bit for
  bit, so bounded two ways: each of 48 fit steps from the same state, in
  ulps of the 16-bit type at the step's scale (tests/parity.py's step ulps;
  PER_STEP_BOUND), and, as tests/test_mixed_precision.py bounds the
  TensorFlow backend, a whole 12-step run in ulps at the scale of the larger
  of the value and 1 (STOCK_TOLERANCE), where training moved the weights
  much further than that.
- "mixed_float16" / "mixed_bfloat16" policies: float32 variables (only the
  layers compute in 16 bits), Keras wraps the optimizer in a
  LossScaleOptimizer for mixed_float16; the float32 contract holds
  (SGD bit-identical over the whole run, Adam within TORCH_SQRT step ulps
  per step).

Every test checks that the fused path ran (``fused_paths``).
"""

import os
import sys

import ml_dtypes
import numpy as np
import pytest

import keras

if keras.backend.backend() != "torch":
    pytest.skip("needs KERAS_BACKEND=torch", allow_module_level=True)

import fusedopt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from parity import per_step_ulps  # noqa: E402
from training import (assert_same_state, make_data, make_model, policy,  # noqa: E402
                      state)

# One ulp at 1.0 of each 16-bit type.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
STOCK = {fusedopt.Adam: keras.optimizers.Adam, fusedopt.AdamW: keras.optimizers.AdamW,
         fusedopt.SGD: keras.optimizers.SGD}
# As tests/test_mixed_precision.py: beta_2 = 0.99, since the default 0.999
# rounds to 1.0 in bfloat16, where stock Keras-torch computes alpha = 0 (and
# so does fusedopt, computing alpha as it does, in the variables' dtype) and
# never moves a variable; epsilon = 1e-3, since with 1e-7 (a float16
# subnormal) stock float16 Adam's g * g underflows and its steps blow up
# (docs/backends.md), so the two are not comparable.
OPTIMIZERS = {
    "Adam": (fusedopt.Adam, dict(learning_rate=0.01, beta_2=0.99, epsilon=1e-3)),
    "AdamW": (fusedopt.AdamW, dict(learning_rate=0.01, beta_2=0.99, epsilon=1e-3,
                                   weight_decay=0.05)),
    "SGD_momentum": (fusedopt.SGD, dict(learning_rate=0.05, momentum=0.9)),
}
# See test_torch_optimizers.TORCH_SQRT: torch's CPU sqrt is not correctly rounded.
TORCH_SQRT = 2

# Stock Keras-torch rounds each foreach op's result to the 16-bit type (about
# ten per Adam update, four per momentum SGD update), fusedopt each stored
# value once, so every step differs in a last bit here and there. Steps of
# fit in the per-step test:
STEPS = 48


def inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def assert_all_fused(optimizer):
    paths = inner(optimizer).fused_paths
    assert paths and set(paths.values()) == {"fused"}, paths


def fit(optimizer, steps=STEPS, batch_size=16):
    """A fresh, identically initialized model (under the current policy)
    trained for `steps` steps of model.fit (96 samples per epoch)."""
    keras.utils.set_random_seed(1234)
    model = make_model()
    model.compile(optimizer=optimizer, loss="mse")
    x, y = make_data(96)
    epochs = steps * batch_size // len(x)
    assert epochs * len(x) == steps * batch_size
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return model


def distance_to_stock(fused, stock, dtype) -> float:
    """The largest |fused - stock| over every model and optimizer variable in
    ulps of `dtype` at the scale of max(|stock|, 1); the iteration counts
    must be equal."""
    worst = 0.0
    for i, (a, b) in enumerate(zip(state(fused), state(stock))):
        if np.asarray(a).dtype.kind in "iu":  # iterations (bfloat16's kind is "V")
            np.testing.assert_array_equal(a, b)
            continue
        a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.all(np.isfinite(a32)) and np.all(np.isfinite(b32)), i
        unit = np.maximum(np.abs(b32), 1.0) * EPS[dtype]
        worst = max(worst, float(np.max(np.abs(a32 - b32) / unit)))
    return worst


# (mantissa bits, smallest normal exponent) of each 16-bit type.
_FORMAT = {"float16": (10, -14), "bfloat16": (7, -126)}


def spacing(x, dtype):
    """The distance from |x| to the next larger value of `dtype` (float64
    arithmetic, exact), subnormals included."""
    bits, emin = _FORMAT[dtype]
    x = np.abs(np.asarray(x, np.float64))
    _, e = np.frexp(x)  # x = f * 2**e, 0.5 <= f < 1
    exponent = np.maximum(np.where(x > 0, e - 1, emin), emin)
    return np.ldexp(1.0, exponent - bits)


def step_ulps_16(new_a, new_b, old, dtype) -> float:
    """tests/parity.step_ulps in units of the 16-bit `dtype`: |new_a - new_b|
    in ulps of the step's own scale, the largest of |old|, |new| and
    |new - old| per element."""
    new_a, new_b, old = (np.asarray(x, np.float32).astype(np.float64)
                         for x in (new_a, new_b, old))
    if np.array_equal(new_a, new_b, equal_nan=True):
        return 0.0
    scale = np.maximum(np.maximum(np.abs(new_b), np.abs(old)), np.abs(new_b - old))
    return float(np.max(np.abs(new_a - new_b) / spacing(scale, dtype)))


def per_step_ulps_16(fused_model, stock_model, batches, dtype) -> dict:
    """tests/parity.per_step_ulps for 16-bit models: one fit step at a time,
    the fused model set to the stock model's exact state first. Returns the
    largest step_ulps_16 over the steps: {"weights": ..., "slots": ...}."""
    worst = {"weights": 0.0, "slots": 0.0}
    n_weights = len(stock_model.weights)

    def variables(model):
        return list(model.weights) + list(inner(model.optimizer).variables)

    for model in (fused_model, stock_model):  # the slots exist before the first step
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    for x, y in batches:
        stock_vars, fused_vars = variables(stock_model), variables(fused_model)
        assert len(stock_vars) == len(fused_vars)
        old = [v.value.detach().clone() for v in stock_vars]
        for var, value in zip(fused_vars, old):
            var.assign(value.clone())
        for model in (fused_model, stock_model):
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for i, (a, b, o) in enumerate(zip(fused_vars, stock_vars, old)):
            if b.dtype != dtype:  # iterations, the learning rate (float32)
                continue
            kind = "weights" if i < n_weights else "slots"
            got = step_ulps_16(a.value.detach().float().numpy(),
                               b.value.detach().float().numpy(), o.float().numpy(), dtype)
            worst[kind] = max(worst[kind], got)
    return worst


# Per step, from the same state (per_step_ulps_16, STEPS steps of fit): the
# bound on (weights, slots) in 16-bit step ulps per (dtype, rule). Measured
# (torch 2.13 CPU, 48 steps): float16 Adam and AdamW (35, 2), momentum SGD
# (10, 1); bfloat16 Adam and AdamW (5, 2), momentum SGD (7.25, 1.5). The
# slots (m, v; the momentum) are within 2 ulps: stock rounds each of their
# two or three ops, fusedopt once. The weights are further apart where the
# step is computed from small values: the worst, float16 Adam, is a bias's
# first move from 0 (fused 2.680e-3, stock 2.747e-3, 2.5% of the step), whose
# step alpha * m / (sqrt(v) + epsilon) divides by v = (1 - beta_2) * g * g,
# below float16's smallest normal (6.1e-5) for |g| < 0.08: stock rounds that
# product (and g * g before it) to float16's fixed subnormal grid (6e-8),
# fusedopt keeps it in float32 until the stored v. Momentum SGD's 10: a
# weight at float16's smallest normal (-6.1e-5) moving by -3.9e-5, where an
# ulp is 6e-8: its new momentum, -3.9e-5, is a float16 subnormal that nearly
# cancelled (0.9 * m - lr * g; stock rounds 0.9 * m at the old momentum's
# larger scale first). The bounds are about twice the measured values.
PER_STEP_BOUND = {
    ("float16", "adam"): (64, 4), ("float16", "sgd"): (20, 4),
    ("bfloat16", "adam"): (12, 4), ("bfloat16", "sgd"): (16, 4),
}
# Over a whole run (fit()'s trajectory, FIT_STEPS steps, as on TensorFlow):
# |fused - stock| in ulps at the scale of max(|value|, 1) (distance_to_stock).
# Measured: float16 Adam 0.5, AdamW 4.0, momentum SGD 0.5; bfloat16 0.75,
# 1.5, 0.5. The bound is tests/test_mixed_precision.py's STOCK_TOLERANCE.
# Longer runs drift apart (48 steps: float16 AdamW 47, bfloat16 SGD 9; 96
# steps: float16 AdamW 147, about as far as training moved the weights): a
# last-bit difference in a gradient near 0 flips the sign of Adam's first
# update of that element, a whole learning rate, so the per-step bound above
# is the one that holds over many steps.
FIT_STEPS = 12
STOCK_TOLERANCE = {"float16": 16, "bfloat16": 4}


def rule(cls):
    return "sgd" if cls is fusedopt.SGD else "adam"


def compiled_pair(cls, kwargs):
    """[fused, stock]: the same model from the same seed, compiled with `cls`
    and with its stock counterpart, under the current dtype policy."""
    models = []
    for make in (cls, STOCK[cls]):
        keras.utils.set_random_seed(1234)
        model = make_model()
        model.compile(optimizer=make(**kwargs), loss="mse")
        models.append(model)
    return models


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", sorted(HALF))
def test_half_variables_each_step_close_to_stock(dtype, name):
    cls, kwargs = OPTIMIZERS[name]
    x, y = make_data(96)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)] * (STEPS // 6)
    with policy(dtype):
        models = compiled_pair(cls, kwargs)
        worst = per_step_ulps_16(models[0], models[1], batches, dtype)
    fused, stock = models
    assert {v.dtype for v in fused.weights} == {dtype}
    assert type(stock.optimizer).__module__.startswith("keras.src.backend.torch.optimizers")
    assert_all_fused(fused.optimizer)
    assert int(fused.optimizer.iterations.numpy()) == STEPS
    bound_weights, bound_slots = PER_STEP_BOUND[dtype, rule(cls)]
    assert worst["weights"] <= bound_weights and worst["slots"] <= bound_slots, worst
    assert worst["weights"] > 0  # not bit for bit: the check compared something


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", sorted(HALF))
def test_half_variables_fit_close_to_stock(dtype, name):
    cls, kwargs = OPTIMIZERS[name]
    with policy(dtype):
        fused = fit(cls(**kwargs), steps=FIT_STEPS)
        stock = fit(STOCK[cls](**kwargs), steps=FIT_STEPS)
        keras.utils.set_random_seed(1234)  # as fit() does
        initial = [v.numpy() for v in make_model().weights]
    assert {v.dtype for v in fused.weights} == {dtype}
    assert_all_fused(fused.optimizer)
    assert distance_to_stock(fused, stock, dtype) <= STOCK_TOLERANCE[dtype]
    # ... where training moved every weight much further than the tolerance.
    moved = [np.max(np.abs(np.float32(w.numpy()) - np.float32(w0)))
             for w, w0 in zip(fused.weights, initial)]
    assert min(moved) > 2 * STOCK_TOLERANCE[dtype] * EPS[dtype], moved


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_policy_keeps_the_float32_contract(policy_name, name):
    # float32 variables, 16-bit layers; Keras wraps the optimizer in a
    # LossScaleOptimizer under mixed_float16. SGD bit-identical to stock over
    # the whole run, Adam within TORCH_SQRT step ulps of each step.
    cls, kwargs = OPTIMIZERS[name]
    with policy(policy_name):
        models = compiled_pair(cls, kwargs)
        fused, stock = models
        x, y = make_data(96)
        if cls is fusedopt.SGD:
            for model in models:
                model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
            assert_same_state(fused, stock)
        else:
            batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)] * 4
            assert per_step_ulps(fused, stock, batches) <= TORCH_SQRT
    assert fused.layers[0].compute_dtype == policy_name.split("_")[1]
    assert {v.dtype for v in fused.weights} == {"float32"}
    wrapped = isinstance(fused.optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (policy_name == "mixed_float16")
    assert type(inner(fused.optimizer)) is cls
    assert_all_fused(fused.optimizer)
    assert int(inner(fused.optimizer).iterations.numpy()) == 24

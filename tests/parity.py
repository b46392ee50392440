"""Parity with the stock optimizer, measured in units in the last place.

The contract (docs/design.md, "Parity"): bit-identical to the stock
optimizer eagerly and under XLA, and in traced graphs where Grappler does not
rewrite the stock arithmetic; where it does (SGD's `gradient * lr` when the
gradient is itself a product: gradient accumulation, loss scaling, global
clipping), within 1 ulp per step. Clipping by norm (its norms summed in
another order than TF's) is its own entry of the contract.
"""

import numpy as np


def _ordered(x: np.ndarray) -> np.ndarray:
    """The floats of `x` as integers in the same order as the values (so that
    adjacent floats differ by 1), as int64; -0.0 and 0.0 map to 0."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        bits = x.view(np.int64)
        return np.where(bits < 0, np.int64(-0x8000000000000000) - bits, bits)
    if x.dtype == np.float32:
        bits = x.view(np.int32).astype(np.int64)
    elif x.dtype == np.float16 or x.dtype.name == "bfloat16":
        bits = x.view(np.int16).astype(np.int64)
    else:
        raise TypeError(f"not a float array: {x.dtype}")
    sign = np.int64(1) << (8 * x.dtype.itemsize - 1)
    return np.where(bits < 0, -sign - bits, bits)


def ulp_distance(a, b) -> int:
    """The largest distance, in representable values of the dtype, between
    corresponding elements of a and b (same dtype and shape). NaN against NaN
    is 0, NaN against a number is reported as the dtype's whole range."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.size == 0:
        return 0
    if not (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
        return 0 if np.array_equal(a, b) else np.iinfo(np.int64).max
    nan_a, nan_b = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    if np.any(nan_a != nan_b):
        return np.iinfo(np.int64).max
    keep = ~nan_a
    if not keep.any():
        return 0
    return int(np.max(np.abs(_ordered(a)[keep] - _ordered(b)[keep])))


def max_ulp_distance(arrays_a, arrays_b) -> int:
    assert len(arrays_a) == len(arrays_b)
    return max((ulp_distance(x, y) for x, y in zip(arrays_a, arrays_b)), default=0)


def assert_within_ulps(arrays_a, arrays_b, ulps: int, what=""):
    worst = [(ulp_distance(x, y), i) for i, (x, y) in enumerate(zip(arrays_a, arrays_b))]
    assert len(arrays_a) == len(arrays_b)
    bad = [(d, i) for d, i in worst if d > ulps]
    assert not bad, f"{what}: variables {bad[:5]} (ulps, index) differ by more than {ulps} ulp"


def step_ulps(new_a, new_b, old) -> float:
    """How far `new_a` is from `new_b` (float32) after one step from `old`, in
    units in the last place of the step's own scale: the largest of |old|, |new| and
    |new - old| per element (a rounding difference in a step's term shows up
    relative to the term, which may be much larger than a small result)."""
    new_a, new_b, old = (np.asarray(x, np.float64) for x in (new_a, new_b, old))
    if new_b.size == 0:
        return 0.0
    if np.array_equal(new_a, new_b, equal_nan=True):
        return 0.0
    scale = np.maximum(np.maximum(np.abs(new_b), np.abs(old)), np.abs(new_b - old))
    spacing = np.spacing(scale.astype(np.float32))
    return float(np.max(np.abs(new_a - new_b) / spacing))


def per_step_ulps(fused_model, stock_model, batches) -> float:
    """Trains two identically built, compiled models one `fit` step at a time
    on `batches` [(x, y), ...]; before each step the fused model gets the
    stock model's exact state, so each step is compared from the same start.
    Returns the largest `step_ulps` over every model and optimizer variable
    and step (float32 models)."""
    worst = 0.0
    for x, y in batches:
        stock_vars = list(stock_model.weights) + list(stock_model.optimizer.variables)
        fused_vars = list(fused_model.weights) + list(fused_model.optimizer.variables)
        assert len(stock_vars) == len(fused_vars)
        old = [v.numpy() for v in stock_vars]
        for var, value in zip(fused_vars, old):
            var.assign(value)
        for model in (fused_model, stock_model):
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for a, b, o in zip(fused_vars, stock_vars, old):
            worst = max(worst, step_ulps(a.numpy(), b.numpy(), o))
    return worst


# The parity contract's bounds, in step ulps per step (docs/design.md, "Parity").
EXACT = 0
# SGD in traced graphs where Grappler rewrites the stock `gradient * lr` of a
# gradient that is itself a product (gradient accumulation, a loss scale that
# is not a power of two, a global clip scale) into `g * (scale * lr)`: the
# product rounds differently (1 ulp of the term); momentum carries the term
# into the buffer, and Nesterov uses it twice.
GRAPPLER_PRODUCT = 2
# A folded clip by norm or by global norm: the norms are summed in double in
# a fixed order, stock Keras sums float32 in TF's reduction order, whose own
# error over a few hundred elements is tens of ulps; the clip factor differs
# by that much and Adam's update with it.
NORM_CLIP = 32


def fit_parity(make_fused, make_stock, bound, run_eagerly=False, epochs=3):
    """Trains fresh models with `make_fused()` and `make_stock()` optimizers
    and checks the parity contract: bound EXACT compares whole training runs
    bit for bit; a positive bound is checked step by step (`per_step_ulps`)."""
    from training import assert_same_state, make_data, make_model, train

    if bound == EXACT:
        fused = train(make_fused(), epochs=epochs, run_eagerly=run_eagerly)
        stock = train(make_stock(), epochs=epochs, run_eagerly=run_eagerly)
        assert_same_state(fused, stock)
        return fused
    import keras

    models = []
    for make in (make_fused, make_stock):
        keras.utils.set_random_seed(1234)
        model = make_model()
        model.compile(optimizer=make(), loss="mse", run_eagerly=run_eagerly)
        models.append(model)
    x, y = make_data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    worst = per_step_ulps(models[0], models[1], batches)
    assert worst <= bound, f"{worst} step ulps, contract {bound}"
    return models[0]

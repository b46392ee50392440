"""Parity with the stock optimizer, measured in units in the last place.

The contract (docs/design.md, "Parity"): bit-identical to the stock
optimizer eagerly and under XLA, and in traced graphs where Grappler does not
rewrite the stock arithmetic; where it does (SGD's `gradient * lr` when the
gradient is itself a product: gradient accumulation, loss scaling, global
clipping), within 1 ulp per step. Clipping by norm (its norms summed in
another order than TF's) is its own entry of the contract.
"""

import ml_dtypes
import numpy as np


# dtype -> (unsigned integer type of the same width, sign bit)
_BITS = {
    np.dtype(np.float16): (np.uint16, 1 << 15),
    np.dtype(ml_dtypes.bfloat16): (np.uint16, 1 << 15),
    np.dtype(np.float32): (np.uint32, 1 << 31),
    np.dtype(np.float64): (np.uint64, 1 << 63),
}

# The distance reported where no number of ulps bridges two values: NaN
# against a number, an infinity against anything but the same infinity.
INFINITE = np.uint64(np.iinfo(np.uint64).max)


def _ordered(x: np.ndarray) -> np.ndarray:
    """The floats of `x` as uint64 in the same order as the values, so that
    adjacent floats differ by 1 (-0.0 and 0.0 map to the same integer)."""
    uint, sign = _BITS[x.dtype]
    bits = x.view(uint).astype(np.uint64)
    sign = np.uint64(sign)
    magnitude = bits & ~sign
    # Negative values below the midpoint, mirrored; positive ones above it.
    return np.where(bits & sign, sign - magnitude, sign + magnitude)


def ulp_distances(a, b) -> np.ndarray:
    """Elementwise number of representable values between `a` and `b` (uint64).

    Both of one floating-point dtype (float16, bfloat16, float32, float64),
    broadcasting. 0 where they are equal (+0.0 and -0.0 included) or both
    NaN; `INFINITE` where only one is NaN, or where one is infinite and the
    other is not the same infinity (an overflow is never "close").
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        raise TypeError(f"ulp distance of {a.dtype} and {b.dtype}: compare one dtype")
    if a.dtype not in _BITS:
        raise TypeError(f"ulp distance of float16, bfloat16, float32 or float64; got {a.dtype}")
    a, b = np.broadcast_arrays(a, b)
    oa, ob = _ordered(np.ascontiguousarray(a)), _ordered(np.ascontiguousarray(b))
    distance = np.where(oa >= ob, oa - ob, ob - oa)
    wa, wb = a.astype(np.float64), b.astype(np.float64)  # exact for every dtype here
    zero = np.uint64(0)
    infinite = np.isinf(wa) | np.isinf(wb)
    distance = np.where(infinite, np.where(wa == wb, zero, INFINITE), distance)
    nan_a, nan_b = np.isnan(wa), np.isnan(wb)
    distance = np.where(nan_a | nan_b, np.where(nan_a & nan_b, zero, INFINITE), distance)
    return distance.astype(np.uint64)


def ulp_distance(a, b) -> int:
    """The largest distance, in representable values of the dtype, between
    corresponding elements of a and b (same dtype and shape; `ulp_distances`).
    Arrays of other dtypes (the iteration count): 0 if equal, else INFINITE."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.size == 0:
        return 0
    if a.dtype not in _BITS:
        return 0 if np.array_equal(a, b) else int(INFINITE)
    return int(ulp_distances(a, b).max())


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


def fit_parity(make_fused, make_stock, bound, run_eagerly=False, epochs=3, passes=1, what=""):
    """Trains fresh models with `make_fused()` and `make_stock()` optimizers
    and checks the parity contract: bound EXACT compares whole training runs
    bit for bit over `epochs`; a positive bound is checked step by step
    (`per_step_ulps`) over `passes` passes of the data. Returns the fused
    model; prints the step ulps measured, labelled `what` (the GPU runs
    record them)."""
    from training import assert_same_state, make_data, make_model, train

    if bound == EXACT:
        fused = train(make_fused(), epochs=epochs, run_eagerly=run_eagerly)
        stock = train(make_stock(), epochs=epochs, run_eagerly=run_eagerly)
        assert_same_state(fused, stock)
        print(f"{what}: bit for bit over {epochs} epochs")
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
    worst = per_step_ulps(models[0], models[1], batches * passes)
    print(f"{what}: {worst} step ulps (contract {bound})")
    assert worst <= bound, f"{what}: {worst} step ulps, contract {bound}"
    return models[0]

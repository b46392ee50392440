"""Parity between two trained models: the one comparison the optimizer tests use.

A contract says how close a fused run must be to the stock run:

- ``"exact"``: every value bit for bit (NaN equal to NaN, as NumPy compares);
- an int ``n``: every floating-point value within ``n`` units in the last
  place (ulps) of the stock value, every other value (the iteration counter)
  equal;
- ``Ulps(n, per_step=True)``: within ``n`` ulps per optimizer step taken (the
  bound is ``n * iterations``), for rules that may round differently once per
  step (Grappler's rewrite of the stock arithmetic in traced graphs);
- ``Ulps(n, scale="tensor")``: every difference within ``n`` ulps of the
  variable's largest stock value (`tensor_ulp_distance`). A rounding
  difference that training carries on turns into many ulps of the elements
  that cancel to near zero (a momentum of 1e-7 in a tensor of 1e-3), while a
  wrong rule shows at the scale of the tensor: this contract bounds what
  matters tightly without failing on cancellation.

The ulp distance is measured on the integer representation of the values
(`ulp_distance`), so it means the same at every magnitude; no rtol or atol.
Non-finite values must match exactly under every contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

EXACT = "exact"


@dataclass(frozen=True)
class Ulps:
    """At most `n` ulps, or `n` ulps per step if `per_step`."""

    n: int
    per_step: bool = False
    scale: str = "element"  # or "tensor": ulps of the variable's largest value

    def __post_init__(self):
        if self.scale not in ("element", "tensor"):
            raise ValueError(f"scale must be 'element' or 'tensor'; got {self.scale!r}")

    def bound(self, steps: int) -> int:
        return self.n * steps if self.per_step else self.n

    def distance(self, a: np.ndarray, b: np.ndarray) -> tuple:
        """(largest distance, index where it is) under this contract's scale."""
        if not a.size:
            return 0, ()
        if self.scale == "element":
            d = ulp_distance(a, b)
        else:
            d = tensor_ulp_distance(a, b)
        at = tuple(int(i) for i in np.unravel_index(int(np.argmax(d)), d.shape))
        worst = d[at]
        return (int(worst) if self.scale == "element" else float(worst)), at


# dtype -> (unsigned integer type of the same width, sign bit)
_BITS = {
    np.dtype(np.float16): (np.uint16, 1 << 15),
    np.dtype(ml_dtypes.bfloat16): (np.uint16, 1 << 15),
    np.dtype(np.float32): (np.uint32, 1 << 31),
    np.dtype(np.float64): (np.uint64, 1 << 63),
}

# The distance reported where no number of ulps can bridge two values: NaN
# against a number, an infinity against anything else.
INFINITE = np.uint64(np.iinfo(np.uint64).max)


def _ordered(x: np.ndarray) -> np.ndarray:
    """Maps floats onto uint64 so that adjacent floats map onto adjacent
    integers (and -0.0 onto the same integer as +0.0)."""
    uint, sign = _BITS[x.dtype]
    bits = x.view(uint).astype(np.uint64)
    sign = np.uint64(sign)
    magnitude = bits & ~sign
    # Negative values below the midpoint, mirrored; positive ones above it.
    return np.where(bits & sign, sign - magnitude, sign + magnitude)


def ulp_distance(a, b) -> np.ndarray:
    """Elementwise number of representable values between `a` and `b` (uint64).

    Both must have the same floating-point dtype (float16, bfloat16, float32,
    float64) and broadcast. 0 where they are equal (+0.0 and -0.0 included)
    or both NaN; `INFINITE` where only one is NaN, or where one is infinite
    and the other is not the same infinity (an overflow is never "close").
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        raise TypeError(f"ulp_distance of {a.dtype} and {b.dtype}: compare one dtype")
    if a.dtype not in _BITS:
        raise TypeError(f"ulp_distance takes float16, bfloat16, float32 or float64; got {a.dtype}")
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


def tensor_ulp_distance(a, b) -> np.ndarray:
    """Elementwise |a - b| in ulps of max(|b|), the ulp of the largest stock
    value (float64 array); non-finite values as in `ulp_distance` (0 or inf)."""
    a, b = np.asarray(a), np.asarray(b)
    exact = ulp_distance(a, b)  # checks the dtypes too
    wa, wb = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(wa) & np.isfinite(wb)
    scale = np.max(np.abs(wb[finite]), initial=0.0)
    # The spacing of the dtype at the largest value (the smallest subnormal if 0).
    ulp = np.spacing(np.asarray(scale).astype(a.dtype)).astype(np.float64)
    distance = np.abs(np.subtract(wa, wb, out=np.zeros_like(wa), where=finite)) / ulp
    return np.where(finite, distance, np.where(exact == 0, 0.0, np.inf))


def state(model) -> list[np.ndarray]:
    """Every model and optimizer variable, as NumPy arrays, in order."""
    return [np.asarray(v) for v in model.weights] + [np.asarray(v)
                                                     for v in model.optimizer.variables]


def assert_parity(fused, stock, contract=EXACT, steps: int | None = None, select=state) -> None:
    """`fused` and `stock` (trained models) hold the same values under `contract`.

    Compares every model weight and every optimizer variable, in order (so
    the optimizers must have the same variables, in number, order and shape),
    or the arrays `select(model)` returns. `steps` is the number of optimizer
    steps, for a per-step contract (default: the stock optimizer's iteration
    count).
    """
    sa, sb = select(fused), select(stock)
    assert len(sa) == len(sb), f"{len(sa)} variables against the stock {len(sb)}"
    if isinstance(contract, int) and not isinstance(contract, bool):
        contract = Ulps(contract)
    if contract != EXACT and not isinstance(contract, Ulps):
        raise TypeError(f"contract must be 'exact', an int or Ulps; got {contract!r}")
    if steps is None:
        steps = int(np.asarray(stock.optimizer.iterations))
    for i, (x, y) in enumerate(zip(sa, sb)):
        assert x.shape == y.shape, f"variable {i}: shape {x.shape} against {y.shape}"
        assert x.dtype == y.dtype, f"variable {i}: dtype {x.dtype} against {y.dtype}"
        if contract == EXACT or x.dtype not in _BITS:
            np.testing.assert_array_equal(x, y, err_msg=f"variable {i} differs")
            continue
        bound = contract.bound(steps)
        worst, at = contract.distance(x, y)
        if worst > bound:
            raise AssertionError(
                f"variable {i}: {worst} ulps at {at} ({x[at]!r} against stock {y[at]!r}); "
                f"the contract allows {bound} ({contract})"
            )


def max_ulps(fused, stock, scale="element") -> float:
    """The largest distance over every floating-point value, in ulps of each
    element or of each variable's largest value (for measuring a contract;
    tests assert with `assert_parity`)."""
    contract = Ulps(0, scale=scale)
    worst = 0
    for x, y in zip(state(fused), state(stock)):
        if x.dtype in _BITS:
            worst = max(worst, float(contract.distance(x, y)[0]))
    return worst

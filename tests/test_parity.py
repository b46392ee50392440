"""The ulp distances of tests/parity.py, which the parity contract is measured in."""

import ml_dtypes
import numpy as np
import pytest

from parity import INFINITE, assert_within_ulps, step_ulps, ulp_distance, ulp_distances

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def step_bits(x, k):
    """The value k representable values above x (x >= 0), by its bits."""
    x = np.asarray(x)
    uint = UINT[x.dtype.itemsize]
    return (x.view(uint) + uint(k)).view(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_ulp_distance_counts_representable_values(dtype):
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(100)).astype(dtype)
    k = rng.integers(0, 50, 100)
    y = np.array([step_bits(a, int(n)) for a, n in zip(x, k)], dtype)
    np.testing.assert_array_equal(ulp_distances(x, y), k.astype(np.uint64))
    np.testing.assert_array_equal(ulp_distances(y, x), k.astype(np.uint64))  # symmetric
    np.testing.assert_array_equal(ulp_distances(-x, -y), k.astype(np.uint64))

    tiny = step_bits(np.zeros((), dtype), 1)  # smallest subnormal
    zero = np.zeros((), dtype)
    assert ulp_distances(zero, -zero) == 0
    assert ulp_distances(-tiny, tiny) == 2  # across zero: -tiny, 0, tiny
    big = np.asarray(ml_dtypes.finfo(dtype).max, dtype)
    # From -max to +max: every finite value but one of the two zeros.
    assert ulp_distances(-big, big) == 2 * int(big.view(UINT[big.itemsize]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_ulp_distance_of_non_finite_values(dtype):
    inf, nan = np.asarray(np.inf, dtype), np.asarray(np.nan, dtype)
    big = np.asarray(ml_dtypes.finfo(dtype).max, dtype)
    assert ulp_distances(nan, nan) == 0
    assert ulp_distances(nan, np.zeros((), dtype)) == INFINITE
    assert ulp_distances(inf, inf) == 0
    assert ulp_distances(inf, -inf) == INFINITE
    assert ulp_distances(inf, big) == INFINITE  # an overflow is never close
    assert ulp_distances(nan, inf) == INFINITE


def test_ulp_distance_refuses_mixed_or_other_dtypes():
    with pytest.raises(TypeError, match="one dtype"):
        ulp_distances(np.float32(1), np.float64(1))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        ulp_distances(np.int32(1), np.int32(1))


def test_ulp_distance_is_the_largest_and_compares_other_dtypes_exactly():
    x = np.array([0.25, 1.0, 3.0], np.float32)
    y = x.copy()
    y[1] = step_bits(x[1], 4)
    assert ulp_distance(x, y) == 4
    assert ulp_distance(x[:0], y[:0]) == 0
    assert ulp_distance(np.int64(3), np.int64(3)) == 0
    assert ulp_distance(np.int64(3), np.int64(4)) == int(INFINITE)
    assert_within_ulps([x], [y], 4)
    with pytest.raises(AssertionError, match="more than 3 ulp"):
        assert_within_ulps([x], [y], 3)


def test_step_ulps_are_ulps_of_the_step_scale():
    old = np.array([1.0, 0.0], np.float32)
    new = np.array([1.0 - 2**-10, 2**-30], np.float32)  # a step of 2**-10, a tiny one
    other = new.copy()
    other[0] = np.nextafter(new[0], np.float32(0))
    # One ulp of the result just below 1 is half an ulp of the scale 1.0.
    assert step_ulps(other, new, old) == 0.5
    other = new.copy()
    other[1] = 2**-29  # 2**-30 away: an ulp of 2**-30 itself, the step's scale
    assert step_ulps(other, new, old) == 2**23
    assert step_ulps(new, new, old) == 0

"""The ulp distance and the parity contracts of tests/parity.py."""

import ml_dtypes
import numpy as np
import pytest

from parity import INFINITE, Ulps, assert_parity, tensor_ulp_distance, ulp_distance

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
    np.testing.assert_array_equal(ulp_distance(x, y), k.astype(np.uint64))
    np.testing.assert_array_equal(ulp_distance(y, x), k.astype(np.uint64))  # symmetric
    np.testing.assert_array_equal(ulp_distance(-x, -y), k.astype(np.uint64))

    tiny = step_bits(np.zeros((), dtype), 1)  # smallest subnormal
    zero = np.zeros((), dtype)
    assert ulp_distance(zero, -zero) == 0
    assert ulp_distance(-tiny, tiny) == 2  # across zero: -tiny, 0, tiny
    big = np.asarray(ml_dtypes.finfo(dtype).max, dtype)
    # From -max to +max: every finite value but one of the two zeros.
    assert ulp_distance(-big, big) == 2 * int(big.view(UINT[big.itemsize]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_ulp_distance_of_non_finite_values(dtype):
    inf, nan = np.asarray(np.inf, dtype), np.asarray(np.nan, dtype)
    big = np.asarray(ml_dtypes.finfo(dtype).max, dtype)
    assert ulp_distance(nan, nan) == 0
    assert ulp_distance(nan, np.zeros((), dtype)) == INFINITE
    assert ulp_distance(inf, inf) == 0
    assert ulp_distance(inf, -inf) == INFINITE
    assert ulp_distance(inf, big) == INFINITE  # an overflow is never close
    assert ulp_distance(nan, inf) == INFINITE


def test_ulp_distance_refuses_mixed_or_other_dtypes():
    with pytest.raises(TypeError, match="one dtype"):
        ulp_distance(np.float32(1), np.float64(1))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        ulp_distance(np.int32(1), np.int32(1))


def test_tensor_ulp_distance_is_in_ulps_of_the_largest_value():
    b = np.array([1.0, 1e-7, 0.5, 0.0], np.float32)
    a = b.copy()
    a[1] = 2e-7                      # 1e-7 away: 0.84 ulps of 1.0 (2**-23)
    a[2] = step_bits(b[2], 1)        # one ulp of 0.5 is half an ulp of 1.0
    d = tensor_ulp_distance(a, b)
    np.testing.assert_allclose(d, [0, 1e-7 / 2**-23, 0.5, 0], rtol=1e-6)
    assert ulp_distance(a, b)[1] > 1_000_000  # elementwise: millions of ulps
    assert np.all(tensor_ulp_distance(np.zeros(2, np.float32), np.zeros(2, np.float32)) == 0)
    nan = np.array([np.nan, 1.0], np.float32)
    np.testing.assert_array_equal(tensor_ulp_distance(nan, nan), [0, 0])
    assert np.isinf(tensor_ulp_distance(nan, np.ones(2, np.float32))[0])


class _Model:
    """What assert_parity reads of a model: weights, optimizer variables and
    the optimizer's iteration count."""

    def __init__(self, weights, iterations=3):
        self.weights = [np.asarray(w) for w in weights]
        self.optimizer = type("Opt", (), {"variables": [np.int64(iterations)],
                                          "iterations": np.int64(iterations)})()


def test_assert_parity_holds_each_contract():
    x = np.array([0.25, 1.0, 3.0], np.float32)
    one_ulp = x.copy()
    one_ulp[1] = step_bits(x[1], 1)
    four_ulps = x.copy()
    four_ulps[1] = step_bits(x[1], 4)

    assert_parity(_Model([x]), _Model([x.copy()]), "exact")
    with pytest.raises(AssertionError):
        assert_parity(_Model([one_ulp]), _Model([x]), "exact")
    assert_parity(_Model([one_ulp]), _Model([x]), 1)
    with pytest.raises(AssertionError, match="4 ulps at \\(1,\\)"):
        assert_parity(_Model([four_ulps]), _Model([x]), 3)
    # Per step: 1 ulp per step over 3 steps allows 3, not 4.
    assert_parity(_Model([step_bits(x, 3)]), _Model([x]), Ulps(1, per_step=True))
    with pytest.raises(AssertionError):
        assert_parity(_Model([four_ulps]), _Model([x]), Ulps(1, per_step=True))
    # Of the tensor: 4 ulps of 1.0 are 4/2 = 2 ulps of the largest value, 3.0.
    assert_parity(_Model([four_ulps]), _Model([x]), Ulps(2, scale="tensor"))
    with pytest.raises(AssertionError):
        assert_parity(_Model([four_ulps]), _Model([x]), Ulps(1, scale="tensor"))
    # Shapes, dtypes, the number of variables and integer values are exact.
    with pytest.raises(AssertionError, match="shape"):
        assert_parity(_Model([x[:2]]), _Model([x]), 1)
    with pytest.raises(AssertionError, match="dtype"):
        assert_parity(_Model([x.astype(np.float64)]), _Model([x]), 1)
    with pytest.raises(AssertionError, match="2 variables against the stock 3"):
        assert_parity(_Model([x]), _Model([x, x]), 1)
    with pytest.raises(AssertionError):
        assert_parity(_Model([x], iterations=4), _Model([x]), 1000)
    with pytest.raises(TypeError, match="contract"):
        assert_parity(_Model([x]), _Model([x]), 0.5)

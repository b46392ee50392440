"""FusedoptClipFactors: clip arguments from squared norms, against a float64
reference of the formulas in csrc/kernels/clip.h (tf.clip_by_norm's
max(norm, c) denominator; Keras' clip_by_global_norm scale)."""

import numpy as np
import pytest
import tensorflow as tf

import fusedopt  # noqa: F401 - loads the op library
from fusedopt import _ops


@pytest.fixture(scope="module")
def lib():
    lib = _ops.library()
    if lib is None:
        pytest.skip(f"fused TF ops unavailable: {_ops.load_error()}")
    return lib


DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def _as_dtype(x, dtype):
    """float64 values rounded to `dtype` (16-bit via float32, as TF casts)."""
    return tf.cast(tf.constant(x, tf.float64) if dtype == tf.float64 else
                   tf.constant(np.asarray(x, np.float32)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_norm_denominators_match_reference(lib, dtype):
    rng = np.random.default_rng(1)
    for n in (1, 3, 17):
        sq = rng.uniform(0, 50, n) ** 2
        sq[0] = 0.0  # an all-zero gradient: the denominator is c
        sq_t = _as_dtype(sq, dtype)
        c = 7.25
        args, finite = lib.fusedopt_clip_factors([sq_t], tf.constant(c, dtype), kind="norm")
        sq64 = sq_t.numpy().astype(np.float64)
        expected = np.concatenate([[c], np.maximum(np.sqrt(sq64), c)])
        assert args.dtype == dtype and args.shape == (n + 1,)
        np.testing.assert_array_equal(args.numpy(), _as_dtype(expected, dtype).numpy())
        assert bool(finite)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_global_scale_sums_every_group_in_order(lib, dtype):
    rng = np.random.default_rng(2)
    groups = [rng.uniform(0, 3, k) ** 2 for k in (5, 1, 9)]
    inputs = [tf.constant(groups[0], tf.float64), tf.constant(groups[1], tf.float32),
              _as_dtype(groups[2], dtype)]
    c = 1.5
    args, finite = lib.fusedopt_clip_factors(inputs, tf.constant(c, dtype), kind="global_norm")
    total = 0.0
    for t in inputs:
        for x in t.numpy().astype(np.float64):
            total += x
    norm = np.sqrt(total)
    expected = c * min(1 / norm, 1 / c) + (norm - norm)
    assert args.shape == (1,)
    np.testing.assert_array_equal(args.numpy(), _as_dtype([expected], dtype).numpy())
    assert bool(finite)
    # Below the threshold the scale is exactly 1.
    args, _ = lib.fusedopt_clip_factors([tf.constant([0.25], dtype)], tf.constant(c, dtype),
                                        kind="global_norm")
    assert args.numpy()[0] == 1


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_nonfinite_norms_are_reported_and_make_the_scale_nan(lib, bad):
    args, finite = lib.fusedopt_clip_factors(
        [tf.constant([1.0, bad]), tf.constant([2.0])], tf.constant(1.0), kind="global_norm")
    assert not bool(finite) and np.isnan(args.numpy()[0])
    args, finite = lib.fusedopt_clip_factors([tf.constant([1.0, bad])], tf.constant(1.0),
                                             kind="norm")
    assert not bool(finite)
    assert args.numpy()[1] == 1.0
    assert (np.isinf(args.numpy()[2]) if bad == np.inf else np.isnan(args.numpy()[2]))


def test_overflowing_float64_total_is_not_finite(lib):
    big = np.finfo(np.float64).max
    _, finite = lib.fusedopt_clip_factors([tf.constant([big, big], tf.float64)],
                                          tf.constant(1.0, tf.float64), kind="global_norm")
    assert not bool(finite)


@pytest.mark.parametrize("call, message", [
    (lambda lib: lib.fusedopt_clip_factors([tf.constant([1.0]), tf.constant([1.0])],
                                           tf.constant(1.0), kind="norm"), "one vector"),
    (lambda lib: lib.fusedopt_clip_factors([tf.constant([1.0])], tf.constant(0.0),
                                           kind="global_norm"), "max_norm must be > 0"),
    (lambda lib: lib.fusedopt_clip_factors([tf.constant([1.0])], tf.constant(np.nan),
                                           kind="norm"), "max_norm must be > 0"),
])
def test_bad_arguments_are_refused(lib, call, message):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        call(lib)

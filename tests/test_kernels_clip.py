"""Clipping inside the fused kernels (clip_value, clip_norm, global_clip_norm
on kernels.adam and kernels.sgd) and kernels.global_norm, against float64
NumPy references."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedopt
from fusedopt import kernels

from test_kernels_adam import (ODD_SIZES, TOLERANCES, assert_updated, copies, random_lists,
                               reference_adam)
from test_kernels_sgd import reference_sgd


def reference_clip(grads, clip_value=None, clip_norm=None, global_clip_norm=None):
    """The clipped gradients in float64 (tf.clip_by_value / tf.clip_by_norm /
    Keras' clip_by_global_norm)."""
    grads = [np.asarray(g, np.float64) for g in grads]
    if clip_value is not None:
        return [np.clip(g, -clip_value, clip_value) for g in grads]
    if clip_norm is not None:
        return [g * clip_norm / max(np.sqrt(np.sum(g * g)), clip_norm) for g in grads]
    if global_clip_norm is not None:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        return [g * global_clip_norm / max(norm, global_clip_norm) for g in grads]
    return grads


ADAM = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
# Thresholds that clip the gradients of random_state (|g| in [1.5, 2.5]).
CLIPS = [dict(clip_value=2.0), dict(clip_norm=3.0), dict(global_clip_norm=10.0)]
CLIP_IDS = ["value", "norm", "global_norm"]


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_with_clipping_matches_reference(dtype, clip):
    rng = np.random.default_rng(1)
    shapes = [(s,) for s in ODD_SIZES] + [(3, 5, 7), (0,)]
    params, grads, m, v = random_lists(rng, shapes, dtype)
    old_p, old_g, old_m, old_v = copies(params, grads, m, v)
    kernels.adam(params, grads, m, v, **ADAM, **clip)
    clipped = reference_clip(old_g, **clip)
    for i in range(len(params)):
        ref_p, ref_m, ref_v = reference_adam(old_p[i], clipped[i], old_m[i], old_v[i], **ADAM)
        assert_updated(f"params[{i}]", old_p[i], params[i], ref_p, dtype)
        assert_updated(f"m[{i}]", old_m[i], m[i], ref_m, dtype)
        np.testing.assert_allclose(v[i], ref_v, **TOLERANCES[dtype])
        np.testing.assert_array_equal(grads[i], old_g[i])  # the input is not clipped in place


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_with_clipping_matches_reference(dtype, nesterov, clip):
    rng = np.random.default_rng(2)
    params, grads, m, _ = random_lists(rng, [(s,) for s in ODD_SIZES[:9]] + [(4, 9)], dtype)
    old_p, old_g, old_m = copies(params, grads, m)
    hyper = dict(lr=0.05, momentum=0.9, nesterov=nesterov)
    kernels.sgd(params, grads, m, **hyper, **clip)
    clipped = reference_clip(old_g, **clip)
    for i in range(len(params)):
        ref_p, ref_m = reference_sgd(old_p[i], clipped[i], old_m[i], **hyper)
        np.testing.assert_allclose(params[i], ref_p, **TOLERANCES[dtype])
        np.testing.assert_allclose(m[i], ref_m, **TOLERANCES[dtype])


def test_thresholds_above_the_norm_leave_gradients_unchanged():
    # Exactly for clip by value. By norm, the factor c / max(norm, c) is
    # computed as Keras does ((g * c) / c, g * (c * (1 / c))), which may round
    # by an ulp even when nothing is clipped.
    rng = np.random.default_rng(3)
    for clip in (dict(clip_value=100.0), dict(clip_norm=1e6), dict(global_clip_norm=1e6)):
        params, grads, m, v = random_lists(rng, [(17,), (1000,)], np.float32)
        a = copies(params, m, v)
        kernels.adam(params, grads, m, v, **ADAM, **clip)
        kernels.adam(a[0], grads, a[1], a[2], **ADAM)
        for x, y in zip(params + m + v, a[0] + a[1] + a[2]):
            if "clip_value" in clip:
                np.testing.assert_array_equal(x, y)
            else:
                np.testing.assert_allclose(x, y, rtol=3e-7, atol=0)


def test_clip_by_norm_of_an_all_zero_gradient_is_zero():
    p, g = [np.ones(5, np.float32)], [np.zeros(5, np.float32)]
    m = [np.ones(5, np.float32)]
    kernels.sgd(p, g, m, lr=0.1, momentum=0.5, clip_norm=1.0)
    np.testing.assert_array_equal(m[0], np.full(5, 0.5, np.float32))


def test_non_finite_global_norm_makes_the_update_nan_like_keras():
    p, m = [np.ones(4, np.float32)], [np.zeros(4, np.float32)]
    g = [np.array([1.0, np.inf, 0.0, 2.0], np.float32)]
    kernels.sgd(p, g, m, lr=0.1, momentum=0.9, global_clip_norm=1.0)
    assert np.all(np.isnan(p[0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_norm_matches_reference(dtype):
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(dtype) for s in ODD_SIZES + [0, (7, 11)]]
    expected = np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in arrays))
    np.testing.assert_allclose(kernels.global_norm(arrays), expected, rtol=1e-13)
    assert kernels.global_norm([]) == 0.0


_NORM_SCRIPT = textwrap.dedent("""
    import numpy as np
    from fusedopt import kernels
    rng = np.random.default_rng(5)
    # 5 MB of float32: with two threads the parallel path runs (cpu/parallel.h
    # wakes a thread per 2 MiB), with one the serial path.
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (3, 40000, 100003, 1200000)]
    print(repr(kernels.global_norm(arrays)))
""")


def test_global_norm_is_deterministic_across_isas_and_threads():
    results = set()
    for isa in fusedopt.build_info()["cpu_isa_supported"]:
        for threads in ("1", "2"):
            env = {"FUSEDOPT_ISA": isa, "FUSEDOPT_NUM_THREADS": threads, "PATH": "/usr/bin"}
            out = subprocess.run([sys.executable, "-c", _NORM_SCRIPT], env=env, check=True,
                                 capture_output=True, text=True).stdout
            results.add(out.strip())
    assert len(results) == 1, results


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(clip_value=1.0, clip_norm=1.0), ValueError, "at most one"),
    (dict(clip_norm=0.0), ValueError, "clip_norm"),
    (dict(global_clip_norm=-1.0), ValueError, "global_clip_norm"),
    (dict(clip_value=float("nan")), ValueError, "clip_value"),
    (dict(clip_value="1"), TypeError, "clip_value"),
])
def test_bad_clip_arguments_are_refused_before_any_write(kwargs, error, words):
    rng = np.random.default_rng(6)
    params, grads, m, v = random_lists(rng, [(33,), (5, 5)], np.float32)
    before = copies(params, m, v)
    with pytest.raises(error, match=words):
        kernels.adam(params, grads, m, v, **ADAM, **kwargs)
    with pytest.raises(error, match=words):
        kernels.sgd(params, grads, m, lr=0.1, momentum=0.5, **kwargs)
    for x, y in zip(params + m + v, before[0] + before[1] + before[2]):
        np.testing.assert_array_equal(x, y)


def test_global_norm_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match=r"arrays\[1\]"):
        kernels.global_norm([np.ones(3, np.float32), np.ones(3, np.float64)])

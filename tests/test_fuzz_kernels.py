"""Property tests: kernels.adam, kernels.sgd (every variant) and
kernels.global_norm over random shapes, tensor counts, dtypes,
hyperparameters and clip options, against a float64 NumPy reference.

Sizes include 0, 1, sizes around the vector width (16) and the chunk size
(32768). Every array is a view inside a larger buffer at a random (element
aligned) offset, between poisoned guard regions that must keep their bits:
an out-of-bounds read shows as a wrong result, an out-of-bounds write as a
changed guard.

Derandomized (a fixed sequence of examples), so CI runs are reproducible;
`FUSEDOPT_FUZZ_EXAMPLES=500` explores more locally.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusedopt import kernels

CHUNK = 32768
EXAMPLES = int(os.environ.get("FUSEDOPT_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Sizes that exercise the vector tails and the chunk boundaries, and some
# random ones.
EDGE_SIZES = [0, 1, 2, 15, 16, 17, 31, 33, 63, 65, 255, 257, CHUNK - 1, CHUNK + 1]
GUARD = 19  # elements of poison on each side (not a multiple of the vector width)
POISON = {np.float32: np.uint32(0x7FC0DEAD), np.float64: np.uint64(0x7FF8DEADBEEF0001)}


@st.composite
def small_shape(draw):
    return (draw(st.integers(0, 40)),)


def shape_lists(max_size):
    """A few tensors of any size, or many small ones (the multi-tensor
    tables of the drivers)."""
    return st.one_of(st.lists(shapes(), min_size=0, max_size=max_size),
                     st.lists(small_shape(), min_size=20, max_size=80))


@st.composite
def shapes(draw):
    size = draw(st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 3000)))
    # Sometimes 2-D (same memory, another shape); 0-d for size 1.
    if size == 1 and draw(st.booleans()):
        return ()
    if size > 1 and size % 3 == 0 and draw(st.booleans()):
        return (3, size // 3)
    return (size,)


class Guarded:
    """Arrays placed in poisoned buffers, checked for stray writes."""

    def __init__(self, rng):
        self.rng = rng
        self.buffers = []

    def place(self, values):
        dtype = values.dtype.type
        offset = int(self.rng.integers(0, 16))  # element offset inside the buffer
        buf = np.empty(GUARD + offset + values.size + GUARD, dtype)
        buf.view(POISON[dtype].dtype)[:] = POISON[dtype]
        start = GUARD + offset
        view = buf[start:start + values.size].reshape(values.shape)
        view[...] = values
        self.buffers.append((buf, start, values.size))
        return view

    def check(self):
        for buf, start, size in self.buffers:
            bits = buf.view(POISON[buf.dtype.type].dtype)
            outside = np.concatenate([bits[:start], bits[start + size:]])
            assert np.all(outside == POISON[buf.dtype.type]), "a write outside an array"


def random_values(rng, shape, dtype, low=None, high=None):
    if low is not None:
        return np.asarray(rng.uniform(low, high, shape), dtype)
    return np.asarray(rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 30.0]), dtype)


clip_options = st.one_of(
    st.just({}),
    st.builds(lambda c: {"clip_value": c}, st.floats(1e-3, 10.0)),
    st.builds(lambda c: {"clip_norm": c}, st.floats(1e-3, 100.0)),
    st.builds(lambda c: {"global_clip_norm": c}, st.floats(1e-3, 100.0)),
)


def clipped_reference(grads, clip):
    """The float64 clipped gradients (Keras' clipvalue / clipnorm /
    global_clipnorm semantics)."""
    g = [x.astype(np.float64) for x in grads]
    if "clip_value" in clip:
        c = clip["clip_value"]
        return [np.clip(x, -c, c) for x in g]
    if "clip_norm" in clip:
        c = clip["clip_norm"]
        return [x * c / max(np.sqrt(np.sum(x * x)), c) for x in g]
    if "global_clip_norm" in clip:
        c = clip["global_clip_norm"]
        norm = np.sqrt(sum(np.sum(x * x) for x in g))
        return [x * (c / max(norm, c)) for x in g]
    return g


def assert_close(name, got, ref, scale, dtype, where=True):
    """|got - ref| within a few roundings of the magnitudes involved (at the
    elements `where` selects)."""
    eps = np.finfo(dtype).eps
    with np.errstate(invalid="ignore"):
        err = np.abs(got.astype(np.float64) - ref)
        bound = 16 * eps * scale + np.finfo(dtype).tiny
        # Where the reference itself is not finite (0 / 0 with epsilon = 0),
        # the kernel must agree on that much.
        bad = ((err > bound) | (np.isfinite(ref) != np.isfinite(got))) & where
    assert not np.any(bad), (
        f"{name}: {np.count_nonzero(bad)} of {got.size} elements off, worst "
        f"{np.max(err - bound):.3g} beyond the bound")


@st.composite
def adam_cases(draw):
    return dict(
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        shapes=draw(shape_lists(5)),
        lr=draw(st.one_of(st.just(0.0), st.floats(1e-6, 1.0))),
        beta_1=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.999))),
        beta_2=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.9999))),
        epsilon=draw(st.one_of(st.just(0.0), st.floats(1e-8, 1e-2))),
        step=draw(st.one_of(st.integers(1, 10), st.integers(1, 10**7))),
        weight_decay=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        clip=draw(clip_options),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@SETTINGS
@given(adam_cases())
def test_adam_matches_float64_reference(case):
    dtype = case["dtype"]
    rng = np.random.default_rng(case["seed"])
    guard = Guarded(rng)
    n = len(case["shapes"])
    p0 = [random_values(rng, s, dtype) for s in case["shapes"]]
    g0 = [random_values(rng, s, dtype) for s in case["shapes"]]
    m0 = [random_values(rng, s, dtype) for s in case["shapes"]]
    v0 = [random_values(rng, s, dtype, 1e-4, 4.0) for s in case["shapes"]]  # > 0
    p, g, m, v = ([guard.place(x) for x in xs] for xs in (p0, g0, m0, v0))
    hyper = {k: case[k] for k in ("lr", "beta_1", "beta_2", "epsilon", "step",
                                  "weight_decay")}
    kernels.adam(p, g, m, v, **hyper, **case["clip"])
    guard.check()

    lr, b1, b2, eps, t, wd = (hyper[k] for k in ("lr", "beta_1", "beta_2", "epsilon", "step",
                                                  "weight_decay"))
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    gc = clipped_reference(g0, case["clip"])
    for i in range(n):
        np.testing.assert_array_equal(g[i], g0[i])  # gradients are read only
        P, M, V, G = (x.astype(np.float64) for x in (p0[i], m0[i], v0[i], gc[i]))
        decayed = P - P * wd * lr
        m_ref = M + (G - M) * (1 - b1)
        v_ref = V + (G * G - V) * (1 - b2)
        with np.errstate(divide="ignore", invalid="ignore"):
            denominator = np.sqrt(v_ref) + eps
            update = alpha * m_ref / denominator
            # The roundings of m and v are relative to |M| + |G| and
            # |V| + G*G (not to m and v, which may cancel) and carry into the
            # update: through m linearly, through v by d sqrt(v) / dv.
            update_scale = (alpha * (np.abs(M) + np.abs(G)) / denominator
                            + np.abs(update) * (np.abs(V) + G * G)
                            / (2 * np.sqrt(v_ref) * denominator))
        p_ref = decayed - update
        assert_close(f"m[{i}]", m[i], m_ref, np.abs(M) + np.abs(G), dtype)
        assert_close(f"v[{i}]", v[i], v_ref, np.abs(V) + G * G, dtype)
        # Where v is within its rounding of 0 (beta_2 ~ 0 and g*g << v), the
        # float32 rule itself (Keras' too) may give v <= 0 and a NaN step:
        # only the well-conditioned elements are compared.
        v_bound = 16 * np.finfo(dtype).eps * (np.abs(V) + G * G)
        assert_close(f"params[{i}]", p[i], p_ref, np.abs(P) + update_scale, dtype,
                     where=v_ref > 2 * v_bound)


@st.composite
def sgd_cases(draw):
    variant = draw(st.sampled_from(["plain", "momentum", "nesterov", "buffers_momentum_0"]))
    momentum = {"plain": 0.0, "buffers_momentum_0": 0.0}.get(
        variant, draw(st.one_of(st.just(1.0), st.floats(0.0, 1.0))))
    return dict(
        variant=variant,
        momentum=momentum,
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        shapes=draw(shape_lists(5)),
        lr=draw(st.one_of(st.just(0.0), st.floats(1e-6, 2.0))),
        weight_decay=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        clip=draw(clip_options),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@SETTINGS
@given(sgd_cases())
def test_sgd_matches_float64_reference(case):
    dtype = case["dtype"]
    rng = np.random.default_rng(case["seed"])
    guard = Guarded(rng)
    n = len(case["shapes"])
    p0 = [random_values(rng, s, dtype) for s in case["shapes"]]
    g0 = [random_values(rng, s, dtype) for s in case["shapes"]]
    m0 = [random_values(rng, s, dtype) for s in case["shapes"]]
    p, g = [guard.place(x) for x in p0], [guard.place(x) for x in g0]
    buffers = case["variant"] != "plain"
    m = [guard.place(x) for x in m0] if buffers else None
    lr, mu, wd = case["lr"], case["momentum"], case["weight_decay"]
    kernels.sgd(p, g, m, lr=lr, momentum=mu, nesterov=case["variant"] == "nesterov",
                weight_decay=wd, **case["clip"])
    guard.check()

    gc = clipped_reference(g0, case["clip"])
    for i in range(n):
        np.testing.assert_array_equal(g[i], g0[i])
        P, M, G = (x.astype(np.float64) for x in (p0[i], m0[i], gc[i]))
        decayed = P - P * wd * lr
        if not buffers:
            p_ref = decayed - G * lr
            scale = np.abs(P) + np.abs(G * lr)
        else:
            m_ref = M * mu - G * lr
            assert_close(f"momentums[{i}]", m[i], m_ref, np.abs(M * mu) + np.abs(G * lr), dtype)
            if case["variant"] == "nesterov":
                p_ref = decayed + m_ref * mu - G * lr
                scale = np.abs(P) + np.abs(M * mu) + np.abs(G * lr)
            else:
                p_ref = decayed + m_ref
                scale = np.abs(P) + np.abs(M * mu) + np.abs(G * lr)
        assert_close(f"params[{i}]", p[i], p_ref, scale, dtype)


@SETTINGS
@given(dtype=st.sampled_from([np.float32, np.float64]),
       shape_list=shape_lists(6),
       seed=st.integers(0, 2**32 - 1))
def test_global_norm_matches_float64_reference(dtype, shape_list, seed):
    rng = np.random.default_rng(seed)
    guard = Guarded(rng)
    x0 = [random_values(rng, s, dtype) for s in shape_list]
    x = [guard.place(a) for a in x0]
    got = kernels.global_norm(x)
    guard.check()
    for a, b in zip(x, x0):
        np.testing.assert_array_equal(a, b)
    # Accumulated in float64: equal to the float64 sum up to its rounding.
    ref = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in x0))
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-300)


@SETTINGS
@given(dtype=st.sampled_from([np.float32, np.float64]),
       shape_list=st.lists(shapes(), min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1), special=st.sampled_from([np.inf, -np.inf, np.nan]))
def test_non_finite_gradients_propagate_as_in_keras(dtype, shape_list, seed, special):
    """A non-finite gradient element makes its parameter element non-finite
    (no clipping: the rule is element-wise) and leaves the others finite."""
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(s)) for s in shape_list]
    if sum(sizes) == 0:
        return
    p = [random_values(rng, s, dtype) for s in shape_list]
    g = [random_values(rng, s, dtype) for s in shape_list]
    m = [np.zeros(s, dtype) for s in shape_list]
    v = [np.zeros(s, dtype) for s in shape_list]
    i = int(rng.choice([k for k, n in enumerate(sizes) if n]))
    j = int(rng.integers(sizes[i]))
    g[i].reshape(-1)[j] = special
    kernels.adam(p, g, m, v, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    for k in range(len(p)):
        finite = np.isfinite(p[k]).reshape(-1)
        expected = np.ones(sizes[k], bool)
        if k == i:
            expected[j] = False
        np.testing.assert_array_equal(finite, expected, err_msg=f"params[{k}]")


SPECIALS = [np.inf, -np.inf, np.nan, "max", "subnormal", "-0"]


CLIPS = [{}, {"clip_value": 1.0}, {"clip_norm": 1.0}, {"global_clip_norm": 1.0}]


@SETTINGS
@given(dtype=st.sampled_from([np.float32, np.float64]), shape_list=shape_lists(5),
       seed=st.integers(0, 2**32 - 1),
       specials=st.lists(st.sampled_from(SPECIALS), min_size=0, max_size=3),
       clip=st.sampled_from(CLIPS))
def test_all_finite_and_skip_nonfinite(dtype, shape_list, seed, specials, clip):
    """kernels.all_finite equals NumPy's isfinite over everything (finite
    extremes included), and skip_nonfinite=True skips exactly the steps it
    should: returns False and writes nothing, or runs the normal step. With
    clip_norm / global_clip_norm the clip's squared norms decide first (a
    float64 "max" element overflows them while finite: then the elements
    decide)."""
    rng = np.random.default_rng(seed)
    guard = Guarded(rng)
    g0 = [random_values(rng, s, dtype) for s in shape_list]
    sizes = [a.size for a in g0]
    info = np.finfo(dtype)
    for special in specials:
        if sum(sizes) == 0:
            break
        i = int(rng.choice([k for k, n in enumerate(sizes) if n]))
        value = {"max": info.max, "subnormal": info.smallest_subnormal, "-0": -0.0}.get(
            special, special)
        g0[i].reshape(-1)[int(rng.integers(sizes[i]))] = value
    g = [guard.place(a) for a in g0]
    finite = all(np.all(np.isfinite(a)) for a in g0)
    assert kernels.all_finite(g) is finite
    guard.check()

    p0 = [random_values(rng, s, dtype) for s in shape_list]
    m0 = [random_values(rng, s, dtype) for s in shape_list]
    v0 = [random_values(rng, s, dtype, 1e-4, 4.0) for s in shape_list]
    p, m, v = ([guard.place(x) for x in xs] for xs in (p0, m0, v0))
    with np.errstate(over="ignore", invalid="ignore"):
        ran = kernels.adam(p, g, m, v, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                           step=2, skip_nonfinite=True, **clip)
    guard.check()
    assert ran is finite
    if not finite:
        for name, got, old in (("params", p, p0), ("m", m, m0), ("v", v, v0)):
            for k in range(len(got)):
                assert got[k].tobytes() == old[k].tobytes(), f"{name}[{k}] written"
    p0 = [a.copy() for a in p]
    expected = [a.copy() for a in p]
    ran = kernels.sgd(p, g, None, lr=0.5, skip_nonfinite=True, **clip)
    assert ran is finite
    if finite:
        kernels.sgd(expected, g, None, lr=0.5, **clip)  # the same step, unguarded
    for k in range(len(p)):
        assert p[k].tobytes() == expected[k].tobytes(), f"params[{k}]"
    if finite and not clip:
        for k in range(len(p)):
            with np.errstate(over="ignore"):
                np.testing.assert_array_equal(p[k], p0[k] - g0[k] * dtype(0.5))

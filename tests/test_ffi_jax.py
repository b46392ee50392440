"""fusedopt.backends.jax.ffi: the XLA FFI handlers (csrc/ffi/) called from JAX.

Every update is checked against the float64 NumPy references of the kernel
tests and bit for bit against fusedopt.kernels (the same CPU driver on NumPy
arrays) on the same inputs; 16-bit types against the float32 rule rounded
once. Jitted with donation, the compiled program holds one custom call and no
copy of any parameter or slot, and a new learning rate does not recompile.
Skipped without jax (an optional dependency).
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402  (a jax dependency)

from fusedopt import kernels  # noqa: E402
from fusedopt.backends.jax import ffi  # noqa: E402

from test_kernels_adam import (CHUNK, LARGE_STEPS, ODD_SIZES, TOLERANCES,  # noqa: E402
                               copies, random_lists, reference_adam)
from test_kernels_clip import reference_clip  # noqa: E402
from test_kernels_sgd import random_lists as sgd_random_lists  # noqa: E402
from test_kernels_sgd import TOLERANCES as SGD_TOLERANCES  # noqa: E402
from test_kernels_sgd import reference_sgd  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64

ADAM = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)


def adam_scalars(dtype, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0):
    """The op's scalars as fusedopt.kernels computes them (make_adam_scalars:
    in double, rounded once to the dtype)."""
    alpha = lr * math.sqrt(1.0 - math.pow(beta_2, step)) / (1.0 - math.pow(beta_1, step))
    return np.array([alpha, 1.0 - beta_1, 1.0 - beta_2, epsilon, lr, weight_decay], dtype)


def sgd_scalars(dtype, lr, momentum=0.0, weight_decay=0.0):
    return np.array([lr, momentum, weight_decay, lr], dtype)


def as_jax(lists):
    # Host copies: on the CPU jax may alias a NumPy array's memory (even a
    # jnp.array(copy=True) reads it later, asynchronously), so a call could
    # still be reading its operands while the test updates the same arrays
    # with fusedopt.kernels for the reference (a race: the result then mixes
    # old and new values). The copies belong to jax alone.
    return [[jnp.asarray(np.array(a, copy=True)) for a in lst] for lst in lists]


def assert_bits(name, got, expected):
    got = np.asarray(got)
    assert got.dtype == expected.dtype and got.shape == expected.shape, name
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8), err_msg=name)


def assert_moved(name, old, new):
    new = np.asarray(new)
    if new.size:
        unchanged = np.count_nonzero(new == old)
        assert unchanged == 0, f"{name}: {unchanged} of {new.size} elements were not written"


def jitted_adam(decay=False, clip_kind="none"):
    return jax.jit(lambda p, g, m, v, s, c=None, a=None: ffi.adam_update(
        p, g, m, v, s, decay=decay, clip_kind=clip_kind, clip_args=c, apply_if=a),
        donate_argnums=(0, 2, 3))


# ----------------------------------------------------------------------------
# Adam


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_matches_reference_and_kernels(dtype, weight_decay):
    rng = np.random.default_rng(1)
    shapes = [(s,) for s in ODD_SIZES] + [(3, 5, 7), (0,), ()]
    params, grads, m, v = random_lists(rng, shapes, dtype)
    old_p, old_g, old_m, old_v = copies(params, grads, m, v)
    # With decay, large steps (as the kernel tests): a small decay and a small
    # update can cancel in an element by chance.
    hyper = dict(LARGE_STEPS, step=3) if weight_decay else ADAM
    s = adam_scalars(dtype, weight_decay=weight_decay, **hyper)
    new_p, new_m, new_v = jitted_adam(decay=weight_decay > 0)(*as_jax([params, grads, m, v]), s)

    kernels.adam(params, grads, m, v, weight_decay=weight_decay, **hyper)
    for i in range(len(shapes)):
        ref = reference_adam(old_p[i], old_g[i], old_m[i], old_v[i], weight_decay=weight_decay,
                             **hyper)
        for name, got, old, exact, r in zip(("params", "m", "v"), (new_p[i], new_m[i], new_v[i]),
                                            (old_p[i], old_m[i], old_v[i]),
                                            (params[i], m[i], v[i]), ref):
            assert_moved(f"{name}[{i}]", old, got)
            np.testing.assert_allclose(np.asarray(got), r, err_msg=f"{name}[{i}]",
                                       **TOLERANCES[dtype])
            assert_bits(f"{name}[{i}] vs fusedopt.kernels", got, exact)


def adam_float32_rule(p, g, m, v, s, decay):
    """csrc/kernels/adam.h in float32, operation by operation (NumPy rounds
    every float32 operation, as the kernel built without contraction does)."""
    f = np.float32
    p, g, m, v = (np.asarray(x, f) for x in (p, g, m, v))
    alpha, omb1, omb2, eps, lr, wd = (f(x) for x in s)
    if decay:
        p = p - p * wd * lr
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    return p - (m * alpha) / (np.sqrt(v) + eps), m, v


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_adam_16_bit_is_the_float32_rule_rounded_once(dtype):
    rng = np.random.default_rng(2)
    # beta_2 = 0.99: 0.999 rounds to 1 in bfloat16.
    hyper = dict(lr=0.01, beta_1=0.9, beta_2=0.99, epsilon=1e-3, step=3, weight_decay=0.1)
    lists = random_lists(rng, [(7,), (CHUNK + 3,), (4, 9)], np.float32)
    params, grads, m, v = ([a.astype(dtype) for a in lst] for lst in lists)
    s = adam_scalars(dtype, **hyper)
    new = jitted_adam(decay=True)(*as_jax([params, grads, m, v]), s)
    for i in range(3):
        expected = adam_float32_rule(params[i], grads[i], m[i], v[i], s.astype(np.float32), True)
        for name, got, e in zip(("params", "m", "v"), (new[0][i], new[1][i], new[2][i]),
                                expected):
            assert_bits(f"{name}[{i}]", got, e.astype(dtype))


@pytest.mark.parametrize("clip", [dict(clip_value=2.0), dict(clip_norm=3.0),
                                  dict(global_clip_norm=10.0)], ids=["value", "norm", "global"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_with_clipping(dtype, clip):
    """The clip stages chained as the optimizers chain them: squared_norms ->
    clip_factors -> adam_update. float64 gives fusedopt.kernels' bits (whose
    norms stay in double); float32 rounds the squared norms to float32 first
    (the TF op contract), so it is checked against the float64 reference."""
    rng = np.random.default_rng(3)
    shapes = [(s,) for s in ODD_SIZES[:10]] + [(3, 5, 7), (0,)]
    params, grads, m, v = random_lists(rng, shapes, dtype)
    old_p, old_g, old_m, old_v = copies(params, grads, m, v)
    s = adam_scalars(dtype, **ADAM)
    n = len(shapes)

    @jax.jit
    def step(p, g, m_, v_, s_):
        if "clip_value" in clip:
            kind, args = "value", jnp.asarray([-clip["clip_value"], clip["clip_value"]], dtype)
        elif "clip_norm" in clip:
            kind = "ratio"
            args, _ = ffi.clip_factors(ffi.squared_norms(g), dtype(clip["clip_norm"]), kind="norm")
        else:
            kind = "scale"
            args, _ = ffi.clip_factors([ffi.squared_norms(g)], dtype(clip["global_clip_norm"]),
                                       kind="global_norm")
        return ffi.adam_update(p, g, m_, v_, s_, clip_kind=kind, clip_args=args)

    new_p, new_m, new_v = step(*as_jax([params, grads, m, v]), s)
    kernels.adam(params, grads, m, v, **ADAM, **clip)
    clipped = reference_clip(old_g, **clip)
    for i in range(n):
        ref_p, ref_m, ref_v = reference_adam(old_p[i], clipped[i], old_m[i], old_v[i], **ADAM)
        assert_moved(f"params[{i}]", old_p[i], new_p[i])
        np.testing.assert_allclose(np.asarray(new_p[i]), ref_p, **TOLERANCES[dtype])
        np.testing.assert_allclose(np.asarray(new_m[i]), ref_m, **TOLERANCES[dtype])
        np.testing.assert_allclose(np.asarray(new_v[i]), ref_v, **TOLERANCES[dtype])
        if dtype == np.float64 or "clip_value" in clip:
            assert_bits(f"params[{i}]", new_p[i], params[i])
            assert_bits(f"m[{i}]", new_m[i], m[i])


def test_apply_if_false_writes_nothing_and_the_predicate_does_not_recompile():
    rng = np.random.default_rng(4)
    params, grads, m, v = random_lists(rng, [(33,), (CHUNK + 1,)], np.float32)
    s = adam_scalars(np.float32, **ADAM)
    step = jax.jit(lambda p, g, m_, v_, a: ffi.adam_update(p, g, m_, v_, s, apply_if=a))
    skipped = step(*as_jax([params, grads, m, v]), jnp.asarray(False))
    applied = step(*as_jax([params, grads, m, v]), jnp.asarray(True))
    jax.block_until_ready((skipped, applied))
    assert step._cache_size() == 1
    old = copies(params, m, v)
    kernels.adam(params, grads, m, v, **ADAM)
    for k, name in enumerate(("params", "m", "v")):
        for i in range(2):
            assert_bits(f"skipped {name}[{i}]", skipped[k][i], old[k][i])
            assert_bits(f"applied {name}[{i}]", applied[k][i], (params, m, v)[k][i])


# ----------------------------------------------------------------------------
# SGD


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_matches_reference_and_kernels(dtype, variant, weight_decay):
    rng = np.random.default_rng(5)
    shapes = [(s,) for s in ODD_SIZES] + [(3, 5, 7), (0,)]
    params, grads, m = sgd_random_lists(rng, shapes, dtype)
    momentums = None if variant == "plain" else m
    old_p, old_g, old_m = copies(params, grads, m)
    hyper = dict(lr=0.1, momentum=0.0 if variant == "plain" else 0.9,
                 nesterov=variant == "nesterov")
    s = sgd_scalars(dtype, hyper["lr"], hyper["momentum"], weight_decay)
    step = jax.jit(lambda p, g, mm, s_: ffi.sgd_update(
        p, g, mm, s_, nesterov=hyper["nesterov"], decay=weight_decay > 0), donate_argnums=(0, 2))
    new_p, new_m = step(*as_jax([params, grads]), None if momentums is None else as_jax([m])[0], s)
    assert len(new_m) == (0 if momentums is None else len(shapes))

    kernels.sgd(params, grads, momentums, weight_decay=weight_decay, **hyper)
    for i in range(len(shapes)):
        ref_p, ref_m = reference_sgd(old_p[i], old_g[i], None if momentums is None else old_m[i],
                                     weight_decay=weight_decay, **hyper)
        assert_moved(f"params[{i}]", old_p[i], new_p[i])
        np.testing.assert_allclose(np.asarray(new_p[i]), ref_p, **SGD_TOLERANCES[dtype])
        assert_bits(f"params[{i}]", new_p[i], params[i])
        if momentums is not None:
            np.testing.assert_allclose(np.asarray(new_m[i]), ref_m, **SGD_TOLERANCES[dtype])
            assert_bits(f"momentums[{i}]", new_m[i], m[i])


# ----------------------------------------------------------------------------
# The compiled program: one call, no copies, no recompilation


def _donated_adam_hlo(n, size, dtype=np.float32):
    rng = np.random.default_rng(6)
    params, grads, m, v = random_lists(rng, [(size,)] * n, dtype)
    s = adam_scalars(dtype, **ADAM)
    step = jitted_adam(decay=True)
    return step.lower(*as_jax([params, grads, m, v]), s).compile().as_text()


def test_jitted_update_is_one_custom_call_with_no_copy():
    text = _donated_adam_hlo(20, 1000)
    calls = [line for line in text.splitlines() if "custom-call(" in line]
    assert len(calls) == 1 and 'custom_call_target="fusedopt_adam"' in calls[0], calls
    # Every written buffer aliases its operand, and nothing of the update's
    # size is copied.
    assert "output_to_operand_aliasing={" + ", ".join(
        f"{{{j}}}: ({j}, {{}})" for j in range(60)) + "}" in calls[0]
    copies_ = [line for line in text.splitlines() if " copy(" in line and "f32[1000]" in line]
    assert copies_ == []
    # The entry computation donates the parameters and slots.
    assert "input_output_alias=" in text


def test_a_new_learning_rate_does_not_recompile():
    rng = np.random.default_rng(7)
    params, grads, m, v = random_lists(rng, [(17,), (300,)], np.float32)
    step = jitted_adam()
    results = []
    for lr in (0.01, 0.02, 0.03):
        s = adam_scalars(np.float32, **dict(ADAM, lr=lr))
        results.append(step(*as_jax([params, grads, m, v]), s))
        p, g, mm, vv = copies(params, grads, m, v)
        kernels.adam(p, g, mm, vv, **dict(ADAM, lr=lr))
        assert_bits(f"params[1] at lr={lr}", results[-1][0][1], p[1])
    assert step._cache_size() == 1
    assert not np.array_equal(np.asarray(results[0][0][1]), np.asarray(results[1][0][1]))


def test_1200_buffers_in_one_call():
    """300 tensors: 1,203 operands (params, m, v, grads, three small ones)
    and 900 results."""
    rng = np.random.default_rng(8)
    shapes = [(int(k),) for k in rng.integers(1, 300, size=300)]
    params, grads, m, v = random_lists(rng, shapes, np.float32)
    s = adam_scalars(np.float32, **ADAM)
    new_p, new_m, new_v = jitted_adam()(*as_jax([params, grads, m, v]), s)
    kernels.adam(params, grads, m, v, **ADAM)
    for i in range(300):
        assert_bits(f"params[{i}]", new_p[i], params[i])
        assert_bits(f"v[{i}]", new_v[i], v[i])


# ----------------------------------------------------------------------------
# Norms, clip factors, the finite check


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_squared_norms(dtype):
    rng = np.random.default_rng(9)
    # Scaled so that float16 squared norms stay below 65504.
    xs = [(0.3 * rng.standard_normal(n)).astype(dtype) for n in ODD_SIZES] + [np.zeros(0, dtype)]
    got = np.asarray(jax.jit(ffi.squared_norms)([jnp.asarray(x) for x in xs]))
    assert got.dtype == np.dtype(dtype) and got.shape == (len(xs),)
    exact = np.array([np.sum(np.asarray(x, np.float64) ** 2) for x in xs])
    if dtype == np.float64:
        np.testing.assert_allclose(got, exact, rtol=1e-13)
    else:
        # Summed in double, rounded once (16-bit types via float32): the
        # rounding of the exact sum, whatever the order of the double sum.
        assert_bits("squared norms", got, exact.astype(np.float32).astype(dtype))


def test_clip_factors_against_the_formulas():
    rng = np.random.default_rng(10)
    sq = np.abs(rng.standard_normal(9)) * 10
    sq[3] = 0.0
    args, finite = ffi.clip_factors(jnp.asarray(sq), 2.5, kind="norm")
    expected = np.concatenate([[2.5], np.maximum(np.sqrt(sq), 2.5)])
    assert_bits("kind='norm'", args, expected)
    assert bool(finite)

    more = np.abs(rng.standard_normal(4)).astype(np.float32)
    args, finite = ffi.clip_factors([jnp.asarray(sq), jnp.asarray(more)], 2.5,
                                    kind="global_norm")
    norm = math.sqrt(sum(sq.tolist()) + sum(float(x) for x in more))
    assert_bits("kind='global_norm'", args, np.array([2.5 * min(1 / norm, 1 / 2.5)]))
    assert bool(finite)

    sq[5] = np.inf
    for kind in ("norm", "global_norm"):
        args, finite = ffi.clip_factors(jnp.asarray(sq), 2.5, kind=kind)
        assert not bool(finite)
        # Keras' global-norm scale of an infinite norm is NaN (inf - inf).
        assert np.isnan(np.asarray(args)[-1]) == (kind == "global_norm")


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_all_finite(position, bad):
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal(n).astype(t) for n, t in
          [(5, np.float16), (CHUNK + 7, np.float32), (40, ml_dtypes.bfloat16), (100003, np.float64)]]
    check = jax.jit(ffi.all_finite)
    assert bool(check([jnp.asarray(x) for x in xs]))
    k = {"first": 0, "middle": 1, "last": 3}[position]
    xs[k][-1 if position == "last" else CHUNK + 3 if position == "middle" else 0] = bad
    assert not bool(check([jnp.asarray(x) for x in xs]))
    assert bool(ffi.all_finite([]))


def test_same_bits_as_the_tensorflow_ops():
    """One handler source for both runtimes: the JAX calls and the TF CPU ops
    (FusedoptSquaredNorms -> FusedoptClipFactors -> FusedoptAdam) agree bit
    for bit."""
    tf = pytest.importorskip("tensorflow")
    from fusedopt import _ops

    lib = _ops.library()
    if lib is None:
        pytest.skip("no TF ops")
    rng = np.random.default_rng(12)
    params, grads, m, v = random_lists(rng, [(7,), (CHUNK + 1,), (3, 4)], np.float32)
    s = adam_scalars(np.float32, **ADAM)

    sq = lib.fusedopt_squared_norms(x=[tf.constant(g) for g in grads])
    args, _ = lib.fusedopt_clip_factors(squared_norms=[sq], max_norm=tf.constant(3.0),
                                        kind="norm")
    tf_vars = [[tf.Variable(a) for a in lst] for lst in (params, m, v)]
    lib.fusedopt_adam(params=[x.handle for x in tf_vars[0]], m=[x.handle for x in tf_vars[1]],
                      v=[x.handle for x in tf_vars[2]], grads=[tf.constant(g) for g in grads],
                      **{k: tf.constant(x) for k, x in zip(
                          ("alpha", "one_minus_beta_1", "one_minus_beta_2", "epsilon", "lr",
                           "weight_decay"), s)},
                      clip="ratio", clip_args=args, apply_if=[])

    jsq = ffi.squared_norms([jnp.asarray(g) for g in grads])
    jargs, _ = ffi.clip_factors(jsq, np.float32(3.0), kind="norm")
    assert_bits("squared norms", jsq, sq.numpy())
    assert_bits("clip args", jargs, args.numpy())
    new = ffi.adam_update(*as_jax([params, grads, m, v]), s, clip_kind="ratio", clip_args=jargs)
    for k in range(3):
        for i in range(3):
            assert_bits(f"result {k}[{i}]", new[k][i], tf_vars[k][i].numpy())


# ----------------------------------------------------------------------------
# Bad calls


@pytest.mark.parametrize("call,error,words", [
    (lambda p, g, m, v, s: ffi.adam_update(p, g, m[:1], v, s), ValueError, "m has 1 tensors"),
    (lambda p, g, m, v, s: ffi.adam_update(p, [g[1], g[0]], m, v, s), ValueError,
     "grads[0] has shape"),
    (lambda p, g, m, v, s: ffi.adam_update(p, g, [x.astype(jnp.float64) for x in m], v, s),
     TypeError, "m[0] has dtype float64"),
    (lambda p, g, m, v, s: ffi.adam_update(p, g, m, v, s[:5]), ValueError, "scalars must have"),
    (lambda p, g, m, v, s: ffi.adam_update(p, g, m, v, s, clip_kind="norm"), ValueError,
     "clip_kind must be one of"),
    (lambda p, g, m, v, s: ffi.adam_update(p, g, m, v, s, clip_kind="ratio",
                                           clip_args=jnp.ones(2, jnp.float32)),
     ValueError, "clip_args must have shape (3,)"),
    (lambda p, g, m, v, s: ffi.adam_update(p, g, m, v, s, apply_if=jnp.ones(2, bool)), TypeError,
     "apply_if must be a scalar bool"),
    (lambda p, g, m, v, s: ffi.sgd_update(p, g, None, s[:4], nesterov=True), ValueError,
     "nesterov=True needs momentum buffers"),
    (lambda p, g, m, v, s: ffi.adam_update([], [], [], [], s), ValueError, "params is empty"),
], ids=["count", "shape", "dtype", "scalars", "clip_kind", "clip_args", "apply_if", "nesterov",
        "empty"])
def test_bad_calls_name_the_argument(call, error, words):
    rng = np.random.default_rng(13)
    lists = as_jax(random_lists(rng, [(3,), (4,)], np.float32))
    with pytest.raises(error, match=None) as info:
        call(*lists, jnp.asarray(adam_scalars(np.float32, **ADAM)))
    assert words in str(info.value)


def test_bad_values_fail_in_the_handler_with_its_message():
    """Values only known when the program runs (a clip-by-norm denominator
    <= 0) are refused by the handler before it writes; XLA raises its error."""
    rng = np.random.default_rng(14)
    lists = as_jax(random_lists(rng, [(3,), (4,)], np.float32))
    s = jnp.asarray(adam_scalars(np.float32, **ADAM))
    step = jax.jit(lambda c: ffi.adam_update(*lists, s, clip_kind="ratio", clip_args=c))
    with pytest.raises(Exception, match=r"clip_args\[2\].*must be > 0"):
        jax.block_until_ready(step(jnp.asarray([1.0, 2.0, 0.0], jnp.float32)))


@pytest.mark.parametrize("target,attrs,operands,words", [
    (ffi.ADAM_TARGET, dict(decay=False, clip="none"), 6,
     "fusedopt_adam takes params[N], m[N], v[N], grads[N], scalars, clip_args, apply_if "
     "(4N + 3 operands, N >= 1), got 6 operands"),
    (ffi.SGD_TARGET, dict(decay=False, clip="none", variant="momentum"), 5,
     "fusedopt_sgd with variant='momentum' takes params[N], momentums[N], grads[N], scalars, "
     "clip_args, apply_if (3N + 3 operands, N >= 1), got 5 operands"),
    (ffi.SGD_TARGET, dict(decay=False, clip="none", variant="plain"), 6,
     "fusedopt_sgd with variant='plain' takes params[N], grads[N], scalars, clip_args, "
     "apply_if (2N + 3 operands, N >= 1), got 6 operands"),
])
def test_the_handlers_refuse_a_wrong_operand_count(target, attrs, operands, words):
    """A direct ffi_call with operands that do not make whole tensor lists is
    refused by the handler, which says what it takes."""
    ffi.cpu_targets()  # registers the handlers
    xs = [jnp.zeros(3, jnp.float32) for _ in range(operands)]
    call = jax.ffi.ffi_call(target, [jax.ShapeDtypeStruct((3,), jnp.float32)],
                            input_output_aliases={0: 0})
    with pytest.raises(Exception) as info:
        jax.block_until_ready(call(*xs, **attrs))
    assert words in str(info.value)


_F32 = jnp.float32


@pytest.mark.parametrize("kind,operands,count,words", [
    ("ratio", [((3,), _F32), ((), _F32)], 4, "kind must be 'norm' or 'global_norm', got 'ratio'"),
    ("global_norm", [((), _F32)], 1,
     "fusedopt_clip_factors takes squared_norms[K] (K >= 1) and max_norm, got 1 operands"),
    ("norm", [((3,), _F32), ((2,), _F32), ((), _F32)], 4,
     "kind='norm' takes the squared norms of one call (one vector), got 2"),
    ("global_norm", [((3,), _F32), ((2,), jnp.int32), ((), _F32)], 1,
     "squared_norms[1] has element type"),
    ("global_norm", [((3, 1), _F32), ((), _F32)], 1, "squared_norms[0] must be a vector"),
    ("norm", [((3,), _F32), ((1,), _F32)], 4, "max_norm must be a float scalar, got float32"),
    ("norm", [((3,), _F32), ((), _F32)], 3, "clip_args must be a float32 vector of 4 values"),
    ("global_norm", [((3,), _F32), ((), jnp.float64)], 1,
     "clip_args must be a float64 vector of 1 values"),
])
def test_the_clip_factors_handler_checks_every_operand(kind, operands, count, words):
    """A direct ffi_call of the clip-factors handler with operands the Python
    wrapper would refuse is refused by the handler (the check both the CPU
    and the CUDA handler share, csrc/ffi/common.h), before it writes."""
    ffi.cpu_targets()  # registers the handlers
    xs = [jnp.ones(shape, dtype) for shape, dtype in operands]
    call = jax.ffi.ffi_call(ffi.CLIP_FACTORS_TARGET,
                            [jax.ShapeDtypeStruct((count,), _F32),
                             jax.ShapeDtypeStruct((), jnp.bool_)])
    with pytest.raises(Exception) as info:
        jax.block_until_ready(call(*xs, kind=kind))
    assert words in str(info.value)


@pytest.mark.parametrize("bad,words", [
    ("m1-shape", "m[1] has shape [5] but params[1] has shape [4]"),
    ("v0-dtype", "v[0] has element type float64 but params[0] has float32"),
    ("grads1-shape", "grads[1] has shape [2, 2] but params[1] has shape [4]"),
])
def test_the_adam_handler_checks_every_tensor_against_params(bad, words):
    """A direct ffi_call (past the Python wrapper's checks) with one tensor
    that does not match its parameter is refused by the handler, naming both
    (csrc/ffi/common.h, CheckTensors)."""
    ffi.cpu_targets()  # registers the handlers
    shapes = {"p": [(3,), (4,)], "m": [(3,), (4,)], "v": [(3,), (4,)], "g": [(3,), (4,)]}
    dtypes = {k: [jnp.float32, jnp.float32] for k in shapes}
    if bad == "m1-shape":
        shapes["m"][1] = (5,)
    elif bad == "v0-dtype":
        dtypes["v"][0] = jnp.float64
    else:
        shapes["g"][1] = (2, 2)
    lists = {k: [jnp.full(s, 0.5, d) for s, d in zip(shapes[k], dtypes[k])] for k in shapes}
    written = lists["p"] + lists["m"] + lists["v"]
    operands = written + lists["g"] + [jnp.asarray(adam_scalars(np.float32, **ADAM)),
                                       jnp.zeros((0,), jnp.float32), jnp.zeros((0,), jnp.bool_)]
    call = jax.ffi.ffi_call(ffi.ADAM_TARGET,
                            [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in written],
                            input_output_aliases={j: j for j in range(len(written))})
    with pytest.raises(Exception) as info:
        jax.block_until_ready(call(*operands, decay=False, clip="none"))
    assert words in str(info.value)


def _adam_operands(sizes, seed=0):
    rng = np.random.default_rng(seed)
    lists = {k: [jnp.asarray(rng.standard_normal(n).astype(np.float32)) for n in sizes]
             for k in "pmvg"}
    lists["v"] = [jnp.abs(x) for x in lists["v"]]
    written = lists["p"] + lists["m"] + lists["v"]
    rest = [jnp.asarray(adam_scalars(np.float32, **ADAM)), jnp.zeros((0,), jnp.float32),
            jnp.zeros((0,), jnp.bool_)]
    return written, written + lists["g"] + rest


def test_results_that_do_not_alias_their_operands_start_as_copies():
    """Without input_output_aliases XLA gives the handler result buffers of
    their own: each must start as a copy of its operand and then be updated,
    equal bit for bit to the aliased call's results, and the operands stay
    as they were (csrc/ffi/common.h, CheckTensors' *aliased and StartFrom)."""
    ffi.cpu_targets()  # registers the handlers
    written, operands = _adam_operands([3, 70, 1])
    before = [np.asarray(x).copy() for x in operands]
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in written]
    aliased = jax.ffi.ffi_call(ffi.ADAM_TARGET, shapes,
                               input_output_aliases={j: j for j in range(len(written))})
    separate = jax.ffi.ffi_call(ffi.ADAM_TARGET, shapes)
    got = jax.block_until_ready(separate(*operands, decay=False, clip="none"))
    for x, b in zip(operands, before):
        np.testing.assert_array_equal(np.asarray(x), b)
    want = jax.block_until_ready(aliased(*operands, decay=False, clip="none"))
    for g, w, b in zip(got, want, before):
        assert not np.array_equal(np.asarray(w), b)  # the update changed every tensor
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("bad,words", [
    ("count", "results: got 5, expected 6 (one per written operand, aliased to it)"),
    ("shape", "result 3 must have the element type and shape of operand 3 (it aliases it)"),
    ("dtype", "result 4 must have the element type and shape of operand 4 (it aliases it)"),
])
def test_the_adam_handler_checks_every_result(bad, words):
    """Results that do not pair up with the written operands (params, m, v)
    are refused before anything is written."""
    ffi.cpu_targets()  # registers the handlers
    written, operands = _adam_operands([3, 4])
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in written]
    if bad == "count":
        shapes = shapes[:-1]
    elif bad == "shape":
        shapes[3] = jax.ShapeDtypeStruct((5,), jnp.float32)
    else:
        shapes[4] = jax.ShapeDtypeStruct((4,), jnp.float64)
    call = jax.ffi.ffi_call(ffi.ADAM_TARGET, shapes)
    with pytest.raises(Exception) as info:
        jax.block_until_ready(call(*operands, decay=False, clip="none"))
    assert words in str(info.value)

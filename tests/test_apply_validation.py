"""Bad arguments to the optimizers' apply(): a clear error, nothing written.

Stock Keras updates variable after variable, so in an eager step a gradient
of the wrong shape for the third variable fails after the first two were
updated. fusedopt checks the whole step first. Each case runs eagerly and in
a tf.function, with variables that take the fused path (float32 and float16)
and one whose sparse gradient falls back to the stock per-variable update.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt


def make_variables(rng):
    return [
        tf.Variable(rng.standard_normal((4, 3)).astype("float32"), name="w0"),
        tf.Variable(rng.standard_normal((5,)).astype("float32"), name="w1"),
        tf.Variable(rng.standard_normal((2, 2)).astype("float16"), name="w_half"),
        tf.Variable(rng.standard_normal((3,)).astype("float32"), name="w3"),
    ]


def good_grads(rng, variables):
    grads = [tf.constant(rng.standard_normal(v.shape), v.dtype) for v in variables]
    # w1 gets rows 0 and 3 as IndexedSlices: the stock sparse update.
    grads[1] = tf.IndexedSlices(tf.constant(rng.standard_normal((2,)), tf.float32),
                                tf.constant([0, 3]), tf.constant([5]))
    return grads


def snapshot(opt, variables):
    return [v.numpy().copy() for v in variables] + [v.numpy().copy() for v in opt.variables]


# name -> (make (grads, variables) from good ones, error type, message pattern)
CASES = {
    "too_few_grads": (lambda g, v: (g[:-1], v), ValueError, r"3 gradients for 4 variables"),
    "too_many_grads": (lambda g, v: (g + [g[0]], v), ValueError, r"5 gradients for 4 variables"),
    "wrong_shape_last": (
        lambda g, v: (g[:3] + [tf.ones((4,))], v), ValueError,
        r"gradient 3 has shape \(4,\) but its variable 'w3.*' has shape \(3,\); nothing was updated"),
    "transposed": (
        lambda g, v: ([tf.ones((3, 4))] + g[1:], v), ValueError,
        r"gradient 0 has shape \(3, 4\) but its variable 'w0.*' has shape \(4, 3\)"),
    "integer_grad": (
        lambda g, v: (g[:3] + [tf.constant([1, 2, 3])], v), TypeError,
        r"gradient 3 \(for variable 'w3.*'\) has dtype int32; expected a floating-point"),
    "string_grad": (
        lambda g, v: (g[:1] + [tf.constant(["a"] * 5)] + g[2:], v), TypeError,
        r"gradient 1 .*dtype string"),
    "variable_twice": (
        lambda g, v: (g[:3] + [g[1]], v[:3] + [v[1]]), ValueError,
        r"variable 'w1.*' is passed twice to apply\(\) \(positions 1 and 3\)"),
}


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.SGD], ids=["Adam", "SGD"])
def test_bad_apply_arguments_raise_and_write_nothing(cls, case, traced):
    rng = np.random.default_rng(0)
    variables = make_variables(rng)
    opt = cls(learning_rate=0.1, **({"momentum": 0.9} if cls is fusedopt.SGD else {}))
    opt.build(variables)
    opt.apply(good_grads(rng, variables), variables)  # slots hold non-zero values
    before = snapshot(opt, variables)

    make, error, pattern = CASES[case]
    grads, vars_ = make(good_grads(rng, variables), variables)
    call = (tf.function(lambda: opt.apply(grads, vars_)) if traced
            else lambda: opt.apply(grads, vars_))
    with pytest.raises(error, match=pattern):
        call()
    for i, (b, a) in enumerate(zip(before, snapshot(opt, variables))):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i} changed")


def test_stock_keras_writes_half_a_step_where_fusedopt_writes_nothing():
    # Why the checks exist: the same bad eager step with the stock optimizer.
    rng = np.random.default_rng(1)
    variables = make_variables(rng)
    grads = good_grads(rng, variables)[:3] + [tf.ones((4,))]
    results = {}
    for cls in (keras.optimizers.Adam, fusedopt.Adam):
        vs = [tf.Variable(v.numpy(), name=v.name.split(":")[0]) for v in variables]
        opt = cls(learning_rate=0.1)
        opt.build(vs)
        before = [v.numpy().copy() for v in vs]
        with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
            opt.apply(grads, vs)
        results[cls] = [not np.array_equal(b, v.numpy()) for b, v in zip(before, vs)]
    assert any(results[keras.optimizers.Adam]), "stock Keras now validates first: update the docs"
    assert not any(results[fusedopt.Adam])


def test_none_gradients_are_still_allowed():
    rng = np.random.default_rng(2)
    variables = make_variables(rng)
    opt = fusedopt.Adam(0.1)
    opt.build(variables)
    grads = good_grads(rng, variables)
    before = variables[1].numpy().copy()
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([grads[0], None, grads[2], grads[3]], variables)
    np.testing.assert_array_equal(variables[1].numpy(), before)
    assert int(opt.iterations.numpy()) == 1


def test_grads_without_variables_after_build_are_checked():
    rng = np.random.default_rng(3)
    variables = make_variables(rng)
    opt = fusedopt.Adam(0.1)
    opt.build(variables)
    with pytest.raises(ValueError, match="3 gradients for 4 variables"):
        opt.apply(good_grads(rng, variables)[:3])

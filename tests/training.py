"""Shared by the optimizer tests: a small model trained the same way with
any optimizer, and comparisons of everything it and its optimizer hold."""

import contextlib

import numpy as np

import keras


@contextlib.contextmanager
def policy(name):
    """Sets the Keras global dtype policy, restoring the previous one after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def make_data(n=192, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 13)).astype("float32")
    y = rng.standard_normal((n, 3)).astype("float32")
    return x, y


def make_model():
    return keras.Sequential(
        [
            keras.Input((13,)),
            keras.layers.Dense(29, activation="tanh", name="hidden"),
            keras.layers.Dense(7, activation="relu", name="hidden2"),
            keras.layers.Dense(3, name="out"),
        ]
    )


def train(opt, epochs=3, run_eagerly=False, callbacks=(), jit_compile=False, samples=192):
    """Trains a fresh, identically initialized model (samples / 32 steps per
    epoch); returns it."""
    keras.utils.set_random_seed(1234)
    model = make_model()
    model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly, jit_compile=jit_compile)
    x, y = make_data(samples)
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
              callbacks=list(callbacks))
    return model


def state(model):
    """Every model and optimizer variable, as NumPy arrays, in order."""
    return [v.numpy() for v in model.weights] + [v.numpy() for v in model.optimizer.variables]


def assert_same_state(a, b):
    sa, sb = state(a), state(b)
    assert len(sa) == len(sb)
    for i, (x, y) in enumerate(zip(sa, sb)):
        assert x.shape == y.shape, i
        np.testing.assert_array_equal(x, y, err_msg=f"variable {i} differs")

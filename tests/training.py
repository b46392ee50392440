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


# The optimizer configurations the GPU `fit` tests of each backend train
# against stock: name -> (make the fusedopt optimizer, make the stock one).
def _gpu_fit_cases():
    import fusedopt

    def pair(fused_cls, stock_cls, fused_only=None, **kwargs):
        return (lambda: fused_cls(**kwargs, **(fused_only or {})), lambda: stock_cls(**kwargs))

    return {
        "Adam": pair(fusedopt.Adam, keras.optimizers.Adam, learning_rate=0.01),
        "AdamW-clipnorm": pair(fusedopt.AdamW, keras.optimizers.AdamW, learning_rate=0.01,
                               weight_decay=0.05, clipnorm=0.5),
        "SGD-nesterov": pair(fusedopt.SGD, keras.optimizers.SGD, learning_rate=0.05,
                             momentum=0.8, nesterov=True, weight_decay=0.01),
        # Stock Keras has no skip_nonfinite; on finite data it changes nothing.
        "SGD-global-clipnorm-skip": pair(fusedopt.SGD, keras.optimizers.SGD,
                                         dict(skip_nonfinite=True), learning_rate=0.05,
                                         momentum=0.9, global_clipnorm=1.0),
    }


GPU_FIT_CASES = _gpu_fit_cases()

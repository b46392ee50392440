"""Interrupted training: save, restore into fresh objects, continue.

Training that is saved after k steps (``tf.train.Checkpoint`` of model and
optimizer, or ``model.save(".keras")``), restored into a fresh model and a
fresh optimizer and continued for the remaining steps must end bit for bit
where uninterrupted training ends: weights, moments, accumulators and the
iteration counter (which drives learning-rate schedules). Checkpoints also
interchange with the stock Keras optimizers in both directions. The fused op
must be the path that ran after the restore (``fused_paths``).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt

from training import make_data, make_model

SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.6)

# (fusedopt class, stock class, kwargs). 64 samples in batches of 16: 4 steps
# per epoch, interrupted after 2 of 4 epochs.
CASES = {
    # The schedule reads the iteration count: restoring it matters.
    "Adam-schedule": (fusedopt.Adam, keras.optimizers.Adam, dict(learning_rate=SCHEDULE)),
    "AdamW": (fusedopt.AdamW, keras.optimizers.AdamW,
              dict(learning_rate=0.01, weight_decay=0.05)),
    # Interrupted in the middle of an accumulation cycle (8 steps, cycles of 3).
    "AdamW-accumulation": (fusedopt.AdamW, keras.optimizers.AdamW,
                           dict(learning_rate=0.01, weight_decay=0.05,
                                gradient_accumulation_steps=3)),
    "SGD-momentum": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.9)),
    "SGD-nesterov": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
}

EPOCHS, FIRST = 4, 2
DATA = make_data(64, seed=5)


def compiled(opt, seed):
    keras.utils.set_random_seed(seed)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    return model


def fit(model, epochs):
    model.fit(*DATA, batch_size=16, epochs=epochs, shuffle=False, verbose=0)


def uninterrupted(cls, kwargs):
    model = compiled(cls(**kwargs), seed=1)
    fit(model, EPOCHS)
    return model


_REFERENCES = {}


def reference_state(cls, case):
    """state() of uninterrupted training (computed once per class and case)."""
    if (cls, case) not in _REFERENCES:
        _REFERENCES[cls, case] = state(uninterrupted(cls, CASES[case][2]))
    return _REFERENCES[cls, case]


def state(model):
    if isinstance(model, list):
        return model
    return ([(v.path, v.numpy()) for v in model.weights]
            + [(v.path, v.numpy()) for v in model.optimizer.variables])


def applied_steps(kwargs, epochs):
    """The iteration count after `epochs`: with gradient accumulation Keras
    counts applied updates, not batches."""
    return epochs * 4 // kwargs.get("gradient_accumulation_steps", 1)


def assert_same_state(a, b):
    sa, sb = state(a), state(b)
    assert len(sa) == len(sb)
    for (name, x), (_, y) in zip(sa, sb):
        np.testing.assert_array_equal(x, y, err_msg=name)


def assert_all_fused(opt):
    paths = opt.fused_paths
    assert paths and set(paths.values()) == {"fused"}, paths


def save_and_restore(model, method, tmp_path, cls, kwargs):
    """Saves `model`; returns a fresh model (and optimizer `cls(**kwargs)`)
    holding the saved state."""
    if method == "checkpoint":
        prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
            str(tmp_path / "ckpt"))
        # Another initialization, which the restore must overwrite; the fresh
        # optimizer has no variables yet and builds them as Keras does.
        fresh = compiled(cls(**kwargs), seed=99)
        fresh.optimizer.build(fresh.trainable_variables)
        tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(
            prefix).assert_consumed()
        return fresh
    path = tmp_path / "model.keras"
    model.save(path)
    if cls is type(model.optimizer):
        return keras.models.load_model(path)  # model and optimizer from the file
    # Into the other class: the weights (model and optimizer) from the file.
    fresh = compiled(cls(**kwargs), seed=99)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    return fresh


def interrupted(cls, kwargs, method, tmp_path, restore_cls=None):
    """Trains FIRST epochs with cls, saves, restores into a fresh model with a
    fresh restore_cls (default: cls) optimizer, trains the rest; returns it."""
    restore_cls = restore_cls or cls
    model = compiled(cls(**kwargs), seed=1)
    fit(model, FIRST)
    restored = save_and_restore(model, method, tmp_path, restore_cls, kwargs)
    assert type(restored.optimizer) is restore_cls
    assert restored.optimizer is not model.optimizer
    assert restored.optimizer.iterations.numpy() == applied_steps(kwargs, FIRST)
    fit(restored, EPOCHS - FIRST)
    return restored


@pytest.mark.parametrize("method", ["checkpoint", "keras"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_interrupted_training_is_bit_identical(case, method, tmp_path):
    cls, _, kwargs = CASES[case]
    reference = reference_state(cls, case)
    restored = interrupted(cls, kwargs, method, tmp_path)

    assert_all_fused(restored.optimizer)
    assert restored.optimizer.iterations.numpy() == applied_steps(kwargs, EPOCHS)
    assert_same_state(restored, reference)


@pytest.mark.parametrize("method", ["checkpoint", "keras"])
@pytest.mark.parametrize("direction", ["stock-to-fused", "fused-to-stock"])
@pytest.mark.parametrize("case", ["AdamW-accumulation", "SGD-momentum"])
def test_checkpoints_interchange_with_stock(case, direction, method, tmp_path):
    # (Adam without accumulation: also tests/test_optimizers_adam.py.)
    cls, stock_cls, kwargs = CASES[case]
    first, second = (stock_cls, cls) if direction == "stock-to-fused" else (cls, stock_cls)
    reference = reference_state(stock_cls, case)
    restored = interrupted(first, kwargs, method, tmp_path, restore_cls=second)

    if second is cls:
        assert_all_fused(restored.optimizer)
    assert restored.optimizer.iterations.numpy() == applied_steps(kwargs, EPOCHS)
    assert_same_state(restored, reference)


@pytest.mark.parametrize("method", ["checkpoint", "keras"])
def test_interrupted_ema_training_matches_interrupted_stock(method, tmp_path):
    """With use_ema, Keras' fit() ends by overwriting the weights with their
    moving averages (finalize_variable_values), so even the stock optimizer
    does not continue an interrupted fit where an uninterrupted one would be.
    What fusedopt must do is what the stock optimizer does."""
    kwargs = dict(learning_rate=0.05, momentum=0.8, nesterov=True, use_ema=True,
                  ema_overwrite_frequency=5)
    (tmp_path / "fused").mkdir()
    (tmp_path / "stock").mkdir()
    fused = interrupted(fusedopt.SGD, kwargs, method, tmp_path / "fused")
    stock = interrupted(keras.optimizers.SGD, kwargs, method, tmp_path / "stock")
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)
    keras_reference = uninterrupted(keras.optimizers.SGD, kwargs)
    assert not np.array_equal(stock.weights[0].numpy(), keras_reference.weights[0].numpy())


def test_interruption_is_observable():
    """The comparison can fail: a restore that loses the optimizer state
    (fresh moments and iteration count, restored weights) ends elsewhere."""
    cls, _, kwargs = CASES["Adam-schedule"]
    reference = uninterrupted(cls, kwargs)
    assert_same_state(reference, reference_state(cls, "Adam-schedule"))  # deterministic
    model = compiled(cls(**kwargs), seed=1)
    fit(model, FIRST)
    fresh = compiled(cls(**kwargs), seed=1)
    fresh.set_weights(model.get_weights())
    fit(fresh, EPOCHS - FIRST)
    assert fresh.optimizer.iterations.numpy() == (EPOCHS - FIRST) * 4
    assert not np.array_equal(fresh.weights[0].numpy(), reference.weights[0].numpy())

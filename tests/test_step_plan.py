"""The step plan (fusedopt.core.plan) on its own, and the Keras behaviours the
plan-then-execute shape keeps: Keras' own hooks do what they do in Keras
(``_clip_gradients`` clips), weight-decay exclusion matches stock, and dtypes
the ops do not take use the stock update."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import transformers as T
from fusedopt.core import plan as P

from training import make_data, make_model


# ------------------------------------------------------------- the planner


def pair(path, dtype="float32", device="cpu:0", decayed=False, fallback=None):
    return P.Pair(path=path, dtype=dtype, device=device, decayed=decayed, fallback=fallback)


def test_groups_by_dtype_device_and_decay_in_step_order():
    pairs = [pair("a"), pair("b", dtype="float64"), pair("c", decayed=True), pair("d"),
             pair("e", device="cpu:1"), pair("f", fallback="sparse (IndexedSlices) gradient"),
             pair("g", dtype="float64")]
    plan = P.build_plan(pairs)
    assert [(g.dtype, g.device, g.decayed, g.members) for g in plan.groups] == [
        ("float32", "cpu:0", False, (0, 3)),
        ("float64", "cpu:0", False, (1, 6)),
        ("float32", "cpu:0", True, (2,)),
        ("float32", "cpu:1", False, (4,)),
    ]
    assert plan.fallback == (5,)
    assert plan.decayed == frozenset({2})
    assert plan.fused_paths == {"a": "fused", "b": "fused", "c": "fused", "d": "fused",
                                "e": "fused", "f": "fallback: sparse (IndexedSlices) gradient",
                                "g": "fused"}


def test_a_step_fallback_sends_every_pair_to_the_stock_update():
    plan = P.build_plan([pair("a"), pair("b", fallback="dtype complex64")],
                        step_fallback="amsgrad=True (not fused yet)")
    assert plan.groups == () and plan.fallback == (0, 1)
    assert set(plan.fused_paths.values()) == {"fallback: amsgrad=True (not fused yet)"}


def test_the_plan_is_immutable():
    plan = P.build_plan([pair("a")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.gate = P.GATE_CHECK


def test_only_a_clip_next_to_the_update_folds():
    by_norm, by_value = T.clip_by_norm(1.0), T.clip_by_value(-1.0, 1.0)

    def custom(pairs):
        return pairs

    # Keras' clip argument folds only without transformers after it.
    assert P.fold_clip(by_norm, (), can_fold=True) == P.FoldedClip(by_norm, "keras")
    assert P.fold_clip(by_norm, (custom,), can_fold=True) is None
    # The last transformer folds if it is a built-in.
    assert P.fold_clip(None, (custom, by_value), can_fold=True) == P.FoldedClip(
        by_value, "transformer")
    assert P.fold_clip(by_norm, (by_value, custom), can_fold=True) is None
    assert P.fold_clip(by_norm, (), can_fold=False) is None


@pytest.mark.parametrize("clip_kind,sees,expected", [
    (None, True, P.GATE_CHECK),
    ("global_norm", True, P.GATE_NORM),
    ("global_norm", False, P.GATE_CHECK),  # e.g. after a loss-scale division
    ("norm", True, P.GATE_CHECK),  # a per-tensor norm can overflow harmlessly
])
def test_the_gate(clip_kind, sees, expected):
    transformer = {"global_norm": T.clip_by_global_norm(1.0), "norm": T.clip_by_norm(1.0),
                   None: None}[clip_kind]
    clip = None if transformer is None else P.FoldedClip(transformer, "keras")
    assert P.step_gate(skip_nonfinite=True, gated_by_inputs=True, clip=clip,
                       clip_sees_apply_grads=sees) == expected
    assert P.step_gate(skip_nonfinite=False, gated_by_inputs=True, clip=clip,
                       clip_sees_apply_grads=sees) == P.GATE_NONE
    assert P.step_gate(skip_nonfinite=True, gated_by_inputs=False, clip=clip,
                       clip_sees_apply_grads=sees) == P.GATE_NONE


def test_the_plan_module_imports_no_framework():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(P))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in getattr(node, "names", [])}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"tensorflow", "jax", "torch", "keras", "numpy"}, imported


# ------------------------------------------------ Keras' own hooks, as in Keras


@pytest.mark.parametrize("kwargs", [dict(clipnorm=0.1), dict(global_clipnorm=0.1),
                                    dict(clipvalue=0.01)])
@pytest.mark.parametrize("cls,stock", [(fusedopt.Adam, keras.optimizers.Adam),
                                       (fusedopt.SGD, keras.optimizers.SGD)])
def test_clip_gradients_returns_the_clipped_gradients(cls, stock, kwargs):
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.standard_normal(s).astype("float32")) for s in [(3, 4), (7,)]]
    ours = cls(**kwargs)._clip_gradients(grads)
    theirs = stock(**kwargs)._clip_gradients(grads)
    for a, b, g in zip(ours, theirs, grads):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert not np.array_equal(a.numpy(), g.numpy())  # the clip did something


def test_clip_gradients_between_steps_does_not_change_training():
    # Calling the hook (as a user's test may) leaves no state behind that a
    # later step would read.
    x, y = make_data(64)
    models = []
    for touch in (False, True):
        keras.utils.set_random_seed(1)
        model = make_model()
        opt = fusedopt.Adam(0.01, global_clipnorm=0.05)
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        if touch:
            opt._clip_gradients([tf.ones((3,))])
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        models.append([v.numpy() for v in model.weights])
    for a, b in zip(*models):
        np.testing.assert_array_equal(a, b)


def layer_norm_model():
    return keras.Sequential([keras.Input((13,)), keras.layers.Dense(8, name="dense"),
                             keras.layers.LayerNormalization(name="layer_normalization"),
                             keras.layers.Dense(3, name="out")])


@pytest.mark.parametrize("cls,stock", [(fusedopt.AdamW, keras.optimizers.AdamW),
                                       (fusedopt.SGD, keras.optimizers.SGD)])
@pytest.mark.parametrize("names", [["layer_normalization"], ["bias"], ["dense/kernel"]])
def test_exclude_from_weight_decay_matches_stock(cls, stock, names):
    x, y = make_data(64)
    results = []
    for c in (cls, stock):
        keras.utils.set_random_seed(3)
        model = layer_norm_model()
        opt = c(learning_rate=0.05, weight_decay=0.2)
        opt.exclude_from_weight_decay(var_names=names)
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        results.append((model, [v.numpy() for v in model.weights]))
    (fused, ours), (_, theirs) = results
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    assert set(fused.optimizer.fused_paths.values()) == {"fused"}


@pytest.mark.parametrize("cls,stock", [(fusedopt.Adam, keras.optimizers.Adam),
                                       (fusedopt.SGD, keras.optimizers.SGD)])
def test_complex_variables_take_the_stock_update(cls, stock):
    values = np.array([1 + 2j, -0.5j, 3.0], np.complex64)
    grads = np.array([0.5 - 1j, 2j, -1.0], np.complex64)
    results = []
    for c in (cls, stock):
        var = tf.Variable(values)
        dense = tf.Variable(np.ones(4, np.float32))
        opt = c(learning_rate=0.1)
        for _ in range(3):
            opt.apply([tf.constant(grads), tf.ones(4)], [var, dense])
        results.append((opt, var.numpy(), dense.numpy()))
    (opt, v1, d1), (_, v2, d2) = results
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(d1, d2)
    paths = list(opt.fused_paths.values())
    assert paths[0].startswith("fallback: dtype complex64") and paths[1] == "fused"

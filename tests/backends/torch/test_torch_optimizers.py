"""fusedopt.Adam, AdamW and SGD on Keras' torch backend (KERAS_BACKEND=torch).

Run by tests/test_backend_torch.py in a child pytest, or directly:
``KERAS_BACKEND=torch FUSEDOPT_BACKEND_TESTS=torch python -m pytest tests/backends/torch``.

The stock class of comparison is ``keras.optimizers.Adam`` (...) itself,
which ``TorchOptimizer.__new__`` swaps for Keras' torch foreach class: the
fast stock path. Parity is in step ulps (tests/parity.py): bit for bit where
the fused kernels run Keras-torch's arithmetic (its fused multiply-adds, its
``p *= 1 - wd * lr`` decay), the folded norm clips within the contract's
NORM_CLIP.
"""

import os
import sys

import numpy as np
import pytest

import keras

if keras.backend.backend() != "torch":
    pytest.skip("needs KERAS_BACKEND=torch", allow_module_level=True)

import torch  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import transformers as tr  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from parity import EXACT, NORM_CLIP, fit_parity, per_step_ulps, step_ulps  # noqa: E402
from training import make_data, make_model, state, train  # noqa: E402

# Keras-torch's sqrt on the CPU (MKL's vsSqrt under torch.sqrt, 2.13) is not
# correctly rounded: 1 ulp off for about one element in six; the kernels'
# sqrt is. Adam's update divides by sqrt(v) + epsilon, so its result may
# differ by that ulp of the term (and the final subtraction's rounding): 2
# step ulps per step, measured 2.0 in every Adam case below. The moments
# (no sqrt) are bit-identical, and SGD (no sqrt) is bit-identical.
TORCH_SQRT = 2

CASES = {
    "Adam": (fusedopt.Adam, keras.optimizers.Adam, dict(learning_rate=0.01)),
    "AdamW": (fusedopt.AdamW, keras.optimizers.AdamW,
              dict(learning_rate=0.01, weight_decay=0.05)),
    "Adam-decay": (fusedopt.Adam, keras.optimizers.Adam,
                   dict(learning_rate=0.01, weight_decay=0.1, beta_1=0.8, epsilon=1e-6)),
    "SGD": (fusedopt.SGD, keras.optimizers.SGD, dict(learning_rate=0.05)),
    "SGD-momentum": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.9)),
    "SGD-nesterov": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
    "SGD-decay": (fusedopt.SGD, keras.optimizers.SGD,
                  dict(learning_rate=0.05, momentum=0.9, weight_decay=0.01)),
    "SGD-accumulation": (fusedopt.SGD, keras.optimizers.SGD,
                         dict(learning_rate=0.05, momentum=0.9, gradient_accumulation_steps=3)),
    "SGD-ema": (fusedopt.SGD, keras.optimizers.SGD,
                dict(learning_rate=0.05, momentum=0.9, use_ema=True, ema_overwrite_frequency=4)),
    "AdamW-accumulation": (fusedopt.AdamW, keras.optimizers.AdamW,
                           dict(learning_rate=0.01, weight_decay=0.05,
                                gradient_accumulation_steps=2)),
    "Adam-schedule": (fusedopt.Adam, keras.optimizers.Adam,
                      dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(
                          0.02, decay_steps=3, decay_rate=0.6))),
}


def bound(case):
    return TORCH_SQRT if CASES[case][0] is not fusedopt.SGD else EXACT


def parity(make_fused, make_stock, bound, epochs, run_eagerly=False):
    """fit_parity, with the step-by-step comparison (bound > 0) over
    `epochs` passes of the data too (fit_parity makes one)."""
    if bound == EXACT:
        return fit_parity(make_fused, make_stock, EXACT, run_eagerly=run_eagerly,
                          epochs=epochs)
    models = []
    for make in (make_fused, make_stock):
        keras.utils.set_random_seed(1234)
        model = make_model()
        model.compile(optimizer=make(), loss="mse", run_eagerly=run_eagerly)
        models.append(model)
    x, y = make_data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)] * epochs
    worst = per_step_ulps(models[0], models[1], batches)
    assert worst <= bound, f"{worst} step ulps, contract {bound}"
    return models[0]


def all_fused(opt):
    paths = opt.fused_paths
    return bool(paths) and all(p == "fused" for p in paths.values())


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_parity_with_stock(case):
    # 18 steps of model.fit; bound EXACT compares whole runs bit for bit,
    # TORCH_SQRT each step from the same state (tests/parity.py).
    fused_cls, stock_cls, kwargs = CASES[case]
    stock = stock_cls(**kwargs)
    assert type(stock).__module__.startswith("keras.src.backend.torch.optimizers")
    # Whole runs: 3 passes (18 steps); step by step: 2 passes (12 steps).
    epochs = 3 if bound(case) == EXACT else 2
    model = parity(lambda: fused_cls(**kwargs), lambda: stock_cls(**kwargs), bound(case),
                   epochs=epochs)
    assert all_fused(model.optimizer), model.optimizer.fused_paths
    steps = 6 * epochs // kwargs.get("gradient_accumulation_steps", 1)
    assert int(model.optimizer.iterations.numpy()) == steps


def test_adam_moments_bit_identical_params_within_sqrt_bound():
    # The same gradients every step: only the parameter update meets the
    # sqrt. The moments, which the torch form computes with Keras-torch's
    # fused multiply-adds (the TF form's two roundings would differ), are
    # bit-identical; the parameters within TORCH_SQRT step ulps.
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(10_007).astype("float32")
    grads = [rng.standard_normal(10_007).astype("float32") for _ in range(5)]

    def run(opt):
        var = keras.Variable(p0.copy(), name="w")
        olds = []
        for g in grads:
            olds.append(var.numpy())
            opt.apply([torch.tensor(g)], [var])
        return var.numpy(), [v.numpy() for v in opt.variables], olds[-1]

    kwargs = dict(learning_rate=0.01, weight_decay=0.05)
    p_fused, slots_fused, _ = run(fusedopt.AdamW(**kwargs))
    p_stock, slots_stock, _ = run(keras.optimizers.AdamW(**kwargs))
    for f, s in zip(slots_fused, slots_stock):
        np.testing.assert_array_equal(f, s)
    # The last step from (almost) the same state: within the bound.
    assert step_ulps(p_fused, p_stock, p0) <= TORCH_SQRT * len(grads)


@pytest.mark.parametrize("case", ["Adam", "SGD-nesterov"])
def test_fit_eager_parity(case):
    fused_cls, stock_cls, kwargs = CASES[case]
    model = parity(lambda: fused_cls(**kwargs), lambda: stock_cls(**kwargs), bound(case),
                   run_eagerly=True, epochs=1)
    assert all_fused(model.optimizer)


@pytest.mark.parametrize("case", ["SGD-momentum", "AdamW"])
def test_loss_scale_optimizer_parity(case):
    # keras.optimizers.LossScaleOptimizer around the fused class: the inner
    # optimizer gets the unscaled gradients and stays fused.
    fused_cls, stock_cls, kwargs = CASES[case]
    model = parity(lambda: keras.optimizers.LossScaleOptimizer(fused_cls(**kwargs)),
                   lambda: keras.optimizers.LossScaleOptimizer(stock_cls(**kwargs)),
                   bound(case), epochs=1)
    assert all_fused(model.optimizer.inner_optimizer)


CLIPS = {
    "clipvalue": (dict(clipvalue=0.05), None),  # None: the case's own bound
    "clipnorm": (dict(clipnorm=0.1), NORM_CLIP),
    "global_clipnorm": (dict(global_clipnorm=0.2), NORM_CLIP),
}


@pytest.mark.parametrize("clip", sorted(CLIPS))
@pytest.mark.parametrize("case", ["AdamW", "SGD-momentum"])
def test_folded_clip_parity(case, clip):
    fused_cls, stock_cls, kwargs = CASES[case]
    extra, clip_bound = CLIPS[clip]
    kwargs = dict(kwargs, **extra)
    model = parity(lambda: fused_cls(**kwargs), lambda: stock_cls(**kwargs),
                   bound(case) if clip_bound is None else clip_bound, epochs=1)
    assert all_fused(model.optimizer)


def test_clip_transformer_folds_like_keras_argument():
    # The last built-in transformer folds; its result equals Keras' own
    # global_clipnorm of the stock class within the norm clip bound.
    parity(lambda: fusedopt.Adam(0.01, gradient_transformers=[tr.clip_by_global_norm(0.2)]),
           lambda: keras.optimizers.Adam(0.01, global_clipnorm=0.2), NORM_CLIP, epochs=1)


def test_storage_stays_in_place():
    opt = fusedopt.AdamW(learning_rate=0.01, weight_decay=0.01)
    keras.utils.set_random_seed(1)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = make_data(64)
    model.fit(x[:32], y[:32], batch_size=32, verbose=0)  # builds the optimizer
    tensors = [v.value for v in model.weights] + [v.value for v in opt.variables]
    before = [t.data_ptr() for t in tensors]
    values = [t.clone() for t in tensors]
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after = [v.value for v in model.weights] + [v.value for v in opt.variables]
    assert [t.data_ptr() for t in after] == before
    assert all(not torch.equal(a, b) for a, b in zip(after[:6], values[:6]))
    assert all_fused(opt)


def test_fused_paths_name_every_variable():
    opt = fusedopt.SGD(0.1, momentum=0.9)
    model = train(opt, epochs=1)
    assert set(opt.fused_paths) == {v.path for v in model.trainable_variables}
    assert all_fused(opt)


# ------------------------------------------------------------ fallbacks


def test_amsgrad_falls_back_to_keras_foreach_update():
    kwargs = dict(learning_rate=0.01, amsgrad=True)
    model = parity(lambda: fusedopt.Adam(**kwargs), lambda: keras.optimizers.Adam(**kwargs),
                   EXACT, epochs=1)
    reasons = set(model.optimizer.fused_paths.values())
    assert reasons == {"fallback: amsgrad=True (not fused yet)"}, reasons


def test_fallback_uses_stock_foreach_not_per_variable_loop(monkeypatch):
    # The stock subclass path (BaseOptimizer's loop of update_step) must not run.
    calls = []
    monkeypatch.setattr(keras.optimizers.Adam, "update_step",
                        lambda self, *a: calls.append(a))
    opt = fusedopt.Adam(0.01, amsgrad=True)
    train(opt, epochs=1, samples=64)
    assert calls == []
    assert int(opt.iterations.numpy()) == 2


def test_mixed_fused_and_fallback_pairs_match_stock():
    # A float64 variable next to float32 ones with a float32 gradient: the
    # pair whose gradient dtype differs falls back; the others stay fused.
    def run(opt):
        keras.utils.set_random_seed(3)
        a = keras.Variable(np.linspace(-1, 1, 12).astype("float32").reshape(3, 4), name="a")
        b = keras.Variable(np.linspace(1, 2, 5).astype("float32"), name="b")
        opt.build([a, b])
        for step in range(4):
            ga = torch.full((3, 4), 0.1 * (step + 1))
            gb = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)
            opt.apply([ga, gb], [a, b])
        return [a.numpy(), b.numpy()] + [v.numpy() for v in opt.variables]

    fused_opt = fusedopt.SGD(0.1, momentum=0.5)
    fused = run(fused_opt)
    stock = run(keras.optimizers.SGD(0.1, momentum=0.5))
    for f, s in zip(fused, stock):
        np.testing.assert_array_equal(f, s)
    paths = fused_opt.fused_paths
    assert paths["a"] == "fused"
    assert paths["b"].startswith("fallback: gradient dtype torch.float64"), paths


# ----------------------------------------------------------- skip_nonfinite


def _apply_steps(opt, grads_per_step):
    a = keras.Variable(np.arange(6, dtype="float32").reshape(2, 3) / 7, name="a")
    b = keras.Variable(np.ones(4, dtype="float32"), name="b")
    for ga, gb in grads_per_step:
        opt.apply([torch.tensor(ga), torch.tensor(gb)], [a, b])
    return [a.numpy(), b.numpy()] + [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("kwargs", [dict(), dict(global_clipnorm=1.0), dict(clipnorm=0.5)],
                         ids=["check", "global-norm-gate", "clipnorm"])
@pytest.mark.parametrize("cls", ["Adam", "SGD"])
def test_skip_nonfinite_skips_whole_step(cls, kwargs):
    # A skipped step leaves no trace: the run equals one without the bad
    # steps, bit for bit (iterations included), and the step stays fused.
    fused_cls = getattr(fusedopt, cls)
    extra = dict(momentum=0.9) if cls == "SGD" else {}
    good = [(np.full((2, 3), 0.3, "float32"), np.linspace(-1, 1, 4).astype("float32"))] * 2
    bad = [(np.full((2, 3), 0.3, "float32"), np.array([1, np.nan, 0, 0], "float32")),
           (np.full((2, 3), np.inf, "float32"), np.zeros(4, "float32"))]
    fused_opt = fused_cls(0.1, skip_nonfinite=True, **extra, **kwargs)
    skipped = _apply_steps(fused_opt, good[:1] + bad + good[1:])
    assert all_fused(fused_opt), fused_opt.fused_paths
    clean = _apply_steps(fused_cls(0.1, **extra, **kwargs), good)
    for f, s in zip(skipped, clean):
        np.testing.assert_array_equal(f, s)
    if cls == "SGD":  # and the stock optimizer without the bad steps
        stock = _apply_steps(keras.optimizers.SGD(0.1, **extra, **kwargs), good)
        for f, s in zip(skipped, stock):
            np.testing.assert_array_equal(f, s)


def test_without_skip_nonfinite_a_nan_step_runs():
    # The test above can fail: without skip_nonfinite the NaN lands.
    opt = fusedopt.SGD(0.1)
    out = _apply_steps(opt, [(np.full((2, 3), np.nan, "float32"), np.zeros(4, "float32"))])
    assert np.isnan(out[0]).all() and int(opt.iterations.numpy()) == 1


def test_skip_nonfinite_with_ema_skips_on_host():
    # use_ema writes outside the fused ops: the whole stock apply is gated.
    opt = fusedopt.Adam(0.1, skip_nonfinite=True, use_ema=True)
    before = _apply_steps(opt, [(np.full((2, 3), np.nan, "float32"), np.zeros(4, "float32"))])
    assert int(opt.iterations.numpy()) == 0
    assert np.isfinite(before[0]).all()


# ------------------------------------------------------ hyperparameter forms


def test_hyperparameters_as_variables_and_callables():
    # The same values as numbers (fused) give the same bits; as numbers the
    # parity with stock is test_fit_parity_with_stock's.
    # (beta_1 as the float32 value the variable holds: Keras-torch computes
    # 1 - beta_1 in float32 for a tensor, in double for a number.)
    lr = keras.Variable(0.01, name="user_lr")
    beta = keras.Variable(0.8, name="user_beta")
    forms_opt = fusedopt.Adam(learning_rate=lr, beta_1=lambda: beta, epsilon=1e-6)
    numbers_opt = fusedopt.Adam(learning_rate=0.01, beta_1=float(np.float32(0.8)), epsilon=1e-6)
    forms_model = train(forms_opt, epochs=1)
    numbers_model = train(numbers_opt, epochs=1)
    for f, s in zip(state(forms_model), state(numbers_model)):
        np.testing.assert_array_equal(f, s)
    assert all_fused(forms_opt)
    lr.assign(0.0)  # read at every step: the parameters stop moving
    before = state(forms_model)
    x, y = make_data(32)
    forms_model.fit(x, y, batch_size=32, verbose=0)
    after = state(forms_model)
    for f, s in zip(before[:6], after[:6]):
        np.testing.assert_array_equal(f, s)
    assert not np.array_equal(before[-1], after[-1])  # the moments still move


def test_dynamic_momentum():
    momentum = keras.Variable(0.9, name="user_momentum")
    fused_opt = fusedopt.SGD(0.05, momentum=momentum, nesterov=True)
    stock_opt = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
    for f, s in zip(state(train(fused_opt, epochs=1)), state(train(stock_opt, epochs=1))):
        np.testing.assert_array_equal(f, s)
    assert all_fused(fused_opt)


# -------------------------------------------------------------- save / load


@pytest.mark.parametrize("case", ["AdamW", "SGD-momentum"])
@pytest.mark.parametrize("direction", ["fused-to-stock", "stock-to-fused"])
def test_weights_file_interchanges_with_stock(tmp_path, direction, case):
    fused_cls, stock_cls, kwargs = CASES[case]
    first, second = ((fused_cls, stock_cls) if direction == "fused-to-stock"
                     else (stock_cls, fused_cls))
    x, y = make_data(64, seed=5)

    def compiled(opt):
        keras.utils.set_random_seed(1)
        model = make_model()
        model.compile(optimizer=opt, loss="mse")
        return model

    reference = compiled(first(**kwargs))
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "model.weights.h5")
    reference.save_weights(path)
    resumed = compiled(second(**kwargs))
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(path)
    assert len(resumed.optimizer.variables) == len(reference.optimizer.variables)
    for a, b in zip(state(reference), state(resumed)):  # every variable, iterations too
        np.testing.assert_array_equal(a, b)
    continued = compiled(first(**kwargs))  # the same file, resumed by the first class
    continued.optimizer.build(continued.trainable_variables)
    continued.load_weights(path)
    for model in (resumed, continued):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert int(resumed.optimizer.iterations.numpy()) == 12
    fused_model = resumed if second is fused_cls else continued
    assert all_fused(fused_model.optimizer)
    if bound(case) == EXACT:
        for a, b in zip(state(continued), state(resumed)):
            np.testing.assert_array_equal(a, b)


def test_keras_file_round_trip(tmp_path):
    opt = fusedopt.SGD(0.05, momentum=0.9, nesterov=True, skip_nonfinite=True)
    model = train(opt, epochs=1, samples=64)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is fusedopt.SGD
    assert loaded.optimizer.get_config() == opt.get_config()
    for a, b in zip(state(model), state(loaded)):
        np.testing.assert_array_equal(a, b)
    # Continued with the same gradients (a loaded model's compiled loss
    # rounds differently from the string "mse", for the stock class too).
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(tuple(v.shape)).astype("float32")
             for v in model.trainable_variables]
    for m in (model, loaded):
        m.optimizer.apply([torch.tensor(g) for g in grads], m.trainable_variables)
    for a, b in zip(state(model), state(loaded)):
        np.testing.assert_array_equal(a, b)
    assert all_fused(loaded.optimizer)


# -------------------------------------------------------------- the ops


def test_custom_op_compiles_in_one_graph():
    from fusedopt.backends.torch import ops

    params = [torch.randn(5, 3), torch.randn(7)]
    grads = [torch.randn(5, 3), torch.randn(7)]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    scalars = torch.tensor([1e-3, 0.9, 0.1, 0.999, 0.001, 1e-7, 1.0])

    def step(params, grads, m, v, scalars):
        ok = ops.all_finite(grads)
        torch.ops.fusedopt.adam_(params, grads, m, v, scalars, False, "none", None, ok)

    eager = [t.clone() for t in params], [t.clone() for t in m], [t.clone() for t in v]
    step(eager[0], grads, eager[1], eager[2], scalars)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    pointers = [p.data_ptr() for p in params]
    compiled(params, grads, m, v, scalars)
    assert [p.data_ptr() for p in params] == pointers
    for a, b in zip(params + m + v, eager[0] + eager[1] + eager[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_op_refuses_bad_arguments_before_writing():
    p = [torch.ones(4), torch.ones(3)]
    g = [torch.ones(4), torch.ones(2)]
    m = [torch.zeros(4), torch.zeros(3)]
    v = [torch.zeros(4), torch.zeros(3)]
    scalars = torch.tensor([1e-3, 0.9, 0.1, 0.999, 0.001, 1e-7, 1.0])
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(2,\)"):
        torch.ops.fusedopt.adam_(p, g, m, v, scalars, False, "none", None, None)
    with pytest.raises(ValueError, match="share memory"):
        torch.ops.fusedopt.adam_(p, [torch.ones(4), torch.ones(3)], [p[0], m[1]], v, scalars,
                                 False, "none", None, None)
    assert all(torch.equal(t, torch.ones_like(t)) for t in p)


@pytest.mark.parametrize("kwargs", [dict(), dict(skip_nonfinite=True, global_clipnorm=1.0)],
                         ids=["plain", "skip-and-clip"])
def test_optimizer_apply_compiles_in_one_graph(kwargs):
    # The whole fused apply (Keras' flow, the plan, the custom ops) under
    # torch.compile(fullgraph=True): no graph break, the same bits as eagerly.
    def run(compiled):
        torch._dynamo.reset()
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.standard_normal(s).astype("float32"), name=f"w{i}")
                     for i, s in enumerate([(4, 3), (7,)])]
        opt = fusedopt.AdamW(0.01, weight_decay=0.1, **kwargs)
        opt.build(variables)

        def step(grads):
            opt.apply(grads, variables)

        fn = torch.compile(step, fullgraph=True, backend="aot_eager") if compiled else step
        pointers = [v.value.data_ptr() for v in variables]
        for i in range(3):
            grads = [torch.full(tuple(v.shape), 0.5 * (i + 1)) for v in variables]
            if i == 1 and kwargs:
                grads[1][2] = float("nan")  # skipped, without a host sync
            fn(grads)
        assert [v.value.data_ptr() for v in variables] == pointers
        assert all_fused(opt), opt.fused_paths
        assert int(opt.iterations.numpy()) == (2 if kwargs else 3)
        return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]

    for a, b in zip(run(compiled=True), run(compiled=False)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", ["SGD-momentum", "SGD-nesterov", "SGD-decay"])
def test_16bit_variables_round_once(case, dtype):
    # 16-bit variables compute in float32 and round once per stored value: each
    # step equals the stock float32 step from the same (upcast) state, rounded
    # to the variable's dtype, bit for bit. (Adam is left out: Keras-torch
    # computes its alpha in the variables' dtype, and so does fusedopt, so a
    # float32 step is no reference; in bfloat16 beta_2 = 0.999 rounds to 1
    # and alpha is 0, in stock Keras-torch as here.)
    fused_cls, stock_cls, kwargs = CASES[case]
    tdtype = getattr(torch, dtype)
    rng = np.random.default_rng(7)
    shapes = [(33, 5), (129,)]
    fused_vars = [keras.Variable(torch.tensor(rng.standard_normal(s)).to(tdtype), dtype=dtype,
                                 name=f"w{i}") for i, s in enumerate(shapes)]
    stock_vars = [keras.Variable(np.zeros(s, "float32"), name=f"w{i}")
                  for i, s in enumerate(shapes)]
    fused_opt, stock_opt = fused_cls(**kwargs), stock_cls(**kwargs)
    fused_opt.build(fused_vars)
    stock_opt.build(stock_vars)
    for step in range(3):
        grads = [torch.tensor(rng.standard_normal(s) * 0.3).to(tdtype) for s in shapes]
        for f, s in zip(fused_vars + fused_opt.variables, stock_vars + stock_opt.variables):
            s.assign(f.value.detach().to(torch.float32) if f.dtype == dtype else f.value)
        fused_opt.apply(grads, fused_vars)
        stock_opt.apply([g.to(torch.float32) for g in grads], stock_vars)
        assert all_fused(fused_opt)
        # (optimizer variables: iterations, learning_rate, then the slots)
        for i, (f, s) in enumerate(zip(fused_vars + fused_opt.variables[2:],
                                       stock_vars + stock_opt.variables[2:])):
            assert f.dtype == dtype
            got = f.value.detach().to(torch.float32)
            want = s.value.detach().to(tdtype).to(torch.float32)
            assert torch.equal(got, want), (step, i)

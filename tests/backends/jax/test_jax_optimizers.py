"""fusedopt.Adam / AdamW / SGD under KERAS_BACKEND=jax: the fused path
(`fusedopt.backends.jax.executor`: one XLA FFI custom call per group inside
Keras-JAX's jitted, stateless train step) against the stock Keras-JAX
optimizers, over real `model.fit`.

The parity contract on JAX (docs/backends.md):

- run eagerly (`run_eagerly=True`) fused and stock are bit-identical over
  whole training runs: every jnp op runs on its own there, and the custom call
  runs the CPU kernel, which rounds as the stock update written op by op;
- jitted (`model.fit` by default) the fused update is still that kernel, so
  given the same gradients it equals the stock update *run eagerly* bit for
  bit (`test_jitted_update_matches_stock_eager_bit_for_bit`); the stock update
  compiled by XLA rounds differently (XLA's CPU backend contracts
  multiply-adds), so fit-level parity with jitted stock is in step ulps per
  step (tests/parity.py), within JAX_STEP_ULPS;
- a folded clip by norm or by global norm sums its norms in double in a fixed
  order: within parity.NORM_CLIP step ulps per step, eager or jitted.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import keras

import fusedopt
from fusedopt import transformers as T
from fusedopt.core import plan as plan_mod

from parity import EXACT, NORM_CLIP, per_step_ulps, ulp_distance
from training import assert_same_state, make_data, make_model, state, train

assert keras.backend.backend() == "jax", keras.backend.backend()

# Jitted fused vs jitted stock, in step ulps per step (docs/backends.md): the
# difference is XLA's contraction of the stock update (1 ulp of a term).
# Measured at most 2 in every case but one: Adam with clipvalue, where a
# momentum cancels 97% in one step (-1.6e-3 -> -5.2e-5) and its last-bit
# difference becomes 15 step ulps of a parameter whose step is that momentum
# times alpha. (Fused equals stock run eagerly bit for bit, tests below.)
JAX_STEP_ULPS = 16

SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.7)

# name: (fusedopt class, stock class, kwargs, eager bound, jitted bound)
CASES = {
    "Adam": (fusedopt.Adam, keras.optimizers.Adam, dict(learning_rate=0.01),
             EXACT, JAX_STEP_ULPS),
    "Adam-schedule": (fusedopt.Adam, keras.optimizers.Adam, dict(learning_rate=SCHEDULE),
                      EXACT, JAX_STEP_ULPS),
    "AdamW": (fusedopt.AdamW, keras.optimizers.AdamW,
              dict(learning_rate=0.01, weight_decay=0.05), EXACT, JAX_STEP_ULPS),
    "SGD": (fusedopt.SGD, keras.optimizers.SGD, dict(learning_rate=0.05),
            EXACT, JAX_STEP_ULPS),
    "SGD-momentum": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.9), EXACT, JAX_STEP_ULPS),
    "SGD-nesterov-decay": (fusedopt.SGD, keras.optimizers.SGD,
                           dict(learning_rate=0.05, momentum=0.8, nesterov=True,
                                weight_decay=0.01), EXACT, JAX_STEP_ULPS),
    "Adam-clipvalue": (fusedopt.Adam, keras.optimizers.Adam,
                       dict(learning_rate=0.01, clipvalue=0.02), EXACT, JAX_STEP_ULPS),
    "Adam-clipnorm": (fusedopt.Adam, keras.optimizers.Adam,
                      dict(learning_rate=0.01, clipnorm=0.1), NORM_CLIP, NORM_CLIP),
    "SGD-global_clipnorm": (fusedopt.SGD, keras.optimizers.SGD,
                            dict(learning_rate=0.05, momentum=0.9, global_clipnorm=0.1),
                            NORM_CLIP, NORM_CLIP),
    "Adam-accumulation": (fusedopt.Adam, keras.optimizers.Adam,
                          dict(learning_rate=0.01, gradient_accumulation_steps=3),
                          EXACT, JAX_STEP_ULPS),
    "AdamW-ema": (fusedopt.AdamW, keras.optimizers.AdamW,
                  dict(learning_rate=0.01, weight_decay=0.05, use_ema=True,
                       ema_overwrite_frequency=4), EXACT, JAX_STEP_ULPS),
    "SGD-loss_scale": (fusedopt.SGD, keras.optimizers.SGD,
                       dict(learning_rate=0.05, momentum=0.9, loss_scale_factor=4.0),
                       EXACT, JAX_STEP_ULPS),
}


def assert_all_fused(opt, n=6):
    paths = opt.fused_paths
    assert len(paths) == n and set(paths.values()) == {plan_mod.FUSED}, paths


def compiled(opt, run_eagerly=False, seed=1234):
    keras.utils.set_random_seed(seed)
    model = make_model()
    model.compile(optimizer=opt, loss="mse", run_eagerly=run_eagerly)
    return model


def per_step_ulps_fresh_buffers(fused_model, stock_model, batches):
    """parity.per_step_ulps, with both models' state set from NumPy copies
    before every step: Keras-JAX's fit ends a use_ema run by assigning the
    EMA variables' arrays to the model variables, so that a second fit
    donates one buffer twice and fails (stock Keras 3.15.1 too)."""
    from parity import step_ulps

    worst = 0.0
    for x, y in batches:
        stock_vars = list(stock_model.weights) + list(stock_model.optimizer.variables)
        fused_vars = list(fused_model.weights) + list(fused_model.optimizer.variables)
        assert len(stock_vars) == len(fused_vars)
        old = [np.array(v.numpy()) for v in stock_vars]
        for variables in (fused_vars, stock_vars):
            for var, value in zip(variables, old):
                var.assign(np.array(value))
        for model in (fused_model, stock_model):
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for a, b, o in zip(fused_vars, stock_vars, old):
            worst = max(worst, step_ulps(a.numpy(), b.numpy(), o))
    return worst


def step_ulps_fit(fused_opt, stock_opt, run_eagerly=False, repeats=2):
    models = [compiled(fused_opt, run_eagerly), compiled(stock_opt, run_eagerly)]
    x, y = make_data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)] * repeats
    if fused_opt.use_ema:
        return per_step_ulps_fresh_buffers(models[0], models[1], batches), models[0]
    return per_step_ulps(models[0], models[1], batches), models[0]


# Eagerly, op by op, a step costs several times a jitted one: the cases that
# exercise a distinct part of the update (the schedule, plain SGD, the global
# clip and the loss scale run jitted below).
EAGER_CASES = ["Adam", "AdamW", "SGD-momentum", "SGD-nesterov-decay", "Adam-clipvalue",
               "Adam-clipnorm", "Adam-accumulation", "AdamW-ema"]


@pytest.mark.parametrize("case", EAGER_CASES)
def test_eager_fit_matches_stock(case):
    cls, stock_cls, kwargs, bound, _ = CASES[case]
    # 12 steps (accumulation: 6, two updates; its lax.conds are retraced at
    # every eager step).
    epochs = 1 if "gradient_accumulation_steps" in kwargs else 2
    if bound == EXACT:
        fused = train(cls(**kwargs), epochs=epochs, run_eagerly=True)
        stock = train(stock_cls(**kwargs), epochs=epochs, run_eagerly=True)
        assert_same_state(fused, stock)
        opt = fused.optimizer
    else:
        worst, model = step_ulps_fit(cls(**kwargs), stock_cls(**kwargs), run_eagerly=True,
                                     repeats=1)
        assert worst <= bound, f"{worst} step ulps, contract {bound}"
        opt = model.optimizer
    assert_all_fused(opt)


@pytest.mark.parametrize("case", sorted(CASES))
def test_jitted_fit_within_step_ulps_of_stock(case):
    cls, stock_cls, kwargs, _, bound = CASES[case]
    worst, model = step_ulps_fit(cls(**kwargs), stock_cls(**kwargs))
    assert worst <= bound, f"{worst} step ulps per step, contract {bound}"
    assert_all_fused(model.optimizer)


def test_jitted_fit_is_not_trivially_equal():
    """The bound above is not vacuous: jitted stock and fused differ in their
    last bits (XLA contracts the stock update), and a wrong update (another
    learning rate) is far outside it."""
    worst, _ = step_ulps_fit(fusedopt.Adam(learning_rate=0.01),
                             keras.optimizers.Adam(learning_rate=0.01), repeats=1)
    assert worst > 0
    # (Not the learning rate: per_step_ulps copies the stock optimizer's
    # variables, its learning rate among them, into the fused one.)
    worst, _ = step_ulps_fit(fusedopt.Adam(learning_rate=0.01, beta_1=0.9),
                             keras.optimizers.Adam(learning_rate=0.01, beta_1=0.91), repeats=1)
    assert worst > 1000 * JAX_STEP_ULPS


def test_loss_scale_optimizer_around_fused():
    """keras.optimizers.LossScaleOptimizer runs the fused optimizer's
    stateless_apply inside its lax.cond (finite or not): still fused."""
    wrap = keras.optimizers.LossScaleOptimizer
    worst, model = step_ulps_fit(wrap(fusedopt.Adam(learning_rate=0.01)),
                                 wrap(keras.optimizers.Adam(learning_rate=0.01)), repeats=1)
    assert worst <= JAX_STEP_ULPS, worst
    assert_all_fused(model.optimizer.inner_optimizer)


def test_builtin_transformer_folds_like_the_keras_clip():
    opt = fusedopt.Adam(learning_rate=0.01, gradient_transformers=[T.clip_by_global_norm(0.1)])
    worst, model = step_ulps_fit(opt, keras.optimizers.Adam(learning_rate=0.01,
                                                            global_clipnorm=0.1), repeats=1)
    assert worst <= NORM_CLIP, worst
    assert model.optimizer._last_plan.clip.source == "transformer"
    assert_all_fused(model.optimizer)


# --------------------------------------------------- the update, jitted


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(33, 17), (1000,), (3,), (7001,)]
    return [keras.Variable(rng.standard_normal(s).astype("float32"), name=f"w{i}")
            for i, s in enumerate(shapes)]


def _grads(variables, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[jnp.asarray(rng.standard_normal(v.shape).astype("float32")) for v in variables]
            for _ in range(steps)]


def jitted_apply(opt, variables):
    """opt.stateless_apply jitted with the state donated (as Keras' train step)."""
    opt.build(variables)
    step = jax.jit(lambda tv, ov, g: opt.stateless_apply(ov, g, tv), donate_argnums=(0, 1))

    def run(grads):
        tv, ov = step([v.value for v in variables], [v.value for v in opt.variables], grads)
        for var, value in zip(variables, tv):
            var.assign(value)
        for var, value in zip(opt.variables, ov):
            var.assign(value)
    return run, step


@pytest.mark.parametrize("case", ["Adam", "AdamW", "SGD-nesterov-decay", "SGD"])
def test_jitted_update_matches_stock_eager_bit_for_bit(case):
    """Which stock mode the fused update matches bit for bit under jit: the
    stock update run eagerly, over 40 steps from the same gradients. (The
    stock update jitted differs from both by XLA's contraction.)"""
    cls, stock_cls, kwargs, _, _ = CASES[case]
    fused_vars, stock_vars = _variables(), _variables()
    grads = _grads(fused_vars, 40)
    fused, stock = cls(**kwargs), stock_cls(**kwargs)
    run, _ = jitted_apply(fused, fused_vars)
    for g in grads:
        run(g)
        stock.apply(g, stock_vars)
    for a, b in zip(fused_vars + list(fused.variables), stock_vars + list(stock.variables)):
        assert ulp_distance(a.numpy(), b.numpy()) == 0, a.path
    assert_all_fused(fused, 4)


def test_new_learning_rate_does_not_recompile():
    """The learning rate is an operand of the custom call, never an
    attribute: a new value reuses the compiled step, and is the one used
    (bit for bit the stock update run eagerly with it)."""
    # (float32, not a weakly typed Python float: jax compiles for each.)
    lr = keras.Variable(np.float32(0.01), name="lr", trainable=False)
    variables, stock_vars = _variables(), _variables()
    opt = fusedopt.Adam(learning_rate=lr)
    stock = keras.optimizers.Adam(learning_rate=0.01)
    run, step = jitted_apply(opt, variables)
    for i, g in enumerate(_grads(variables, 3)):
        if i == 1:
            lr.assign(np.float32(0.002))
            stock.learning_rate.assign(0.002)
        run(g)
        stock.apply(g, stock_vars)
    assert step._cache_size() == 1
    for a, b in zip(variables + list(opt.variables), stock_vars + list(stock.variables)):
        assert ulp_distance(a.numpy(), b.numpy()) == 0, a.path


def test_learning_rate_variable_is_the_optimizer_variable():
    """A keras.Variable learning rate is the optimizer's learning-rate
    variable (same position as stock's): assigning it changes the next fit
    step, and the optimizer has the stock variables."""
    lr = keras.Variable(0.01, name="lr", trainable=False)
    fused = compiled(fusedopt.Adam(learning_rate=lr), run_eagerly=True)
    stock = compiled(keras.optimizers.Adam(learning_rate=0.01), run_eagerly=True)
    x, y = make_data(64)
    for model in (fused, stock):
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    lr.assign(0.003)
    stock.optimizer.learning_rate.assign(0.003)
    for model in (fused, stock):
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert fused.optimizer.variables[1] is lr
    assert [v.shape for v in fused.optimizer.variables] == [
        v.shape for v in stock.optimizer.variables]
    assert_same_state(fused, stock)


def test_variable_hyperparameter_other_than_learning_rate_is_refused():
    with pytest.raises(TypeError, match="on the JAX backend a hyperparameter cannot be a variable"):
        fusedopt.Adam(beta_1=keras.Variable(0.9))
    with pytest.raises(TypeError, match="cannot be a variable"):
        T.clip_by_norm(keras.Variable(1.0))


def test_hyperparameter_forms():
    """NumPy scalars are numbers; a schedule for beta_1 is evaluated at every
    step: a constant one (0.75: exact in float32, so is 1 - 0.75) is the
    number, and one that changes changes the step."""
    constant = keras.optimizers.schedules.PiecewiseConstantDecay([1000], [0.75, 0.75])
    changing = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.75, 0.5])
    a = train(fusedopt.Adam(learning_rate=np.float32(0.01), beta_1=constant), epochs=1,
              run_eagerly=True, samples=96)
    b = train(keras.optimizers.Adam(learning_rate=0.01, beta_1=0.75), epochs=1,
              run_eagerly=True, samples=96)
    c = train(fusedopt.Adam(learning_rate=0.01, beta_1=changing), epochs=1,
              run_eagerly=True, samples=96)
    assert_same_state(a, b)
    assert not np.array_equal(state(a)[0], state(c)[0])
    assert_all_fused(c.optimizer)


# ------------------------------------------------------------ fallbacks


def test_amsgrad_falls_back_to_stock_bit_for_bit():
    fused = train(fusedopt.Adam(learning_rate=0.01, amsgrad=True), epochs=1)
    stock = train(keras.optimizers.Adam(learning_rate=0.01, amsgrad=True), epochs=1)
    assert_same_state(fused, stock)
    assert set(fused.optimizer.fused_paths.values()) == {"fallback: amsgrad=True (not fused yet)"}


def test_float16_variables_fall_back_with_their_reason():
    variables = [keras.Variable(np.ones(5, "float16"), dtype="float16"),
                 keras.Variable(np.ones(3, "float32"))]
    opt = fusedopt.Adam(learning_rate=0.01)
    run, _ = jitted_apply(opt, variables)
    run([jnp.full(5, 0.5, "float16"), jnp.full(3, 0.5, "float32")])
    paths = list(opt.fused_paths.values())
    assert paths[0].startswith("fallback: dtype float16") and paths[1] == plan_mod.FUSED
    stock_vars = [keras.Variable(np.ones(5, "float16"), dtype="float16"),
                  keras.Variable(np.ones(3, "float32"))]
    stock = keras.optimizers.Adam(learning_rate=0.01)
    stock.apply([jnp.full(5, 0.5, "float16"), jnp.full(3, 0.5, "float32")], stock_vars)
    np.testing.assert_array_equal(variables[1].numpy(), stock_vars[1].numpy())
    assert ulp_distance(variables[0].numpy(), stock_vars[0].numpy()) <= 1


def test_global_clipnorm_with_a_float16_fallback_variable():
    """A folded global clip over a float32 group and a float16 fallback
    pair: the fallback's factor is computed in float16 (it raised a
    TypeError: max_norm float16, factors float32), the clip scales both."""
    variables = [keras.Variable(np.ones(3, "float32")),
                 keras.Variable(np.ones(5, "float16"), dtype="float16")]
    opt = fusedopt.SGD(learning_rate=0.1, global_clipnorm=0.5)
    run, _ = jitted_apply(opt, variables)
    run([jnp.full(3, 2.0, "float32"), jnp.full(5, 2.0, "float16")])
    paths = list(opt.fused_paths.values())
    assert paths[0] == plan_mod.FUSED and paths[1].startswith("fallback: dtype float16"), paths
    # Global norm sqrt(8 * 4) = 5.66: every gradient element becomes
    # 2 * 0.5 / 5.66 = 0.177, the step 0.0177.
    np.testing.assert_allclose(variables[0].numpy(), 1 - 0.1 * 2 * 0.5 / np.sqrt(32), rtol=1e-6)
    np.testing.assert_allclose(variables[1].numpy().astype("float32"),
                               1 - 0.1 * 2 * 0.5 / np.sqrt(32), rtol=1e-3)


# ------------------------------------------------------- skip_nonfinite


def _state(opt, variables):
    return [np.array(v.numpy()) for v in list(variables) + list(opt.variables)]


@pytest.mark.parametrize("kwargs, gate", [
    (dict(), plan_mod.GATE_CHECK),
    (dict(global_clipnorm=1.0), plan_mod.GATE_NORM),
    (dict(use_ema=True), plan_mod.GATE_NONE),
    (dict(gradient_accumulation_steps=2), plan_mod.GATE_NONE),
])
def test_skip_nonfinite_skips_the_whole_step(kwargs, gate):
    variables = _variables()
    opt = fusedopt.Adam(learning_rate=0.01, skip_nonfinite=True, **kwargs)
    run, _ = jitted_apply(opt, variables)
    grads = _grads(variables, 3)
    run(grads[0])
    before = _state(opt, variables)
    bad = list(grads[1])
    bad[2] = bad[2].at[1].set(jnp.nan)
    run(bad)
    assert opt._last_plan.gate == gate
    for a, b in zip(before, _state(opt, variables)):
        np.testing.assert_array_equal(a, b)
    bad[2] = bad[2].at[1].set(jnp.inf)
    run(bad)
    for a, b in zip(before, _state(opt, variables)):
        np.testing.assert_array_equal(a, b)
    run(grads[2])
    assert int(np.asarray(opt._iterations.value)) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, _state(opt, variables)))


def test_skip_nonfinite_in_fit_equals_stock_without_the_bad_batch():
    x, y = make_data(128)
    bad_y = y.copy()
    bad_y[40] = np.nan  # the second batch of 32
    keep = np.r_[0:32, 64:128]
    fused = compiled(fusedopt.Adam(learning_rate=0.01, skip_nonfinite=True), run_eagerly=True)
    stock = compiled(keras.optimizers.Adam(learning_rate=0.01), run_eagerly=True)
    fused.fit(x, bad_y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    stock.fit(x[keep], y[keep], batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert int(fused.optimizer.iterations.numpy()) == 3
    assert_same_state(fused, stock)


# --------------------------------------------------------- save / load


def test_keras_file_round_trip_and_interchange_with_stock(tmp_path):
    x, y = make_data(64)
    kwargs = dict(learning_rate=0.01, weight_decay=0.05)
    fused = compiled(fusedopt.AdamW(**kwargs))
    fused.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "fused.keras"
    fused.save(path)

    # The whole file back: a fusedopt.AdamW with the same config and state,
    # continuing exactly as the original.
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is fusedopt.AdamW
    assert loaded.optimizer.get_config() == fused.optimizer.get_config()
    assert_same_state(loaded, fused)
    for model in (fused, loaded):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_same_state(loaded, fused)
    assert_all_fused(loaded.optimizer)

    # Into the stock class and back: the same variables, in the same order.
    stock = compiled(keras.optimizers.AdamW(**kwargs), seed=9)
    stock.optimizer.build(stock.trainable_variables)
    stock.load_weights(path)
    saved = keras.models.load_model(path)
    assert_same_state(stock, saved)
    stock.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    stock_path = tmp_path / "stock.keras"
    stock.save(stock_path)
    back = compiled(fusedopt.AdamW(**kwargs), seed=9)
    back.optimizer.build(back.trainable_variables)
    back.load_weights(stock_path)
    assert_same_state(back, stock)
    back.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_all_fused(back.optimizer)
    assert int(back.optimizer.iterations.numpy()) == 12


def test_config_is_the_stock_config():
    for cls, stock_cls, kwargs, _, _ in CASES.values():
        if isinstance(kwargs.get("learning_rate"), keras.optimizers.schedules.LearningRateSchedule):
            continue
        assert (cls(name="o", **kwargs).get_config()
                == stock_cls(name="o", **kwargs).get_config())

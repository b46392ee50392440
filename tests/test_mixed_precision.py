"""Mixed precision and 16-bit variables.

- Keras "mixed_float16" / "mixed_bfloat16" policies: variables stay float32
  (only the computation is 16-bit), so fusedopt must match the stock
  optimizers bit for bit, with the LossScaleOptimizer Keras wraps around it
  for mixed_float16; a step whose gradients overflow is skipped and leaves
  every model and optimizer variable untouched, as in stock Keras.
- "float16" / "bfloat16" policies: the variables and slots themselves are
  16-bit. The fused kernels load them into float32, run the update rule in
  float32 with the scalars Keras computes in the 16-bit dtype, and round each
  result to nearest-even once. That is checked bit for bit against a NumPy
  reference of the same rule and against a float64 one (within one unit in the
  last place). Stock Keras rounds after every single op instead (about ten per
  update), so it only agrees to a few units in the last place; see
  STOCK_TOLERANCE.

Every test also checks that the fused op ran (in the traced graph, with the
expected dtype, and in `fused_paths`).
"""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _ops

from training import assert_same_state, make_data, make_model, policy, state

HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# Machine epsilon (one unit in the last place at 1.0) of each 16-bit type.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
# The TF op's T attribute for each variable dtype.
T_ATTR = {"float16": tf.float16.as_datatype_enum, "bfloat16": tf.bfloat16.as_datatype_enum,
          "float32": tf.float32.as_datatype_enum}

STOCK = {fusedopt.Adam: keras.optimizers.Adam, fusedopt.AdamW: keras.optimizers.AdamW,
         fusedopt.SGD: keras.optimizers.SGD}
OP_TYPE = {fusedopt.Adam: "FusedoptAdam", fusedopt.AdamW: "FusedoptAdam",
           fusedopt.SGD: "FusedoptSgd"}
# (class, kwargs) of the model-level cases. beta_2=0.99 rather than the
# default 0.999, which rounds to 1.0 in bfloat16: the stock Adam then computes
# alpha = 0 and never moves a bfloat16 variable (nor does fusedopt, which
# computes the scalars the same way).
OPTIMIZERS = {
    "Adam": (fusedopt.Adam, dict(learning_rate=0.01, beta_2=0.99)),
    "AdamW": (fusedopt.AdamW, dict(learning_rate=0.01, beta_2=0.99, weight_decay=0.05)),
    "SGD_momentum": (fusedopt.SGD, dict(learning_rate=0.05, momentum=0.9)),
}


@pytest.fixture(scope="module")
def lib():
    library = _ops.library()
    assert library is not None, _ops.load_error()
    return library


def fused_nodes(graph, op_type):
    """Every node of `op_type` in a traced graph and the functions it calls
    (the branches of LossScaleOptimizer's cond are such functions)."""
    graph_def = graph.as_graph_def()
    nodes = [n for n in graph_def.node if n.op == op_type]
    for function in graph_def.library.function:
        nodes += [n for n in function.node_def if n.op == op_type]
    return nodes


def assert_fused_op_in_train_step(model, op_type, dtype):
    """The traced train step holds the fused op, for variables of `dtype`."""
    x, y = make_data(32)
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    nodes = fused_nodes(graph, op_type)
    assert nodes, f"no {op_type} in the traced train step"
    assert {n.attr["T"].type for n in nodes} == {T_ATTR[dtype]}


def inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def assert_all_fused(optimizer):
    paths = inner(optimizer).fused_paths
    assert paths and set(paths.values()) == {"fused"}, paths


def fit(cls, kwargs, epochs=2, optimizer=None):
    """A fresh, identically initialized model (under the current policy)
    trained with cls(**kwargs), or with `optimizer` if given."""
    keras.utils.set_random_seed(1234)
    model = make_model()
    model.compile(optimizer=optimizer or cls(**kwargs), loss="mse")
    x, y = make_data(96)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def to_bits(a):
    """16-bit values as integers ordered like the values (for ulp distances)."""
    bits = np.asarray(a).view(np.uint16).astype(np.int32)
    return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)


def assert_same_bits(actual, expected):
    """Bit for bit, except that any NaN matches any NaN."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    nan = np.isnan(expected.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(actual.astype(np.float32)), nan)
    np.testing.assert_array_equal(actual.view(np.uint16)[~nan], expected.view(np.uint16)[~nan])


# ----------------------------------------------------------------------------
# The 16-bit conversions, through the TF op


def all_bit_patterns(dtype):
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(HALF[dtype])


def flush(x):
    """float32 subnormals to signed zero. TensorFlow runs kernels with
    denormals flushed to zero (and read as zero), so stock float32 and
    bfloat16 ops flush them too; bfloat16 subnormals are float32 subnormals,
    float16 ones are normal float32 values."""
    x = np.asarray(x, np.float32)
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), x)


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_every_16_bit_value_loads_and_stores_unchanged(lib, dtype):
    """p - g * lr with g = lr = 0 is p itself: every one of the 65536 bit
    patterns (zeros, subnormals, Inf, NaN) survives load and store, except
    bfloat16 subnormals, which TF's flush-to-zero mode reads as zero."""
    values = all_bit_patterns(dtype)
    p = tf.Variable(values)
    lib.fusedopt_sgd(params=[p.handle], momentums=[], grads=[tf.zeros(values.shape, dtype)],
                     apply_if=[],
                     lr=tf.zeros([], dtype), momentum=tf.zeros([], dtype),
                     weight_decay=tf.zeros([], dtype), decay_lr=tf.zeros([], dtype),
                     clip_args=tf.zeros([0], dtype))
    with np.errstate(invalid="ignore"):  # NaN patterns
        assert_same_bits(p.numpy(), flush(values).astype(HALF[dtype]))
    if dtype == "float16":
        assert_same_bits(p.numpy(), values)


def rounding_inputs(dtype, rng):
    """(p, g, lr) whose float32 results p - g * lr cover normal, subnormal and
    overflowing results, exact ties, and values far from representable."""
    h = HALF[dtype]
    eps = EPS[dtype]
    big = float(ml_dtypes.finfo(h).max)
    tiny = float(ml_dtypes.finfo(h).smallest_subnormal)
    cases = [
        # p, g, lr: exact ties between two 16-bit neighbours (round to even)
        (1.0, -eps / 2, 1.0), (1.0 + eps, -eps / 2, 1.0), (-1.0, eps / 2, 1.0),
        (tiny, -tiny / 2, 1.0), (3 * tiny, -tiny / 2, 1.0),
        # just below / above a tie
        (1.0, -eps / 2, 0.99), (1.0, -eps / 2, 1.01),
        # overflow to Inf, and the largest finite value
        (big, -big, 1.0), (-big, big, 1.0), (big, -big * eps / 4, 1.0),
        # results in the subnormal range, and underflow to (signed) zero
        (0.0, -tiny * 3.3, 1.0), (0.0, tiny / 3, 1.0), (-0.0, 0.0, 1.0),
    ]
    n = 5000
    exponents = (rng.integers(-30, 14, n) if dtype == "float16" else
                 rng.integers(-130, 120, n))
    p = rng.standard_normal(n) * 2.0**exponents
    g = rng.standard_normal(n) * 2.0**exponents
    lr = np.float32(rng.uniform(0.01, 1))
    p = np.concatenate([[c[0] for c in cases], p]).astype(h)
    g = np.concatenate([[c[1] for c in cases], g]).astype(h)
    lrs = np.concatenate([[c[2] for c in cases], np.full(n, lr)]).astype(h)
    return p, g, lrs


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_store_rounds_float32_to_nearest_even(lib, dtype):
    """One plain SGD step per element: the kernel computes p - g * lr in
    float32 and stores it rounded to nearest-even (NumPy/ml_dtypes casts are
    the reference; float32 subnormals flushed as TF does)."""
    h = HALF[dtype]
    with np.errstate(over="ignore"):  # the overflow cases, on purpose
        p, g, lrs = rounding_inputs(dtype, np.random.default_rng(0))
        expected = flush(flush(p) - flush(flush(g) * flush(lrs))).astype(h)
    got = np.empty_like(p)
    # lr is a scalar input: one op call per distinct lr.
    for lr in np.unique(lrs.astype(np.float32)):
        sel = lrs.astype(np.float32) == lr
        var = tf.Variable(p[sel])
        lib.fusedopt_sgd(params=[var.handle], momentums=[], grads=[tf.constant(g[sel])],
                         apply_if=[],
                         lr=tf.constant(lr, dtype), momentum=tf.zeros([], dtype),
                         weight_decay=tf.zeros([], dtype), decay_lr=tf.zeros([], dtype),
                         clip_args=tf.zeros([0], dtype))
        got[sel] = var.numpy()
    assert_same_bits(got, expected)
    assert np.isinf(got.astype(np.float32)).any() and (got.astype(np.float32) == 0).any()


# ----------------------------------------------------------------------------
# 16-bit variables through the optimizers, against a NumPy reference

SIZES = [1, 7, 33, 515, 33001]  # not multiples of any vector width; > one chunk


def stock_scalars(kind, kwargs, dtype, step):
    """The scalars stock Keras (and so the fused path) computes in the
    variables' 16-bit dtype, each op rounded to it."""
    h = HALF[dtype]
    lr = h(kwargs["learning_rate"])
    if kind == "sgd":
        return dict(lr=lr, momentum=h(kwargs.get("momentum", 0.0)))
    t = h(step)
    beta_1, beta_2 = kwargs.get("beta_1", 0.9), kwargs["beta_2"]
    beta_1_power = h(h(beta_1) ** t)
    beta_2_power = h(h(beta_2) ** t)
    alpha = h(h(lr * h(np.sqrt(h(h(1) - beta_2_power)))) / h(h(1) - beta_1_power))
    scalars = dict(alpha=alpha, one_minus_beta_1=h(1 - beta_1),
                   one_minus_beta_2=h(1 - beta_2), epsilon=h(1e-7))
    if kwargs.get("weight_decay"):
        # In a traced step the fused path passes wd * lr (Grappler's rewrite of
        # the stock decay, see base.decay_scalars).
        scalars["decay"] = h(h(kwargs["weight_decay"]) * lr)
    return scalars


def reference_step(kind, s, p, g, m, v, compute):
    """One step of the fused rule in `compute` precision (float32 or float64)
    on 16-bit arrays; each result rounded to their dtype."""
    h = p.dtype
    c = {k: compute(val) for k, val in s.items()}
    p, g = p.astype(compute), g.astype(compute)
    if kind == "sgd":
        m = m.astype(compute) * c["momentum"] - g * c["lr"]
        return (p + m).astype(h), m.astype(h), None
    m, v = m.astype(compute), v.astype(compute)
    if "decay" in c:
        p = p - p * c["decay"] * compute(1)
    m = m + (g - m) * c["one_minus_beta_1"]
    v = v + (g * g - v) * c["one_minus_beta_2"]
    p = p - (m * c["alpha"]) / (np.sqrt(v) + c["epsilon"])
    return p.astype(h), m.astype(h), v.astype(h)


REFERENCE_CASES = {  # beta_2: see OPTIMIZERS
    "Adam": (fusedopt.Adam, "adam", dict(learning_rate=0.02, beta_2=0.99)),
    "AdamW": (fusedopt.AdamW, "adam", dict(learning_rate=0.02, beta_2=0.99,
                                           weight_decay=0.1)),
    "SGD_momentum": (fusedopt.SGD, "sgd", dict(learning_rate=0.05, momentum=0.9)),
}


@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_half_variables_match_reference(case, dtype, steps=4):
    """16-bit tf.Variables trained by the fused optimizer in a tf.function,
    step by step against the reference rule:

    - in float32 from the same start, over all steps: bit for bit (the same
      operations in the same order, one rounding per stored value);
    - in float64, one step from the fused state of the step before: within
      one unit in the last place (float32 intermediates round differently,
      rarely enough to move a 16-bit result). One step at a time, because a
      one-ulp difference in m can be many ulps of a later, smaller m.
    """
    cls, kind, kwargs = REFERENCE_CASES[case]
    h = HALF[dtype]
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(n).astype(h) for n in SIZES]
    variables = [tf.Variable(x, name=f"w{i}") for i, x in enumerate(init)]
    opt = cls(**kwargs)
    opt.build(variables)
    grad_inputs = [tf.Variable(np.zeros(n, h)) for n in SIZES]

    @tf.function
    def step():
        opt.apply([g.value() for g in grad_inputs], variables)

    graph = step.get_concrete_function().graph
    nodes = fused_nodes(graph, OP_TYPE[cls])
    assert len(nodes) == 1 and nodes[0].attr["T"].type == T_ATTR[dtype]

    slot_names = ["momentum"] if kind == "sgd" else ["momentum", "velocity"]

    def fused_state():
        """Per variable [p, m, v] (v None for SGD)."""
        return [[v.numpy()] + [opt.get_slot(v, name).numpy() for name in slot_names]
                + ([None] if kind == "sgd" else []) for v in variables]

    ref32 = [[x, np.zeros(n, h), np.zeros(n, h)] for x, n in zip(init, SIZES)]
    for t in range(1, steps + 1):
        grads = [(0.5 * rng.standard_normal(n)).astype(h) for n in SIZES]
        for gi, g in zip(grad_inputs, grads):
            gi.assign(g)
        before = fused_state()
        step()
        after = fused_state()
        scalars = stock_scalars(kind, kwargs, dtype, t)
        for i, g in enumerate(grads):
            p32, m32, v32 = ref32[i]
            ref32[i] = reference_step(kind, scalars, p32, g, m32, v32, np.float32)
            p0, m0, v0 = before[i]
            ref64 = reference_step(kind, scalars, p0, g, m0, v0, np.float64)
            for name, got, exact, wide in zip(["p", "m", "v"], after[i], ref32[i], ref64):
                if got is None:  # SGD has no v
                    continue
                assert got.dtype == h
                assert_same_bits(got, exact)
                ulps = np.abs(to_bits(got) - to_bits(wide))
                assert ulps.max() <= 1, (t, i, name, ulps.max())
                assert np.mean(ulps == 0) > 0.99, (t, i, name)
        # The step moved most parameters.
        moved = np.concatenate([p0 != p1 for (p0, *_), (p1, *_) in zip(before, after)])
        assert np.mean(moved) > 0.5
    assert_all_fused(opt)


# ----------------------------------------------------------------------------
# The squared-norm reduction on 16-bit gradients


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_squared_norms_of_half_tensors(lib, dtype):
    """Summed in double from the exact values, rounded once (through float32)
    at the end; float16 sums beyond 65504 are Inf, like the stock float16
    clip ops' norms."""
    h = HALF[dtype]
    rng = np.random.default_rng(5)
    xs = [(rng.standard_normal(n) * s).astype(h)
          for n, s in [(1, 1.0), (7, 3.0), (33001, 0.5), (515, 100.0), (4099, 1e-3)]]
    got = lib.fusedopt_squared_norms(xs).numpy()
    assert got.dtype == h
    exact = [np.sum(x.astype(np.float64) ** 2) for x in xs]
    with np.errstate(over="ignore"):  # the float16 Inf, on purpose
        np.testing.assert_array_equal(got, np.array(exact).astype(np.float32).astype(h))
    if dtype == "float16":
        assert np.isinf(got[3].astype(np.float32))  # 515 * 100^2 > 65504
    assert np.all(np.isfinite(got[[0, 1, 2, 4]].astype(np.float32)))


# ----------------------------------------------------------------------------
# Mixed precision policies: float32 variables, bit for bit with stock


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_policy_matches_stock(policy_name, name):
    cls, kwargs = OPTIMIZERS[name]
    with policy(policy_name):
        fused = fit(cls, kwargs)
        stock = fit(None, None, optimizer=STOCK[cls](**kwargs))
        assert fused.layers[0].compute_dtype == policy_name.split("_")[1]
        assert fused.weights[0].dtype == "float32"
        if policy_name == "mixed_float16":
            for model in (fused, stock):
                assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert type(inner(fused.optimizer)) is cls
        assert_all_fused(fused.optimizer)
        assert_fused_op_in_train_step(fused, OP_TYPE[cls], "float32")
        assert_same_state(fused, stock)


def optimizer_state(model):
    """Every model variable and every variable of the optimizer Keras wraps
    (slots, iterations; not the loss scale)."""
    return [v.numpy() for v in model.weights] + [
        v.numpy() for v in inner(model.optimizer).variables]


def batches():
    x, y = make_data(80, seed=4)
    poisoned = x[:16].copy()
    poisoned[3, 5] = np.inf  # the gradients of this batch overflow
    return [(x[:16], y[:16]), (x[16:32], y[16:32]), (poisoned, y[:16]),
            (x[32:48], y[32:48]), (x[48:64], y[48:64])]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skipped_step_leaves_every_variable_untouched(name):
    """mixed_float16: a batch whose gradients are not finite is skipped by
    the LossScaleOptimizer (loss scale halved, nothing else written), for
    fusedopt as for stock, and training then continues identically."""
    cls, kwargs = OPTIMIZERS[name]
    results = []
    with policy("mixed_float16"):
        for make in (lambda: cls(**kwargs), lambda: STOCK[cls](**kwargs)):
            keras.utils.set_random_seed(99)
            model = make_model()
            model.compile(optimizer=make(), loss="mse")
            model.optimizer.build(model.trainable_variables)  # as fit() would
            skipped = []
            for x, y in batches():
                scale = float(model.optimizer.dynamic_scale.numpy())
                before = optimizer_state(model)
                model.train_on_batch(x, y)
                if float(model.optimizer.dynamic_scale.numpy()) < scale:
                    skipped.append(True)
                    for a, b in zip(before, optimizer_state(model)):
                        np.testing.assert_array_equal(a, b)
                else:
                    skipped.append(False)
                    assert not all(np.array_equal(a, b)
                                   for a, b in zip(before, optimizer_state(model)))
            assert skipped == [False, False, True, False, False]
            assert int(inner(model.optimizer).iterations.numpy()) == 4
            results.append(model)
    fused, stock = results
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("name", ["Adam", "SGD_momentum"])
def test_overflowing_loss_scale_skips_steps_like_stock(name):
    """A loss scale so large that the float16 gradients overflow: the first
    steps are skipped (halving the scale each time) until it fits, then
    training runs; fusedopt and stock end bit for bit equal."""
    cls, kwargs = OPTIMIZERS[name]
    with policy("mixed_float16"):
        fused = fit(None, None, epochs=1, optimizer=keras.optimizers.LossScaleOptimizer(
            cls(**kwargs), initial_scale=2.0**20))
        stock = fit(None, None, epochs=1, optimizer=keras.optimizers.LossScaleOptimizer(
            STOCK[cls](**kwargs), initial_scale=2.0**20))
    steps = int(inner(fused.optimizer).iterations.numpy())
    assert 0 < steps < 6, steps  # 6 batches, the first ones skipped
    assert float(fused.optimizer.dynamic_scale.numpy()) == 2.0**20 / 2 ** (6 - steps)
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


@pytest.mark.parametrize("name", ["Adam", "SGD_momentum"])
def test_skip_nonfinite_inside_a_loss_scale_optimizer_changes_nothing(name):
    """skip_nonfinite on the inner optimizer of a LossScaleOptimizer: Keras
    already skips the overflowing steps (and halves the scale), so the
    guard, traced inside its cond, must pass every step it sees unchanged."""
    cls, kwargs = OPTIMIZERS[name]
    with policy("mixed_float16"):
        fused = fit(None, None, epochs=1, optimizer=keras.optimizers.LossScaleOptimizer(
            cls(skip_nonfinite=True, **kwargs), initial_scale=2.0**20))
        stock = fit(None, None, epochs=1, optimizer=keras.optimizers.LossScaleOptimizer(
            STOCK[cls](**kwargs), initial_scale=2.0**20))
    steps = int(inner(fused.optimizer).iterations.numpy())
    assert 0 < steps < 6, steps
    assert steps == int(inner(stock.optimizer).iterations.numpy())
    assert_all_fused(fused.optimizer)
    assert_same_state(fused, stock)


# ----------------------------------------------------------------------------
# float16 / bfloat16 policies: 16-bit variables, close to stock

# |fused - stock| <= STOCK_TOLERANCE ulps of the larger of the value and 1 (a
# unit in the last place at the scale of the weights). Not bit for bit: stock
# rounds each of about ten ops per update to the 16-bit type, fusedopt rounds
# each stored result once, so every step differs by an ulp here and there;
# the weights then differ, so do the next gradients, and the trajectories
# drift apart over the 12 steps. Measured worst on the development machine:
# float16 6.5 ulps (Adam), bfloat16 1.5 (AdamW); about 2.5x margin, since
# stock's 16-bit ops may round differently on other CPUs (oneDNN, Eigen).
STOCK_TOLERANCE = {"float16": 16, "bfloat16": 4}


def half_policy_kwargs(name):
    """OPTIMIZERS[name] for 16-bit variables. Adam gets epsilon=1e-3: with the
    default 1e-7 the stock Adam diverges on float16 variables (g * g and v
    underflow in float16, so sqrt(v) + epsilon can be ~1e-7 and a step huge),
    while fusedopt, squaring in float32, trains as in float32; the two are
    then not comparable."""
    cls, kwargs = OPTIMIZERS[name]
    if cls is not fusedopt.SGD:
        kwargs = dict(kwargs, epsilon=1e-3)
    return cls, kwargs


def assert_close_to_stock(fused, stock, dtype):
    for i, (a, b) in enumerate(zip(state(fused), state(stock))):
        a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if np.asarray(a).dtype == np.int64:  # iterations
            np.testing.assert_array_equal(a, b)
            continue
        ulp = np.maximum(np.abs(b32), 1.0) * EPS[dtype]
        worst = np.max(np.abs(a32 - b32) / ulp)
        assert worst <= STOCK_TOLERANCE[dtype], (i, worst)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", sorted(HALF))
def test_half_policy_close_to_stock(dtype, name):
    cls, kwargs = half_policy_kwargs(name)
    with policy(dtype):
        fused = fit(cls, kwargs)
        stock = fit(None, None, optimizer=STOCK[cls](**kwargs))
        assert {v.dtype for v in fused.weights} == {dtype}
        assert_all_fused(fused.optimizer)
        assert_fused_op_in_train_step(fused, OP_TYPE[cls], dtype)
        keras.utils.set_random_seed(1234)  # as fit() does
        initial = [v.numpy() for v in make_model().weights]
    assert_close_to_stock(fused, stock, dtype)
    # ... where training moved the weights much further than the tolerance.
    moved = [np.max(np.abs(np.float32(w.numpy()) - np.float32(w0)))
             for w, w0 in zip(fused.weights, initial)]
    assert min(moved) > 2 * STOCK_TOLERANCE[dtype] * EPS[dtype], moved


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_half_policy_clipnorm_is_folded(dtype):
    """Clip by norm on 16-bit gradients: the squared norms come from the
    fused reduction (in the traced graph, on the 16-bit gradients) and the
    result stays close to stock."""
    kwargs = dict(half_policy_kwargs("Adam")[1], clipnorm=0.05)
    with policy(dtype):
        fused = fit(fusedopt.Adam, kwargs)
        stock = fit(keras.optimizers.Adam, kwargs)
        assert_all_fused(fused.optimizer)
        assert_fused_op_in_train_step(fused, "FusedoptSquaredNorms", dtype)
        assert_fused_op_in_train_step(fused, "FusedoptAdam", dtype)
    assert_close_to_stock(fused, stock, dtype)

"""Sparse (IndexedSlices) gradients: Embedding layers with duplicate indices.

An Embedding's gradient is an IndexedSlices with one row per looked-up index,
duplicates included. Stock Keras Adam densifies ``g - m`` (duplicate rows
summed) but squares the rows *before* summing duplicates for ``v``:
``v += (sum_i g_i^2 - v)(1 - b2)``, not ``(sum_i g_i)^2``. Plain SGD scatter-subtracts
the rows one by one (duplicates round differently from subtracting their
sum); SGD with momentum densifies. fusedopt sends such gradients to the stock per-variable
update (``fused_paths``: "fallback: sparse ...") and fuses every dense
variable of the same step; these tests check both halves, bit for bit against
the stock optimizer, and that duplicates really change the numbers (so a
fused path that densified first would fail them).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras

import fusedopt
from fusedopt import _ops

from parity import per_step_ulps
from test_xla import XLA_STEP_ULPS

VOCAB, DIM, SEQ = 11, 5, 9  # 9 lookups among 11 rows: duplicates in every batch

OPTIMIZERS = {
    "Adam": (fusedopt.Adam, keras.optimizers.Adam, dict(learning_rate=0.01)),
    "AdamW": (fusedopt.AdamW, keras.optimizers.AdamW,
              dict(learning_rate=0.01, weight_decay=0.05)),
    "SGD": (fusedopt.SGD, keras.optimizers.SGD, dict(learning_rate=0.05)),
    "SGD-momentum": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.9)),
    "SGD-nesterov": (fusedopt.SGD, keras.optimizers.SGD,
                     dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
}

OP_TYPE = {fusedopt.Adam: "FusedoptAdam", fusedopt.AdamW: "FusedoptAdam",
           fusedopt.SGD: "FusedoptSgd"}


def make_data(n=96, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, SEQ)).astype("int32")
    y = rng.standard_normal((n, 2)).astype("float32")
    return x, y


def make_model():
    # The Embedding's gradient is sparse; the Dense layers' are dense, so one
    # step takes both paths.
    return keras.Sequential([
        keras.Input((SEQ,), dtype="int32"),
        keras.layers.Embedding(VOCAB, DIM, name="emb"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, activation="tanh", name="hidden"),
        keras.layers.Dense(2, name="out"),
    ])


def train(opt, mode, epochs=2):
    """mode: "graph", "eager" (run_eagerly) or "xla" (jit_compile)."""
    keras.utils.set_random_seed(21)
    model = make_model()
    model.compile(optimizer=opt, loss="mse", run_eagerly=mode == "eager",
                  jit_compile=mode == "xla")
    x, y = make_data()
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def state(model):
    return [v.numpy() for v in model.weights] + [v.numpy() for v in model.optimizer.variables]


def assert_paths(opt):
    paths = opt.fused_paths
    [emb] = [v for k, v in paths.items() if k.endswith("emb/embeddings")]
    assert emb == "fallback: sparse (IndexedSlices) gradient", paths
    dense = {k: v for k, v in paths.items() if not k.endswith("emb/embeddings")}
    assert len(dense) == 4 and set(dense.values()) == {"fused"}, paths


# Inside XLA too: the embedding takes the stock update there as well, the
# dense variables the fused op's XLA kernel (tests/test_xla.py).
@pytest.mark.parametrize("mode", ["graph", "eager", "xla"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_embedding_matches_stock_in_fit(name, mode):
    cls, stock_cls, kwargs = OPTIMIZERS[name]
    if mode == "xla" and not _ops.xla_kernels():
        pytest.skip("no XLA kernels in this build (tests/test_xla.py covers the fallback)")
    if mode == "xla":
        # Under XLA the dense variables' update is the CPU kernel and the
        # stock one XLA's rewrite of it: the XLA contract, in step ulps per
        # step (tests/test_xla.py, docs/xla.md).
        models = []
        for c in (cls, stock_cls):
            keras.utils.set_random_seed(21)
            models.append(make_model())
            models[-1].compile(optimizer=c(**kwargs), loss="mse", jit_compile=True)
        x, y = make_data()
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]
        assert per_step_ulps(*models, batches) <= XLA_STEP_ULPS
        assert_paths(models[0].optimizer)
        return
    fused = train(cls(**kwargs), mode)
    stock = train(stock_cls(**kwargs), mode)
    assert_paths(fused.optimizer)
    assert fused.optimizer.iterations.numpy() == stock.optimizer.iterations.numpy() == 12
    sf, ss = state(fused), state(stock)
    assert len(sf) == len(ss)
    for i, (a, b) in enumerate(zip(sf, ss)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")
    # Training moved the embedding (the sparse fallback did run).
    keras.utils.set_random_seed(21)
    assert not np.array_equal(make_model().weights[0].numpy(), sf[0])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_traced_step_has_one_fused_op_for_the_dense_variables(name):
    cls, _, kwargs = OPTIMIZERS[name]
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=cls(**kwargs), loss="mse")
    x, y = make_data(16)
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    [op] = [o for o in graph.get_operations() if o.type == OP_TYPE[cls]]
    # Hidden and output kernels and biases, not the embedding.
    assert op.get_attr("N") == 4
    # The stock sparse update of the embedding is there: a row scatter for
    # plain SGD, a densification (sum of duplicate rows) otherwise.
    types = {o.type for o in graph.get_operations()}
    if name == "SGD":
        assert "ResourceScatterSub" in types, sorted(types)
    else:
        assert "UnsortedSegmentSum" in types, sorted(types)
    assert_paths(model.optimizer)


def _one_adam_step_reference(p, rows, indices, lr, b1, b2, eps, square_first):
    """float64 Keras Adam, first step (m = v = 0), on an IndexedSlices gradient."""
    g = np.zeros_like(p)
    g2 = np.zeros_like(p)
    np.add.at(g, indices, rows)
    np.add.at(g2, indices, rows * rows)
    if not square_first:
        g2 = g * g  # densify first: the square of the summed rows
    m = (1 - b1) * g
    v = (1 - b2) * g2
    alpha = lr * np.sqrt(1 - b2) / (1 - b1)
    return p - alpha * m / (np.sqrt(v) + eps)


def test_duplicate_indices_square_before_summing_like_stock_adam():
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal((6, 4))
    indices = np.array([1, 4, 1, 1, 0, 4])  # rows 1 and 4 repeat
    rows = rng.standard_normal((len(indices), 4))
    hp = dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-7)

    def step(cls):
        var = tf.Variable(p0.astype("float32"))
        opt = cls(learning_rate=hp["lr"], beta_1=hp["b1"], beta_2=hp["b2"], epsilon=hp["eps"])
        grad = tf.IndexedSlices(tf.constant(rows, tf.float32), tf.constant(indices),
                                tf.constant(p0.shape, tf.int64))
        tf.function(lambda: opt.apply([grad], [var]))()
        return var.numpy().astype(np.float64), opt

    fused, opt = step(fusedopt.Adam)
    stock, _ = step(keras.optimizers.Adam)
    assert list(opt.fused_paths.values()) == ["fallback: sparse (IndexedSlices) gradient"]
    np.testing.assert_array_equal(fused, stock)

    squares = _one_adam_step_reference(p0, rows, indices, square_first=True, **hp)
    dense = _one_adam_step_reference(p0, rows, indices, square_first=False, **hp)
    np.testing.assert_allclose(fused, squares, rtol=1e-5, atol=1e-6)
    # Densifying first gives other numbers on the duplicated rows only.
    changed = np.any(np.abs(squares - dense) > 1e-3, axis=1)
    assert list(np.flatnonzero(changed)) == [1, 4]
    assert not np.allclose(fused, dense, rtol=1e-5, atol=1e-6)


def test_plain_sgd_subtracts_duplicate_rows_one_by_one_like_stock():
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((5, 64)).astype("float32")
    indices = np.array([2, 0, 2, 2, 3])
    rows = rng.standard_normal((len(indices), 64)).astype("float32")
    grad = tf.IndexedSlices(tf.constant(rows), tf.constant(indices), tf.constant(p0.shape))

    def step(cls, g):
        var = tf.Variable(p0)
        opt = cls(learning_rate=0.3)
        tf.function(lambda: opt.apply([g], [var]))()
        return var.numpy(), opt

    fused, opt = step(fusedopt.SGD, grad)
    stock, _ = step(keras.optimizers.SGD, grad)
    assert list(opt.fused_paths.values()) == ["fallback: sparse (IndexedSlices) gradient"]
    np.testing.assert_array_equal(fused, stock)
    # Summing the duplicates first (the dense gradient, which the fused op
    # would get) rounds differently on the repeated row.
    dense, dense_opt = step(fusedopt.SGD, tf.convert_to_tensor(grad))
    assert list(dense_opt.fused_paths.values()) == ["fused"]
    np.testing.assert_allclose(fused, dense, rtol=1e-5, atol=1e-6)
    differs = np.flatnonzero(np.any(fused != dense, axis=1))
    assert list(differs) == [2], differs


def test_batches_really_contain_duplicate_indices():
    x, _ = make_data()
    for batch in np.split(x, len(x) // 16):
        assert len(np.unique(batch)) < batch.size

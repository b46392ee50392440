"""Several threads stepping shared variables at once: no deadlock, no torn
update, finite results.

The fused ops lock every variable of a call, each mutex once, in address
order (csrc/tf/fused_update.h), the global order TF's own training ops use, so
calls over overlapping variable lists given in different orders cannot
deadlock, and each call's read-modify-write of a variable is atomic with
respect to every other writer that takes the variable's lock (the fused ops,
stock assign_add). Where the arithmetic is exact (plain SGD with lr = 1 and
integer gradients, small integer totals in float32), the final values must
equal the exact total of every update: a lost or torn update shows.

Threads run with a deadline: a deadlock fails the test (the stuck threads are
daemons) instead of hanging CI.
"""

import threading

import numpy as np
import pytest
import tensorflow as tf

import fusedopt
from fusedopt import _ops, kernels

DEADLINE_S = 120  # generous: 2 cores shared with other test processes


@pytest.fixture(scope="module")
def lib():
    library = _ops.library()
    assert library is not None, _ops.load_error()
    return library


def run_threads(targets):
    """Runs every callable on its own thread; fails on an error in any of
    them or when they have not all finished by the deadline."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {DEADLINE_S} s (deadlock?): {stuck}"
    if errors:
        raise errors[0]


def overlapping_orders(rng, num_vars, num_threads, size):
    """Per thread a subset of `size` variable indices in a random order; every
    pair of threads shares variables."""
    return [list(rng.permutation(num_vars)[:size]) for _ in range(num_threads)]


SHAPES = [(1,), (17,), (64, 3), (1000,), (5, 5), (40000,)]  # one over a 32768 chunk


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_fused_sgd_ops_on_shared_variables_add_up_exactly(lib, mode):
    """Plain SGD, lr = 1, gradient 1: every call subtracts exactly 1 from
    each of its variables, while another thread adds 1 with stock
    assign_add. Each final value is the exact count."""
    rng = np.random.default_rng(0)
    variables = [tf.Variable(np.zeros(s, np.float32)) for s in SHAPES]
    orders = overlapping_orders(rng, len(SHAPES), num_threads=4, size=4)
    iterations = 60 if mode == "eager" else 150
    one = tf.constant(1.0)
    zero = tf.constant(0.0)

    def step_fn(order):
        vs = [variables[i] for i in order]
        grads = [tf.ones(v.shape) for v in vs]

        def step():
            lib.fusedopt_sgd(apply_if=[], params=[v.handle for v in vs], momentums=[], grads=grads,
                             lr=one, momentum=zero, weight_decay=zero, decay_lr=zero,
                             clip_args=tf.zeros([0]))
        return tf.function(step) if mode == "function" else step

    steps = [step_fn(o) for o in orders]

    def worker(step):
        def run():
            for _ in range(iterations):
                step()
        return run

    def adder():
        for _ in range(iterations):
            for v in variables:
                v.assign_add(tf.ones(v.shape))

    run_threads([worker(s) for s in steps] + [adder])
    for i, v in enumerate(variables):
        calls = sum(i in o for o in orders)
        expected = iterations - calls * iterations  # adder +1, each call -1
        np.testing.assert_array_equal(v.numpy(), np.full(v.shape, expected, np.float32),
                                      err_msg=f"variable {i} (in {calls} threads' lists)")


def test_fused_ops_beside_tf_training_ops_that_lock_in_order(lib):
    """TF's own training ops with use_locking=True lock their variables in
    address order too (MaybeLockVariableInputMutexesInOrder): threads running
    one on pairs of the variables the fused ops update, as (var, accum) both
    ways round, must not deadlock with the fused calls (over all of them, in
    two orders). Values stay finite (ResourceApplyKerasMomentum with momentum
    0 resets accum, so there is no exact total here)."""
    shapes = [(17,), (17,), (40000,), (40000,)]
    variables = [tf.Variable(np.zeros(s, np.float32)) for s in shapes]
    one, zero = tf.constant(1.0), tf.constant(0.0)
    iterations = 150

    def fused_fn(order):
        vs = [variables[i] for i in order]

        @tf.function
        def fused():
            lib.fusedopt_sgd(apply_if=[], params=[v.handle for v in vs], momentums=[],
                             grads=[tf.ones(v.shape) for v in vs], lr=one, momentum=zero,
                             weight_decay=zero, decay_lr=zero, clip_args=tf.zeros([0]))
        return fused

    def stock_fn(var, accum):
        @tf.function
        def stock():
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variables[var].handle, accum=variables[accum].handle, lr=one,
                grad=tf.ones(shapes[var]), momentum=zero, use_locking=True)
        return stock

    fns = [fused_fn([0, 1, 2, 3]), fused_fn([3, 1, 2, 0])]
    fns += [stock_fn(*pair) for pair in [(0, 1), (1, 0), (2, 3), (3, 2)]]

    def repeat(fn):
        def run():
            for _ in range(iterations):
                fn()
        return run

    run_threads([repeat(fn) for fn in fns])
    for i, v in enumerate(variables):
        assert np.all(np.isfinite(v.numpy())), f"variable {i}"


def test_fused_adam_ops_with_variables_in_several_roles(lib):
    """Threads whose lists overlap and where one thread's parameter is another
    thread's moment: every call still validates and locks all of them; the
    values stay finite. (Positive gradients and a small step keep every
    variable positive, so that one used as v has a square root.)"""
    rng = np.random.default_rng(1)
    shapes = [(33,), (33,), (33,), (33,), (33,), (33,)]
    variables = [tf.Variable(rng.uniform(0.5, 1.0, s).astype(np.float32)) for s in shapes]
    grads = [tf.constant(rng.uniform(0.2, 1.0, s).astype(np.float32)) for s in shapes[:2]]
    c = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    scalars = dict(alpha=c(1e-4), one_minus_beta_1=c(0.1), one_minus_beta_2=c(0.001),
                   epsilon=c(1e-7), lr=c(1e-3), weight_decay=c(0.0), clip_args=tf.zeros([0]))

    def step_fn(p, m, v):
        @tf.function
        def step():
            lib.fusedopt_adam(apply_if=[], params=[variables[i].handle for i in p],
                              m=[variables[i].handle for i in m],
                              v=[variables[i].handle for i in v], grads=grads, **scalars)
        return step

    roles = [((0, 1), (2, 3), (4, 5)), ((2, 3), (4, 5), (0, 1)), ((5, 4), (1, 0), (3, 2)),
             ((3, 0), (5, 2), (1, 4))]
    steps = [step_fn(*r) for r in roles]

    def worker(step):
        def run():
            for _ in range(100):
                step()
        return run

    before = [x.numpy() for x in variables]
    run_threads([worker(s) for s in steps])
    for i, (x, b) in enumerate(zip(variables, before)):
        assert np.all(np.isfinite(x.numpy())), f"variable {i}"
        assert np.all(x.numpy() > 0) and np.any(x.numpy() != b), f"variable {i}"


def _shared_optimizer_steps(opt_cls, variables, orders, **kwargs):
    """One optimizer per order, each applying gradient 1 to its variables in
    that order inside a tf.function."""
    steps = []
    for order in orders:
        vs = [variables[i] for i in order]
        opt = opt_cls(**kwargs)
        opt.build(vs)

        @tf.function
        def step(opt=opt, vs=vs):
            opt.apply([tf.ones(v.shape) for v in vs], vs)

        steps.append((opt, step))
    return steps


def test_fusedopt_sgd_optimizers_sharing_variables_add_up_exactly():
    rng = np.random.default_rng(2)
    variables = [tf.Variable(np.zeros(s, np.float32), name=f"shared{i}")
                 for i, s in enumerate(SHAPES)]
    orders = overlapping_orders(rng, len(SHAPES), num_threads=3, size=4)
    steps = _shared_optimizer_steps(fusedopt.SGD, variables, orders, learning_rate=1.0)
    iterations = 100

    def worker(step):
        def run():
            for _ in range(iterations):
                step()
        return run

    run_threads([worker(step) for _, step in steps])
    for opt, _ in steps:
        assert set(opt.fused_paths.values()) == {"fused"}, opt.fused_paths
        assert int(opt.iterations.numpy()) == iterations
    for i, v in enumerate(variables):
        expected = -sum(i in o for o in orders) * iterations
        np.testing.assert_array_equal(v.numpy(), np.full(v.shape, expected, np.float32),
                                      err_msg=f"variable {i}")


def test_fusedopt_adam_optimizers_sharing_variables_stay_finite():
    rng = np.random.default_rng(3)
    variables = [tf.Variable(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
    orders = overlapping_orders(rng, len(SHAPES), num_threads=3, size=5)
    steps = _shared_optimizer_steps(fusedopt.Adam, variables, orders, learning_rate=1e-2,
                                    weight_decay=1e-3)

    def worker(step):
        def run():
            for _ in range(60):
                step()
        return run

    before = [v.numpy() for v in variables]
    run_threads([worker(step) for _, step in steps])
    for opt, _ in steps:
        assert set(opt.fused_paths.values()) == {"fused"}, opt.fused_paths
    for i, (v, b) in enumerate(zip(variables, before)):
        x = v.numpy()
        assert np.all(np.isfinite(x)), f"variable {i}"
        # Gradient 1 everywhere: Adam moves every element down (by about
        # lr per step per optimizer).
        assert np.all(x < b), f"variable {i} did not move down everywhere"


def test_numpy_kernels_from_several_threads():
    """kernels.* release the GIL and share one thread pool (one parallel loop
    at a time): threads updating their own arrays get exact results."""
    rng = np.random.default_rng(4)
    num_threads, iterations = 4, 40
    data = []
    for _ in range(num_threads):
        p = [np.zeros(n, np.float32) for n in (3, 70000, 129)]
        g = [np.ones(n, np.float32) for n in (3, 70000, 129)]
        data.append((p, g))
    norms = []

    def worker(p, g):
        def run():
            for _ in range(iterations):
                kernels.sgd(p, g, None, lr=1.0)
                norms.append(kernels.global_norm(g))
        return run

    run_threads([worker(p, g) for p, g in data])
    for p, _ in data:
        for x in p:
            np.testing.assert_array_equal(x, np.full(x.shape, -iterations, np.float32))
    assert set(norms) == {np.sqrt(3 + 70000 + 129)}
    del rng

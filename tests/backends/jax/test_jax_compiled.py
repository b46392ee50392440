"""What Keras-JAX compiles with a fusedopt optimizer: the HLO of the jitted,
donated train step holds one `fusedopt_adam` / `fusedopt_sgd` custom call per
group (and none of the stock per-variable update), the update is in place
(the results keep the donated buffers), and `import fusedopt` needs no
TensorFlow on the JAX backend."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import keras

import fusedopt

from training import make_data, make_model

assert keras.backend.backend() == "jax", keras.backend.backend()


def keras_train_step_hlo(opt):
    """The optimized HLO of the model's Keras train step, jitted with the
    state donated as Keras' make_train_function does."""
    keras.utils.set_random_seed(1)
    model = make_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = make_data(32)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # builds everything
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    step = jax.jit(model.train_step, donate_argnums=0)
    return step.lower(state, (jnp.asarray(x), jnp.asarray(y))).compile().as_text(), model


def custom_calls(hlo, target):
    return len(re.findall(rf'custom_call_target="{target}"', hlo))


def float_copies(hlo):
    """The copies of float arrays (not scalars: the loss and metrics), as
    the shapes they copy."""
    return re.findall(r"= (f32\[[0-9][0-9,]*\][^ ]*) copy\(", hlo)


@pytest.mark.parametrize("cls, kwargs, target", [
    (fusedopt.Adam, dict(learning_rate=0.01), "fusedopt_adam"),
    (fusedopt.SGD, dict(learning_rate=0.01, momentum=0.9), "fusedopt_sgd"),
    (fusedopt.Adam, dict(learning_rate=0.01, clipnorm=0.5), "fusedopt_adam"),
])
def test_keras_train_step_holds_one_custom_call(cls, kwargs, target):
    hlo, model = keras_train_step_hlo(cls(**kwargs))
    assert custom_calls(hlo, target) == 1, hlo
    if "clipnorm" in kwargs:
        assert custom_calls(hlo, "fusedopt_squared_norms") == 1
        assert custom_calls(hlo, "fusedopt_clip_factors") == 1
    # Measured: the donated parameters and slots are updated in place; the
    # only float copies XLA inserts are of the last bias (3 floats, twice),
    # which the loss reads next to the call that overwrites it (stock Keras
    # Adam copies that bias and two weight matrices).
    copies = float_copies(hlo)
    assert all(c.startswith("f32[3]") for c in copies), copies
    assert set(model.optimizer.fused_paths.values()) == {"fused"}


def test_stock_keras_compiles_per_variable_fusions():
    """The reference: stock Keras-JAX Adam has no custom call."""
    hlo, _ = keras_train_step_hlo(keras.optimizers.Adam(learning_rate=0.01))
    assert custom_calls(hlo, "fusedopt_adam") == 0


def test_one_custom_call_per_group():
    """AdamW with a variable excluded from the decay: two groups (decayed or
    not), two calls."""
    opt = fusedopt.AdamW(learning_rate=0.01, weight_decay=0.05)
    opt.exclude_from_weight_decay(var_names=["bias"])
    hlo, model = keras_train_step_hlo(opt)
    assert custom_calls(hlo, "fusedopt_adam") == 2


def test_update_is_in_place():
    """With the state donated, every parameter and slot keeps its buffer
    from step to step."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal(s).astype("float32"))
                 for s in [(300, 200), (5000,), (7,)]]
    opt = fusedopt.Adam(learning_rate=0.01)
    opt.build(variables)
    # The state returned in the order it comes in, as Keras' train step does:
    # jax aliases a donated input to the output of the same position.
    step = jax.jit(lambda tv, ov, g: opt.stateless_apply(ov, g, tv), donate_argnums=(0, 1))
    grads = [jnp.ones(v.shape, "float32") for v in variables]
    ov, tv = [v.value for v in opt.variables], [v.value for v in variables]
    # The first step may move a buffer that jax shares with the NumPy array
    # it was made from (zero-copy); from then on every one stays put.
    tv, ov = step(tv, ov, grads)
    for _ in range(2):
        before = [x.unsafe_buffer_pointer() for x in tv + ov if x.size > 1]
        tv, ov = step(tv, ov, grads)
        after = [x.unsafe_buffer_pointer() for x in tv + ov if x.size > 1]
        assert before == after
    hlo = step.lower(tv, ov, grads).compile().as_text()
    assert custom_calls(hlo, "fusedopt_adam") == 1
    assert float_copies(hlo) == []


def test_import_and_fit_without_tensorflow():
    """`import fusedopt` and a fused fit on the JAX backend where TensorFlow
    cannot be imported; where it is installed, `import fusedopt` does not
    import it."""
    script = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` fail
        import numpy as np
        import keras
        import fusedopt
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer=fusedopt.Adam(0.01, clipnorm=1.0, skip_nonfinite=True),
                      loss="mse")
        x = np.ones((8, 4), "float32")
        model.fit(x, np.ones((8, 2), "float32"), batch_size=4, verbose=0)
        assert set(model.optimizer.fused_paths.values()) == {"fused"}, model.optimizer.fused_paths
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", script, "blocked"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    check = ("import sys, fusedopt; assert fusedopt.Adam; "
             "assert 'tensorflow' not in sys.modules, 'import fusedopt imported tensorflow'")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]

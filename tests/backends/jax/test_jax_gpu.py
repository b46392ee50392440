"""The CUDA XLA FFI handlers and the Keras-JAX optimizers on a GPU
(KERAS_BACKEND=jax).

Most of this file needs jax with a CUDA device and a CUDA build of fusedopt:
it is the GPU run that lifts the ``FUSEDOPT_JAX_GPU`` opt-in
(``bash bench/gpu_checks.sh jax``, Keras brought to the GPU machine as
wheels). What it checks:

- every FFI target on GPU arrays against the same call on CPU arrays, bit
  for bit (the CUDA drivers are built with --fmad=false and IEEE division
  and sqrt, so they give the CPU kernels' bits from the same scalars): Adam
  and SGD (every variant, decay, each clip kind, apply_if true and false),
  squared norms (against float64 NumPy), clip factors, the finite check over
  mixed dtypes; many tensors of sizes around the CUDA chunk;
- the compiled HLO of a jitted update on the GPU: one custom call per
  group, the parameters aliased (no copy);
- ``model.fit`` with fusedopt against stock Keras-JAX on the GPU, every
  variable fused (``fused_paths``), in step ulps;
- without the opt-in, the step falls back naming it.

On this machine (CPU jax) the opt-in's decision and the CUDA targets'
registration are checked.
"""

import math
import os
import sys

import numpy as np
import pytest

import keras

if keras.backend.backend() != "jax":
    pytest.skip("needs KERAS_BACKEND=jax", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import _C  # noqa: E402
from fusedopt.backends.jax import executor, ffi  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from parity import fit_parity, max_ulp_distance  # noqa: E402
from training import GPU_FIT_CASES, make_data, make_model  # noqa: E402

GPU = (jax.default_backend() == "gpu" and ffi.cuda_targets() == ffi.cpu_targets()
       and _C.cuda_problem() is None)
needs_gpu = pytest.mark.skipif(not GPU, reason="needs jax on a CUDA device and a CUDA build")

SIZES = [1, 3, 17, 255, 4099, 65535, 65537, 131075]


# ---------------------------------------------------------------- here


def test_cuda_builds_register_every_target_for_cuda():
    if fusedopt.build_info()["cuda"]:
        assert ffi.cuda_targets() == ffi.cpu_targets()
    else:
        assert ffi.cuda_targets() == frozenset()


def test_platform_decision(monkeypatch):
    monkeypatch.delenv(executor.JAX_GPU_ENV, raising=False)
    assert executor.platform_reason("cpu") is None
    assert "tpu" in executor.platform_reason("tpu")
    assert executor.JAX_GPU_ENV + "=1" in executor.platform_reason("gpu")
    monkeypatch.setenv(executor.JAX_GPU_ENV, "1")
    if ffi.cuda_targets() == ffi.cpu_targets():
        assert executor.platform_reason("gpu") is None
    else:
        assert "no CUDA handler" in executor.platform_reason("gpu")


# ------------------------------------------------------------- handlers


@pytest.fixture
def x64():
    """float64 arrays stay float64 for this test only (the other tests of the
    process, Keras' among them, run with jax's default)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def _devices():
    return jax.devices("gpu")[0], jax.devices("cpu")[0]


def _random(sizes, dtype, seed, scale=1.0, positive=False):
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(n) * scale for n in sizes]
    return [(np.abs(x) if positive else x).astype(dtype) for x in out]


def _both(arrays):
    gpu, cpu = _devices()
    return ([jax.device_put(a, gpu) for a in arrays], [jax.device_put(a, cpu) for a in arrays])


def _one(x, device):
    return None if x is None else jax.device_put(x, device)


def _clip_args(kind, n, dtype):
    if kind == "none":
        return None
    if kind == "value":
        return np.array([-0.5, 0.75], dtype)
    if kind == "ratio":
        return np.concatenate([[1.0], np.linspace(0.5, 3.0, n)]).astype(dtype)
    return np.array([0.6], dtype)


def _same(a_lists, b_lists):
    for a, b in zip(a_lists, b_lists):
        for i, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"tensor {i}")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clip", ["none", "value", "ratio", "scale"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("apply", [None, True, False])
def test_adam_on_gpu_equals_cpu(dtype, clip, decay, apply, x64):
    gpu, cpu = _devices()
    sizes = SIZES * 2
    lists = [_random(sizes, dtype, 1), _random(sizes, dtype, 2, 2.0),
             _random(sizes, dtype, 3, 0.1), _random(sizes, dtype, 4, 0.01, positive=True)]
    scalars = np.array([1e-2, 0.1, 0.01, 1e-3, 1e-2, 0.004], dtype)
    args = _clip_args(clip, len(sizes), dtype)
    flag = None if apply is None else np.array(apply)
    results = []
    for device in (gpu, cpu):
        p, g, m, v = ([jax.device_put(x, device) for x in lst] for lst in lists)
        results.append(ffi.adam_update(p, g, m, v, _one(scalars, device), decay=decay,
                                       clip_kind=clip, clip_args=_one(args, device),
                                       apply_if=_one(flag, device)))
    _same(results[0], results[1])
    changed = not np.array_equal(np.asarray(results[0][0][-1]), lists[0][-1])
    assert changed == (apply is not False)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("clip", ["none", "value", "ratio", "scale"])
def test_sgd_on_gpu_equals_cpu(dtype, variant, clip, x64):
    gpu, cpu = _devices()
    sizes = SIZES * 2
    lists = [_random(sizes, dtype, 5), _random(sizes, dtype, 6, 2.0),
             [] if variant == "plain" else _random(sizes, dtype, 7, 0.1)]
    scalars = np.array([0.05, 0.9, 0.01, 0.05], dtype)
    args = _clip_args(clip, len(sizes), dtype)
    results = []
    for device in (gpu, cpu):
        p, g, m = ([jax.device_put(x, device) for x in lst] for lst in lists)
        results.append(ffi.sgd_update(p, g, m, _one(scalars, device),
                                      nesterov=variant == "nesterov", decay=True,
                                      clip_kind=clip, clip_args=_one(args, device),
                                      apply_if=_one(np.array(True), device)))
    _same(results[0], results[1])


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_norms_factors_and_finite_on_gpu(dtype, x64):
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    x = _random(SIZES, np_dtype, 8, 0.1)
    on_gpu, on_cpu = _both(x)
    got = ffi.squared_norms(on_gpu)
    if dtype == "float64":
        # Summed in double in the kernel's order: against the exactly summed
        # squares, a few ulps (7 at most on the CPU handler; 32 bounds a
        # reduction tree over 131075 terms).
        want, bound = np.array([math.fsum(a * a) for a in x]), 32
    else:
        # Summed in double, rounded once (16-bit types via float32).
        want = np.array([np.sum(a.astype(np.float64) ** 2) for a in x])
        want, bound = want.astype(np.float32).astype(np_dtype), 1
    assert max_ulp_distance([np.asarray(got)], [want]) <= bound
    gpu, cpu = _devices()
    cpu_norms = jax.device_put(got, cpu)
    for kind, norms in (("norm", [got]), ("global_norm", [got, got])):
        a, ok = ffi.clip_factors(norms, jax.device_put(np.asarray(2.5, np_dtype), gpu), kind=kind)
        b, _ = ffi.clip_factors([cpu_norms] * len(norms),
                                jax.device_put(np.asarray(2.5, np_dtype), cpu), kind=kind)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert bool(ok)
    mixed = on_gpu + _both(_random([5, 70001], "float32", 9))[0]
    assert bool(ffi.all_finite(mixed))
    for k in (0, len(mixed) - 1):
        bad = list(mixed)
        bad[k] = bad[k].at[-1].set(np.nan)
        assert not bool(ffi.all_finite(bad)), k


@needs_gpu
def test_jitted_update_on_gpu_is_one_custom_call_in_place():
    gpu, _ = _devices()
    p, g = _both(_random(SIZES, "float32", 10))[0], _both(_random(SIZES, "float32", 11))[0]
    m = [jnp.zeros_like(x) for x in p]
    v = [jnp.zeros_like(x) for x in p]
    scalars = jax.device_put(np.array([1e-2, 0.1, 0.01, 1e-3, 1e-2, 0.0], "float32"), gpu)
    step = jax.jit(lambda p, m, v, g, s: ffi.adam_update(p, g, m, v, s), donate_argnums=(0, 1, 2))
    text = step.lower(p, m, v, g, scalars).compile().as_text()
    calls = [line for line in text.splitlines() if "custom-call(" in line]
    assert len(calls) == 1 and 'custom_call_target="fusedopt_adam"' in calls[0], calls
    n = len(SIZES)
    assert "output_to_operand_aliasing={" + ", ".join(
        f"{{{j}}}: ({j}, {{}})" for j in range(3 * n)) + "}" in calls[0]
    big = f"f32[{SIZES[-1]}]"
    assert [line for line in text.splitlines() if " copy(" in line and big in line] == []
    assert "input_output_alias=" in text


# ------------------------------------------------------------ model.fit

# Step ulps against stock Keras-JAX on the GPU, the CPU contract's bounds
# (jitted stock code is contracted by XLA: 16; folded norm clips: 32) until
# this run says otherwise.
BOUNDS = {"Adam": 16, "AdamW-clipnorm": 32, "SGD-nesterov": 16, "SGD-global-clipnorm-skip": 32}


@needs_gpu
@pytest.mark.parametrize("case", sorted(GPU_FIT_CASES))
def test_fit_on_gpu_matches_stock(case, monkeypatch):
    monkeypatch.setenv(executor.JAX_GPU_ENV, "1")
    make_fused, make_stock = GPU_FIT_CASES[case]
    model = fit_parity(make_fused, make_stock, BOUNDS[case], passes=3, what=f"{case} on the GPU")
    paths = model.optimizer.fused_paths
    assert paths and all(p == "fused" for p in paths.values()), paths


@needs_gpu
def test_gpu_step_falls_back_without_the_opt_in(monkeypatch):
    monkeypatch.delenv(executor.JAX_GPU_ENV, raising=False)
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=fusedopt.Adam(0.01), loss="mse")
    x, y = make_data()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    paths = model.optimizer.fused_paths
    assert paths and all(executor.JAX_GPU_ENV in p for p in paths.values()), paths

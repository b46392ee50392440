"""The Keras optimizers' GPU path on TensorFlow (docs/gpu.md): opt-in with
FUSEDOPT_TF_GPU=1 until a TensorFlow GPU run has verified it.

Without a GPU the tests check the decision the executor makes for a GPU
variable (the fallback reasons, the driver warning). The training test runs
where TensorFlow sees a GPU and fusedopt was built with CUDA, which no
machine we have offers: it is the verification the opt-in waits for.
"""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import _C  # noqa: E402
from fusedopt.backends.tensorflow import executor  # noqa: E402

GPU_VARIABLE = SimpleNamespace(dtype=tf.float32,
                               device="/job:localhost/replica:0/task:0/device:GPU:0")
GRAD = tf.zeros([3])


@pytest.fixture(autouse=True)
def fresh_driver_check():
    executor._gpu_problem.cache_clear()
    yield
    executor._gpu_problem.cache_clear()


def test_gpu_variables_fall_back_without_the_opt_in(monkeypatch):
    monkeypatch.delenv("FUSEDOPT_TF_GPU", raising=False)
    reason = executor._fallback_reason(GRAD, GPU_VARIABLE)
    assert reason is not None and "FUSEDOPT_TF_GPU=1" in reason
    monkeypatch.setenv("FUSEDOPT_TF_GPU", "yes")  # only "1" opts in
    assert executor._fallback_reason(GRAD, GPU_VARIABLE) == reason


def test_the_opt_in_falls_back_with_one_warning_when_the_kernels_cannot_run(monkeypatch):
    monkeypatch.setenv("FUSEDOPT_TF_GPU", "1")
    problem = "fusedopt's CUDA kernels were built with CUDA 13.0, which needs ... 580 ..."
    monkeypatch.setattr(_C, "cuda_problem", lambda: problem)
    with pytest.warns(RuntimeWarning, match="cannot run") as caught:
        first = executor._fallback_reason(GRAD, GPU_VARIABLE)
    assert len(caught) == 1 and problem in str(caught[0].message)
    assert first == f"variable on a GPU ({problem})"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert executor._fallback_reason(GRAD, GPU_VARIABLE) == first


def test_this_build_reports_its_own_problem(monkeypatch):
    """The real check of this machine: a CPU-only build or no driver is a
    problem (so GPU variables could not be fused here even if TF saw a GPU)."""
    monkeypatch.setenv("FUSEDOPT_TF_GPU", "1")
    problem = _C.cuda_problem()
    if problem is None:
        assert executor._fallback_reason(GRAD, GPU_VARIABLE) is None
    else:
        with pytest.warns(RuntimeWarning):
            assert problem in executor._fallback_reason(GRAD, GPU_VARIABLE)


def test_the_opt_in_fuses_gpu_variables_when_the_kernels_can_run(monkeypatch):
    monkeypatch.setenv("FUSEDOPT_TF_GPU", "1")
    monkeypatch.setattr(_C, "cuda_problem", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert executor._fallback_reason(GRAD, GPU_VARIABLE) is None
    # Not inside XLA: TF's XLA registers only Adam's CUDA handler (docs/xla.md).
    monkeypatch.setattr(executor, "in_xla_context", lambda: True)
    assert "XLA" in executor._fallback_reason(GRAD, GPU_VARIABLE)


# ------------------------------------------------- on a TensorFlow GPU


needs_gpu = pytest.mark.skipif(
    not tf.config.list_physical_devices("GPU") or not fusedopt.build_info()["cuda"]
    or _C.cuda_problem() is not None,
    reason="needs TensorFlow with a GPU and a CUDA build of fusedopt whose kernels can run")


@needs_gpu
@pytest.mark.parametrize("make_fused, make_stock", [
    (lambda: fusedopt.Adam(1e-3), lambda: keras.optimizers.Adam(1e-3)),
    (lambda: fusedopt.AdamW(1e-3, weight_decay=0.01), lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01)),
    (lambda: fusedopt.SGD(0.01, momentum=0.9, nesterov=True),
     lambda: keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)),
    (lambda: fusedopt.Adam(1e-3, global_clipnorm=0.5), lambda: keras.optimizers.Adam(1e-3, global_clipnorm=0.5)),
], ids=["adam", "adamw", "sgd-nesterov", "adam-global-clipnorm"])
def test_fit_on_the_gpu_matches_stock(monkeypatch, make_fused, make_stock):
    """GPU variables trained fused (every path "fused") within parity.NORM_CLIP
    step ulps of the stock GPU optimizer, per step (the CUDA kernels are the
    CPU rules compiled for the device; the stock GPU ops are Eigen's, whose
    bound is not measured yet: the first TF GPU run sets it)."""
    import parity

    monkeypatch.setenv("FUSEDOPT_TF_GPU", "1")
    with tf.device("/GPU:0"):
        model = parity.fit_parity(make_fused, make_stock, parity.NORM_CLIP)
    paths = model.optimizer.fused_paths
    assert paths and set(paths.values()) == {"fused"}, paths
    assert all("GPU" in v.value.device.upper() for v in model.trainable_variables)
    assert np.all(np.isfinite(model.get_weights()[0]))

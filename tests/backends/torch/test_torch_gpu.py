"""The fused torch ops and optimizers on CUDA tensors (KERAS_BACKEND=torch).

Most of this file needs a CUDA device and a build with CUDA kernels: it is
the GPU run that lifts the ``FUSEDOPT_TORCH_GPU`` opt-in (bench/gpu_checks.sh
runs it, with Keras brought to the GPU machine as wheels). What it checks:

- the ops on CUDA against the same ops on the CPU, bit for bit: both run the
  torch form of csrc/kernels/ (the CUDA driver with --fmad=false and the
  rule's explicit fma), from the same scalars and clip arguments, for every
  dtype, clip kind, decay and apply_if, many tensors of sizes that are not
  multiples of the vector width or the CUDA chunk; on torch's current
  stream, in place, inside a captured CUDA graph;
- the CUDA norms against a float64 NumPy reference, the finite check over
  mixed dtypes;
- ``model.fit`` with fusedopt against the stock Keras-torch optimizer on the
  GPU, every variable fused (``fused_paths``), in step ulps;
- without the opt-in, CUDA variables fall back with a reason naming it.

On a machine without a usable CUDA device the refusals run (the entries
refuse device memory before touching it, naming why) and the finite check
over mixed dtypes on CPU tensors.
"""

import math
import os
import sys

import numpy as np
import pytest

import keras

if keras.backend.backend() != "torch":
    pytest.skip("needs KERAS_BACKEND=torch", allow_module_level=True)

import torch  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import _C  # noqa: E402
from fusedopt.backends.torch import executor  # noqa: E402
from fusedopt.backends.torch import ops  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from parity import EXACT, fit_parity, max_ulp_distance  # noqa: E402
from training import GPU_FIT_CASES, make_data, make_model  # noqa: E402

CUDA = torch.cuda.is_available() and ops.cuda_kernels() and _C.cuda_problem() is None
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device and a CUDA build")

# Sizes around the CUDA chunk (64K elements) and the vector widths, and one.
SIZES = [1, 3, 17, 255, 4099, 65535, 65537, 131075]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------- refusals


@pytest.mark.skipif(CUDA, reason="the refusal of a machine without usable CUDA")
def test_device_memory_refused_before_any_access():
    # Distinct, never-mapped addresses: an entry that touched them would
    # crash. device=0 is refused with why (no CUDA kernels in this build, or
    # the driver/device problem), never a launch.
    args = ([0x1000], [0x2000], [0x3000], [0x4000], [1], "float32", 0x5000)
    if _C.pointer_cuda():
        with pytest.raises(RuntimeError, match="driver|device"):
            _C.pointer_adam(*args, form="torch", decay=False, device=0)
        with pytest.raises(RuntimeError, match="driver|device"):
            _C.pointer_sgd([0x1000], [0x2000], [0x3000], [1], "float32", 0x5000, form="torch",
                           variant="momentum", decay=False, device=0)
    else:
        with pytest.raises(ValueError, match="no CUDA kernels"):
            _C.pointer_adam(*args, form="torch", decay=False, device=0)


def test_ops_refuse_other_devices():
    # (Through the ops' checks: torch dispatches a meta tensor to the fake
    # implementation, never to the kernel.)
    with pytest.raises(ValueError, match="run on CPU and CUDA tensors"):
        ops._check_lists([("params", [torch.ones(4, device="meta")])])
    with pytest.raises(ValueError, match=r"m\[1\] is on meta but the call's tensors are on cpu"):
        ops._check_lists([("params", [torch.ones(2), torch.ones(3)]),
                          ("m", [torch.ones(2), torch.ones(3, device="meta")])])
    with pytest.raises(ValueError, match="scalars is on meta but the call's tensors are on cpu"):
        ops._check_scalars(torch.zeros(7, device="meta"), 7, torch.float32, torch.device("cpu"))


def test_opt_in_decision_traces_and_warns_once(monkeypatch):
    # The opt-in is decided by Python that torch.compile(fullgraph=True)
    # traces (the env read) or calls (the _C query, assume_constant_result):
    # no graph break. Where the kernels cannot run, the reason names the
    # problem and one RuntimeWarning says so; where they can, nothing.
    monkeypatch.setattr(executor, "_GPU_PROBLEM", [])
    monkeypatch.setenv(executor.TORCH_GPU_ENV, "1")
    torch._dynamo.reset()

    def step(x):
        return x + (1.0 if executor.gpu_reason() is None else 2.0)

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(step, fullgraph=True, backend="aot_eager")(torch.zeros(2))
        reason = executor.gpu_reason()
    ours = [w for w in caught if executor.TORCH_GPU_ENV in str(w.message)]
    if CUDA:
        assert reason is None and not ours and torch.equal(out, torch.ones(2))
    else:
        assert reason.startswith("variable on a CUDA device (")
        assert torch.equal(out, 2 * torch.ones(2))
        assert len(ours) == 1 and ours[0].category is RuntimeWarning
    monkeypatch.delenv(executor.TORCH_GPU_ENV)
    assert executor.TORCH_GPU_ENV + "=1" in executor.gpu_reason()


# ------------------------------------------------------------ op by op


def _random(sizes, dtype, seed, scale=1.0, positive=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, generator=g, dtype=torch.float64) * scale
        out.append((x.abs() if positive else x).to(dtype))
    return out


def _cuda(tensors):
    return [t.to("cuda") for t in tensors]


def _poison_check(before, after):
    """Every tensor of more than 16 elements was written (a kernel that
    skipped one would leave it; a tiny 16-bit one may round back)."""
    for i, (b, a) in enumerate(zip(before, after)):
        if b.numel() > 16:
            assert not torch.equal(b, a.cpu()), f"tensor {i} was not updated"


def _clip_args(kind, n, cdt):
    if kind == "none":
        return None
    if kind == "value":
        return torch.tensor([-0.5, 0.75], dtype=cdt)
    if kind == "ratio":
        return torch.cat([torch.tensor([1.0]), torch.linspace(0.5, 3.0, n)]).to(cdt)
    return torch.tensor([0.6], dtype=cdt)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("clip", ["none", "value", "ratio", "scale"])
@pytest.mark.parametrize("decay", [False, True])
def test_adam_on_cuda_equals_cpu_bit_for_bit(dtype, clip, decay):
    cdt = ops.compute_dtype(dtype)
    sizes = SIZES * 3  # 24 tensors in one call
    params = _random(sizes, dtype, 1)
    grads = _random(sizes, dtype, 2, scale=2.0)  # past the value clip
    m = _random(sizes, dtype, 3, scale=0.1)
    v = _random(sizes, dtype, 4, scale=0.01, positive=True)
    scalars = torch.tensor([1e-2, 0.9, 0.1, 0.99, 0.01, 1e-3, 0.995], dtype=cdt)
    args = _clip_args(clip, len(sizes), cdt)
    on_cpu = [[t.clone() for t in x] for x in (params, m, v)]
    on_gpu = [_cuda(x) for x in (params, m, v)]
    pointers = [t.data_ptr() for t in on_gpu[0]]
    torch.ops.fusedopt.adam_(on_cpu[0], grads, on_cpu[1], on_cpu[2], scalars, decay, clip,
                             args, None)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs' copies
    with torch.cuda.stream(stream):  # torch's current stream, not the default one
        torch.ops.fusedopt.adam_(on_gpu[0], _cuda(grads), on_gpu[1], on_gpu[2],
                                 scalars.cuda(), decay, clip,
                                 None if args is None else args.cuda(), None)
    stream.synchronize()
    assert [t.data_ptr() for t in on_gpu[0]] == pointers
    _poison_check(params, on_gpu[0])
    for name, a, b in zip("pmv", on_gpu, on_cpu):
        for i, (x, y) in enumerate(zip(a, b)):
            assert torch.equal(x.cpu(), y), f"{name}[{i}] of size {sizes[i]} differs"


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("clip", ["none", "value", "ratio", "scale"])
def test_sgd_on_cuda_equals_cpu_bit_for_bit(dtype, variant, clip):
    cdt = ops.compute_dtype(dtype)
    sizes = SIZES * 2
    params = _random(sizes, dtype, 5)
    grads = _random(sizes, dtype, 6, scale=2.0)
    moms = [] if variant == "plain" else _random(sizes, dtype, 7, scale=0.1)
    scalars = torch.tensor([-0.05, 0.9, 0.999], dtype=cdt)
    args = _clip_args(clip, len(sizes), cdt)
    on_cpu = [t.clone() for t in params], [t.clone() for t in moms]
    on_gpu = _cuda(params), _cuda(moms)
    torch.ops.fusedopt.sgd_(on_cpu[0], grads, on_cpu[1], scalars, variant, True, clip, args,
                            None)
    torch.ops.fusedopt.sgd_(on_gpu[0], _cuda(grads), on_gpu[1], scalars.cuda(), variant, True,
                            clip, None if args is None else args.cuda(), None)
    torch.cuda.synchronize()
    _poison_check(params, on_gpu[0])
    for a, b in zip(on_gpu[0] + on_gpu[1], on_cpu[0] + on_cpu[1]):
        assert torch.equal(a.cpu(), b)


@needs_cuda
def test_apply_if_false_writes_nothing_and_is_read_on_the_device():
    params, grads = _cuda(_random(SIZES, torch.float32, 8)), _cuda(_random(SIZES, torch.float32, 9))
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    before = [p.clone() for p in params]
    scalars = torch.tensor([1e-2, 0.9, 0.1, 0.99, 0.01, 1e-3, 1.0], device="cuda")
    flag = torch.tensor(False, device="cuda")
    torch.ops.fusedopt.adam_(params, grads, m, v, scalars, False, "none", None, flag)
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    flag.fill_(True)  # the same tensor, now true: read when the kernel runs
    torch.ops.fusedopt.adam_(params, grads, m, v, scalars, False, "none", None, flag)
    assert not any(torch.equal(a, b) for a, b in zip(params, before))


@needs_cuda
def test_update_replays_in_a_cuda_graph_with_new_scalars():
    params = _cuda(_random(SIZES, torch.float32, 10))
    grads = _cuda(_random(SIZES, torch.float32, 11))
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    scalars = torch.tensor([1e-2, 0.9, 0.1, 0.99, 0.01, 1e-3, 1.0], device="cuda")
    reference = [[t.clone() for t in x] for x in (params, m, v)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        torch.ops.fusedopt.adam_(params, grads, m, v, scalars, False, "none", None, None)
    for lr in (1e-2, 3e-3):  # the scalars are read from device memory at replay
        scalars[0] = lr
        graph.replay()
        torch.ops.fusedopt.adam_(reference[0], grads, reference[1], reference[2],
                                 scalars.clone(), False, "none", None, None)
    torch.cuda.synchronize()
    for a, b in zip(params + m + v, reference[0] + reference[1] + reference[2]):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_squared_norms_and_factors_on_cuda(dtype):
    x = _random(SIZES, dtype, 12, scale=0.1)  # float16 sums stay finite
    got = ops.squared_norms(_cuda(x))
    if dtype == torch.float64:
        # Summed in double in the kernel's order: against the exactly summed
        # squares, a few ulps (2 on the CPU kernels; 32 bounds a reduction
        # tree over 131075 terms).
        exact = [math.fsum(t.numpy() ** 2) for t in x]
        want_t, bound = torch.tensor(exact, dtype=torch.float64), 32
    else:
        # Summed in double, rounded once to float32 (16-bit: then to the
        # dtype): within one ulp of the float64 sum's rounding.
        want = np.array([np.sum(t.to(torch.float64).numpy() ** 2) for t in x])
        want_t, bound = torch.tensor(want).to(torch.float32).to(dtype), 1
    assert max_ulp_distance([_np(got.cpu())], [_np(want_t)]) <= bound
    max_norm = torch.tensor(2.5, dtype=dtype, device="cuda")
    factors, finite = ops.clip_factors([got], max_norm, "norm")
    cpu_factors, cpu_finite = ops.clip_factors([got.cpu()], max_norm.cpu(), "norm")
    assert torch.equal(factors.cpu(), cpu_factors) and bool(finite) and bool(cpu_finite)
    scale, finite = ops.clip_factors([got, got], max_norm, "global_norm")
    cpu_scale, _ = ops.clip_factors([got.cpu(), got.cpu()], max_norm.cpu(), "global_norm")
    assert torch.equal(scale.cpu(), cpu_scale) and bool(finite)


def _np(t):
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_all_finite_over_mixed_dtypes(device):
    x = [t.to(device) for d in DTYPES for t in _random([5, 70001], d, 13)]
    assert bool(ops.all_finite(x))
    for k in range(len(x)):
        bad = [t.clone() for t in x]
        bad[k].view(-1)[-1] = float("nan") if k % 2 else float("inf")
        assert not bool(ops.all_finite(bad)), k


# ------------------------------------------------------------ model.fit

# Step ulps against stock Keras-torch on the GPU. Expected bit for bit (torch's
# CUDA sqrt and division are correctly rounded, and its foreach kernels
# contract a + alpha * b into the fma the torch form has); the Adam bound is
# the CPU contract's (TORCH_SQRT in test_torch_optimizers.py) and the clipped
# cases the contract's NORM_CLIP, until this run says otherwise.
BOUNDS = {"Adam": 2, "AdamW-clipnorm": 32, "SGD-nesterov": EXACT,
          "SGD-global-clipnorm-skip": 32}


@needs_cuda
@pytest.mark.parametrize("case", sorted(GPU_FIT_CASES))
def test_fit_on_cuda_matches_stock(case, monkeypatch):
    monkeypatch.setenv(executor.TORCH_GPU_ENV, "1")
    make_fused, make_stock = GPU_FIT_CASES[case]
    model = fit_parity(make_fused, make_stock, BOUNDS[case], passes=3, what=f"{case} on CUDA")
    assert model.weights[0].value.device.type == "cuda"
    paths = model.optimizer.fused_paths
    assert paths and all(p == "fused" for p in paths.values()), paths


@needs_cuda
def test_cuda_variables_fall_back_without_the_opt_in(monkeypatch):
    monkeypatch.delenv(executor.TORCH_GPU_ENV, raising=False)
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=fusedopt.Adam(0.01), loss="mse")
    x, y = make_data()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    paths = model.optimizer.fused_paths
    assert paths and all(executor.TORCH_GPU_ENV in p for p in paths.values()), paths


@needs_cuda
def test_compiled_apply_on_cuda_is_one_graph(monkeypatch):
    monkeypatch.setenv(executor.TORCH_GPU_ENV, "1")
    torch._dynamo.reset()
    variables = [keras.Variable(np.ones(s, "float32"), name=f"w{i}")
                 for i, s in enumerate([(4, 3), (70001,)])]
    opt = fusedopt.AdamW(0.01, weight_decay=0.1, skip_nonfinite=True, global_clipnorm=1.0)
    opt.build(variables)
    fn = torch.compile(lambda grads: opt.apply(grads, variables), fullgraph=True)
    for i in range(3):
        fn([torch.full(tuple(v.shape), 0.5 * (i + 1), device="cuda") for v in variables])
    paths = opt.fused_paths
    assert paths and all(p == "fused" for p in paths.values()), paths
    assert int(opt.iterations.numpy()) == 3

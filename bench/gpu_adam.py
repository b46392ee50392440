# Usage: python bench/gpu_adam.py [--cases adam_1b_x64,sgd_1b_x64,...] [--repeats 30] [--warmup 5] [--out bench/results]
"""fusedopt's CUDA kernels against torch's fused optimizers and the memory floor.

Standalone (PyTorch and fusedopt._C; no TensorFlow and no Keras, which the GPU
machine lacks). Cases (``--cases``, default all):

- ``adam_1b_x64`` / ``adam_10k_x4096``: Adam, 1e9 parameters in 64 tensors /
  10,000 tensors of 4,096, against ``torch.optim.Adam(fused=True)``;
- ``adam_gclip_1b_x64``: Adam with ``global_clip_norm=1`` (the squared norms,
  the factor kernel and the clip inside the update: one more read of the
  gradients), against ``torch.nn.utils.clip_grad_norm_`` + fused Adam;
- ``adam_skipnf_1b_x64``: Adam with ``skip_nonfinite=True`` (the finite check
  on the device, the update reading its flag), against fused Adam alone;
- ``sgd_1b_x64``: SGD with momentum against ``torch.optim.SGD(fused=True)``;
- ``norm_1b_x64``: ``global_norm(out=)`` against
  ``torch.nn.utils.get_total_norm`` (foreach norms).

Each on the SAME parameter and gradient tensors, timed two ways with CUDA
events, after warm-up, as the median of --repeats samples:
  * "graph": the step captured in a CUDA graph and replayed (device time,
    launch gaps removed; hyperparameters and step counter in device memory);
  * "eager": one ordinary call per sample (includes the host-side cost of
    the Python call, which dominates with thousands of tensors).
The floor: the bytes each step must move (float32: Adam 28 per parameter,
+4 with the clip or the check, SGD with momentum 20, the norm 4) over the
bandwidth of a large device-to-device copy measured in the same run (bytes
read + bytes written). Results: JSON with the device name under --out, and a
table on stdout. Targets (issues 4 and 14, H100/H200, float32): Adam 1b within
1.1x of the floor and >= 1.1x torch fused; 10k_x4096 >= 1.0x torch fused;
the clipped step within 1.2x of Adam alone.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import types

# name: (optimizer, n_tensors, size, bytes per parameter)
CASES = {
    "adam_1b_x64": ("adam", 64, 15_625_000, 28),
    "adam_10k_x4096": ("adam", 10_000, 4_096, 28),
    "adam_gclip_1b_x64": ("adam_gclip", 64, 15_625_000, 32),
    "adam_skipnf_1b_x64": ("adam_skipnf", 64, 15_625_000, 32),
    "sgd_1b_x64": ("sgd", 64, 15_625_000, 20),
    "norm_1b_x64": ("norm", 64, 15_625_000, 4),
}
HYPER = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
SGD_HYPER = dict(lr=1e-3, momentum=0.9)


def import_kernels():
    """fusedopt.kernels, also without TensorFlow/Keras (the package __init__
    imports the Keras optimizers; the kernels only need fusedopt._C)."""
    try:
        import fusedopt
        import fusedopt.kernels

        return fusedopt.build_info(), fusedopt.kernels
    except ImportError:
        spec = importlib.util.find_spec("fusedopt")
        if spec is None or not spec.submodule_search_locations:
            raise
        for name in [k for k in sys.modules if k == "fusedopt" or k.startswith("fusedopt.")]:
            del sys.modules[name]
        pkg = types.ModuleType("fusedopt")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["fusedopt"] = pkg
        c = importlib.import_module("fusedopt._C")
        return dict(c.build_info()), importlib.import_module("fusedopt.kernels")


def time_ms(torch, fn, repeats, warmup):
    """Median, min and all samples (ms) of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "samples_ms": samples}


def copy_bandwidth(torch, repeats, warmup, nbytes=4 << 30):
    """GB/s (1e9 B/s) of a device-to-device copy, bytes read + bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    t = time_ms(torch, lambda: dst.copy_(src), repeats, warmup)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9, t


def capture(torch, fn, warmup=3):
    """fn captured in a CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def timed(torch, out, key, fn, repeats, warmup, graph):
    """out[key] = the timing of fn, eager or replayed from a graph; a failure
    is recorded, not raised (one case must not stop the others)."""
    try:
        if graph:
            g = capture(torch, fn)
            out[key] = time_ms(torch, g.replay, repeats, warmup)
            del g
        else:
            out[key] = time_ms(torch, fn, repeats, warmup)
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        out[key] = {"error": f"{type(e).__name__}: {e}"}


def ours_step(torch, kernels, kind, data, grads, m, v, graph):
    """fusedopt's step for case `kind`; in a graph, hyperparameters on the device."""
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    dev = lambda x, dt=torch.float32: torch.full((1,), x, dtype=dt, device="cuda")  # noqa: E731
    if kind == "norm":
        out = dev(0.0)
        return lambda: kernels.global_norm(grads, out=out, stream=stream())
    if kind == "sgd":
        lr = dev(SGD_HYPER["lr"]) if graph else SGD_HYPER["lr"]
        return lambda: kernels.sgd(data, grads, m, lr=lr, momentum=SGD_HYPER["momentum"],
                                   stream=stream())
    extra = {"adam_gclip": dict(global_clip_norm=1.0),
             "adam_skipnf": dict(skip_nonfinite=True)}.get(kind, {})
    if graph:
        step = torch.zeros(1, dtype=torch.int64, device="cuda")

        def fn():
            step.add_(1)
            kernels.adam(data, grads, m, v, **HYPER, step=step, stream=stream(), **extra)

        return fn
    count = [0]

    def fn():
        count[0] += 1
        kernels.adam(data, grads, m, v, **HYPER, step=count[0], stream=stream(), **extra)

    return fn


def torch_step(torch, kind, params, grads, graph):
    """torch's step for case `kind` (fused optimizers; capturable in a graph)."""
    if kind == "norm":
        total = getattr(torch.nn.utils, "get_total_norm", None)
        if total is None:
            return lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        return lambda: total(grads, foreach=True)
    if kind == "sgd":
        opt = torch.optim.SGD(params, **SGD_HYPER, fused=True)
        return opt.step
    opt = torch.optim.Adam(params, lr=HYPER["lr"], betas=(HYPER["beta_1"], HYPER["beta_2"]),
                           eps=HYPER["epsilon"], fused=True, capturable=graph)
    if kind == "adam_gclip":
        def fn():
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()

        return fn
    return opt.step


def run_case(torch, kernels, name, repeats, warmup, gbps):
    kind, n_tensors, size, bytes_per_param = CASES[name]
    params = [torch.randn(size, device="cuda") for _ in range(n_tensors)]
    for p in params:
        p.requires_grad_(True)
        p.grad = torch.randn(size, device="cuda") * 1e-2
    data = [p.detach() for p in params]  # the same storage, without autograd
    grads = [p.grad for p in params]
    m = [torch.randn(size, device="cuda") * 1e-3 for _ in range(n_tensors)]
    v = [torch.rand(size, device="cuda") * 1e-4 for _ in range(n_tensors)]
    n = n_tensors * size
    floor_ms = n * bytes_per_param / (gbps * 1e9) * 1e3
    out = {"case": name, "kind": kind, "n_tensors": n_tensors, "tensor_size": size, "params": n,
           "dtype": "float32", "bytes_per_param": bytes_per_param, "floor_ms": floor_ms}
    eager_repeats = repeats if n_tensors <= 1000 else max(3, repeats // 5)
    for mode, graph in (("graph", True), ("eager", False)):
        reps = repeats if graph else eager_repeats
        warm = warmup if graph else min(warmup, 2)
        timed(torch, out, f"fusedopt_{mode}",
              ours_step(torch, kernels, kind, data, grads, m, v, graph), reps, warm, graph)
        timed(torch, out, f"torch_{mode}", torch_step(torch, kind, params, grads, graph), reps,
              warm, graph)
        ours, theirs = out[f"fusedopt_{mode}"], out[f"torch_{mode}"]
        if "median_ms" in ours:
            out[f"x_floor_{mode}"] = ours["median_ms"] / floor_ms
            out[f"gbps_{mode}"] = n * bytes_per_param / (ours["median_ms"] * 1e-3) / 1e9
            if "median_ms" in theirs:
                out[f"speedup_vs_torch_{mode}"] = theirs["median_ms"] / ours["median_ms"]
    del params, data, grads, m, v
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        sys.exit(f"unknown cases {unknown}; known: {sorted(CASES)}")

    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    build_info, kernels = import_kernels()
    if not build_info.get("cuda"):
        sys.exit(f"fusedopt was built without CUDA: {build_info}")
    if build_info.get("cuda_problem"):
        sys.exit(f"fusedopt's CUDA kernels cannot run here: {build_info['cuda_problem']}")

    device = torch.cuda.get_device_name(0)
    gbps, copy_t = copy_bandwidth(torch, args.repeats, args.warmup)
    result = {
        "schema": "fusedopt-gpu-adam/2",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable] + sys.argv),
        "device": device,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda},
        "build_info": build_info,
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "hyper": HYPER,
                     "sgd_hyper": SGD_HYPER},
        "copy_bandwidth_gbps": gbps,
        "copy_bandwidth_timing": copy_t,
        "cases": [],
    }
    for name in args.cases.split(","):
        _, n_tensors, size, _ = CASES[name]
        print(f"{name}: {n_tensors} x {size} ...", flush=True)
        result["cases"].append(run_case(torch, kernels, name, args.repeats, args.warmup, gbps))

    os.makedirs(args.out, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower()
    path = os.path.join(args.out, f"gpu-adam-{slug}-{datetime.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)

    def ms(t):
        return f"{t['median_ms']:.3f}" if "median_ms" in t else "error"

    print(f"\n{device}: device-to-device copy {gbps:.0f} GB/s (read + write)")
    print(f"{'case':<20} {'mode':<6} {'fusedopt ms':>12} {'torch ms':>10} {'floor ms':>9}"
          f" {'x floor':>8} {'vs torch':>9}")
    for c in result["cases"]:
        for mode in ("graph", "eager"):
            print(f"{c['case']:<20} {mode:<6} {ms(c[f'fusedopt_{mode}']):>12}"
                  f" {ms(c[f'torch_{mode}']):>10} {c['floor_ms']:>9.3f}"
                  f" {c.get(f'x_floor_{mode}', float('nan')):>8.2f}"
                  f" {c.get(f'speedup_vs_torch_{mode}', float('nan')):>8.2f}x")
    for c in result["cases"]:
        for k, t in c.items():
            if isinstance(t, dict) and "error" in t:
                print(f"{c['case']} {k}: {t['error']}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

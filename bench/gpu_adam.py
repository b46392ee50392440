# Usage: python bench/gpu_adam.py [--cases 1b_x64,10k_x4096] [--repeats 30] [--warmup 5] [--out bench/results]
"""fusedopt's CUDA Adam against torch.optim.Adam(fused=True) and the memory floor.

Standalone (PyTorch and fusedopt._C; no TensorFlow, which the GPU machine
lacks). For each case, on the SAME parameter and gradient tensors:

- fusedopt.kernels.adam on the PyTorch tensors (its own m and v), and
  torch.optim.Adam(fused=True) (its own state);
- each timed two ways, with CUDA events, after warm-up, as the median of
  --repeats samples:
  * "graph": the step captured in a CUDA graph and replayed (device time,
    launch gaps removed; torch with capturable=True, fusedopt with the step
    counter in device memory, incremented inside the graph);
  * "eager": one ordinary call per sample (includes the host-side cost of
    the Python call, which dominates with thousands of tensors);
- the floor: 28 bytes per float32 parameter (read p, g, m, v; write p, m, v)
  over the bandwidth of a large device-to-device copy measured in the same run
  (bytes read + bytes written).

Cases: "1b_x64" (1e9 parameters in 64 tensors: Adam alone, the reference for
the global-norm clipping case once it exists) and "10k_x4096" (10,000 tensors
of 4,096). Results: JSON with the device name, under --out, plus a table on
stdout. Targets (issue 4, H100, float32): 1b_x64 within 1.1x of the floor and
>= 1.1x faster than torch fused; 10k_x4096 >= 1.0x torch fused.
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

CASES = {
    "1b_x64": (64, 15_625_000),
    "10k_x4096": (10_000, 4_096),
}
BYTES_PER_PARAM = 28  # float32 Adam: read p, g, m, v; write p, m, v
HYPER = dict(lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)


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


def run_case(torch, kernels, name, n_tensors, size, repeats, warmup, gbps):
    params = [torch.randn(size, device="cuda") for _ in range(n_tensors)]
    for p in params:
        p.requires_grad_(True)
        p.grad = torch.randn(size, device="cuda") * 1e-2
    data = [p.detach() for p in params]  # the same storage, without autograd
    grads = [p.grad for p in params]
    m = [torch.randn(size, device="cuda") * 1e-3 for _ in range(n_tensors)]
    v = [torch.rand(size, device="cuda") * 1e-4 for _ in range(n_tensors)]
    n = n_tensors * size
    floor_ms = n * BYTES_PER_PARAM / (gbps * 1e9) * 1e3
    out = {"case": name, "n_tensors": n_tensors, "tensor_size": size, "params": n,
           "dtype": "float32", "bytes_per_param": BYTES_PER_PARAM, "floor_ms": floor_ms}
    eager_repeats = repeats if n_tensors <= 1000 else max(3, repeats // 5)

    # fusedopt, eager: host step count, stream = PyTorch's current stream.
    step = [0]

    def ours_eager():
        step[0] += 1
        kernels.adam(data, grads, m, v, **HYPER, step=step[0],
                     stream=torch.cuda.current_stream().cuda_stream)

    out["fusedopt_eager"] = time_ms(torch, ours_eager, eager_repeats, min(warmup, 2))

    # fusedopt, graph: the step counter on the device, incremented in the graph.
    dev_step = torch.zeros(1, dtype=torch.int64, device="cuda")

    def ours_graph_step():
        dev_step.add_(1)
        kernels.adam(data, grads, m, v, **HYPER, step=dev_step,
                     stream=torch.cuda.current_stream().cuda_stream)

    g_ours = capture(torch, ours_graph_step)
    out["fusedopt_graph"] = time_ms(torch, g_ours.replay, repeats, warmup)
    del g_ours

    # torch fused Adam, eager and captured (capturable=True), same tensors.
    opt = torch.optim.Adam(params, lr=HYPER["lr"], betas=(HYPER["beta_1"], HYPER["beta_2"]),
                           eps=HYPER["epsilon"], fused=True)
    out["torch_fused_eager"] = time_ms(torch, opt.step, eager_repeats, min(warmup, 2))
    del opt
    opt = torch.optim.Adam(params, lr=HYPER["lr"], betas=(HYPER["beta_1"], HYPER["beta_2"]),
                           eps=HYPER["epsilon"], fused=True, capturable=True)
    g_torch = capture(torch, opt.step)
    out["torch_fused_graph"] = time_ms(torch, g_torch.replay, repeats, warmup)
    del g_torch, opt

    for mode in ("graph", "eager"):
        ours = out[f"fusedopt_{mode}"]["median_ms"]
        theirs = out[f"torch_fused_{mode}"]["median_ms"]
        out[f"speedup_vs_torch_{mode}"] = theirs / ours
        out[f"x_floor_{mode}"] = ours / floor_ms
        out[f"gbps_{mode}"] = n * BYTES_PER_PARAM / (ours * 1e-3) / 1e9
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

    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    build_info, kernels = import_kernels()
    if not build_info.get("cuda"):
        sys.exit(f"fusedopt was built without CUDA: {build_info}")

    device = torch.cuda.get_device_name(0)
    gbps, copy_t = copy_bandwidth(torch, args.repeats, args.warmup)
    result = {
        "schema": "fusedopt-gpu-adam/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable] + sys.argv),
        "device": device,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda},
        "build_info": build_info,
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "hyper": HYPER},
        "copy_bandwidth_gbps": gbps,
        "copy_bandwidth_timing": copy_t,
        "cases": [],
    }
    for name in args.cases.split(","):
        n_tensors, size = CASES[name]
        print(f"{name}: {n_tensors} x {size} ...", flush=True)
        result["cases"].append(run_case(torch, kernels, name, n_tensors, size, args.repeats,
                                        args.warmup, gbps))

    os.makedirs(args.out, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower()
    path = os.path.join(args.out, f"gpu-adam-{slug}-{datetime.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)

    print(f"\n{device}: device-to-device copy {gbps:.0f} GB/s (read + write)")
    print(f"{'case':<11} {'mode':<6} {'fusedopt ms':>12} {'torch ms':>10} {'floor ms':>9}"
          f" {'x floor':>8} {'vs torch':>9}")
    for c in result["cases"]:
        for mode in ("graph", "eager"):
            print(f"{c['case']:<11} {mode:<6} {c[f'fusedopt_{mode}']['median_ms']:>12.3f}"
                  f" {c[f'torch_fused_{mode}']['median_ms']:>10.3f} {c['floor_ms']:>9.3f}"
                  f" {c[f'x_floor_{mode}']:>8.2f} {c[f'speedup_vs_torch_{mode}']:>8.2f}x")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

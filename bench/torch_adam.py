"""Adam on Keras' torch backend: fusedopt against torch and stock Keras, timed in turns.

    KERAS_BACKEND=torch python bench/torch_adam.py --shape 20x1M --rounds 15

Cases (float32 on the CPU, one optimizer step each, the same gradients every step):

- ``fusedopt``: ``fusedopt.Adam.apply(grads, variables)`` (the fused custom op);
- ``torch-fused``: ``torch.optim.Adam(fused=True).step()``;
- ``torch-foreach``: ``torch.optim.Adam(foreach=True).step()``;
- ``keras-stock``: ``keras.optimizers.Adam`` (on this backend the foreach class);
- ``keras-subclass``: a subclass of ``keras.optimizers.Adam``, which Keras runs
  with the per-variable update (what fusedopt.Adam would get without its
  executor).

Every round times each case once, in an order that rotates and reverses from
round to round (the machine is shared: its speed drifts), and each case is
compared with fusedopt by the median of the per-round ratios (paired), beside
the medians of the times. ``--json`` writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import torch  # noqa: E402

import fusedopt  # noqa: E402


def parse_shape(text):
    count, size = text.lower().split("x")
    mult = {"k": 1 << 10, "m": 1 << 20}.get(size[-1], 1)
    return int(count), int(size.rstrip("km")) * mult


class StockSubclass(keras.optimizers.Adam):
    """A subclass: TorchOptimizer.__new__ swaps in the foreach class only
    for the exact stock class, so this runs the per-variable update."""


def keras_case(cls, count, size):
    gen = torch.Generator().manual_seed(0)
    variables = [keras.Variable(torch.randn(size, generator=gen)) for _ in range(count)]
    grads = [torch.randn(size, generator=gen) for _ in range(count)]
    opt = cls(learning_rate=1e-3)
    opt.build(variables)

    def step():
        with torch.no_grad():
            opt.apply(grads, variables)
    return step, opt


def torch_case(count, size, **kw):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(size, generator=gen)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=gen)
    opt = torch.optim.Adam(params, lr=1e-3, **kw)
    return opt.step, opt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="20x1M")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip", default="", help="comma-separated cases to leave out")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    count, size = parse_shape(args.shape)
    builders = {
        "fusedopt": lambda: keras_case(fusedopt.Adam, count, size),
        "torch-fused": lambda: torch_case(count, size, fused=True),
        "torch-foreach": lambda: torch_case(count, size, foreach=True),
        "keras-stock": lambda: keras_case(keras.optimizers.Adam, count, size),
        "keras-subclass": lambda: keras_case(StockSubclass, count, size),
    }
    skip = {s for s in args.skip.split(",") if s}
    cases = {}
    for name, build in builders.items():
        if name in skip:
            continue
        step, owner = build()
        step()  # warm up (first-step build, allocations)
        step()
        cases[name] = (step, owner)
    if "fusedopt" in cases:
        paths = set(cases["fusedopt"][1].fused_paths.values())
        assert paths == {"fused"}, paths
    names = list(cases)
    times = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for n in order:
            start = time.perf_counter()
            cases[n][0]()
            times[n].append(time.perf_counter() - start)
    result = {"shape": args.shape, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "fusedopt_threads": fusedopt.build_info()["num_threads"],
              "torch": torch.__version__, "keras": keras.__version__,
              "cpu_isa": fusedopt.build_info()["cpu_isa"], "cases": {}}
    print(f"Adam float32 {args.shape}, {args.rounds} rounds in turns "
          f"(torch threads {torch.get_num_threads()})")
    for n in names:
        med = statistics.median(times[n])
        entry = {"median_ms": med * 1e3}
        line = f"  {n:15s} {med * 1e3:8.2f} ms"
        if "fusedopt" in times and n != "fusedopt":
            ratios = [t / f for t, f in zip(times[n], times["fusedopt"])]
            q = statistics.quantiles(ratios, n=4)
            entry.update(ratio_to_fusedopt=statistics.median(ratios), ratio_q1=q[0],
                         ratio_q3=q[2])
            line += f"   {statistics.median(ratios):5.2f}x fusedopt's time [{q[0]:.2f}, {q[2]:.2f}]"
        result["cases"][n] = entry
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

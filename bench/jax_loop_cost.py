"""Where a jitted multi-step loop's time goes: per call, and per step.

Issue 13's small-tensor target times Adam on 300 x 256 float32 inside a
50-step `lax.fori_loop` in one `jax.jit` call (`fusedopt-bench --backend jax
--steps-per-call 50`). A call's time is a fixed part (jax's dispatch of every
array: the 300 parameters, 600 slots and 300 gradients in, 900 arrays
donated and returned) plus a part per step (the update inside XLA's loop). This
script separates them: it times each implementation at two loop lengths,
alternating in one process, and fits

    time per call = intercept + steps * slope

so that ``intercept`` is the per-call cost and ``slope`` the cost of one step
in the loop. Implementations: ``fusedopt`` (`fusedopt.Adam.stateless_apply`,
one FFI custom call per step) and ``keras`` (`keras.optimizers.Adam`, XLA's
fusions of the stock update), both donated like Keras-JAX's train step.

    KERAS_BACKEND=jax python bench/jax_loop_cost.py --out bench/results/jax-loop-cost-cpu-DATE.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def build(impl: str, tensors: int, size: int, steps: int, seed: int):
    """One jitted call of `steps` Adam steps (a closure that runs it)."""
    import jax
    import keras
    import numpy as np

    import fusedopt

    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.standard_normal(size).astype(np.float32))
                 for _ in range(tensors)]
    grads = [jax.numpy.asarray(1e-2 * rng.standard_normal(size).astype(np.float32))
             for _ in range(tensors)]
    cls = fusedopt.Adam if impl == "fusedopt" else keras.optimizers.Adam
    optimizer = cls(1e-3)
    optimizer.build(variables)

    def step(state, grads):
        trainable, opt_vars = state
        return optimizer.stateless_apply(opt_vars, grads, trainable)

    def loop(state, grads):
        return jax.lax.fori_loop(0, steps, lambda _, s: step(s, grads), state)

    jitted = jax.jit(loop, donate_argnums=0)
    box = {"state": ([v.value for v in variables], [v.value for v in optimizer.variables])}
    del variables  # the state lives in `box` only, as in a train loop

    def call():
        box["state"] = jax.block_until_ready(jitted(box["state"], grads))

    call()
    call()
    if impl == "fusedopt":
        fused = sum(1 for p in optimizer.fused_paths.values() if p == "fused")
        if fused != tensors:
            raise SystemExit(f"the fused path did not run: {fused} of {tensors} fused")
    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensors", type=int, default=300)
    parser.add_argument("--sizes", default="256,1", help="elements per tensor, comma-separated")
    parser.add_argument("--steps", default="50,200", help="the two loop lengths")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)

    import keras
    if keras.backend.backend() != "jax":
        raise SystemExit("needs KERAS_BACKEND=jax")
    short, long = (int(s) for s in args.steps.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    calls = {(impl, size, steps): build(impl, args.tensors, size, steps, args.seed)
             for size in sizes for impl in ("fusedopt", "keras") for steps in (short, long)}
    keys = list(calls)
    samples = {k: [] for k in keys}
    start = time.time()
    for r in range(args.rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):  # alternate the order
            t = time.perf_counter()
            calls[k]()
            samples[k].append(time.perf_counter() - t)
    results = []
    for size in sizes:
        for impl in ("fusedopt", "keras"):
            a = statistics.median(samples[(impl, size, short)])
            b = statistics.median(samples[(impl, size, long)])
            slope = (b - a) / (long - short)
            intercept = a - slope * short
            results.append({"impl": impl, "shape": f"{args.tensors}x{size}",
                            f"call_{short}_s": a, f"call_{long}_s": b,
                            "per_step_s": slope, "per_call_s": intercept,
                            f"time_per_step_at_{short}_s": a / short})
            print(f"{impl:9s} {args.tensors}x{size:<5d} per call {intercept * 1e3:6.2f} ms, "
                  f"per step in the loop {slope * 1e3:6.4f} ms; at {short} steps per call "
                  f"{a / short * 1e3:6.4f} ms per step")
    if args.out:
        from fusedopt.bench.machine import machine_info, versions
        from fusedopt.bench.report import write_json

        write_json(args.out, {
            "schema": "fusedopt-bench-jax-loop-cost/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
            "machine": machine_info(), "versions": versions(),
            "rounds": args.rounds, "wall_s": time.time() - start, "results": results,
            "samples_s": {"/".join(map(str, k)): v for k, v in samples.items()},
        })
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

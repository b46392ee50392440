"""What TensorFlow's XLA charges per resource variable, beside the fused update.

Under `jit_compile=True` every variable a compiled function reads and writes is
a parameter and an output of the XLA cluster: TensorFlow looks it up, locks
it, hands its buffer to the executable and assigns the result back on every
call. An optimizer step writes every parameter and slot (Adam: 3 per
variable), so this cost is paid by any update, fused or stock, and it bounds
what a faster update can gain in `model.fit(jit_compile=True)` (issue 16,
docs/xla.md "Speed").

This script measures, in one process and alternating rounds:

- ``touch-N``: a `tf.function(jit_compile=True)` that reads N variables and
  writes each back scaled (one trivial multiply per variable: XLA's cost of
  the variables themselves), for N = 402, 804 and 1,206;
- ``fusedopt`` and ``keras``: `opt.apply` of Adam on the 402 variables of
  the bench's `dense-ln` model (100 x [Dense(64), LayerNormalization],
  Dense(10)) under `jit_compile=True`: 402 parameters and 804 slots written,
  1,206 variables like ``touch-1206``.

    python bench/xla_variable_cost.py --out bench/results/xla-variable-cost-cpu-DATE.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# The bench's dense-ln model: per block a Dense(64) kernel and bias and a
# LayerNormalization gamma and beta; then the output layer.
DENSE_LN_SHAPES = [(64, 64), (64,), (64,), (64,)] * 100 + [(64, 10), (10,)]


def build(seed: int):
    """The timed functions, each compiled and run twice (by name)."""
    import numpy as np
    import tensorflow as tf
    import keras

    import fusedopt

    rng = np.random.default_rng(seed)

    def variables(count):
        shapes = [DENSE_LN_SHAPES[i % len(DENSE_LN_SHAPES)] for i in range(count)]
        return [keras.Variable(rng.standard_normal(s).astype(np.float32)) for s in shapes]

    grads = [tf.constant(1e-3 * rng.standard_normal(s).astype(np.float32))
             for s in DENSE_LN_SHAPES]
    fns, optimizers = {}, {}
    # (Closures made by functions, not default arguments: tf.function would
    # take those as inputs and pass tensors.)
    def touch_all(touched):
        def touch():
            for v in touched:
                v.assign(v.value * 1.0001)
        return tf.function(touch, jit_compile=True)

    def apply(optimizer, params):
        return tf.function(lambda: optimizer.apply(grads, params), jit_compile=True)

    for count in (402, 804, 1206):
        fns[f"touch-{count}"] = touch_all(variables(count))
    for name, optimizer in (("fusedopt", fusedopt.Adam(1e-3)),
                            ("keras", keras.optimizers.Adam(1e-3))):
        params = variables(len(DENSE_LN_SHAPES))
        optimizer.build(params)
        fns[name] = apply(optimizer, params)
        optimizers[name] = optimizer
    for f in fns.values():
        f()
        f()
    paths = optimizers["fusedopt"].fused_paths
    fused = sum(1 for p in paths.values() if p == "fused")
    if fused != len(DENSE_LN_SHAPES):
        raise SystemExit(f"the fused path did not run: {fused} of {len(paths)} variables fused")
    return fns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds")
    parser.add_argument("--calls", type=int, default=5, help="calls per round and function")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)

    fns = build(args.seed)
    names = list(fns)
    samples = {name: [] for name in names}
    start = time.time()
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):  # alternate the order
            t = time.perf_counter()
            for _ in range(args.calls):
                fns[name]()
            samples[name].append((time.perf_counter() - t) / args.calls)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    for name in names:
        print(f"{name:12s} {medians[name] * 1e3:8.2f} ms per call")
    print(f"fusedopt / touch-1206: {medians['fusedopt'] / medians['touch-1206']:.2f}x;  "
          f"keras / fusedopt: {medians['keras'] / medians['fusedopt']:.2f}x")
    if args.out:
        from fusedopt.bench.machine import machine_info, versions
        from fusedopt.bench.report import write_json

        write_json(args.out, {
            "schema": "fusedopt-bench-xla-variable-cost/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
            "machine": machine_info(), "versions": versions(),
            "rounds": args.rounds, "calls_per_round": args.calls,
            "wall_s": time.time() - start, "median_s": medians, "samples_s": samples,
        })
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

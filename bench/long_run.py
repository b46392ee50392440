"""Long run: 10,000 optimizer steps, resident memory at the start and end.

A leak of a few hundred bytes per step (a tensor, a Python object, a handle
held by the op) grows resident memory by megabytes over 10,000 steps; this
script shows it. It trains a small model with a fusedopt optimizer in a
tf.function train step (the fused op on every step: checked), samples the
resident set size (RSS, /proc/self/statm) after a warmup and every
--sample-every steps, and exits 1 when the growth from the first sample to the
last exceeds --max-growth-mb. With --api kernels it steps fusedopt.kernels.adam
/ sgd on NumPy arrays instead (no TensorFlow in the loop).

Usage (from the repository root, with fusedopt installed):
    python bench/long_run.py                      # Adam, 10,000 steps
    python bench/long_run.py --optimizer sgd --steps 20000 --out bench/results/x.json
    python bench/long_run.py --api kernels
    python bench/long_run.py --optimizer adam_skipnf   # every 10th step skipped
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def rss_bytes() -> int:
    """The current resident set size (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def keras_stepper(name: str, seed: int):
    """A train step (one call = one optimizer step) and a check that the
    fused op ran."""
    import numpy as np
    import tensorflow as tf
    import keras

    import fusedopt

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10)])
    opt = {"adam": lambda: fusedopt.Adam(learning_rate=1e-3),
           "adamw": lambda: fusedopt.AdamW(learning_rate=1e-3, weight_decay=1e-2),
           "sgd": lambda: fusedopt.SGD(learning_rate=1e-2, momentum=0.9, nesterov=True),
           "adam_clip": lambda: fusedopt.Adam(learning_rate=1e-3, global_clipnorm=1.0),
           "adam_skipnf": lambda: fusedopt.Adam(learning_rate=1e-3, skip_nonfinite=True),
           }[name]()
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((64, 32)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, 64))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # adam_skipnf: every POISON_EVERY-th step's gradients are NaN (a NaN
    # factor on the loss), so that the skipped path runs as often as the other.
    count = tf.Variable(0, dtype=tf.int64)
    poison_every = POISON_EVERY if name == "adam_skipnf" else 0

    @tf.function
    def step():
        count.assign_add(1)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            if poison_every:
                loss *= tf.where(count % poison_every == 0, float("nan"), 1.0)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    def check():
        paths = set(opt.fused_paths.values())
        if paths != {"fused"}:
            sys.exit(f"long_run: not every variable ran fused: {opt.fused_paths}")
        weights = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
        if not np.all(np.isfinite(weights)):
            sys.exit("long_run: non-finite weights")
        if poison_every:
            steps = int(count.numpy())
            if int(opt.iterations.numpy()) != steps - steps // poison_every:
                sys.exit(f"long_run: {int(opt.iterations.numpy())} applied steps of {steps}, "
                         f"{steps // poison_every} of them poisoned")
        return float(step().numpy())

    return step, check


POISON_EVERY = 10


def kernels_stepper(name: str, seed: int):
    import numpy as np

    from fusedopt import kernels

    rng = np.random.default_rng(seed)
    shapes = [(32, 64), (64,), (64, 64), (64,), (64, 10), (10,)]
    p = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) * 1e-2 for s in shapes]
    m = [np.zeros(s, np.float32) for s in shapes]
    v = [np.zeros(s, np.float32) for s in shapes]
    count = [0]

    skip = name == "adam_skipnf"
    g_bad = [x.copy() for x in g]
    g_bad[-1][3] = np.nan
    applied = [0]

    def step():
        count[0] += 1
        if name.startswith("adam"):
            grads = g_bad if skip and count[0] % POISON_EVERY == 0 else g
            applied[0] += kernels.adam(p, grads, m, v, lr=1e-3, step=applied[0] + 1,
                                       weight_decay=1e-2 if name == "adamw" else 0.0,
                                       global_clip_norm=1.0 if name == "adam_clip" else None,
                                       skip_nonfinite=skip)
        else:
            kernels.sgd(p, g, m, lr=1e-2, momentum=0.9, nesterov=True)

    def check():
        if not all(np.all(np.isfinite(x)) for x in p):
            sys.exit("long_run: non-finite parameters")
        if skip and applied[0] != count[0] - count[0] // POISON_EVERY:
            sys.exit(f"long_run: {applied[0]} applied steps of {count[0]}")
        return None

    return step, check


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="adam",
                        choices=["adam", "adamw", "sgd", "adam_clip", "adam_skipnf"],
                        help="adam_skipnf: skip_nonfinite=True, every 10th step's "
                             "gradients NaN (skipped)")
    parser.add_argument("--api", choices=["keras", "kernels"], default="keras")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500,
                        help="steps before the first sample (tracing, allocator pools)")
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--max-growth-mb", type=float, default=4.0,
                        help="fail when RSS grows more than this from the first sample "
                             "(4 MB over 10,000 steps: 400 bytes per step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)

    make = keras_stepper if args.api == "keras" else kernels_stepper
    step, check = make(args.optimizer, args.seed)
    for _ in range(args.warmup):
        step()
    check()

    samples = [(0, rss_bytes())]
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        step()
        if i % args.sample_every == 0 or i == args.steps:
            samples.append((i, rss_bytes()))
    elapsed = time.perf_counter() - start
    loss = check()

    mb = 1 << 20
    growth = samples[-1][1] - samples[0][1]
    ok = growth <= args.max_growth_mb * mb
    print(f"long_run: {args.api} {args.optimizer}, {args.steps} steps after {args.warmup} "
          f"warmup, {elapsed:.1f} s ({1e3 * elapsed / args.steps:.3f} ms/step)")
    for i, rss in samples:
        print(f"  step {i:>6}: RSS {rss / mb:8.1f} MB")
    print(f"  growth {growth / mb:+.2f} MB ({growth / args.steps:+.1f} bytes/step); "
          f"limit {args.max_growth_mb} MB: {'ok' if ok else 'FAILED (leak?)'}")

    if args.out:
        import fusedopt

        info = {k: v for k, v in fusedopt.build_info().items()
                if isinstance(v, (str, int, float, bool, list, type(None)))}
        result = dict(
            api=args.api, optimizer=args.optimizer, steps=args.steps, warmup=args.warmup,
            seconds=elapsed, rss_start_mb=samples[0][1] / mb, rss_end_mb=samples[-1][1] / mb,
            growth_mb=growth / mb, growth_bytes_per_step=growth / args.steps,
            max_growth_mb=args.max_growth_mb, ok=ok, final_loss=loss,
            samples=[{"step": i, "rss_mb": r / mb} for i, r in samples],
            machine=dict(platform=platform.platform(), python=platform.python_version(),
                         cpus=os.cpu_count()),
            fusedopt=info)
        if args.api == "keras":
            import tensorflow as tf

            result["tensorflow"] = tf.__version__
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

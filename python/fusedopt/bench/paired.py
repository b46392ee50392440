"""Paired timing: the cost of one option, as a ratio of two cases run in turns.

The main bench times one case after another. On a shared machine whose
memory bandwidth switches between two speeds for seconds at a time (the
2-core VM here: about 53 and 103 GB/s), two cases timed a minute apart can
differ by 2x with no change in the code, which hides a 5% cost. Here the two
cases of a pair (e.g. ``adam-skipnf`` and ``adam``: the same step with and
without one option) are built once and their samples alternate, A B B A
A B B A ..., each from a cold cache. Each A sample is divided by the B
sample beside it; the result is the median of those ratios with its
quartiles, and the medians of both cases.

Which of two identical cases is built first matters by itself (an ``adam:adam``
pair measured up to 1.06x here: other buffers, other pages), so every pair is
measured twice, A built first and then B built first; the pair's ratio is the
geometric mean of the two (``ratio``), which cancels a build-order bias.
Run an ``X:X`` pair beside the others to see how far from 1.0 this machine's
noise alone puts a ratio.

    python -m fusedopt.bench.paired --pair adam-skipnf:adam \\
        --pair adam-gclip-skipnf:adam-gclip --shapes 20x1M,300x256 \\
        --out bench/results --name paired-cpu-2026-11-25

CPU implementations only (``fusedopt``, ``kernels``, ``keras``, ...). Two
implementations of one optimizer are a pair too, ``OPTIMIZER@IMPL`` on each
side; the JAX and Keras-torch ones need their backend in ``KERAS_BACKEND``,
and ``--steps-per-call N`` runs N steps per timed call where the
implementation loops (TF ``tf.range``, JAX ``lax.fori_loop``), each sample
then the time per step:

    KERAS_BACKEND=jax python -m fusedopt.bench.paired \\
        --pair adam@fusedopt-jax:adam@keras-jax --shapes 300x256 --steps-per-call 50
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time

from fusedopt.bench import args as checks
from fusedopt.bench import floor as floor_mod
from fusedopt.bench import tf_cases  # noqa: F401, I001 - registers the TF cases first
from fusedopt.bench import kernel_cases  # noqa: F401 - registers the kernel cases
from fusedopt.bench import jax_cases  # noqa: F401 - the JAX cases (KERAS_BACKEND=jax)
from fusedopt.bench import torch_cases  # noqa: F401 - the Keras-torch cases (KERAS_BACKEND=torch)
from fusedopt.bench.cases import IMPLEMENTATIONS, OPTIMIZERS, Case, Skip, parse_shapes
from fusedopt.bench.machine import machine_info, versions
from fusedopt.bench.timing import COLD_MULTIPLE


def _runner(case: Case):
    runner = case.impl.setup(case, 1)
    runner.steps[0]()  # trace / compile
    runner.steps[0]()
    note = runner.after_warmup() if runner.after_warmup is not None else runner.note
    return runner, note


def _time(runner, evict) -> float:
    """Seconds per optimizer step of one call of the runner's step (a call may
    loop over several)."""
    step = runner.steps[0]
    if evict is not None:
        evict()
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) / max(1, runner.steps_per_call)


def measure_pair(a: Case, b: Case, samples: int, evictor) -> dict:
    """`a`/`b` from both build orders (see the module docstring)."""
    first = measure_in_turns(a, b, samples, evictor)
    second = measure_in_turns(b, a, samples, evictor)
    ratio = (first["ratio_median"] / second["ratio_median"]) ** 0.5
    return {"a": a.name, "b": b.name, "samples": samples, "ratio": ratio,
            "a_built_first": first, "b_built_first": second}


def measure_in_turns(a: Case, b: Case, samples: int, evictor) -> dict:
    """Builds `a`, then `b`, and times them in turns (ABBA); a/b per pair of
    samples."""
    runners = []
    try:
        run_a, note_a = _runner(a)
        runners.append(run_a)
        run_b, note_b = _runner(b)
        runners.append(run_b)
        cold = a.footprint_bytes >= COLD_MULTIPLE * evictor.cache_bytes
        evict = None if cold else evictor
        gc.collect()
        gc.disable()
        times_a, times_b = [], []
        for i in range(samples):
            if i % 2 == 0:
                times_a.append(_time(run_a, evict))
                times_b.append(_time(run_b, evict))
            else:
                times_b.append(_time(run_b, evict))
                times_a.append(_time(run_a, evict))
    finally:
        gc.enable()
        for runner in runners:
            if runner.cleanup is not None:
                runner.cleanup()
    ratios = [x / y for x, y in zip(times_a, times_b)]
    q25, _, q75 = statistics.quantiles(ratios, n=4)
    return {
        "a": a.name, "b": b.name, "samples": samples,
        "cache": "none" if evict is None else "evict",
        "median_a_s": statistics.median(times_a), "median_b_s": statistics.median(times_b),
        "ratio_median": statistics.median(ratios),
        "ratio_q25": q25, "ratio_q75": q75,
        "note_a": note_a, "note_b": note_b,
        "times_a_s": times_a, "times_b_s": times_b,
    }


def _parse_pair(text: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """A:B, each side OPTIMIZER or OPTIMIZER@IMPL (the implementation, else --impl)."""
    a, sep, b = text.partition(":")
    sides = []
    for side in (a, b):
        name, _, impl = side.partition("@")
        if not sep or name not in OPTIMIZERS or (impl and impl not in IMPLEMENTATIONS):
            raise argparse.ArgumentTypeError(
                f"--pair expects OPTIMIZER[@IMPL]:OPTIMIZER[@IMPL] with optimizers from "
                f"{sorted(OPTIMIZERS)} and implementations from {sorted(IMPLEMENTATIONS)}, "
                f"got {text!r}")
        sides.append((name, impl or None))
    return sides[0], sides[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusedopt.bench.paired",
        description="The ratio of two optimizer cases timed in turns (A B B A ...), from a "
                    "cold cache, on the CPU.")
    parser.add_argument("--pair", action="append", type=_parse_pair, required=True,
                        metavar="A:B", help="optimizers to compare, e.g. adam-skipnf:adam, "
                        "each optionally @IMPL, e.g. adam@fusedopt-xla:adam@keras-xla "
                        "(repeatable)")
    parser.add_argument("--shapes", type=checks.shapes, default=parse_shapes("20x1M,300x256"),
                        metavar="NxSIZE,...")
    parser.add_argument("--dtype", default="float32",
                        choices=("float16", "bfloat16", "float32", "float64"))
    parser.add_argument("--impl", default="fusedopt", help="a CPU implementation (default "
                        "fusedopt)")
    parser.add_argument("--steps-per-call", type=checks.int_at_least(1), default=1,
                        metavar="N", help="optimizer steps per timed call where the "
                        "implementation loops (TF, JAX); samples are per step")
    parser.add_argument("--samples", type=checks.int_at_least(3), default=40,
                        help="samples of each case per pair (at least 3)")
    parser.add_argument("--out", help="directory for NAME.json (created if missing)")
    parser.add_argument("--name", type=checks.file_prefix,
                        default=f"paired-cpu-{datetime.date.today().isoformat()}")
    args = parser.parse_args(argv)
    for name in [args.impl] + [i for pair in args.pair for _, i in pair if i]:
        impl = IMPLEMENTATIONS.get(name)
        if impl is None or impl.device != "cpu":
            parser.error(f"implementations must be CPU ones, one of "
                         f"{sorted(n for n, i in IMPLEMENTATIONS.items() if i.device == 'cpu')}"
                         f", got {name!r}")
    if args.out:  # the last check, before anything runs
        checks.prepare_out(parser, args.out, files=[args.name + ".json"])

    evictor = floor_mod.Evictor(floor_mod.llc_bytes())
    results = []
    for (a_name, a_impl), (b_name, b_impl) in args.pair:
        for shape in args.shapes:
            a = Case(OPTIMIZERS[a_name], args.dtype, shape,
                     IMPLEMENTATIONS[a_impl or args.impl], args.steps_per_call)
            b = Case(OPTIMIZERS[b_name], args.dtype, shape,
                     IMPLEMENTATIONS[b_impl or args.impl], args.steps_per_call)
            try:
                r = measure_pair(a, b, args.samples, evictor)
            except Skip as e:
                print(f"{a.name} vs {b.name}: skipped ({e})")
                continue
            results.append(r)
            ab, ba = r["a_built_first"], r["b_built_first"]
            print(f"{a.name} / {b.name}: {r['ratio']:.3f}x  (A built first: "
                  f"{ab['ratio_median']:.3f}x [{ab['ratio_q25']:.3f}, {ab['ratio_q75']:.3f}], "
                  f"B built first: {1 / ba['ratio_median']:.3f}x; "
                  f"{ab['median_a_s'] * 1e3:.3g} ms vs {ab['median_b_s'] * 1e3:.3g} ms per step, "
                  f"{args.samples} pairs each, cache {ab['cache']})", flush=True)
    if args.out:
        path = os.path.join(args.out, args.name + ".json")
        with open(path, "w") as f:
            json.dump({"schema": "fusedopt-bench-paired/1",
                       "created": datetime.datetime.now().isoformat(timespec="seconds"),
                       "command": " ".join(sys.argv), "machine": machine_info(),
                       "versions": versions(), "steps_per_call": args.steps_per_call,
                       "pairs": results}, f, indent=1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

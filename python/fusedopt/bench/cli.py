"""``fusedopt-bench``: time fusedopt against stock optimizers and the memory floor.

Usage examples::

    fusedopt-bench --quick                       # about a minute: the two headline shapes
    fusedopt-bench --out bench/results          # the full default grid, with JSON/CSV/PNG
    fusedopt-bench --filter 'adam/float32/*' --filter tf-raw --repeats 50
    fusedopt-bench --shapes 64x16K --optimizers adam,sgd --dtypes float32,float64
    fusedopt-bench --list                        # the cases, without running them
    fusedopt-bench --quick --steps-per-call 20   # TF cases: 20 steps per tf.function call

See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

from fusedopt.bench import floor as floor_mod
from fusedopt.bench import machine, report, targets
from fusedopt.bench import tf_cases  # noqa: F401, I001 - registers the TF cases first
from fusedopt.bench import kernel_cases  # noqa: F401 - registers the kernel cases
from fusedopt.bench.cases import IMPLEMENTATIONS, OPTIMIZERS, make_cases, matches, parse_shapes
from fusedopt.bench.timing import Settings, measure


@dataclasses.dataclass(frozen=True)
class Preset:
    """A default grid and timing settings.

    ``grid`` lists (optimizer, dtype, shapes) triples: the full sweep for the
    headline combination, a few shapes for the others.
    """

    grid: tuple
    settings: Settings
    impls: tuple | None = None  # None: every implementation registered as default

    @property
    def combos(self) -> list:
        return [(optimizer, dtype) for optimizer, dtype, _ in self.grid]

    @property
    def all_shapes(self) -> list:
        return list(dict.fromkeys(s for _, _, shapes in self.grid for s in shapes))


_SWEEP = tuple(parse_shapes("20x256,20x4K,20x64K,20x1M,300x256,300x4K,300x64K"))
_HEADLINE = tuple(parse_shapes("20x4K,20x1M,300x256"))
FULL = Preset(
    grid=(("adam", "float32", _SWEEP),
          ("adam", "float64", _HEADLINE),
          ("adamw", "float32", _HEADLINE),
          ("sgd", "float32", _HEADLINE),
          ("adam-gclip", "float32", _HEADLINE),
          ("adam-skipnf", "float32", _HEADLINE),
          ("adam-gclip-skipnf", "float32", _HEADLINE)),
    settings=Settings(repeats=20, warmup=2, max_seconds=4.0),
)
# On a GPU machine: the CUDA kernels against torch.optim fused, at GPU sizes
# (64x16M is 1B parameters: 16 GiB for Adam's four float32 arrays).
GPU = Preset(
    grid=(("adam", "float32", tuple(parse_shapes("300x256,20x1M,10000x4K,64x16M"))),
          ("adam-gclip", "float32", tuple(parse_shapes("64x16M"))),
          ("sgd", "float32", tuple(parse_shapes("10000x4K,64x16M")))),
    settings=Settings(repeats=50, warmup=5, max_seconds=5.0),
    impls=("kernels-cuda", "torch-fused"),
)
# The foundation targets: 20 tensors of 1M and 300 tensors of 256, Adam float32.
# No keras-xla: compiling 300 variables takes ~10 s of the minute.
QUICK = Preset(
    grid=(("adam", "float32", tuple(parse_shapes("20x1M,300x256"))),),
    settings=Settings(repeats=7, warmup=1, max_seconds=1.0),
    impls=("fusedopt", "keras", "tf-raw", "kernels", "torch-cpu", "kernels-cuda",
           "torch-fused"),
)


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description="Time fused optimizer steps against stock Keras/TensorFlow (and "
        "PyTorch on a GPU) and against the machine's memory-bandwidth floor.",
        epilog="Case names are optimizer/dtype/NxSIZE/implementation, e.g. "
        "adam/float32/20x1M/keras-xla. See bench/README.md.",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="Adam float32 on 20x1M and 300x256 only, no XLA, few repeats "
                        "(under a minute)")
    preset.add_argument("--gpu", action="store_true",
                        help="the GPU grid: fusedopt's CUDA kernels vs torch.optim fused, "
                        "up to 1B parameters")
    parser.add_argument("--filter", action="append", default=[], metavar="PATTERN",
                        help="run only cases whose name contains PATTERN, or matches it as "
                        "a glob if it has * ? [ (repeatable: any match)")
    parser.add_argument("--shapes", type=parse_shapes, metavar="NxSIZE,...",
                        help="grid of tensor counts x sizes, e.g. 20x1M,300x256")
    parser.add_argument("--optimizers", type=_csv_list, metavar="NAME,...",
                        help=f"optimizers ({', '.join(OPTIMIZERS)})")
    parser.add_argument("--dtypes", type=_csv_list, metavar="DTYPE,...",
                        help="dtypes, e.g. float32,float64")
    parser.add_argument("--impls", type=_csv_list, metavar="NAME,...",
                        help=f"implementations ({', '.join(IMPLEMENTATIONS)}); default: "
                        "all but " + ", ".join(n for n, i in IMPLEMENTATIONS.items()
                                               if not i.default))
    parser.add_argument("--repeats", type=int, help="timed samples per case")
    parser.add_argument("--warmup", type=int, help="untimed calls per case before timing")
    parser.add_argument("--max-case-seconds", type=float,
                        help="stop sampling a case after this long (at least 3 samples)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="no rotating buffers or cache eviction: time repeated steps on "
                        "one copy of the tensors (small cases then run from the cache)")
    parser.add_argument("--steps-per-call", type=_positive_int, default=1, metavar="N",
                        help="TF cases run N optimizer steps in a tf.range loop inside one "
                        "tf.function call and report the call time / N, as model.fit's "
                        "steps_per_execution does: the per-call cost of passing every "
                        "captured tensor is paid once per N steps (default 1; the other "
                        "cases run one step per call)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", metavar="DIR",
                        help="write PREFIX.json, PREFIX.csv and PREFIX.png into DIR")
    parser.add_argument("--name", metavar="PREFIX",
                        help="file name prefix for --out (default: cpu-YYYY-MM-DD, or "
                        "cuda-YYYY-MM-DD when GPU cases ran)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--show", metavar="FILE.json",
                        help="print the tables of a saved run and exit (runs nothing)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the tables as Markdown instead of rich tables")
    return parser


def select_cases(args, preset: Preset):
    """The cases the arguments ask for, in run order.

    ``--optimizers``/``--dtypes`` replace the preset's combinations by their
    product (over every shape of the preset); ``--shapes`` replaces the shapes
    of every combination.
    """
    if args.optimizers or args.dtypes:
        optimizers = args.optimizers or list(dict.fromkeys(o for o, _ in preset.combos))
        dtypes = args.dtypes or list(dict.fromkeys(d for _, d in preset.combos))
        grid = [(o, d, preset.all_shapes) for o in optimizers for d in dtypes]
    else:
        grid = list(preset.grid)
    if args.shapes:
        grid = [(o, d, args.shapes) for o, d, _ in grid]
    for name, dtype, _ in grid:
        if name not in OPTIMIZERS:
            raise SystemExit(f"fusedopt-bench: unknown optimizer {name!r} "
                             f"(known: {', '.join(OPTIMIZERS)})")
        if dtype not in ("float16", "bfloat16", "float32", "float64"):
            raise SystemExit(f"fusedopt-bench: unsupported dtype {dtype!r}")
    impls = (args.impls or preset.impls
             or [n for n, i in IMPLEMENTATIONS.items() if i.default])
    for name in impls:
        if name not in IMPLEMENTATIONS:
            raise SystemExit(f"fusedopt-bench: unknown implementation {name!r} "
                             f"(known: {', '.join(IMPLEMENTATIONS)})")
    cases = [case for o, d, shapes in grid for case in make_cases([(o, d)], shapes, impls)]
    n = getattr(args, "steps_per_call", 1)
    return [dataclasses.replace(c, steps_per_call=n) if n != 1 else c
            for c in cases if matches(c.name, args.filter)]


class _Progress:
    """A rich progress bar on stderr when it is a terminal; a line per case otherwise."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        from rich.console import Console

        console = Console(stderr=True)
        self._bar = None
        if console.is_terminal:
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=True)
            self._task = self._bar.add_task("fusedopt-bench", total=total)

    def __enter__(self):
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()

    def starting(self, what: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=what)

    def finished(self, what: str, outcome: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
        else:
            print(f"[{self.done}/{self.total}] {what}: {outcome}", file=sys.stderr, flush=True)


def _outcome(m) -> str:
    if m.status != "ok":
        return f"{m.status} ({m.note})"
    import statistics

    return f"{statistics.median(m.times_s) * 1e3:.3g} ms (n={len(m.times_s)}, {m.cache})"


def _keep_tensorflow_off_the_gpu() -> None:
    """The TF cases run on the CPU. Hide GPUs from TensorFlow before it starts,
    or it would reserve most of the GPU's memory that the CUDA cases need."""
    try:
        import tensorflow as tf
    except ImportError:  # no TF: its cases skip
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # TF already started: nothing to do
        pass


def _loadavg_text(values) -> str:
    return "unknown" if values is None else " ".join(f"{x:.2f}" for x in values)


def _evictor(device: str, llc: int):
    try:
        if device == "cpu":
            return floor_mod.Evictor(llc)
        return floor_mod.CudaEvictor()
    except Exception:  # noqa: BLE001 - no device: its cases skip anyway
        return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.show:
        with open(args.show) as f:
            saved = json.load(f)
        show = report.markdown if args.markdown else report.print_report
        text = show(saved["cases"], saved["floor"])
        if text:
            print(text)
        for line in targets.lines(saved.get("targets", [])):
            print(line)
        return 0
    preset = QUICK if args.quick else GPU if args.gpu else FULL
    settings = dataclasses.replace(
        preset.settings,
        **{k: v for k, v in (("repeats", args.repeats), ("warmup", args.warmup),
                             ("max_seconds", args.max_case_seconds)) if v is not None})
    cases = select_cases(args, preset)

    if args.list:
        for case in cases:
            print(case.name)
        print(f"\n{len(cases)} cases. Implementations:")
        for impl in IMPLEMENTATIONS.values():
            flag = "" if impl.default else " (only with --impls)"
            print(f"  {impl.name:13} {impl.device:5} {impl.description}{flag}")
        return 0
    if not cases:
        print("fusedopt-bench: no case matches the filters (see --list)", file=sys.stderr)
        return 2

    _keep_tensorflow_off_the_gpu()
    import fusedopt

    started = time.time()
    document = {
        "schema": report.SCHEMA,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": ["fusedopt-bench", *(sys.argv[1:] if argv is None else argv)],
        "settings": {**dataclasses.asdict(settings), "quick": args.quick,
                     "warm_cache": args.warm_cache, "filter": args.filter,
                     "steps_per_call": args.steps_per_call,
                     "cases_selected": len(cases)},
        "machine": machine.machine_info(),
        "versions": machine.versions(),
        "build_info": fusedopt.build_info(),
    }
    devices = {c.impl.device for c in cases}
    llc = document["machine"]["llc_bytes"]
    if "cuda" in devices:
        document["machine"]["gpus"] = machine.gpu_info()

    floors, notes = {}, []
    cpu_floor = floor_mod.CpuFloor() if "cpu" in devices else None
    if cpu_floor is not None:
        cpu_floor.probe(7, "start")
    if "cuda" in devices:
        cuda_floor = floor_mod.measure_cuda_floor()
        if cuda_floor is None:
            notes.append("no CUDA GPU with PyTorch or CuPy: no GPU floor")
        else:
            floors["cuda"] = cuda_floor
    evictors = ({} if args.warm_cache
                else {device: _evictor(device, llc) for device in devices})

    measurements, probe_gbps, group = [], None, None
    with _Progress(len(cases)) as progress:
        for case in cases:
            progress.starting(case.name)
            if cpu_floor is not None and case.impl.device == "cpu" and case.group != group:
                # A short probe per group: the floor pools the samples of the whole run.
                group, probe_gbps = case.group, cpu_floor.probe(3, case.group)
            # A probe sample beside every timed sample (not with --warm-cache:
            # the probe's pass would flush the cache the case is timed from).
            beside = (cpu_floor.sample if cpu_floor is not None and case.impl.device == "cpu"
                      and not args.warm_cache else None)
            m = measure(case, settings, evictors.get(case.impl.device), probe=beside)
            measurements.append((case, m, probe_gbps if case.impl.device == "cpu" else None))
            progress.finished(case.name, _outcome(m))
    evictors.clear()
    if cpu_floor is not None:
        cpu_floor.probe(7, "end")
        floors["cpu"] = cpu_floor.summary()

    records = [report.case_record(c, m, floors, probe) for c, m, probe in measurements]
    report.add_speedups(records)
    notes += report.beyond_floor_lines(records)
    document["targets"] = targets.evaluate(records)
    document.update(floor=floors, notes=notes, cases=records,
                    wall_s=time.time() - started)
    document["machine"]["loadavg_end"] = (list(os.getloadavg())
                                          if hasattr(os, "getloadavg") else None)

    if args.markdown:
        print(report.markdown(records, floors))
    else:
        report.print_report(records, floors)
    for line in targets.lines(document["targets"]):
        print(line)
    for note in notes:
        print(note)
    print(f"{sum(r['status'] == 'ok' for r in records)} of {len(records)} cases ran in "
          f"{document['wall_s']:.0f} s; load average "
          f"{_loadavg_text(document['machine']['loadavg'])} at the start, "
          f"{_loadavg_text(document['machine']['loadavg_end'])} at the end.")

    if args.out:
        write_outputs(args, document, records)
    return 1 if any(r["status"] == "error" for r in records) else 0


def write_outputs(args, document: dict, records: list[dict]) -> None:
    """PREFIX.json, PREFIX.csv and (with matplotlib) PREFIX.png in args.out."""
    os.makedirs(args.out, exist_ok=True)
    ran_cuda = any(r["device"] == "cuda" and r["status"] == "ok" for r in records)
    prefix = args.name or f"{'cuda' if ran_cuda else 'cpu'}-{datetime.date.today().isoformat()}"
    base = os.path.join(args.out, prefix)
    report.write_json(base + ".json", document)
    report.write_csv(base + ".csv", records)
    written = [base + ".json", base + ".csv"]
    if not args.no_plot:
        try:
            from fusedopt.bench.plot import write_plot

            if write_plot(base + ".png", records):
                written.append(base + ".png")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'fusedopt[bench]')",
                  file=sys.stderr)
    print("wrote " + ", ".join(written))


"""``fusedopt-bench``: time fusedopt against stock optimizers and the memory floor.

Usage examples::

    fusedopt-bench --quick                       # about a minute: the two headline shapes
    fusedopt-bench --out bench/results          # the full default grid, with JSON/CSV/PNG
    fusedopt-bench --filter 'adam/float32/*' --filter tf-raw --repeats 50
    fusedopt-bench --shapes 64x16K --optimizers adam,sgd --dtypes float32,float64
    fusedopt-bench --list                        # the cases, without running them
    fusedopt-bench --quick --steps-per-call 20   # TF cases: 20 steps per tf.function call
    fusedopt-bench --fit --quick                 # real model.fit: fusedopt vs stock Keras
    fusedopt-bench --fit --out bench/results     # every --fit model and mode
    fusedopt-bench --backend torch --quick       # Keras-torch: fusedopt, stock, torch.optim
    fusedopt-bench --backend jax --shapes 20x1M  # fusedopt vs Keras-JAX vs optax, jitted

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

from fusedopt.bench import args as checks
from fusedopt.bench import fit
from fusedopt.bench import floor as floor_mod
from fusedopt.bench import machine, report, targets
from fusedopt.bench import tf_cases  # noqa: F401, I001 - registers the TF cases first
from fusedopt.bench import kernel_cases  # noqa: F401 - registers the kernel cases
from fusedopt.bench import torch_cases  # registers the Keras-torch cases (--backend torch)
from fusedopt.bench import jax_cases  # noqa: F401 - registers the JAX cases (--backend jax)
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


DTYPES = ("float16", "bfloat16", "float32", "float64")


def _impls_help() -> str:
    others = [n for n, i in IMPLEMENTATIONS.items() if not i.default]
    full = "all" + (f" but {', '.join(others)}" if others else "")
    return (f"implementations to run, comma-separated, from: {', '.join(IMPLEMENTATIONS)} "
            f"(--list says what each one times); default: the preset's (--quick: "
            f"{', '.join(QUICK.impls)}; --gpu: {', '.join(GPU.impls)}; otherwise {full})")


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
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="the Keras backend the optimizer cases run on (KERAS_BACKEND, "
                        "set before Keras is imported; default: the one in use); jax runs "
                        "fusedopt-jax, keras-jax and optax, torch runs "
                        f"{', '.join(torch_cases.TORCH_IMPLS)}, unless --impls says otherwise; "
                        "with --fit, the backend model.fit trains on (torch: eager and "
                        "torch.compile rows)")
    preset.add_argument("--gpu", action="store_true",
                        help="the GPU grid: fusedopt's CUDA kernels vs torch.optim fused, "
                        "up to 1B parameters")
    parser.add_argument("--filter", action="append", default=[], metavar="PATTERN",
                        help="run only cases whose name contains PATTERN, or matches it as "
                        "a glob if it has * ? [ (repeatable: any match)")
    parser.add_argument("--fit", action="store_true",
                        help="train small real Keras models with model.fit instead, fusedopt "
                        "against the stock optimizer, in alternating rounds: per-step times, "
                        "the optimizer's share of the step, and a check that the trained "
                        "weights match (with --quick: a subset within about a minute)")
    parser.add_argument("--shapes", type=checks.shapes, metavar="NxSIZE,...",
                        help="grid of tensor counts x sizes, e.g. 20x1M,300x256")
    parser.add_argument("--optimizers", type=checks.names_from(lambda: OPTIMIZERS, "optimizer"),
                        metavar="NAME,...",
                        help=f"optimizers, comma-separated, from: {', '.join(OPTIMIZERS)} "
                        f"(with --fit: {', '.join(fit.fit_optimizers())}); default: the "
                        "preset's")
    parser.add_argument("--dtypes", type=checks.names_from(lambda: DTYPES, "dtype"),
                        metavar="DTYPE,...",
                        help=f"dtypes, comma-separated, from: {', '.join(DTYPES)} (--fit: "
                        "float32 only); default: the preset's")
    parser.add_argument("--impls", type=checks.names_from(lambda: IMPLEMENTATIONS,
                                                          "implementation"),
                        metavar="NAME,...", help=_impls_help())
    parser.add_argument("--repeats", type=checks.int_at_least(1), metavar="N",
                        help="timed samples per case (--fit: timed rounds per model)")
    parser.add_argument("--warmup", type=checks.int_at_least(0), metavar="N",
                        help="untimed calls per case before timing (--fit: untimed rounds; "
                        "the first call is never timed)")
    parser.add_argument("--max-case-seconds", type=checks.positive_seconds, metavar="S",
                        help="stop sampling a case after this long (at least 3 samples; "
                        "--fit: per model group, at least 3 rounds)")
    parser.add_argument("--calls-per-round", type=checks.int_at_least(2), metavar="N",
                        help="--fit only: train-function calls per model.fit round (the "
                        "first one of each round is not timed; default: the preset's)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="no rotating buffers or cache eviction: time repeated steps on "
                        "one copy of the tensors (small cases then run from the cache)")
    parser.add_argument("--steps-per-call", type=checks.int_at_least(1), metavar="N",
                        help="TF cases run N optimizer steps in a tf.range loop inside one "
                        "tf.function call and report the call time / N, as model.fit's "
                        "steps_per_execution does: the per-call cost of passing every "
                        "captured tensor is paid once per N steps (default 1; the other "
                        "cases run one step per call). With --fit: the steps_per_execution "
                        "of every model (default: the preset's, 1 or 20)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", metavar="DIR",
                        help="write PREFIX.json, PREFIX.csv and PREFIX.png into DIR")
    parser.add_argument("--name", metavar="PREFIX", type=checks.file_prefix,
                        help="file name prefix for --out (default: cpu-YYYY-MM-DD, or "
                        "cuda-YYYY-MM-DD when GPU cases ran, fit-cpu-YYYY-MM-DD with --fit)")
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
    # The names were checked when the arguments were parsed (checks.names_from).
    if getattr(args, "backend", None) == "jax" and not args.impls:
        impls = list(jax_cases.JAX_IMPLEMENTATIONS)
    else:
        impls = (args.impls or preset.impls
                 or [n for n, i in IMPLEMENTATIONS.items() if i.default])
    cases = [case for o, d, shapes in grid for case in make_cases([(o, d)], shapes, impls)]
    n = getattr(args, "steps_per_call", None) or 1
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


def _rerun_on_backend(backend, argv) -> int | None:
    """For --backend: Keras picks its backend once per process, when it is
    first imported (`import fusedopt` imports it). If it runs on another one
    here, the same command runs again in a child process with KERAS_BACKEND
    set; returns its exit status (None: this process is on `backend`)."""
    if backend is None:
        return None
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = backend
        return None
    if keras.backend.backend() == backend:
        return None
    import subprocess

    command = [sys.executable, "-m", "fusedopt.bench",
               *(sys.argv[1:] if argv is None else argv)]
    return subprocess.call(command, env=dict(os.environ, KERAS_BACKEND=backend))


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.show:
        return show(parser, args.show, args.markdown)
    status = _rerun_on_backend(args.backend, argv)
    if status is not None:
        return status
    if args.fit:
        return main_fit(parser, args, argv)
    if args.calls_per_round is not None:
        parser.error("argument --calls-per-round: only with --fit")
    preset = QUICK if args.quick else GPU if args.gpu else FULL
    if args.backend == "torch":
        preset = dataclasses.replace(preset, impls=torch_cases.TORCH_IMPLS)
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
    if args.out:  # the last check, and the first write: nothing has run yet
        checks.prepare_out(parser, args.out, files=_out_files(args, ("json", "csv", "png")))

    if args.backend in (None, "tensorflow"):
        _keep_tensorflow_off_the_gpu()
    import fusedopt

    started = time.time()
    document = {
        "schema": report.SCHEMA,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": ["fusedopt-bench", *(sys.argv[1:] if argv is None else argv)],
        "settings": {**dataclasses.asdict(settings), "quick": args.quick,
                     "warm_cache": args.warm_cache, "filter": args.filter,
                     "steps_per_call": args.steps_per_call or 1,
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



def _out_files(args, suffixes, prefixes=None) -> list[str]:
    """The file names a run may write into --out."""
    today = datetime.date.today().isoformat()
    prefixes = [args.name] if args.name else (prefixes or [f"cpu-{today}", f"cuda-{today}"])
    return [f"{p}.{s}" for p in prefixes for s in suffixes]


def show(parser, path: str, as_markdown: bool) -> int:
    """Prints the tables of a saved run (kernel bench or --fit); a file that is
    missing or not such a run is argparse's one-line error."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError as e:
        parser.error(f"argument --show: cannot read {path!r}: {e.strerror or e}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        parser.error(f"argument --show: {path!r} is not JSON: {e}")
    schema = saved.get("schema") if isinstance(saved, dict) else None
    if schema not in (report.SCHEMA, fit.SCHEMA):
        parser.error(f"argument --show: {path!r} is not a fusedopt-bench result (schema "
                     f"{schema!r}, expected {report.SCHEMA!r} or {fit.SCHEMA!r})")
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)
    try:  # render everything first: a broken record prints nothing but the error
        with console.capture() as captured:
            if schema == fit.SCHEMA:
                rows = saved["rows"]
                if as_markdown:
                    console.print(fit.markdown(rows), markup=False, highlight=False, soft_wrap=True)
                else:
                    fit.print_report(rows, console)
                lines = fit.problem_lines(rows)
            else:
                if as_markdown:
                    console.print(report.markdown(saved["cases"], saved["floor"]),
                                  markup=False, highlight=False, soft_wrap=True)
                else:
                    report.print_report(saved["cases"], saved["floor"], console)
                lines = targets.lines(saved.get("targets", []))
            for line in lines:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        parser.error(f"argument --show: {path!r} is not a complete {schema} result "
                     f"({type(e).__name__}: {e})")
    sys.stdout.write(captured.get())
    return 0


def main_fit(parser, args, argv) -> int:
    """``--fit``: real model.fit, fusedopt against stock Keras (fit.py)."""
    for option, given in (("--gpu", args.gpu), ("--shapes", args.shapes),
                          ("--impls", args.impls), ("--warm-cache", args.warm_cache)):
        if given:
            parser.error(f"argument {option}: not allowed with --fit (it trains whole "
                         "models on the CPU, fusedopt against the stock optimizer)")
    if args.dtypes and set(args.dtypes) != {"float32"}:
        parser.error("argument --dtypes: --fit trains float32 models only")
    valid = fit.fit_optimizers()
    unfit = [o for o in args.optimizers or () if o not in valid]
    if unfit:
        parser.error(f"argument --optimizers: {', '.join(unfit)} has options the stock Keras "
                     f"optimizer lacks, so --fit has nothing to train against (valid with "
                     f"--fit: {', '.join(valid)})")
    # This process runs on args.backend (_rerun_on_backend), or on the one
    # KERAS_BACKEND / keras.json names: ask Keras, which imports nothing heavy
    # before its backend.
    import keras

    backend = keras.backend.backend()
    limit = fit.MAX_STEPS_PER_EXECUTION.get(backend)
    if limit is not None and args.steps_per_call and args.steps_per_call > limit:
        parser.error(f"argument --steps-per-call: at most {limit} with --fit on the {backend} "
                     f"backend (Keras-{backend}'s fit runs one step per train-function call)")
    preset = fit.QUICK if args.quick else fit.FULL
    settings = dataclasses.replace(
        preset.settings,
        **{k: v for k, v in (("rounds", args.repeats), ("warmup", args.warmup),
                             ("max_seconds", args.max_case_seconds),
                             ("calls_per_round", args.calls_per_round)) if v is not None})
    groups = fit.select_groups(preset, args.optimizers, args.steps_per_call, args.filter,
                               backend=backend)
    not_run = [f"not run on {backend}: {name} (steps_per_execution > {limit}: Keras-"
               f"{backend}'s fit refuses it)" for name in fit.unsupported_groups(preset, backend)]
    if args.list:
        for group in groups:
            for name in group.row_names():
                print(name)
        print(f"\n{sum(len(g.optimizers) for g in groups)} rows. Models:")
        for name in dict.fromkeys(g.model for g in groups):
            print(f"  {name:15} {fit.MODELS[name].description}")
        for line in not_run:
            print(line)
        return 0
    if not groups:
        print("fusedopt-bench: no --fit row matches the filters (see --fit --list)",
              file=sys.stderr)
        return 2
    today = datetime.date.today().isoformat()
    # fit-cpu-DATE on TensorFlow (as before), fit-<backend>-cpu-DATE elsewhere.
    default_name = (f"fit-cpu-{today}" if backend == "tensorflow"
                    else f"fit-{backend}-cpu-{today}")
    if args.out:
        checks.prepare_out(parser, args.out,
                           files=_out_files(args, ("json", "csv"), [default_name]))

    if backend == "tensorflow":
        _keep_tensorflow_off_the_gpu()
    import fusedopt

    started, cpu_started = time.time(), time.process_time()
    document = {
        "schema": fit.SCHEMA,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": ["fusedopt-bench", *(sys.argv[1:] if argv is None else argv)],
        "settings": {**dataclasses.asdict(settings), "quick": args.quick,
                     "filter": args.filter, "optimizers": args.optimizers,
                     "steps_per_execution": args.steps_per_call,
                     "rows_selected": sum(len(g.optimizers) for g in groups)},
        "keras_backend": keras.backend.backend(),
        "machine": machine.machine_info(),
        "versions": machine.versions(),
        "build_info": fusedopt.build_info(),
    }
    records = []
    with _Progress(sum(len(g.optimizers) for g in groups)) as progress:
        for group in groups:
            records += fit.run_group(group, settings, progress)
    notes = not_run + fit.problem_lines(records)
    document.update(rows=records, notes=notes, wall_s=time.time() - started,
                    cpu_s=time.process_time() - cpu_started)
    document["machine"]["loadavg_end"] = (list(os.getloadavg())
                                          if hasattr(os, "getloadavg") else None)

    if args.markdown:
        print(fit.markdown(records))
    else:
        fit.print_report(records)
    for note in notes:
        print(note)
    print(f"{sum(r['status'] == 'ok' for r in records)} of {len(records)} rows ran in "
          f"{document['wall_s']:.0f} s ({document['cpu_s']:.0f} s of CPU); load average "
          f"{_loadavg_text(document['machine']['loadavg'])} at the start, "
          f"{_loadavg_text(document['machine']['loadavg_end'])} at the end.")
    if args.out:
        base = os.path.join(args.out, args.name or default_name)
        report.write_json(base + ".json", document)
        fit.write_csv(base + ".csv", records)
        print(f"wrote {base}.json, {base}.csv")
    failed = any(r["status"] != "ok" or r.get("weights_match") is False for r in records)
    return 1 if failed else 0

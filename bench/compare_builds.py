"""Two fusedopt builds, the same bench, case by case: did the new one slow anything down?

Give two Python interpreters, each with a fusedopt build installed (e.g. an
older commit's venv and today's). The same ``python -m fusedopt.bench``
arguments (default ``--quick --no-plot``; anything after ``--`` replaces them)
run with each, alternating base new base new ... for ``--rounds`` rounds, each
run writing its JSON into a temporary directory. The cases present in both
builds, with the same arguments and run in every round, are matched; per case
the table shows each build's median time over the rounds (of the per-run
medians), the ratio new/base, and its spread: the lowest and highest of the
per-round ratios (round i's new run over round i's base run).

A case counts as a regression only if new is slower than base by more than
``--tolerance`` (default 0.10, i.e. 10%) in EVERY round, and as faster only if
it is faster by that much in every round. This machine's memory bandwidth
drifts (a shared 2-core VM that switches between about 53 and 103 GB/s for
seconds at a time, see fusedopt/bench/paired.py), so one slow run, or a
median pulled by one, is not evidence; only a slowdown that every round shows
is. Ratios in between are within noise. The stock cases (``keras``,
``tf-raw``) run the same TensorFlow code in both builds: their ratios show how
far noise alone moves a ratio.

Cases that are not in both builds, whose arguments (optimizer, dtype, shape,
implementation, steps per call, bytes moved, cache mode) differ, or that did
not run in some round are listed as unmatched with the reason; cases skipped
in every run of both builds (e.g. CUDA cases without a GPU) are listed as not
run.

Usage (from the repository root; each interpreter imports its own build, the
runs start in a temporary directory so that no source tree shadows it):

    python bench/compare_builds.py --base /work/wt-base/.venv/bin/python \\
        --new .venv/bin/python --rounds 3 \\
        --out bench/results/compare-builds-cpu-2026-12-01.json
    python bench/compare_builds.py --base A/bin/python --new B/bin/python \\
        -- --quick --no-plot --optimizers adam,sgd

Exit status: 0, 1 if a case regressed, 2 if a run failed or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SCHEMA = "fusedopt-compare-builds/1"
BENCH_SCHEMA = "fusedopt-bench/1"
DEFAULT_BENCH_ARGS = ["--quick", "--no-plot"]
# What a case ran on: two records with the same name but different values
# here did not time the same work.
CASE_ARGUMENTS = ("optimizer", "dtype", "shape", "n_tensors", "tensor_size", "params",
                  "impl", "device", "steps_per_call", "bytes_moved", "cache")
# Options this script sets itself, or that would not write a bench JSON.
REFUSED = ("--out", "--name", "--show", "--list", "--markdown", "--fit")


def parse_args(argv):
    if "--" in argv:
        i = argv.index("--")
        argv, bench_args = argv[:i], argv[i + 1:]
    else:
        bench_args = list(DEFAULT_BENCH_ARGS)
    parser = argparse.ArgumentParser(
        description="Run the same fusedopt-bench arguments with two builds, alternating, "
        "and compare the cases' times.",
        epilog="Bench arguments after '--' (default: " + " ".join(DEFAULT_BENCH_ARGS) + ").")
    parser.add_argument("--base", required=True, metavar="PY",
                        help="Python interpreter of the baseline build")
    parser.add_argument("--new", required=True, metavar="PY",
                        help="Python interpreter of the build under test")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="runs of each build, alternating (default 3)")
    parser.add_argument("--tolerance", type=float, default=0.10, metavar="FRACTION",
                        help="a regression is new slower than base by more than this in "
                        "every round (default 0.10: 10%%)")
    parser.add_argument("--out", metavar="FILE.json", help="write the comparison as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("argument --rounds: at least 1")
    if not 0 <= args.tolerance < 10:
        parser.error("argument --tolerance: a fraction, e.g. 0.10 for 10%")
    for name in ("base", "new"):
        path = getattr(args, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            parser.error(f"argument --{name}: {path!r} is not an executable file")
        setattr(args, name, os.path.abspath(path))  # the runs start in a temporary directory
    for arg in bench_args:
        if arg.split("=", 1)[0] in REFUSED:
            parser.error(f"bench argument {arg}: not with this script (it sets --out and "
                         "--name itself and reads the kernel bench's JSON)")
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"argument --out: {folder!r} is not a writable directory")
    args.bench_args = bench_args
    return args


def _fail(message: str):
    print(f"compare_builds: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_bench(python: str, bench_args: list, tmp: str, name: str) -> dict:
    """One fusedopt-bench run; its JSON document, plus the run's exit status and time."""
    command = [python, "-m", "fusedopt.bench", *bench_args, "--out", tmp, "--name", name]
    # No PYTHONPATH: each interpreter imports the build installed in it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = time.time()
    proc = subprocess.run(command, cwd=tmp, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.time() - started
    path = os.path.join(tmp, name + ".json")
    if not os.path.exists(path):  # exit 1 with a JSON only means some case errored
        sys.stdout.write(proc.stdout[-4000:])
        _fail(f"{' '.join(command)} exited {proc.returncode} without writing its JSON")
    with open(path) as f:
        document = json.load(f)
    if document.get("schema") != BENCH_SCHEMA:
        _fail(f"{path} is not a {BENCH_SCHEMA} document")
    document["_run"] = {"returncode": proc.returncode, "wall_s": wall}
    return document


def compare(runs: dict, rounds: int, tolerance: float):
    """(matched rows, unmatched [(name, reason)], names skipped in every run)."""
    per_build = {}
    for build, documents in runs.items():
        cases = {}
        for k, document in enumerate(documents):
            for record in document["cases"]:
                cases.setdefault(record["name"], [None] * rounds)[k] = record
        per_build[build] = cases
    base, new = per_build["base"], per_build["new"]
    rows, unmatched, not_run = [], [], []
    for name in list(dict.fromkeys([*base, *new])):
        if name not in new or name not in base:
            unmatched.append((name, f"only in {'base' if name in base else 'new'}"))
            continue
        records = {"base": base[name], "new": new[name]}
        statuses = {b: [r["status"] if r else "absent" for r in rs] for b, rs in records.items()}
        if all(s == "skipped" for ss in statuses.values() for s in ss):
            not_run.append(name)
            continue
        reason = None
        for build, rs in records.items():
            for k, r in enumerate(rs):
                if r is None or r["status"] != "ok" or r.get("median_s") is None:
                    note = f" ({r['note']})" if r and r.get("note") else ""
                    reason = f"{statuses[build][k]} in {build}'s round {k + 1}{note}"
                    break
            if reason:
                break
        for field in CASE_ARGUMENTS if reason is None else ():
            values = {b: list(dict.fromkeys(repr(r.get(field)) for r in rs))
                      for b, rs in records.items()}
            if len(set(values["base"] + values["new"])) > 1:
                reason = (f"{field} differs: base {', '.join(values['base'])}, "
                          f"new {', '.join(values['new'])}")
                break
        if reason:
            unmatched.append((name, reason))
            continue
        base_s = [r["median_s"] for r in records["base"]]
        new_s = [r["median_s"] for r in records["new"]]
        ratios = [n / b for n, b in zip(new_s, base_s, strict=True)]
        if all(r > 1 + tolerance for r in ratios):
            verdict = "slower"
        elif all(r < 1 / (1 + tolerance) for r in ratios):
            verdict = "faster"
        else:
            verdict = ""
        base_median, new_median = statistics.median(base_s), statistics.median(new_s)
        rows.append({
            "name": name, "base_median_s": base_median, "new_median_s": new_median,
            "ratio": new_median / base_median, "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ratios": ratios, "base_s": base_s, "new_s": new_s,
            "verdict": verdict, "base_note": records["base"][0].get("note", ""),
            "new_note": records["new"][0].get("note", ""),
        })
    return rows, unmatched, not_run


def print_table(rows, unmatched, not_run, tolerance: float) -> None:
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'case':{width}}  {'base ms':>9}  {'new ms':>9}  {'new/base':>8}  "
          f"{'spread':>13}  verdict")
    for r in rows:
        spread = f"[{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]"
        print(f"{r['name']:{width}}  {r['base_median_s'] * 1e3:9.3f}  "
              f"{r['new_median_s'] * 1e3:9.3f}  {r['ratio']:8.2f}  {spread:>13}  {r['verdict']}")
    print(f"verdict: slower/faster = by more than {tolerance:.0%} in every round; "
          "blank = within noise")
    for name, reason in unmatched:
        print(f"unmatched: {name}: {reason}")
    if not_run:
        print(f"not run in either build ({len(not_run)}): {', '.join(not_run)}")


def _load(values, n=1) -> str:
    return "?" if not values else " ".join(f"{x:.2f}" for x in values[:n])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    load_start = list(os.getloadavg())
    runs = {"base": [], "new": []}
    log = []
    with tempfile.TemporaryDirectory(prefix="compare-builds-") as tmp:
        for k in range(args.rounds):
            for build in ("base", "new"):
                name = f"{build}-{k + 1}"
                document = run_bench(getattr(args, build), args.bench_args, tmp, name)
                runs[build].append(document)
                entry = {"build": build, "round": k + 1, **document["_run"],
                         "loadavg": document["machine"].get("loadavg"),
                         "loadavg_end": document["machine"].get("loadavg_end")}
                log.append(entry)
                print(f"[{name}] {entry['wall_s']:.0f} s, exit {entry['returncode']}, load "
                      f"{_load(entry['loadavg'])} -> {_load(entry['loadavg_end'])}",
                      file=sys.stderr, flush=True)
    rows, unmatched, not_run = compare(runs, args.rounds, args.tolerance)
    load_end = list(os.getloadavg())
    print_table(rows, unmatched, not_run, args.tolerance)
    print(f"{args.rounds} rounds of {' '.join(args.bench_args)} in {time.time() - started:.0f} s; "
          f"load average {_load(load_start, 3)} at the start, {_load(load_end, 3)} at the end")
    regressions = [r["name"] for r in rows if r["verdict"] == "slower"]
    if args.out:
        document = {
            "schema": SCHEMA,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": ["compare_builds.py", *(sys.argv[1:] if argv is None else argv)],
            "bench_args": args.bench_args, "rounds": args.rounds,
            "tolerance": args.tolerance, "wall_s": time.time() - started,
            "loadavg_start": load_start, "loadavg_end": load_end,
            "builds": {b: {"python": getattr(args, b),
                           "build_info": runs[b][0].get("build_info"),
                           "versions": runs[b][0].get("versions")} for b in runs},
            "machine": runs["base"][0].get("machine"),
            "runs": log, "cases": rows,
            "unmatched": [{"name": n, "reason": r} for n, r in unmatched],
            "not_run": not_run, "regressions": regressions,
        }
        with open(args.out, "w") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        print(f"wrote {args.out}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())

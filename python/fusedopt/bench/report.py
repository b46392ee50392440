"""Turning measurements into numbers, a table, JSON and CSV.

Per case (see bench/README.md for the column meanings):

- ``median_s``, ``min_s``, ``max_s``: over the timed samples of one step
  (a timed call divided by ``steps_per_call``, the steps it ran);
- ``params_per_s``: parameters updated per second at the median;
- ``gbps``: the bytes the step must move (``bytes_moved``) over the median time;
- ``floor_s``: ``bytes_moved`` at the device's measured streaming bandwidth
  (the median of the probe samples taken throughout the run);
- ``pct_floor``: ``100 * floor_s / median_s`` (100 = at the memory floor);
- ``floor_gbps_local``, ``pct_floor_local``: the median of the probe
  samples taken beside this case's samples (timing.py), i.e. the memory
  bandwidth at the moment the case ran, and the median over the samples of
  each sample's percent of the floor at its probe's bandwidth. On a shared machine the two
  differ when memory was faster or slower than usual during the case; a case
  above 100% of its *local* floor moves fewer bytes than ``bytes_per_param``
  says (or runs from the cache) and is listed by :func:`beyond_floor_lines`;
- ``speedup``: for fusedopt's implementations, each baseline's median over
  this case's median, for the baselines that ran on the same work (optimizer,
  dtype, shape, device).
"""

from __future__ import annotations

import collections
import csv
import json
import statistics

from fusedopt.bench.cases import Case
from fusedopt.bench.timing import Measurement

SCHEMA = "fusedopt-bench/1"

CSV_FIELDS = [
    "name", "optimizer", "dtype", "shape", "n_tensors", "tensor_size", "params", "impl",
    "device", "ours", "status", "median_s", "min_s", "max_s", "samples", "params_per_s",
    "gbps", "bytes_per_param", "bytes_moved", "floor_s", "pct_floor", "floor_gbps_local",
    "pct_floor_local", "first_call_s", "copies", "cache", "steps_per_call", "note",
]

# A case above 100% of the run's floor whose pct_floor_local is lower by more
# than this factor gets floor_remark() in the table's note (memory was faster
# than usual during the case).
LOCAL_FLOOR_NOTE_RATIO = 1.15
# A case this far above its local floor is listed as impossible (fewer bytes
# moved than counted, or a warm cache). 10% leaves room for timing noise and
# for kernels that stream a little better than the probe (float64 Adam reaches
# about 100% of it).
BEYOND_FLOOR_MARGIN = 1.10


def case_record(case: Case, m: Measurement, floors: dict,
                probe_gbps: float | None = None) -> dict:
    """One case's JSON record: what ran, every raw timing, and the statistics.

    ``probe_gbps``: the streaming probe's median just before the case's group
    (how fast memory was then, for judging noise; the floor pools the run).
    """
    record = {
        "name": case.name,
        "optimizer": case.optimizer.name,
        "dtype": case.dtype,
        "shape": str(case.shape),
        "n_tensors": case.shape.n_tensors,
        "tensor_size": case.shape.tensor_size,
        "params": case.params,
        "impl": case.impl.name,
        "impl_description": case.impl.description,
        "device": case.impl.device,
        "ours": case.impl.ours,
        "group": case.group,
        "bytes_per_param": case.bytes_per_param,
        "bytes_moved": case.bytes_moved,
        "status": m.status,
        "note": m.note,
        "setup_s": m.setup_s,
        "first_call_s": m.first_call_s,
        "copies": m.copies,
        "cache": m.cache,
        # Steps one timed call ran (the sample is the call / this); for cases
        # that did not run, the steps asked for.
        "steps_per_call": m.steps_per_call if m.status == "ok" else case.steps_per_call,
        "loadavg": m.loadavg,
        "rss_bytes": m.rss_bytes,
        "probe_gbps": probe_gbps,
        "samples": len(m.times_s),
        "times_s": m.times_s,
        "median_s": None, "min_s": None, "max_s": None, "params_per_s": None,
        "gbps": None, "floor_s": None, "pct_floor": None, "speedup": {},
        "probe_gbps_samples": m.probe_gbps,
        "floor_gbps_local": statistics.median(m.probe_gbps) if m.probe_gbps else None,
        "pct_floor_local": None,
    }
    if m.error:
        record["error"] = m.error
    floor = floors.get(case.impl.device)
    if floor:
        record["floor_s"] = case.bytes_moved / (floor["gbps"] * 1e9)
    if m.status == "ok" and m.times_s:
        median = statistics.median(m.times_s)
        record.update(
            median_s=median, min_s=min(m.times_s), max_s=max(m.times_s),
            params_per_s=case.params / median, gbps=case.bytes_moved / median / 1e9)
        if record["floor_s"] is not None:
            record["pct_floor"] = 100.0 * record["floor_s"] / median
        local = record["floor_gbps_local"]
        if local and len(m.probe_gbps) == len(m.times_s):
            # Sample by sample (each against the probe just before it), then the
            # median: a case half in a fast moment and half not is still
            # compared with the memory of each of its samples.
            record["pct_floor_local"] = statistics.median(
                100.0 * case.bytes_moved / (gbps * 1e9) / t
                for gbps, t in zip(m.probe_gbps, m.times_s, strict=True))
    return record


def floor_remark(r: dict) -> str:
    """For the table's note: a case above 100% of the run's floor that ran
    while memory was faster than usual says how it compares with the floor
    of that moment, e.g. '88% of the floor beside it (103 GB/s)'."""
    pct, local = r.get("pct_floor"), r.get("pct_floor_local")
    if not pct or not local or pct <= 100.0 or pct / local <= LOCAL_FLOOR_NOTE_RATIO:
        return ""
    return f"{local:.0f}% of the floor beside it ({r['floor_gbps_local']:.0f} GB/s)"


def beyond_floor_lines(records: list[dict]) -> list[str]:
    """One line per case faster than the memory floor measured beside it.

    Such a time is impossible for a step that really moves ``bytes_moved``:
    the case skips work, moves fewer bytes than ``bytes_per_param`` counts, or
    runs from the cache. (Beating the *run's* floor alone is not suspicious:
    memory may have been faster than usual during the case, see
    ``pct_floor_local``.)
    """
    return [f"BEYOND THE FLOOR: {r['name']} took {fmt_time(r['median_s'])} ms, "
            f"{r['pct_floor_local']:.0f}% of the memory floor measured beside it "
            f"({r['floor_gbps_local']:.1f} GB/s): it moves fewer bytes than "
            f"{r['bytes_per_param']} B/param, or runs from the cache"
            for r in records
            if r["status"] == "ok" and r.get("pct_floor_local") is not None
            and r["pct_floor_local"] > 100.0 * BEYOND_FLOOR_MARGIN]


def add_speedups(records: list[dict]) -> None:
    """Fills ``speedup`` of fusedopt's records: baseline median / our median."""
    groups = collections.defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            groups[r["group"]].append(r)
    for members in groups.values():
        for ours in (r for r in members if r["ours"]):
            ours["speedup"] = {b["impl"]: b["median_s"] / ours["median_s"]
                               for b in members if not b["ours"]}


def baselines(records: list[dict]) -> list[str]:
    """Baseline implementations with at least one measured case, in run order."""
    return list(dict.fromkeys(r["impl"] for r in records
                              if not r["ours"] and r["status"] == "ok"))


# -------------------------------------------------------------------- files


def write_json(path, document: dict) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=1, default=str)
        f.write("\n")


def write_csv(path, records: list[dict]) -> None:
    """One row per case; ``speedup_vs_<baseline>`` columns for fusedopt's rows."""
    speedup_fields = [f"speedup_vs_{b}" for b in baselines(records)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + speedup_fields,
                                extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = dict(r)
            for name, value in r["speedup"].items():
                row[f"speedup_vs_{name}"] = value
            writer.writerow(row)


# -------------------------------------------------------------------- table


def fmt_time(seconds: float | None) -> str:
    """Milliseconds with three significant digits."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_rate(value: float | None) -> str:
    """An SI-scaled number: 1.5e9 -> '1.50G'."""
    if value is None:
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_sections(records: list[dict], floors: dict):
    """Yields (title, header, rows, row_styles) per (optimizer, dtype, device)."""
    sections = collections.OrderedDict()
    for r in records:
        key = (r["optimizer"], r["dtype"], r["device"])
        sections.setdefault(key, []).append(r)
    for (optimizer, dtype, device), members in sections.items():
        ran = [r for r in members if r["status"] == "ok"]
        if not ran:
            continue
        base = baselines(ran)
        floor = floors.get(device)
        title = f"{optimizer} {dtype} on {device}: {members[0]['bytes_per_param']} B/param"
        if floor:
            title += f", floor at {floor['gbps']:.1f} GB/s"
        title += steps_per_call_text(ran)
        header = (["shape", "impl", "median ms", "min ms", "max ms", "params/s", "GB/s",
                   "% floor"] + [f"vs {b}" for b in base] + ["note"])
        rows, styles = [], []
        by_shape = collections.OrderedDict()
        for r in ran:
            by_shape.setdefault(r["shape"], []).append(r)
        for shape, shape_records in by_shape.items():
            for r in shape_records:
                rows.append([shape, r["impl"], fmt_time(r["median_s"]), fmt_time(r["min_s"]),
                             fmt_time(r["max_s"]), fmt_rate(r["params_per_s"]),
                             f"{r['gbps']:.3g}", _pct(r["pct_floor"])]
                            + [fmt_ratio(r["speedup"].get(b)) if r["ours"] else ""
                               for b in base]
                            + ["; ".join(x for x in (r["note"][:48], floor_remark(r)) if x)])
                styles.append("bold green" if r["ours"] else "")
            floor_s = shape_records[0]["floor_s"]
            if floor_s is not None:
                rows.append([shape, "floor", fmt_time(floor_s), "", "",
                             fmt_rate(shape_records[0]["params"] / floor_s),
                             f"{floor['gbps']:.3g}", "100"] + [""] * len(base) + [""])
                styles.append("dim")
        yield title, header, rows, styles


def steps_per_call_text(records: list[dict]) -> str:
    """', times per step: N steps per call (impl, ...)' when a case looped, else ''."""
    looped = [r for r in records if r.get("steps_per_call", 1) > 1]
    if not looped:
        return ""
    counts = sorted({r["steps_per_call"] for r in looped})
    impls = list(dict.fromkeys(r["impl"] for r in looped))
    return (f"; times per step, {'/'.join(map(str, counts))} steps per call "
            f"({', '.join(impls)})")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def not_run_summary(records: list[dict]) -> list[str]:
    """One line per (status, implementation, reason) of the cases that did not run."""
    counts = collections.Counter((r["status"], r["impl"], r["note"])
                                 for r in records if r["status"] != "ok")
    return [f"{status} {impl} ({n} case{'s' * (n > 1)}): {note}"
            for (status, impl, note), n in counts.items()]


def markdown(records: list[dict], floors: dict) -> str:
    """The same tables in Markdown (for READMEs)."""
    lines = [markdown_tables(table_sections(records, floors), drop=("note",))]
    lines += [f"- {line}" for line in not_run_summary(records)]
    return "\n".join(lines)


def markdown_tables(sections, drop=(), left=2) -> str:
    """Markdown for (title, header, rows, styles) sections, without the
    columns named in ``drop``; the first ``left`` columns left-aligned."""
    lines = []
    for title, header, rows, _ in sections:
        keep = [i for i, name in enumerate(header) if name not in drop]
        lines += [f"**{title}**", "",
                  "| " + " | ".join(header[i] for i in keep) + " |",
                  "|" + "|".join("---" if i < left else "---:" for i in keep) + "|"]
        lines += ["| " + " | ".join(str(row[i]) for i in keep) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def print_report(records: list[dict], floors: dict, console=None) -> None:
    """The tables on stdout with rich (a dependency of Keras, so always there)."""
    console = print_tables(table_sections(records, floors), console)
    for line in not_run_summary(records):
        console.print(line, style="yellow" if line.startswith("skipped") else "red",
                      highlight=False)


def print_tables(sections, console=None, left=2):
    """Rich tables for (title, header, rows, styles) sections, the first
    ``left`` columns and the note left-justified; returns the console."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if _is_terminal() else 200)
    for title, header, rows, styles in sections:
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i < left or name == "note" else "right")
        for row, style in zip(rows, styles, strict=True):
            table.add_row(*row, style=style)
        console.print(table)
    return console


def _is_terminal() -> bool:
    import sys

    return sys.stdout.isatty()

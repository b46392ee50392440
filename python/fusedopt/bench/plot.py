"""The PNG plot: time and % of floor against parameter count.

One row of two panels per (optimizer, dtype, device): step time (log-log, with
the memory floor as a dotted black line) and percent of the floor, against the
total parameter count. One colour per implementation; one line style per
tensor count (solid for the fewest tensors), so that "20 tensors of 1M" and
"300 tensors of 64K" (about the same parameters) stay apart.
"""

from __future__ import annotations

import collections


def write_plot(path, records: list[dict]) -> bool:
    """Writes the plot to ``path`` (False: no case ran, nothing written).

    Raises ImportError without matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = collections.OrderedDict()
    for r in records:
        if r["status"] == "ok":
            sections.setdefault((r["optimizer"], r["dtype"], r["device"]), []).append(r)
    if not sections:
        return False
    impls = list(dict.fromkeys(r["impl"] for rs in sections.values() for r in rs))
    colours = {name: f"C{i % 10}" for i, name in enumerate(impls)}
    tensor_counts = sorted({r["n_tensors"] for rs in sections.values() for r in rs})
    styles = {n: ["-", "--", ":", "-."][i % 4] for i, n in enumerate(tensor_counts)}

    fig, axes = plt.subplots(len(sections), 2, figsize=(15, 3.8 * len(sections)),
                             squeeze=False)
    for row, ((optimizer, dtype, device), members) in enumerate(sections.items()):
        ax_time, ax_pct = axes[row]
        for (impl, n_tensors), rs in _lines(members).items():
            rs.sort(key=lambda r: r["params"])
            x = [r["params"] for r in rs]
            kwargs = dict(color=colours[impl], linestyle=styles[n_tensors], marker="o",
                          markersize=3, label=f"{impl}, {n_tensors} tensors",
                          linewidth=2.2 if rs[0]["ours"] else 1.2)
            ax_time.plot(x, [r["median_s"] * 1e3 for r in rs], **kwargs)
            if all(r["pct_floor"] is not None for r in rs):
                ax_pct.plot(x, [r["pct_floor"] for r in rs], **kwargs)
        floor_points = sorted({(r["params"], r["floor_s"]) for r in members
                               if r["floor_s"] is not None})
        if floor_points:
            ax_time.plot([p for p, _ in floor_points], [f * 1e3 for _, f in floor_points],
                         color="black", linestyle=":", label="memory floor")
        title = f"{optimizer} {dtype} ({device}), {members[0]['bytes_per_param']} B/param"
        ax_time.set(xscale="log", yscale="log", xlabel="parameters",
                    ylabel="median step time (ms)", title=title)
        ax_pct.set(xscale="log", yscale="log", xlabel="parameters",
                   ylabel="% of memory floor (log)", title="floor time / median step time")
        ax_pct.axhline(100, color="black", linestyle=":", label="memory floor")
        for ax in (ax_time, ax_pct):
            ax.grid(True, which="both", alpha=0.3)
        ax_pct.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _lines(members: list[dict]) -> dict:
    lines = collections.OrderedDict()
    for r in members:
        lines.setdefault((r["impl"], r["n_tensors"]), []).append(r)
    return lines

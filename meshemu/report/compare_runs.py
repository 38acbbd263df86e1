"""``meshemu compare``: the key metrics of several runs side by side (``compare.csv``,
``compare.md``, ``compare.png``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meshemu.errors import ReportError  # noqa: E402
from meshemu.report.files import FLOWS  # noqa: E402
from meshemu.report.plots import draw_cdf, style_axes  # noqa: E402
from meshemu.report.run import Run, load_run  # noqa: E402
from meshemu.report.stats import RunStats, run_stats  # noqa: E402
from meshemu.report.tables import csv_value, fmt, md_table, metrics  # noqa: E402

log = logging.getLogger(__name__)


#: Rows of the comparison: (section, name, metric) and a label. Per-flow rows are added for
#: flows present in every run.
COMPARE_ROWS: tuple[tuple[tuple[str, str, str], str], ...] = (
    (("traffic", "all flows", "packets"), "packets received"),
    (("traffic", "all flows", "loss_pct"), "loss %"),
    (("traffic", "all flows", "reorder_pct"), "reordering %"),
    (("traffic", "all flows", "owd_p50"), "OWD p50 (ms)"),
    (("traffic", "all flows", "owd_p95"), "OWD p95 (ms)"),
    (("traffic", "all flows", "owd_p99"), "OWD p99 (ms)"),
    (("traffic", "all flows", "throughput_mbps"), "throughput, sum of flows (Mbit/s)"),
    (("traffic", "all flows", "rtt_p50"), "transport RTT p50 (ms)"),
    (("traffic", "all flows", "rtt_p99"), "transport RTT p99 (ms)"),
    (("allreduce", "all jobs", "mean_ms"), "all-reduce mean iteration (ms)"),
    (("allreduce", "all jobs", "p95_ms"), "all-reduce p95 iteration (ms)"),
    (("allreduce", "all jobs", "predicted_mean_ms"), "all-reduce predicted mean (ms)"),
    (("inference", "all", "p50_ms"), "inference p50 (ms)"),
    (("inference", "all", "p95_ms"), "inference p95 (ms)"),
    (("inference", "all", "p99_ms"), "inference p99 (ms)"),
    (("inference", "all", "deadline_misses"), "inference deadline misses"),
    (("inference", "all", "miss_pct"), "inference miss %"),
    (("convergence", "all", "p50_s"), "routing convergence p50 (s)"),
    (("convergence", "all", "p99_s"), "routing convergence p99 (s)"),
    (("convergence", "all", "not_converged"), "events not converged"),
    (("convergence", "all", "loop_s"), "time with routing loops (s)"),
    (("convergence", "all", "blackhole_s"), "time with blackholes (s)"),
    (("disruption", "all", "lost"), "frames lost around topology events"),
    (("disruption", "all", "outage_p99_s"), "outage around events p99 (s)"),
    (("disruption", "all", "owd_spike_ms"), "delay spike around events max (ms)"),
    (("control", "per link", "bytes_per_s"), "routing control B/s per link"),
    (("daemons", "per node", "cpu_pct"), "routing daemon CPU % per node"),
    (("daemons", "per node", "pss_mib"), "routing daemon MiB per node"),
    (("fidelity", "shaper", "steps_affected"), "steps the shaper fell behind"),
    (("run", "", "route_changes"), "route changes"),
    (("run", "", "link_updates"), "link updates"),
    (("run", "", "apply_ms_p50"), "step apply p50 (ms)"),
    (("run", "", "apply_ms_p99"), "step apply p99 (ms)"),
    (("run", "", "lag_ms_p99"), "step lag p99 (ms)"),
)
_FLOW_COMPARE = (
    ("owd_p50", "OWD p50 (ms)"),
    ("owd_p99", "OWD p99 (ms)"),
    ("loss_pct", "loss %"),
    ("throughput_mbps", "Mbit/s"),
)


@dataclass(frozen=True)
class Comparison:
    """Key metrics of several runs: ``values[i][j]`` is row ``i`` of run ``j``."""

    labels: list[str]
    rows: list[str]
    values: list[list[float]]
    warnings: list[str]
    stats: list[RunStats]


def comparison(run_dirs: Sequence[Path | str]) -> Comparison:
    """Load and compare run directories (at least two); see :func:`compare`."""
    if len(run_dirs) < 2:
        raise ReportError(
            f"compare needs at least two run directories, got {len(run_dirs)}; "
            f"usage: meshemu compare RUN_DIR RUN_DIR..."
        )
    runs = [load_run(d) for d in run_dirs]
    warnings = []
    for what, get in (
        ("scenario", lambda r: r.summary.get("scenario")),
        ("traffic profile", _traffic_profile),
        ("duration", lambda r: r.summary.get("duration_s")),
        ("time scale", lambda r: r.time_scale),
    ):
        vals = [get(r) for r in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals}) > 1:
            warnings.append(
                f"the runs differ in {what}: "
                + ", ".join(f"{r.name}={_short(v)}" for r, v in zip(runs, vals))
            )
    for w in warnings:
        log.warning("%s", w)
    stats = [run_stats(r) for r in runs]
    labels = [r.label for r in runs]
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # two runs of the same dir name and routing
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    tables = [{m.key: m.value for m in metrics(s, r.summary)} for s, r in zip(stats, runs)]
    row_keys = [(k, lab) for k, lab in COMPARE_ROWS if any(k in t for t in tables)]
    # flows in every run that carried packets in at least one of them
    busy = {g.name for st in stats for g in st.flows if g.seq.received}
    common = [
        f.name
        for f in stats[0].flows
        if f.name in busy and all(any(g.name == f.name for g in s.flows) for s in stats[1:])
    ]
    for name in common[:20]:
        row_keys += [(("flow", name, m), f"{name}: {lab}") for m, lab in _FLOW_COMPARE]
    values = [[t.get(k, math.nan) for t in tables] for k, _ in row_keys]
    return Comparison(labels, [lab for _, lab in row_keys], values, warnings, stats)


def _traffic_profile(run: Run) -> Any:
    t = run.summary.get("traffic") or {}
    if isinstance(t, dict) and t.get("profile"):
        return t["profile"]
    fl = run.table(FLOWS)
    if fl is None:
        return None
    return sorted(
        zip(fl["name"].tolist(), fl["kind"].tolist(), fl["src"].tolist(), fl["dst"].tolist())
    )


def _short(v: Any, n: int = 40) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def compare(run_dirs: Sequence[Path | str], out_dir: Path | str | None = None) -> list[Path]:
    """Key metrics of several runs side by side.

    Writes ``compare.csv`` (``metric`` then one column per run), ``compare.md`` and
    ``compare.png`` (bar charts of OWD p50/p99, inference p99, all-reduce mean iteration time,
    loss and route changes, and an OWD CDF overlay) into ``out_dir`` (default
    ``runs/compare-<time>``). Runs that differ in scenario or traffic profile are compared
    anyway, with a warning (logged and written in ``compare.md``).

    Returns
    -------
    list of Path
        The files written.
    """
    cmp = comparison(run_dirs)
    out = (
        Path(out_dir)
        if out_dir
        else Path("runs") / f"compare-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric"] + cmp.labels)
        for lab, vals in zip(cmp.rows, cmp.values):
            w.writerow([lab] + [csv_value(v) for v in vals])
    (out / "compare.md").write_text(comparison_markdown(cmp, [str(d) for d in run_dirs]))
    files = [out / "compare.csv", out / "compare.md", plot_compare(out / "compare.png", cmp)]
    return files


def comparison_markdown(cmp: Comparison, run_dirs: Sequence[str] = ()) -> str:
    """The comparison table as Markdown, warnings first."""
    parts = ["# meshemu compare\n"]
    if run_dirs:
        parts.append("runs: " + ", ".join(run_dirs) + "\n")
    if cmp.warnings:
        parts.append("\n".join(f"warning: {w}" for w in cmp.warnings) + "\n")
    parts.append(
        md_table(
            ["metric"] + cmp.labels,
            [[lab] + [fmt(v) for v in vals] for lab, vals in zip(cmp.rows, cmp.values)],
        )
    )
    return "\n".join(parts) + "\n"


def plot_compare(path: Path, cmp: Comparison) -> Path:
    """Bar charts of the key metrics, one bar per run, and an OWD CDF overlay."""
    panels = [
        ("OWD (ms)", ["OWD p50 (ms)", "OWD p99 (ms)"]),
        ("inference p99 (ms)", ["inference p99 (ms)"]),
        (
            "all-reduce iteration (ms)",
            ["all-reduce mean iteration (ms)", "all-reduce predicted mean (ms)"],
        ),
        ("loss %", ["loss %"]),
        ("route changes", ["route changes"]),
    ]
    row_of = {lab: i for i, lab in enumerate(cmp.rows)}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    n = len(cmp.labels)
    colors = [f"C{j % 10}" for j in range(n)]
    for ax, (title, rows) in zip(axes.flat, panels):
        rows = [r for r in rows if r in row_of]
        vals = np.array([cmp.values[row_of[r]] for r in rows], dtype=float).reshape(len(rows), n)
        if not rows or not np.isfinite(vals).any():
            ax.text(
                0.5,
                0.5,
                "not measured in these runs",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="#7f7f7f",
            )
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            width = 0.8 / n
            x = np.arange(len(rows))
            for j in range(n):
                ax.bar(
                    x + (j - (n - 1) / 2) * width,
                    np.nan_to_num(vals[:, j]),
                    width,
                    color=colors[j],
                    label=cmp.labels[j],
                )
            ax.set_xticks(x)
            ax.set_xticklabels([r.replace(" (ms)", "") for r in rows], fontsize=8)
            ax.grid(True, axis="y", color="#dddddd")
        ax.set_title(title, fontsize=10)
    ax = axes.flat[5]
    for j, s in enumerate(cmp.stats):
        draw_cdf(ax, s.owd_all_ms, cmp.labels[j], color=colors[j], lw=1.5)
    if not any(s.owd_all_ms.size for s in cmp.stats):
        ax.text(
            0.5,
            0.5,
            "no packets in these runs",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#7f7f7f",
        )
    style_axes(ax, "one-way delay (ms)", "CDF")
    ax.set_title("OWD CDF, all flows", fontsize=10)
    handles = [matplotlib.patches.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, cmp.labels, loc="lower center", ncol=min(n, 4), fontsize=8)
    fig.suptitle("meshemu compare")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def compare_from_cli(args: argparse.Namespace) -> int:
    """``meshemu compare RUN_DIR RUN_DIR... [--out DIR]``."""
    files = compare(args.run_dirs, args.out)
    print(files[1].read_text())
    print(f"wrote {files[0].parent}/: {', '.join(f.name for f in files)}")
    return 0

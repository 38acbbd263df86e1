"""``meshemu report`` and ``meshemu compare``: statistics, plots and tables of run directories.

Data flow, one module per step:

- :mod:`~meshemu.report.files`: the run directory's file contract (every CSV's columns,
  ``positions.npz``, the ``summary.json`` keys), shared with the writers;
- :mod:`~meshemu.report.record`: the plan files' writer (:class:`PlanRecorder`, used by
  ``meshemu plan`` and ``meshemu run``; it is the one module here that imports the geometry);
- :mod:`~meshemu.report.run`: reading a run directory (:func:`load_run`, a :class:`Run`);
- :mod:`~meshemu.report.stats`: per-flow, all-reduce, inference and clock statistics
  (:func:`run_stats`; the definitions of loss, reordering and percentiles are there);
- :mod:`~meshemu.report.tables`: ``summary.csv`` and ``summary.md``;
- :mod:`~meshemu.report.plots` and :mod:`~meshemu.report.maps`: PNG plots;
- :mod:`~meshemu.report.compare_runs`: several runs side by side (:func:`compare`);
- :mod:`~meshemu.report.slot_report`: a probed run of slotted GSLs (``meshemu validate``):
  RTT over time with the slot boundaries, the slot-jump statistic, loss near boundaries.

:func:`report` writes the tables and plots into ``RUN_DIR/report/``. Reporting reads only
the run directory: it never imports :mod:`meshemu.spec` or :mod:`meshemu.geometry`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshemu.errors import ReportError
from meshemu.report.compare_runs import (
    COMPARE_ROWS,
    Comparison,
    compare,
    compare_from_cli,
    comparison,
    comparison_markdown,
    plot_compare,
)
from meshemu.report.files import (
    FLOW_THROUGHPUT,
    INFERENCE,
    ITERATIONS,
    LINK_COUNTERS,
    TRAFFIC_FILES,
    FileSpec,
    Positions,
)
from meshemu.report.plots import (
    plot_iterations,
    plot_latency,
    plot_latency_cdf,
    plot_link_util,
    plot_paths_map,
    plot_throughput,
)
from meshemu.report.run import Run, Table, load_run, read_spec, read_table
from meshemu.report.slot_report import write_slot_report
from meshemu.report.stats import (
    PERCENTILES,
    FlowStats,
    InferenceStats,
    JobStats,
    RunStats,
    SeqStats,
    flow_stats,
    inference_stats,
    job_stats,
    path_change_times,
    percentiles,
    run_stats,
    sequence_stats,
)
from meshemu.report.tables import Metric, fmt, metrics, summary_markdown, write_metrics_csv

__all__ = [
    "COMPARE_ROWS",
    "PERCENTILES",
    "REPORT_DIR",
    "TRAFFIC_FILES",
    "Comparison",
    "FileSpec",
    "FlowStats",
    "InferenceStats",
    "JobStats",
    "Metric",
    "Positions",
    "ReportError",
    "ReportResult",
    "Run",
    "RunStats",
    "SeqStats",
    "Table",
    "compare",
    "compare_from_cli",
    "comparison",
    "comparison_markdown",
    "flow_stats",
    "fmt",
    "inference_stats",
    "job_stats",
    "load_run",
    "metrics",
    "path_change_times",
    "percentiles",
    "plot_compare",
    "plot_iterations",
    "plot_latency",
    "plot_latency_cdf",
    "plot_link_util",
    "plot_paths_map",
    "plot_throughput",
    "read_spec",
    "read_table",
    "report",
    "report_from_cli",
    "run_stats",
    "sequence_stats",
    "summary_markdown",
    "write_metrics_csv",
]

log = logging.getLogger(__name__)

#: Subdirectory of the run directory the report is written to.
REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` wrote.

    Attributes
    ----------
    files : list of Path
        Every file written (PNGs, ``summary.csv``, ``summary.md``).
    table : list of Metric
        The rows of ``summary.csv``.
    stats : RunStats
    skipped : list of str
        Plots not written, each with the reason.
    """

    files: list[Path]
    table: list[Metric]
    stats: RunStats | None = None
    skipped: list[str] = field(default_factory=list)


def report(
    run_dir: Path | str, out_dir: Path | str | None = None, plots: bool = True
) -> ReportResult:
    """Statistics, tables and plots of one run directory.

    Parameters
    ----------
    run_dir : path
        Written by ``meshemu run`` (or ``meshemu plan``: only the map and the clock-free
        metrics then).
    out_dir : path, optional
        Default ``RUN_DIR/report``.
    plots : bool
        False: the tables only (``summary.csv``, ``summary.md``), no PNG.
    """
    return _report(load_run(run_dir), out_dir, plots)


def _report(run: Run, out_dir: Path | str | None, plots: bool = True) -> ReportResult:
    out = Path(out_dir) if out_dir is not None else run.run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    stats = run_stats(run)
    files: list[Path] = []
    skipped: list[str] = []
    have_owd = any(f.owd_ms.size for f in stats.flows)
    figures: list[tuple[str, bool, str, Callable[[Path], Path]]] = [
        (
            "latency.png",
            have_owd,
            "no received packets (packets.csv)",
            lambda p: plot_latency(p, run, stats.flows),
        ),
        (
            "throughput.png",
            run.table(FLOW_THROUGHPUT) is not None,
            "no flow_throughput.csv",
            lambda p: plot_throughput(p, run, stats.flows),
        ),
        (
            "latency_cdf.png",
            have_owd or run.table(INFERENCE) is not None,
            "no packets.csv and no inference.csv",
            lambda p: plot_latency_cdf(p, run, stats.flows),
        ),
        (
            "iterations.png",
            run.table(ITERATIONS) is not None,
            "no iterations.csv",
            lambda p: plot_iterations(p, run),
        ),
        ("paths_map.png", True, "", lambda p: plot_paths_map(p, run, stats.flows)),
        (
            "link_util.png",
            run.table(LINK_COUNTERS) is not None,
            "no link_counters.csv",
            lambda p: plot_link_util(p, run),
        ),
    ]
    for name, possible, why, fn in figures if plots else []:
        if not possible:
            skipped.append(f"{name}: {why}")
            continue
        try:
            files.append(fn(out / name))
        except ReportError as exc:
            skipped.append(f"{name}: {exc}")
    for s in skipped:
        log.info("skipped %s", s)
    files += write_slot_report(run, out, plots)
    table = metrics(stats, run.summary)
    files.append(write_metrics_csv(out / "summary.csv", table))
    md = summary_markdown(run, stats)
    if skipped:
        md += "\nplots not written:\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n"
    (out / "summary.md").write_text(md)
    files.append(out / "summary.md")
    return ReportResult(files, table, stats, skipped)


def report_from_cli(args: argparse.Namespace) -> int:
    """``meshemu report RUN_DIR``."""
    run = load_run(args.run_dir)
    res = _report(run, getattr(args, "out", None), not getattr(args, "no_plots", False))
    assert res.stats is not None
    print(summary_markdown(run, res.stats, short=True))
    for note in res.stats.notes:
        print(f"note: {note}")
    for s in res.skipped:
        print(f"skipped {s}")
    out = res.files[0].parent if res.files else Path(args.run_dir) / REPORT_DIR
    print(f"wrote {out}/: {', '.join(f.name for f in res.files)}")
    return 0

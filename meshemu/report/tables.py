"""Tables of a run: the rows of ``summary.csv`` (:class:`Metric`, :func:`metrics`) and the
Markdown summary (:func:`summary_markdown`), plus the number formatting they share with
:mod:`meshemu.report.compare_runs`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.report.run import Run
from meshemu.report.stats import PERCENTILES, FlowStats, InferenceStats, RunStats, percentiles


@dataclass(frozen=True)
class Metric:
    """One row of ``summary.csv``: ``section,name,metric,value,unit``."""

    section: str  # run | traffic | flow | allreduce | inference
    name: str  # flow name, job name, "all flows", ...
    metric: str
    value: float
    unit: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.section, self.name, self.metric)


def metrics(stats: RunStats, summary: dict[str, Any] | None = None) -> list[Metric]:
    """The summary table of a run as rows (what ``summary.csv`` holds); ``summary`` (the
    run's ``summary.json``) adds routing convergence and the fidelity guard's verdict."""
    rows: list[Metric] = []
    add = rows.append
    conv = (summary or {}).get("convergence") or {}
    for kind, c in conv.items():
        if isinstance(c, dict):
            add(Metric("convergence", kind, "events", c["events"]))
            add(Metric("convergence", kind, "p50_s", c["convergence_s_p50"], "s"))
            add(Metric("convergence", kind, "p99_s", c["convergence_s_p99"], "s"))
            add(Metric("convergence", kind, "not_converged", c["not_converged"]))
            add(Metric("convergence", kind, "loop_s", c["loop_s_total"], "s"))
            add(Metric("convergence", kind, "blackhole_s", c["blackhole_s_total"], "s"))
    dis = (summary or {}).get("disruption") or {}
    for kind, c in dis.items():
        add(Metric("disruption", kind, "events_with_loss", c["events_with_loss"]))
        add(Metric("disruption", kind, "lost", c["lost"]))
        add(Metric("disruption", kind, "loss_pct", c["loss_pct"], "%"))
        add(Metric("disruption", kind, "outage_p99_s", c["outage_s_p99"], "s"))
        add(Metric("disruption", kind, "reordered", c["reordered"]))
        add(Metric("disruption", kind, "owd_spike_ms", c["owd_spike_ms_max"], "ms"))
    ctl = (summary or {}).get("control") or {}
    if ctl.get("links"):
        add(Metric("control", "per link", "packets_per_s", ctl["packets_per_link_s"]))
        add(Metric("control", "per link", "bytes_per_s", ctl["bytes_per_link_s"], "B/s"))
        add(Metric("control", "per link", "bytes_per_s_p99", ctl["bytes_per_link_s_p99"], "B/s"))
    dm = (summary or {}).get("daemon_usage") or {}
    if dm.get("nodes"):
        add(Metric("daemons", "per node", "cpu_pct", dm["cpu_pct_per_node"], "%"))
        add(Metric("daemons", "per node", "pss_mib", dm["pss_mib_per_node"], "MiB"))
    fid = (summary or {}).get("fidelity") or {}
    if fid.get("steps_polled"):
        add(Metric("fidelity", "shaper", "steps_affected", fid["steps_affected"]))
        add(Metric("fidelity", "shaper", "behind_drops", fid["behind_drops"]))
    add(Metric("run", "", "steps", _num(stats.steps)))
    add(Metric("run", "", "route_changes", _num(stats.route_changes)))
    add(Metric("run", "", "link_updates", _num(stats.link_updates)))
    add(Metric("run", "", "apply_ms_p50", stats.apply_ms_p50, "ms"))
    add(Metric("run", "", "apply_ms_p99", stats.apply_ms_p99, "ms"))
    add(Metric("run", "", "lag_ms_p99", stats.lag_ms_p99, "ms"))
    if stats.flows:
        seqs = [f.seq for f in stats.flows]
        exp = sum(q.expected for q in seqs)
        arr = sum(q.arrivals for q in seqs)
        p = percentiles(stats.owd_all_ms)
        thr = [f.throughput_mbps for f in stats.flows if math.isfinite(f.throughput_mbps)]
        name = "all flows"
        add(Metric("traffic", name, "flows", len(stats.flows)))
        add(Metric("traffic", name, "packets", sum(q.received for q in seqs)))
        add(Metric("traffic", name, "lost", sum(q.lost for q in seqs)))
        add(
            Metric(
                "traffic",
                name,
                "loss_pct",
                100.0 * sum(q.lost for q in seqs) / exp if exp else math.nan,
                "%",
            )
        )
        add(
            Metric(
                "traffic",
                name,
                "reorder_pct",
                100.0 * sum(q.reordered for q in seqs) / arr if arr else math.nan,
                "%",
            )
        )
        for q, v in zip(PERCENTILES, p):
            add(Metric("traffic", name, f"owd_p{q}", v, "ms"))
        add(
            Metric(
                "traffic", name, "throughput_mbps", float(sum(thr)) if thr else math.nan, "Mbit/s"
            )
        )
    if stats.rtt_ms.size:
        for q, v in zip(PERCENTILES, percentiles(stats.rtt_ms)):
            add(Metric("traffic", "all flows", f"rtt_p{q}", v, "ms"))
    for f in stats.flows:
        add(Metric("flow", f.name, "packets", f.seq.received))
        add(Metric("flow", f.name, "lost", f.seq.lost))
        add(Metric("flow", f.name, "loss_pct", f.seq.loss_pct, "%"))
        add(Metric("flow", f.name, "reorder_pct", f.seq.reorder_pct, "%"))
        for q, v in zip(PERCENTILES, f.owd_p):
            add(Metric("flow", f.name, f"owd_p{q}", v, "ms"))
        add(Metric("flow", f.name, "throughput_mbps", f.throughput_mbps, "Mbit/s"))
        add(Metric("flow", f.name, "path_changes", f.path_changes))
    jobs = stats.jobs if len(stats.jobs) > 2 else stats.jobs[1:]  # one job: pooled only
    for j in jobs:
        add(Metric("allreduce", j.job, "iterations", j.iterations))
        add(Metric("allreduce", j.job, "mean_ms", j.mean_ms, "ms"))
        add(Metric("allreduce", j.job, "p95_ms", j.p95_ms, "ms"))
        add(Metric("allreduce", j.job, "predicted_mean_ms", j.predicted_mean_ms, "ms"))
        add(Metric("allreduce", j.job, "predicted_p95_ms", j.predicted_p95_ms, "ms"))
        add(Metric("allreduce", j.job, "error_pct", j.error_pct, "%"))
    if stats.inference is not None:
        i = stats.inference
        add(Metric("inference", "all", "requests", i.requests))
        add(Metric("inference", "all", "completed", i.completed))
        add(Metric("inference", "all", "p50_ms", i.p50_ms, "ms"))
        add(Metric("inference", "all", "p95_ms", i.p95_ms, "ms"))
        add(Metric("inference", "all", "p99_ms", i.p99_ms, "ms"))
        add(Metric("inference", "all", "deadline_misses", i.deadline_misses))
        add(Metric("inference", "all", "miss_pct", i.miss_pct, "%"))
    return rows


def _num(x: Any) -> float:
    return math.nan if x is None else x


def fmt(x: Any) -> str:
    """A number for a table: ``n/a`` for missing, integers as such, else 2 decimals (1 above
    100)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) or (
        isinstance(x, float) and x.is_integer() and abs(x) >= 1000
    ):
        return str(int(x))
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}"


def csv_value(x: Any) -> str:
    """A number for a CSV cell: empty when missing, integers as such, else 6 decimals."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return str(round(float(x), 6))


def write_metrics_csv(path: Path, rows: list[Metric]) -> Path:
    """``section,name,metric,value,unit`` (empty value when not available)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["section", "name", "metric", "value", "unit"])
        for r in rows:
            w.writerow([r.section, r.name, r.metric, csv_value(r.value), r.unit])
    return Path(path)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def summary_markdown(run: Run, stats: RunStats, short: bool = False) -> str:
    """The summary table as Markdown (``short``: for the terminal, without notes)."""
    s = run.summary
    out = []
    if not short:
        out.append(f"# meshemu report: {run.name}\n")
    out.append(
        f"scenario {s.get('scenario', '?')}, routing {s.get('routing', '?')}, "
        f"shaper {s.get('shaper', 'n/a (plan)')}, {s.get('nodes', '?')} nodes, "
        f"{s.get('steps', '?')} steps of {s.get('step_s', '?')} s, time scale "
        f"{run.time_scale:g}\n"
    )
    out.append(_steps_table(stats))
    fid = s.get("fidelity")
    if fid:
        out.append(_fidelity_text(fid))
    conv = s.get("convergence")
    if conv and conv.get("events") is not None:
        out.append(_convergence_table(conv))
    dis = s.get("disruption")
    if dis:
        out.append(_disruption_table(dis))
    if s.get("control") or s.get("daemon_usage"):
        out.append(_control_text(s.get("control") or {}, s.get("daemon_usage") or {}))
    flows = [f for f in stats.flows if f.seq.received] if short else stats.flows
    if short and len(flows) < len(stats.flows):
        out.append(
            f"({len(stats.flows) - len(flows)} flows without packets left out; see summary.md)"
        )
    if flows:
        out.append(_flows_table(flows))
    if stats.jobs:
        out.append(_jobs_table(stats))
    if stats.rtt_ms.size:
        out.append(_rtt_table(stats))
    if stats.inference is not None:
        out.append(_inference_table(stats.inference))
    if not short:
        lines = (s.get("traffic") or {}).get("lines") or []
        if lines:
            out.append("\ntraffic summary from the run:\n\n" + "\n".join(f"- {x}" for x in lines))
        if stats.notes:
            out.append("\nnotes:\n\n" + "\n".join(f"- {x}" for x in stats.notes))
        out.append("\nDefinitions (loss, reordering, percentiles): see meshemu/report/stats.py.")
    return "\n".join(out) + "\n"


def _convergence_table(conv: dict[str, Any]) -> str:
    """Daemon routing: convergence per event kind (``summary.json`` ``convergence``; per
    event: ``convergence.csv``)."""
    head = f"\nrouting convergence: {conv['events']} topology events"
    if conv.get("initial_s") is not None:
        head += f", first full routing {fmt(conv['initial_s'])} s before the clock started"
    rows = [
        [
            kind,
            fmt(c["events"]),
            fmt(c["convergence_s_p50"]),
            fmt(c["convergence_s_p99"]),
            fmt(c["convergence_s_max"]),
            fmt(c["not_converged"]),
            fmt(c["loop_s_total"]),
            fmt(c["blackhole_s_total"]),
        ]
        for kind, c in conv.items()
        if isinstance(c, dict)
    ]
    if not rows:
        return head + "\n"
    return (
        head
        + " (per event: convergence.csv)\n\n"
        + md_table(
            [
                "event kind",
                "events",
                "convergence p50 (s)",
                "p99 (s)",
                "max (s)",
                "not converged",
                "loops (s)",
                "blackholes (s)",
            ],
            rows,
        )
    )


def _disruption_table(dis: dict[str, Any]) -> str:
    """What the workloads saw around topology events (``summary.json`` ``disruption``; per
    event and flow: ``disruption.csv``)."""
    rows = [
        [
            kind,
            fmt(c["events"]),
            fmt(c["events_with_loss"]),
            f"{fmt(c['lost'])} of {fmt(c['sent'])}",
            fmt(c["outage_s_p50"]),
            fmt(c["outage_s_p99"]),
            fmt(c["outage_s_max"]),
            fmt(c["reordered"]),
            fmt(c["owd_spike_ms_max"]),
        ]
        for kind, c in dis.items()
    ]
    return "\ntraffic around topology events (per event and flow: disruption.csv)\n\n" + md_table(
        [
            "event kind",
            "events",
            "with loss",
            "frames lost",
            "outage p50 (s)",
            "p99 (s)",
            "max (s)",
            "reordered",
            "delay spike max (ms)",
        ],
        rows,
    )


def _control_text(ctl: dict[str, Any], dm: dict[str, Any]) -> str:
    """Routing-protocol overhead (``summary.json`` ``control`` and ``daemon_usage``)."""
    out = "\nrouting control plane:"
    if ctl.get("links"):
        out += (
            f" {fmt(ctl['packets_per_link_s'])} packets/s and {fmt(ctl['bytes_per_link_s'])} "
            f"B/s per link and direction (p99 {fmt(ctl['bytes_per_link_s_p99'])} B/s, "
            f"busiest step {fmt(ctl['bytes_step_max'])} B in all), {ctl['links']} link "
            f"directions (per step: control.csv)"
        )
        if ctl.get("missed"):
            out += f"; {ctl['missed']} frames missed by the counters (lower bounds)"
    if dm.get("nodes"):
        out += (
            f"; daemons {fmt(dm['cpu_pct_per_node'])} % of a core and "
            f"{fmt(dm['pss_mib_per_node'])} MiB (PSS) per node, "
            f"{fmt(dm['cpu_pct_total'])} % in all (per node: daemons.csv)"
        )
    return out + "\n"


def _fidelity_text(fid: dict[str, Any]) -> str:
    """The fidelity guard's verdict and its worst links (``summary.json`` ``fidelity``)."""
    text = f"\nfidelity ({fid.get('shaper', '?')}): {fid.get('verdict', 'not measured')}\n"
    links = fid.get("links") or []
    if links:
        steps = fid.get("affected_steps") or []
        text += (
            f"\nsteps affected: {', '.join(map(str, steps[:20]))}"
            f"{' ...' if len(steps) > 20 else ''} (per link and step: shaper.csv)\n\n"
        )
        text += md_table(
            ["link", "direction", "steps", "worst lateness p99 (ms)", "max (ms)", "worst step"],
            [
                [
                    f"{lk['a']} - {lk['b']}",
                    lk["direction"],
                    fmt(lk["steps"]),
                    fmt(lk["worst_p99_ms"]),
                    fmt(lk["worst_max_ms"]),
                    fmt(lk["worst_step"]),
                ]
                for lk in links[:10]
            ],
        )
    return text


def _steps_table(stats: RunStats) -> str:
    return md_table(
        [
            "steps",
            "route changes",
            "link updates",
            "apply p50 (ms)",
            "apply p99 (ms)",
            "lag p99 (ms)",
        ],
        [
            [
                fmt(stats.steps),
                fmt(stats.route_changes),
                fmt(stats.link_updates),
                fmt(stats.apply_ms_p50),
                fmt(stats.apply_ms_p99),
                fmt(stats.lag_ms_p99),
            ]
        ],
    )


def _flows_table(flows: list[FlowStats]) -> str:
    rows = []
    for f in flows:
        p50, p95, p99 = f.owd_p
        rows.append(
            [
                f.name,
                f.kind,
                f"{f.src} -> {f.dst}",
                fmt(f.seq.received),
                fmt(f.seq.loss_pct),
                fmt(f.seq.reorder_pct),
                fmt(p50),
                fmt(p95),
                fmt(p99),
                fmt(f.throughput_mbps),
                fmt(f.path_changes),
            ]
        )
    return "\n" + md_table(
        [
            "flow",
            "kind",
            "src -> dst",
            "packets",
            "loss %",
            "reorder %",
            "OWD p50 (ms)",
            "OWD p95 (ms)",
            "OWD p99 (ms)",
            "Mbit/s",
            "path changes",
        ],
        rows,
    )


def _jobs_table(stats: RunStats) -> str:
    jobs = stats.jobs if len(stats.jobs) > 2 else stats.jobs[:1]  # pooled row if > 1 job
    return "\n" + md_table(
        [
            "all-reduce job",
            "algorithm",
            "iterations",
            "mean (ms)",
            "p95 (ms)",
            "predicted mean (ms)",
            "predicted p95 (ms)",
            "measured vs predicted %",
        ],
        [
            [
                j.job,
                j.algorithm,
                fmt(j.iterations),
                fmt(j.mean_ms),
                fmt(j.p95_ms),
                fmt(j.predicted_mean_ms),
                fmt(j.predicted_p95_ms),
                fmt(j.error_pct),
            ]
            for j in jobs
        ],
    )


def _rtt_table(stats: RunStats) -> str:
    p50, p95, p99 = percentiles(stats.rtt_ms)
    return "\n" + md_table(
        ["transport RTT (acknowledged messages)", "p50 (ms)", "p95 (ms)", "p99 (ms)"],
        [[fmt(stats.rtt_ms.size), fmt(p50), fmt(p95), fmt(p99)]],
    )


def _inference_table(i: InferenceStats) -> str:
    return "\n" + md_table(
        [
            "inference requests",
            "completed",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "deadline misses",
            "miss %",
        ],
        [
            [
                fmt(i.requests),
                fmt(i.completed),
                fmt(i.p50_ms),
                fmt(i.p95_ms),
                fmt(i.p99_ms),
                fmt(i.deadline_misses),
                fmt(i.miss_pct),
            ]
        ],
    )

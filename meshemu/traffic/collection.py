"""Collecting what the agents measured into the run directory's files, and the summary.

The agents' raw files (``traffic/<node>.{packets,iterations,inference,rtt}.csv``, no
headers, see :mod:`meshemu.traffic.transport`) become, with the headers of
:mod:`meshemu.report.files`:

``packets.csv``          every agent's received-packet rows, merged (node by node)
``flow_throughput.csv``  ``t_s,flow_id,rx_bytes,mbps`` per step (sampled rows weighted by n)
``rtt.csv``              the round trips of acknowledged messages
``iterations.csv``       one row per iteration finished by every node of its job: from the
                         latest start to the latest end, with the alpha-beta prediction
``inference.csv``        every request, by send time

and ``traffic.json`` (the resolved profile, the flows, the jobs, the agents' statuses and
the summary). ``flows.csv`` is written at planning time (:func:`write_flows`).

Over several hosts, ``owd_trust.csv`` says per flow how far its one-way delays can be trusted
(:mod:`meshemu.traffic.clocks`); an untrusted flow's one-way delay is left out of the summary,
whose lines say why and how to fix it.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.report import files as F
from meshemu.spec.profile import ResolvedProfile
from meshemu.traffic import schedule as sch
from meshemu.traffic.clocks import UNTRUSTED, FlowTrust, trust_summary
from meshemu.traffic.config import AgentStatus
from meshemu.traffic.planning import Flow, Job, TrafficPlan

#: Predictions of an iteration started at a wall time: ``fn(job, unix_ns) -> (ms, ms)``.
Predict = Callable[[Job, int], tuple[float, float]]


@dataclass(frozen=True)
class StepMark:
    """When a step began: its index, emulated time and wall time (unix ns)."""

    k: int
    t_s: float
    wall_ns: int


@contextmanager
def spec_writer(run_dir: Path, spec: F.FileSpec) -> Iterator[Any]:
    """A :func:`csv.writer` on ``run_dir/spec.name`` with the header written (``\\n`` line
    ends, as the traffic files have always had)."""
    with open(Path(run_dir) / spec.name, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(spec.columns)
        yield w


def write_flows(run_dir: Path, flows: Sequence[Flow]) -> None:
    """``flows.csv``."""
    with spec_writer(run_dir, F.FLOWS) as w:
        for fl in flows:
            w.writerow([fl.flow_id, fl.name, fl.kind, fl.src, fl.dst])


def _merge_packets(
    run_dir: Path, agent_dir: Path, nodes: Sequence[str]
) -> tuple[list[tuple[int, int, int]], dict[int, list[float]]]:
    """``packets.csv``; the (flow, size, recv_ns) of every row and the one-way delays per
    flow."""
    rx_rows: list[tuple[int, int, int]] = []
    owd: dict[int, list[float]] = {}
    n_cols = len(F.PACKETS.columns)
    with open(run_dir / F.PACKETS.name, "w") as f:
        f.write(F.PACKETS.header)
        for node in sorted(nodes):
            src = agent_dir / f"{node}.packets.csv"
            if not src.exists():
                continue
            with open(src) as g:
                for line in g:
                    parts = line.rstrip("\n").split(",")
                    if len(parts) != n_cols:
                        continue  # a line cut by SIGKILL
                    f.write(line)
                    fl = int(parts[0])
                    rx_rows.append((fl, int(parts[5]), int(parts[7])))
                    owd.setdefault(fl, []).append(float(parts[8]))
    return rx_rows, owd


def _merge_rtt(run_dir: Path, agent_dir: Path, nodes: Sequence[str]) -> None:
    """``rtt.csv``: the agents' round-trip samples of acknowledged messages."""
    commas = len(F.RTT.columns) - 1
    with open(run_dir / F.RTT.name, "w") as f:
        f.write(F.RTT.header)
        for node in nodes:
            p = agent_dir / f"{node}.rtt.csv"
            if not p.exists():
                continue
            with open(p) as src:
                f.writelines(ln for ln in src if ln.count(",") == commas and ln.endswith("\n"))


def _bins(steps: Sequence[StepMark], t_call_s: float) -> tuple[np.ndarray, list[float]]:
    """Wall-time bin edges (ns) and emulated t_s of each bin."""
    if steps:
        edges = [s.wall_ns for s in steps]
        ts = [s.t_s for s in steps]
        step = (edges[-1] - edges[-2]) if len(edges) > 1 else 1_000_000_000
        edges.append(max(edges[-1] + step, time.time_ns()))
        return np.array(edges, dtype=np.int64), ts
    n = max(1, math.ceil((time.time_ns() - t_call_s * 1e9) / 1e9))
    edges_a = np.array(
        [int(t_call_s * 1e9) + i * 1_000_000_000 for i in range(n + 1)], dtype=np.int64
    )
    return edges_a, [float(i) for i in range(n)]


def _throughput(
    run_dir: Path,
    flows: Sequence[Flow],
    sample: Mapping[int, int],
    rows: list[tuple[int, int, int]],
    edges: np.ndarray,
    ts: list[float],
) -> None:
    """``flow_throughput.csv``."""
    nb = len(ts)
    nf = len(flows)
    acc = np.zeros((nb, nf + 1))
    if rows:
        arr = np.array(rows, dtype=np.int64)
        b = np.searchsorted(edges, arr[:, 2], side="right") - 1
        ok = (b >= 0) & (b < nb)
        w = np.array([sample.get(int(f), 1) for f in range(nf + 1)])
        np.add.at(acc, (b[ok], arr[ok, 0]), arr[ok, 1] * w[arr[ok, 0]])
    with spec_writer(run_dir, F.FLOW_THROUGHPUT) as wr:
        for i in range(nb):
            dt = (edges[i + 1] - edges[i]) / 1e9
            for fl in flows:
                by = acc[i, fl.flow_id]
                wr.writerow(
                    [
                        f"{ts[i]:g}",
                        fl.flow_id,
                        int(by),
                        f"{by * 8 / dt / 1e6:.4f}" if dt > 0 else "0",
                    ]
                )


def _iterations(
    run_dir: Path, agent_dir: Path, nodes: Sequence[str], jobs: Sequence[Job], predict: Predict
) -> dict[str, list[dict[str, Any]]]:
    """``iterations.csv``; per job, its finished iterations."""
    per: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    for node in nodes:
        p = agent_dir / f"{node}.iterations.csv"
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            parts = line.split(",")
            if len(parts) != 5:
                continue
            per.setdefault((parts[0], int(parts[1])), []).append(
                (int(parts[2]), int(parts[3]), int(parts[4]))
            )
    out: dict[str, list[dict[str, Any]]] = {}
    with spec_writer(run_dir, F.ITERATIONS) as wr:
        for job in jobs:
            for it in range(job.iterations):
                rows = per.get((job.job, it), [])
                if len(rows) < len(job.nodes):
                    continue  # not finished by every node
                first = min(r[1] for r in rows)
                start = max(r[1] for r in rows)
                end = max(r[2] for r in rows)
                pred, crit = predict(job, start)
                rec = {
                    "iteration": it,
                    "start": start,
                    "end": end,
                    "first_start": first,
                    "duration_ms": (end - start) / 1e6,
                    "predicted_ms": pred,
                    "critical_path_ms": crit,
                }
                out.setdefault(job.job, []).append(rec)
                wr.writerow(
                    [
                        job.job,
                        job.algorithm,
                        it,
                        f"{start / 1e9:.6f}",
                        f"{end / 1e9:.6f}",
                        f"{rec['duration_ms']:.3f}",
                        f"{pred:.3f}" if math.isfinite(pred) else "",
                        f"{first / 1e9:.6f}",
                        f"{crit:.3f}" if math.isfinite(crit) else "",
                    ]
                )
    return out


def _inference(run_dir: Path, agent_dir: Path, nodes: Sequence[str]) -> list[list[str]]:
    """``inference.csv``; its rows."""
    commas = len(F.INFERENCE.columns) - 1
    rows = []
    for node in sorted(nodes):
        p = agent_dir / f"{node}.inference.csv"
        if p.exists():
            rows += [ln.split(",") for ln in p.read_text().splitlines() if ln.count(",") == commas]
    rows.sort(key=lambda r: float(r[3]))
    with spec_writer(run_dir, F.INFERENCE) as wr:
        wr.writerows(rows)
    return rows


def collect(
    run_dir: Path,
    agent_dir: Path,
    resolved: ResolvedProfile,
    plan: TrafficPlan,
    nodes: Sequence[str],
    statuses: Mapping[str, AgentStatus],
    steps: Sequence[StepMark],
    predict: Predict,
    window_ns: tuple[int, int],
    t_call_s: float,
    trust: Sequence[FlowTrust] | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Write the run's traffic files from the agents' files; the summary and the files.

    Parameters
    ----------
    run_dir, agent_dir : Path
        The run directory and the agents' directory in it.
    resolved : ResolvedProfile
    plan : TrafficPlan
    nodes : sequence of str
        The nodes that ran an agent, in start order.
    statuses : mapping of str to AgentStatus
        What the agents reported at exit.
    steps : sequence of StepMark
        The steps recorded while the traffic ran.
    predict : Predict
        Predictions of an iteration.
    window_ns : (int, int)
        The traffic's time zero and end (unix ns).
    t_call_s : float
        When the traffic was started (bins without steps count from here).
    trust : sequence of FlowTrust, optional
        A run over several hosts: how far each flow's one-way delays can be trusted
        (``owd_trust.csv``, the summary's ``owd_trust``).
    """
    rx_rows, owd = _merge_packets(run_dir, agent_dir, nodes)
    edges, ts = _bins(steps, t_call_s)
    _throughput(run_dir, plan.flows, plan.sample, rx_rows, edges, ts)
    _merge_rtt(run_dir, agent_dir, nodes)
    iters = _iterations(run_dir, agent_dir, nodes, plan.jobs, predict)
    inf = _inference(run_dir, agent_dir, nodes)
    untrusted = {t.flow_id for t in trust or () if t.owd == UNTRUSTED}
    summary = summarize(
        resolved, plan, len(nodes), iters, inf, rx_rows, owd, statuses, untrusted=untrusted
    )
    extra: tuple[str, ...] = ()
    if trust is not None:
        summary["owd_trust"], lines = trust_summary(trust)
        summary["lines"] += lines
        with spec_writer(run_dir, F.OWD_TRUST) as w:
            w.writerows(t.row() for t in trust)
        extra = (F.OWD_TRUST.name,)
    doc = {
        "profile": resolved.to_dict(),
        "flows": [asdict(fl) for fl in plan.flows],
        "sample_every": {str(k): v for k, v in plan.sample.items()},
        "start_unix": window_ns[0] / 1e9,
        "end_unix": window_ns[1] / 1e9,
        "predicted_overhead_ms": sch.OVERHEAD_S * 1e3,
        "jobs": [
            {
                "job": j.job,
                "algorithm": j.algorithm,
                "nodes": list(j.nodes),
                "pace_bps": list(j.pace_bps),
            }
            for j in plan.jobs
        ],
        "agents": {n: asdict(st) for n, st in statuses.items()},
        "summary": summary,
    }
    (run_dir / "traffic.json").write_text(json.dumps(doc, indent=2, default=str))
    names = (
        F.FLOWS.name,
        F.PACKETS.name,
        F.FLOW_THROUGHPUT.name,
        F.FLOW_PATHS.name,
        F.LINK_COUNTERS.name,
        F.ITERATIONS.name,
        F.INFERENCE.name,
        F.RTT.name,
        *extra,
        "traffic.json",
    )
    return summary, [run_dir / n for n in names]


def _allreduce_summary(job: Job, recs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    d = [r["duration_ms"] for r in recs]
    pr = [r["predicted_ms"] for r in recs if math.isfinite(r["predicted_ms"])]
    cp = [r["critical_path_ms"] for r in recs if math.isfinite(r["critical_path_ms"])]
    s = {
        "algorithm": job.algorithm,
        "nodes": len(job.nodes),
        "iterations_planned": job.iterations,
        "iterations_done": len(recs),
        "mean_ms": float(np.mean(d)) if d else None,
        "predicted_mean_ms": float(np.mean(pr)) if pr else None,
        "critical_path_mean_ms": float(np.mean(cp)) if cp else None,
    }
    if not d:
        return s, f"all-reduce {job.algorithm} ({job.job}): no iteration finished"
    return s, (
        f"all-reduce {job.algorithm} over {len(job.nodes)} nodes ({job.job}): "
        f"{len(d)}/{job.iterations} iterations, mean {np.mean(d):.0f} ms (predicted "
        f"{np.mean(pr) if pr else float('nan'):.0f} ms, critical path "
        f"{np.mean(cp) if cp else float('nan'):.0f} ms)"
    )


def _inference_summary(inf: list[list[str]]) -> tuple[dict[str, Any], str]:
    lat = np.array([float(r[5]) for r in inf if r[5]])
    missed = sum(int(r[7]) for r in inf)
    unanswered = sum(1 for r in inf if not r[5])
    s: dict[str, Any] = {
        "requests": len(inf),
        "answered": int(lat.size),
        "deadline_misses": missed,
        "unanswered": unanswered,
    }
    if not lat.size:
        return s, f"inference: {len(inf)} requests, none answered"
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    s.update({"p50_ms": p50, "p95_ms": p95, "p99_ms": p99})
    return s, (
        f"inference: {len(inf)} requests, p50/p95/p99 {p50:.0f}/{p95:.0f}/{p99:.0f} ms, "
        f"{missed} deadline misses ({unanswered} unanswered)"
    )


def _stream_summary(
    fl: Flow,
    every: int,
    rx_rows: list[tuple[int, int, int]],
    owd: dict[int, list[float]],
    trusted: bool = True,
) -> tuple[dict[str, Any], str]:
    got = [r for r in rx_rows if r[0] == fl.flow_id]
    by = sum(r[1] for r in got) * every
    o = owd.get(fl.flow_id, [])
    span = (max(r[2] for r in got) - min(r[2] for r in got)) / 1e9 if len(got) > 1 else 0.0
    rate = by * 8 / span / 1e6 if span > 0 else 0.0
    s = {
        "rx_bytes": by,
        "rx_packets": len(got) * every,
        "mbps": rate,
        "owd_p50_ms": float(np.median(o)) if o and trusted else None,
    }
    delay = (
        f"one-way delay p50 {np.median(o) if o else float('nan'):.1f} ms"
        if trusted
        else "one-way delay untrusted (clocks between hosts, see below)"
    )
    return s, (
        f"{fl.kind} {fl.src}->{fl.dst}: {by / 1e6:.1f} MB in {len(got) * every} "
        f"packets, {rate:.1f} Mbit/s, {delay}"
    )


def summarize(
    resolved: ResolvedProfile,
    plan: TrafficPlan,
    n_agents: int,
    iters: Mapping[str, list[dict[str, Any]]],
    inf: list[list[str]],
    rx_rows: list[tuple[int, int, int]],
    owd: dict[int, list[float]],
    statuses: Mapping[str, AgentStatus],
    untrusted: set[int] | frozenset[int] = frozenset(),
) -> dict[str, Any]:
    """The traffic's summary: figures per workload and ``lines`` to print (``untrusted``:
    flows whose one-way delays are refused, :mod:`meshemu.traffic.clocks`)."""
    lines: list[str] = []
    s: dict[str, Any] = {"flows": len(plan.flows), "agents": n_agents}
    for job in plan.jobs:
        js, line = _allreduce_summary(job, list(iters.get(job.job, [])))
        s.setdefault("allreduce", {})[job.job] = js
        lines.append(line)
    if any(w.kind == "inference" for w in resolved.workloads):
        s["inference"], line = _inference_summary(inf)
        lines.append(line)
    for fl in plan.flows:
        if fl.kind in ("bulk", "replay"):
            st, line = _stream_summary(
                fl, plan.sample.get(fl.flow_id, 1), rx_rows, owd, fl.flow_id not in untrusted
            )
            s.setdefault("streams", {})[fl.name] = st
            lines.append(line)
    retx = sum(st.retransmissions for st in statuses.values())
    sent = sum(st.sent_packets for st in statuses.values())
    cpu = sum(st.cpu_s for st in statuses.values())
    s.update(
        {
            "sent_packets": sent,
            "retransmissions": retx,
            "received_packets": len(rx_rows),
            "agents_cpu_s": round(cpu, 2),
        }
    )
    lines.append(
        f"traffic: {sent} packets sent, {retx} retransmitted, "
        f"{n_agents} agents using {cpu:.1f} CPU-s"
    )
    s["lines"] = lines
    return s

"""Plots of one run: one-way delay over time, throughput, latency CDFs, all-reduce
iterations, link utilisation and the map of the flows' paths. Every function writes a PNG
(Matplotlib, Agg backend) and returns its path; it raises ReportError when the run lacks
what the plot needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meshemu.errors import ReportError  # noqa: E402
from meshemu.report.files import (  # noqa: E402
    FLOW_PATHS,
    FLOW_THROUGHPUT,
    INFERENCE,
    ITERATIONS,
    LINK_COUNTERS,
    LINKS,
    NODES,
    PATHS,
)
from meshemu.report.maps import LinkFrame, MapNodes, plot_map  # noqa: E402
from meshemu.report.run import Run, group_indices, n_rows, natural_key, pair_indices  # noqa: E402
from meshemu.report.stats import FlowStats, path_change_times  # noqa: E402


def _finish(fig: Any, path: Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def style_axes(ax: Any, xlabel: str, ylabel: str) -> None:
    """Axis labels and a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#dddddd")


def plot_latency(path: Path, run: Run, flows: list[FlowStats], max_flows: int = 8) -> Path:
    """Measured one-way delay over emulated time per flow, planned path delay (paths.csv,
    dashed) and the times the flow's path changed (dotted vertical lines)."""
    shown = [f for f in flows if f.owd_ms.size][:max_flows]
    paths = run.table(PATHS)
    pairs = pair_indices(paths) if paths is not None else {}
    fp = run.table(FLOW_PATHS)
    fp_groups = group_indices(fp["flow_id"]) if fp is not None else {}
    fig, axes = plt.subplots(
        len(shown), 1, figsize=(10, 2.4 * len(shown) + 0.8), sharex=True, squeeze=False
    )
    for ax, f in zip(axes[:, 0], shown):
        ax.plot(f.t_s, f.owd_ms, ".", ms=2.5, color="#1f77b4", label="measured OWD")
        idx = pairs.get((f.src, f.dst))
        planned = (paths, idx) if idx is not None else (fp, fp_groups.get(f.flow_id))
        tab, i = planned
        if tab is not None and i is not None:  # paths.csv, else the flow's own path's delay
            order = i[np.argsort(tab["t_s"][i], kind="stable")]
            ax.plot(
                tab["t_s"][order],
                tab["delay_ms"][order],
                "--",
                color="#d62728",
                lw=1.2,
                drawstyle="steps-post",
                label="planned path delay",
            )
        for k, tc in enumerate(path_change_times(run, f.flow_id, f.src, f.dst, fp_groups, pairs)):
            ax.axvline(tc, color="#7f7f7f", ls=":", lw=1, label="path change" if k == 0 else None)
        style_axes(ax, "", "OWD (ms)")
        ax.set_title(f"{f.name}: {f.src} -> {f.dst}", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("emulated time (s)")
    more = f" (first {max_flows} of {len(flows)} flows)" if len(flows) > max_flows else ""
    return _finish(fig, path, f"{run.name}: one-way delay{more}")


def plot_throughput(path: Path, run: Run, flows: list[FlowStats], max_flows: int = 12) -> Path:
    """Receive throughput over emulated time per flow (``flow_throughput.csv``)."""
    thr = run.need(FLOW_THROUGHPUT)
    groups = group_indices(thr["flow_id"])
    names = {f.flow_id: f.name for f in flows}
    fig, ax = plt.subplots(figsize=(10, 5))
    for fid in sorted(groups, key=natural_key)[:max_flows]:
        idx = groups[fid]
        idx = idx[np.argsort(thr["t_s"][idx], kind="stable")]
        ax.plot(thr["t_s"][idx], thr["mbps"][idx], lw=1.2, label=names.get(fid, fid))
    style_axes(ax, "emulated time (s)", "throughput (Mbit/s)")
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path, f"{run.name}: throughput per flow")


def draw_cdf(ax: Any, values: np.ndarray, label: str, of_all: bool = False, **kw: Any) -> None:
    """Empirical CDF of the finite values (``of_all``: as a fraction of all values, so that
    NaN ones, e.g. requests never completed, keep the curve below 1)."""
    v = np.sort(values[np.isfinite(values)])
    n = values.size if of_all else v.size
    if v.size:
        ax.plot(v, np.arange(1, v.size + 1) / n, label=label, drawstyle="steps-post", **kw)


def plot_latency_cdf(path: Path, run: Run, flows: list[FlowStats], max_flows: int = 8) -> Path:
    """CDFs of packet one-way delay (per flow and pooled) and of inference latency."""
    inf = run.table(INFERENCE)
    panels = [
        p
        for p in ("owd", "inf")
        if (p == "owd" and any(f.owd_ms.size for f in flows)) or (p == "inf" and inf is not None)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if p == "owd":
            for f in [f for f in flows if f.owd_ms.size][:max_flows]:
                draw_cdf(ax, f.owd_ms, f.name, lw=1)
            allv = np.concatenate([f.owd_ms for f in flows])
            draw_cdf(ax, allv, "all flows", lw=2.2, color="black")
            style_axes(ax, "one-way delay (ms)", "CDF")
            ax.set_title("packet one-way delay", fontsize=10)
        elif inf is not None:
            lat = inf["latency_ms"]
            done = int(np.isfinite(lat).sum())
            draw_cdf(ax, lat, f"latency ({done} of {lat.size} completed)", of_all=True, lw=1.8)
            dl = inf["deadline_ms"][np.isfinite(inf["deadline_ms"])]
            if dl.size and np.all(dl == dl[0]):
                ax.axvline(dl[0], color="#d62728", ls="--", label=f"deadline {dl[0]:g} ms")
            style_axes(ax, "inference latency (ms)", "CDF")
            ax.set_title("inference request latency", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    return _finish(fig, path, f"{run.name}: latency CDFs")


def plot_iterations(path: Path, run: Run) -> Path:
    """All-reduce iteration time per iteration: measured (markers) vs predicted (dashed)."""
    it = run.need(ITERATIONS)
    keys = np.char.add(np.char.add(it["job"].astype(str), " "), it["algorithm"].astype(str))
    groups = group_indices(keys)
    fig, ax = plt.subplots(figsize=(10, 5))
    for k, key in enumerate(sorted(groups, key=natural_key)):
        idx = groups[key]
        idx = idx[np.argsort(it["iteration"][idx], kind="stable")]
        color = f"C{k % 10}"
        ax.plot(
            it["iteration"][idx],
            it["duration_ms"][idx],
            "o-",
            ms=3,
            lw=1,
            color=color,
            label=f"{key.strip()} measured",
        )
        ax.plot(
            it["iteration"][idx],
            it["predicted_ms"][idx],
            "--",
            lw=1.4,
            color=color,
            label=f"{key.strip()} predicted",
        )
    style_axes(ax, "iteration", "iteration time (ms)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path, f"{run.name}: all-reduce iteration time")


def plot_link_util(path: Path, run: Run, top: int = 15) -> Path:
    """Top links by mean throughput (from cumulative ``link_counters.csv``), with their drops,
    and the throughput over time of the busiest five."""
    lc = run.need(LINK_COUNTERS)
    keys = np.char.add(np.char.add(lc["a"].astype(str), " - "), lc["b"].astype(str))
    series = []
    for key, idx in group_indices(keys).items():
        idx = idx[np.argsort(lc["t_s"][idx], kind="stable")]
        t, b = lc["t_s"][idx], lc["bytes"][idx]
        dt_s = np.diff(t)
        db = np.clip(np.diff(b), 0, None)  # a counter that went back was reset
        ok = dt_s > 0
        mbps = np.zeros(dt_s.size)
        mbps[ok] = db[ok] * 8 / dt_s[ok] / 1e6
        span = t[-1] - t[0]
        mean = float(db.sum() * 8 / span / 1e6) if span > 0 else 0.0
        drops = lc["dropped"][idx]
        dropped = int(np.nanmax(drops) - np.nanmin(drops)) if np.isfinite(drops).any() else 0
        series.append((mean, key, t[1:], mbps, dropped))
    series.sort(key=lambda x: -x[0])
    best = series[:top]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(best) + 3.5))
    ax1.barh([s[1] for s in best][::-1], [s[0] for s in best][::-1], color="#1f77b4")
    for y, s in enumerate(best[::-1]):
        if s[4]:
            ax1.annotate(
                f"{s[4]} dropped", (s[0], y), fontsize=7, xytext=(3, -3), textcoords="offset points"
            )
    ax1.tick_params(axis="y", labelsize=7)
    style_axes(ax1, "mean throughput (Mbit/s)", "")
    ax1.set_title(f"top {len(best)} of {len(series)} links", fontsize=10)
    for s in best[:5]:
        ax2.plot(s[2], s[3], lw=1.1, label=s[1], drawstyle="steps-pre")
    style_axes(ax2, "emulated time (s)", "throughput (Mbit/s)")
    ax2.legend(fontsize=7)
    ax2.set_title("busiest five over time", fontsize=10)
    return _finish(fig, path, f"{run.name}: link utilisation")


def plot_paths_map(path: Path, run: Run, flows: list[FlowStats], max_paths: int = 12) -> Path:
    """World map (:func:`meshemu.report.maps.plot_map`) with the flows' paths at the first time
    one is known, drawn from the run directory alone: node positions from ``positions.npz``
    (the recorded step nearest that time), links from ``links.csv``, names and kinds from
    ``nodes.csv``. The scenario is never read.

    Raises ReportError without ``positions.npz`` or ``nodes.csv``, or when they disagree.
    """
    pos = run.positions()
    nodes = run.table(NODES)
    if nodes is None:
        raise ReportError(f"no {NODES.name} in {run.run_dir}: the map needs the node names")
    order = np.argsort(nodes["id"], kind="stable")
    names = tuple(str(n) for n in nodes["name"][order])
    ids = {n: i for i, n in enumerate(names)}
    routes = _map_paths(run, flows, max_paths)
    t = routes[0][0] if routes else float(pos.t_s[0])
    drawn = [
        [ids[n] for n in p.split()] for _, p in routes if p and all(n in ids for n in p.split())
    ]
    k = pos.nearest(t)
    where = MapNodes(names, nodes["kind"][order], pos.lat_deg[k], pos.lon_deg[k])
    what = "flows" if run.table(FLOW_PATHS) is not None or flows else "endpoint pairs"
    title = f"{run.name}: paths of {len(drawn)} {what} at t = {t:g} s"
    if abs(float(pos.t_s[k]) - t) > 1e-6:
        title += f" (positions at t = {float(pos.t_s[k]):g} s)"
    return plot_map(path, where, _link_frame(run, t, ids), paths=drawn, title=title)


def _link_frame(run: Run, t_s: float, ids: dict[str, int]) -> LinkFrame:
    """The links of ``links.csv`` at the step nearest ``t_s``, as node ids."""
    lk = run.links_at(t_s)
    if lk is None or n_rows(lk) == 0:
        return LinkFrame.empty(t_s)
    unknown = sorted({str(n) for n in np.concatenate([lk["a"], lk["b"]]) if n not in ids})
    if unknown:
        raise ReportError(
            f"{LINKS.name} names node(s) that {NODES.name} lacks: {', '.join(unknown[:5])}"
        )
    a = np.array([ids[n] for n in lk["a"]], dtype=np.int64)
    b = np.array([ids[n] for n in lk["b"]], dtype=np.int64)
    up = np.isin(np.char.lower(lk["up"].astype(str)), ("1", "true", "1.0"))
    return LinkFrame(float(lk["t_s"][0]), a, b, lk["kind_id"], up)


def _map_paths(run: Run, flows: list[FlowStats], max_paths: int) -> list[tuple[float, str]]:
    """``(t_s, path)`` per flow at the earliest time a path is known (or per planned pair)."""
    fp = run.table(FLOW_PATHS)
    paths = run.table(PATHS)
    if fp is not None:
        t0 = float(np.nanmin(fp["t_s"]))
        out = {}
        for fid, idx in group_indices(fp["flow_id"]).items():
            idx = idx[np.argsort(fp["t_s"][idx], kind="stable")]
            k = (
                idx[np.searchsorted(fp["t_s"][idx], t0, side="right") - 1]
                if fp["t_s"][idx[0]] <= t0
                else idx[0]
            )
            out[fid] = (float(fp["t_s"][k]), str(fp["path"][k]))
        return [out[k] for k in sorted(out, key=natural_key)][:max_paths]
    if paths is None:
        return []
    t0 = float(np.nanmin(paths["t_s"]))
    pairs = pair_indices(paths)
    wanted = [(f.src, f.dst) for f in flows] or sorted(pairs)
    planned: list[tuple[float, str]] = []
    for pair in dict.fromkeys(wanted):
        pidx = pairs.get(pair)
        if pidx is None:
            continue
        k = pidx[np.argmin(np.abs(paths["t_s"][pidx] - t0))]
        planned.append((t0, str(paths["path"][k])))
    return planned[:max_paths]

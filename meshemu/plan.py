"""``meshemu plan``: the whole time line of a scenario, computed without root.

Data flow: scenario -> :class:`~meshemu.schedule.LinkSchedule` (orbit, geometry, link state)
-> routing scheme (forwarding tables per step) -> files in the output directory:

``nodes.csv``    ``id,name,kind,shell,plane,index``
``links.csv``    ``t_s,a,b,kind,up,distance_km,delay_ms,rate_mbps`` (every listed link, every step)
``paths.csv``    ``t_s,src,dst,path,hops,delay_ms`` for every ordered pair of endpoints
``summary.json`` counts, link and route events, per-pair delay statistics, timings
``map.png``, ``path_delay.png`` (see :mod:`meshemu.plots`)
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshemu import linkstate
from meshemu.linkstate import KIND_NAMES, Snapshot
from meshemu.routing import RoutingScheme, get_scheme, route_diff, trace_path, path_delay_s
from meshemu.scenario import Nodes, Scenario
from meshemu.schedule import LinkSchedule

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def endpoint_ids(scenario: Scenario, nodes: Nodes) -> np.ndarray:
    """Endpoints for paths: the scenario's ``endpoints``, else every ground and compute node."""
    if scenario.endpoints:
        return np.array([nodes.id_of(n) for n in scenario.endpoints], dtype=np.int32)
    return np.nonzero(nodes.kind != "sat")[0].astype(np.int32)


@dataclass
class PairStats:
    """Delay statistics of one endpoint pair over the plan."""

    delays_ms: list[float] = field(default_factory=list)
    reachable_steps: int = 0
    path_changes: int = 0
    last_path: tuple[int, ...] | None = None


@dataclass
class PlanResult:
    """What :func:`run_plan` computed and wrote."""

    out_dir: Path
    summary: dict
    files: list[Path]


def run_plan(scenario: Scenario, duration_s: float, step_s: float = 1.0,
             routing: str | RoutingScheme = "shortest-delay", out_dir: Path | str = "plan",
             progress: ProgressFn | None = None, plots: bool = True) -> PlanResult:
    """Compute snapshots, routes and paths over ``[0, duration_s]`` and write the plan files.

    Parameters
    ----------
    scenario : Scenario
    duration_s, step_s : float
        Time span and step (s).
    routing : str or RoutingScheme
        A registered scheme name, a plug-in spec (``file.py:Class``, ``module:Class``) or an
        instance.
    out_dir : path
        Created if missing.
    progress : callable(done_steps, total_steps), optional
    plots : bool
        Also write the PNG plots.
    """
    if duration_s < 0:
        raise ValueError(f"duration must be >= 0 s, got {duration_s!r}")
    scheme = get_scheme(routing) if isinstance(routing, str) else routing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sched = LinkSchedule(scenario, step_s)
    nodes = sched.nodes
    names = nodes.names
    ends = endpoint_ids(scenario, nodes)
    n_steps = int(np.floor(duration_s / step_s + 1e-9)) + 1

    write_nodes_csv(out / "nodes.csv", nodes)
    pair_stats = {(int(s), int(d)): PairStats() for s in ends for d in ends if s != d}
    t_geom = t_route = 0.0
    totals = {"links_added": 0, "links_removed": 0, "links_went_up": 0, "links_went_down": 0,
              "route_changes": 0}
    route_changes_per_step: list[int] = []
    n_isl: list[int] = []
    n_gsl: list[int] = []
    prev: Snapshot | None = None
    prev_tables = None
    first_snapshot = None
    with open(out / "links.csv", "w", newline="") as lf, open(out / "paths.csv", "w",
                                                              newline="") as pf:
        lw, pw = csv.writer(lf), csv.writer(pf)
        lw.writerow(["t_s", "a", "b", "kind", "up", "distance_km", "delay_ms", "rate_mbps"])
        pw.writerow(["t_s", "src", "dst", "path", "hops", "delay_ms"])
        it = sched.snapshots(duration_s)
        for k in range(n_steps):
            t0 = time.perf_counter()
            snap = next(it)
            t1 = time.perf_counter()
            tables = scheme.forwarding_tables(snap, ends)
            t2 = time.perf_counter()
            t_geom += t1 - t0
            t_route += t2 - t1
            if first_snapshot is None:
                first_snapshot = snap
            _write_links(lw, snap, names)
            n_isl.append(int((snap.kind == linkstate.ISL).sum()))
            n_gsl.append(int((snap.kind == linkstate.GSL).sum()))
            if prev is not None:
                d = linkstate.diff(prev, snap)
                totals["links_added"] += int(d.added.size)
                totals["links_removed"] += int(d.removed.size)
                totals["links_went_up"] += int(d.went_up.size)
                totals["links_went_down"] += int(d.went_down.size)
            rc = len(route_diff(prev_tables, tables)) if prev_tables is not None else 0
            totals["route_changes"] += rc
            route_changes_per_step.append(rc)
            for (s, d_), st in pair_stats.items():
                path = trace_path(tables, snap, s, d_)
                if path is None:
                    pw.writerow([f"{snap.t_s:g}", names[s], names[d_], "", "", ""])
                    if st.last_path is not None:
                        st.path_changes += 1
                    st.last_path = None
                    continue
                delay_ms = path_delay_s(snap, path) * 1e3
                pw.writerow([f"{snap.t_s:g}", names[s], names[d_],
                             " ".join(names[x] for x in path), len(path) - 1, f"{delay_ms:.6f}"])
                st.delays_ms.append(delay_ms)
                st.reachable_steps += 1
                tp = tuple(path)
                if st.last_path is not None and tp != st.last_path and k > 0:
                    st.path_changes += 1
                st.last_path = tp
            prev, prev_tables = snap, tables
            if progress:
                progress(k + 1, n_steps)

    summary = _summary(scenario, sched, scheme, duration_s, step_s, n_steps, ends, pair_stats,
                       totals, route_changes_per_step, n_isl, n_gsl, t_geom, t_route)
    files = [out / f for f in ("nodes.csv", "links.csv", "paths.csv", "summary.json")]
    if plots:
        from meshemu import plots as plotmod
        files.append(plotmod.plot_map(out / "map.png", sched, first_snapshot,
                                      title=f"{scenario.name} at t = 0 s"))
        files.append(plotmod.plot_path_delays(out / "path_delay.png", out / "paths.csv",
                                              title=f"{scenario.name}: path delay "
                                                    f"({scheme.name})"))
    summary["files"] = [str(f.name) for f in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PlanResult(out, summary, files)


def write_nodes_csv(path: Path, nodes: Nodes) -> None:
    """``id,name,kind,shell,plane,index`` (-1 where not applicable)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "kind", "shell", "plane", "index"])
        for i, name in enumerate(nodes.names):
            w.writerow([i, name, nodes.kind[i], int(nodes.shell[i]), int(nodes.plane[i]),
                        int(nodes.index[i])])


def _write_links(w, snap: Snapshot, names: tuple[str, ...]) -> None:
    t = f"{snap.t_s:g}"
    dist = np.round(snap.distance_m / 1e3, 3)
    delay = np.round(snap.delay_s * 1e3, 6)
    rate = snap.rate_bps / 1e6
    up = snap.up.astype(int)
    w.writerows([t, names[a], names[b], KIND_NAMES[k], u, f"{dk:.3f}", f"{dm:.6f}", f"{r:g}"]
                for a, b, k, u, dk, dm, r in zip(snap.a.tolist(), snap.b.tolist(),
                                                 snap.kind.tolist(), up.tolist(), dist.tolist(),
                                                 delay.tolist(), rate.tolist()))


def _summary(scenario, sched, scheme, duration_s, step_s, n_steps, ends, pair_stats, totals,
             rc_steps, n_isl, n_gsl, t_geom, t_route) -> dict:
    nodes = sched.nodes
    names = nodes.names
    pairs = []
    for (s, d), st in pair_stats.items():
        arr = np.array(st.delays_ms) if st.delays_ms else np.array([np.nan])
        pairs.append({"src": names[s], "dst": names[d],
                      "reachable_fraction": st.reachable_steps / n_steps,
                      "delay_ms_min": _f(np.nanmin(arr)), "delay_ms_mean": _f(np.nanmean(arr)),
                      "delay_ms_max": _f(np.nanmax(arr)), "path_changes": st.path_changes})
    kinds = {k: int((nodes.kind == k).sum()) for k in np.unique(nodes.kind)}
    return {
        "scenario": scenario.name, "source": scenario.source,
        "epoch": scenario.epoch.isoformat(), "duration_s": duration_s, "step_s": step_s,
        "steps": n_steps, "routing": scheme.name,
        "nodes": len(nodes), "node_kinds": kinds, "satellites": nodes.n_sats,
        "endpoints": [names[e] for e in ends],
        "isl_count_mean": float(np.mean(n_isl)), "gsl_count_mean": float(np.mean(n_gsl)),
        "events": totals,
        "route_changes_per_step_max": int(max(rc_steps) if rc_steps else 0),
        "pairs": pairs,
        "timing": {"geometry_ms_per_step": 1e3 * t_geom / n_steps,
                   "routing_ms_per_step": 1e3 * t_route / n_steps},
    }


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)

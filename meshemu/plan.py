"""``meshemu plan``: the whole time line of a scenario, computed without root.

Data flow: scenario -> :class:`~meshemu.geometry.schedule.LinkSchedule` (orbit, geometry, link state)
-> routing scheme (forwarding tables per step) -> files in the output directory:

``nodes.csv``    ``id,name,kind,shell,plane,index``
``links.csv``    ``t_s,a,b,kind,up,distance_km,delay_ms,rate_mbps`` (every listed link, every step)
``paths.csv``    ``t_s,src,dst,path,hops,delay_ms`` for every ordered pair of endpoints
``summary.json`` counts, link and route events, per-pair delay statistics, timings
``map.png``, ``path_delay.png`` (see :mod:`meshemu.report.maps`)
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

from meshemu.geometry import linkstate as linkstate
from meshemu.geometry.linkstate import KIND_NAMES, Snapshot
from meshemu.errors import MeshemuError, RoutingError
from meshemu.routing import (ForwardingTables, RoutingScheme, get_scheme, path_delay_s,
                             route_diff, trace_path, validate_tables)
from meshemu.spec.options import TimeSpan, check_out_dir, make_out_dir
from meshemu.spec.scenario import Nodes, Scenario, load_scenario
from meshemu.geometry.schedule import LinkSchedule

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


class PlanRecorder:
    """Writes ``nodes.csv``, ``links.csv`` and ``paths.csv`` step by step and keeps the
    statistics for ``summary.json``; used by ``meshemu plan`` and by the live runner (which
    records the plan it emulates beside its measurements).

    Parameters
    ----------
    out : Path
        Output directory (exists).
    nodes : Nodes
    ends : ndarray of int
        Endpoint node ids; every ordered pair gets a row per step in ``paths.csv``.
    """

    def __init__(self, out: Path, nodes: Nodes, ends: np.ndarray):
        self.out = out
        self.nodes = nodes
        self.names = nodes.names
        self.ends = ends
        write_nodes_csv(out / "nodes.csv", nodes)
        self._lf = open(out / "links.csv", "w", newline="")
        self._pf = open(out / "paths.csv", "w", newline="")
        self._lw, self._pw = csv.writer(self._lf), csv.writer(self._pf)
        self._lw.writerow(["t_s", "a", "b", "kind", "up", "distance_km", "delay_ms",
                           "rate_mbps"])
        self._pw.writerow(["t_s", "src", "dst", "path", "hops", "delay_ms"])
        self.pair_stats = {(int(s), int(d)): PairStats() for s in ends for d in ends if s != d}
        self.totals = {"links_added": 0, "links_removed": 0, "links_went_up": 0,
                       "links_went_down": 0, "route_changes": 0}
        self.route_changes_per_step: list[int] = []
        self.n_isl: list[int] = []
        self.n_gsl: list[int] = []
        self.steps = 0
        self._prev: Snapshot | None = None
        self._prev_tables = None

    def record(self, snap: Snapshot, tables) -> dict[tuple[int, int], list[int] | None]:
        """Record one step; returns the path of every endpoint pair (None if unreachable)."""
        names = self.names
        _write_links(self._lw, snap, names)
        self.n_isl.append(int((snap.kind == linkstate.ISL).sum()))
        self.n_gsl.append(int((snap.kind == linkstate.GSL).sum()))
        if self._prev is not None:
            d = linkstate.diff(self._prev, snap)
            self.totals["links_added"] += int(d.added.size)
            self.totals["links_removed"] += int(d.removed.size)
            self.totals["links_went_up"] += int(d.went_up.size)
            self.totals["links_went_down"] += int(d.went_down.size)
        rc = len(route_diff(self._prev_tables, tables)) if self._prev_tables is not None else 0
        self.totals["route_changes"] += rc
        self.route_changes_per_step.append(rc)
        paths = {}
        for (s, d_), st in self.pair_stats.items():
            path = trace_path(tables, snap, s, d_)
            paths[(s, d_)] = path
            if path is None:
                self._pw.writerow([f"{snap.t_s:g}", names[s], names[d_], "", "", ""])
                if st.last_path is not None:
                    st.path_changes += 1
                st.last_path = None
                continue
            delay_ms = path_delay_s(snap, path) * 1e3
            self._pw.writerow([f"{snap.t_s:g}", names[s], names[d_],
                               " ".join(names[x] for x in path), len(path) - 1,
                               f"{delay_ms:.6f}"])
            st.delays_ms.append(delay_ms)
            st.reachable_steps += 1
            tp = tuple(path)
            if st.last_path is not None and tp != st.last_path:
                st.path_changes += 1
            st.last_path = tp
        self._prev, self._prev_tables = snap, tables
        self.steps += 1
        return paths

    def flush(self) -> None:
        self._lf.flush()
        self._pf.flush()

    def close(self) -> None:
        self._lf.close()
        self._pf.close()

    def summary(self, scenario: Scenario, scheme_name: str, duration_s: float,
                step_s: float, start_s: float = 0.0) -> dict:
        """The plan part of ``summary.json``."""
        names = self.names
        n_steps = max(self.steps, 1)
        pairs = []
        for (s, d), st in self.pair_stats.items():
            arr = np.array(st.delays_ms)
            pairs.append({"src": names[s], "dst": names[d],
                          "reachable_fraction": st.reachable_steps / n_steps,
                          "delay_ms_min": _f(arr.min()) if arr.size else None,
                          "delay_ms_mean": _f(arr.mean()) if arr.size else None,
                          "delay_ms_max": _f(arr.max()) if arr.size else None,
                          "path_changes": st.path_changes})
        nodes = self.nodes
        kinds = {str(k): int((nodes.kind == k).sum()) for k in np.unique(nodes.kind)}
        rc = self.route_changes_per_step
        return {
            "scenario": scenario.name, "source": scenario.source,
            "epoch": scenario.epoch.isoformat(), "start_s": start_s, "duration_s": duration_s, "step_s": step_s,
            "steps": self.steps, "routing": scheme_name,
            "nodes": len(nodes), "node_kinds": kinds, "satellites": nodes.n_sats,
            "endpoints": [names[e] for e in self.ends],
            "isl_count_mean": float(np.mean(self.n_isl)) if self.n_isl else 0.0,
            "gsl_count_mean": float(np.mean(self.n_gsl)) if self.n_gsl else 0.0,
            "events": dict(self.totals),
            "route_changes_per_step_max": int(max(rc) if rc else 0),
            "pairs": pairs,
        }


def run_plan(scenario: Scenario | str | Path, duration_s: float, step_s: float = 1.0,
             routing: str | RoutingScheme = "shortest-delay", out_dir: Path | str = "plan",
             progress: ProgressFn | None = None, plots: bool = True,
             start_s: float = 0.0) -> PlanResult:
    """Compute snapshots, routes and paths over ``[start_s, start_s + duration_s]`` (seconds
    after the scenario epoch) and write the plan files.

    Every input is checked before anything is written: the time span
    (:class:`~meshemu.spec.options.TimeSpan`), the output directory, the routing scheme and
    the scenario's names. The scheme's tables are checked at every step
    (:func:`~meshemu.routing.validate_tables`), as the live emulation does.

    Parameters
    ----------
    scenario : Scenario, str or Path
        A scenario, or a YAML path / shipped name.
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
    start_s : float

    Raises
    ------
    OptionsError, ScenarioError
        Bad time span, output path or scenario (nothing is written).
    RoutingError
        Unknown scheme (nothing written), or one that fails or returns unusable tables
        mid-plan.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    span = TimeSpan.checked(duration_s, step_s, start_s)
    out = check_out_dir(out_dir)
    scheme = load_scheme(routing)
    sched = LinkSchedule(scenario, span.step_s)  # validates names before anything is written
    ends = endpoint_ids(scenario, sched.nodes)
    make_out_dir(out)
    n_steps = span.n_steps
    rec = PlanRecorder(out, sched.nodes, ends)
    t_geom = t_route = 0.0
    first_snapshot = None
    try:
        it = sched.snapshots(span.duration_s, start_s=span.start_s)
        for k in range(n_steps):
            t0 = time.perf_counter()
            snap = next(it)
            t1 = time.perf_counter()
            tables = checked_tables(scheme, snap, ends, k)
            t2 = time.perf_counter()
            t_geom += t1 - t0
            t_route += t2 - t1
            if first_snapshot is None:
                first_snapshot = snap
            rec.record(snap, tables)
            if progress:
                progress(k + 1, n_steps)
    finally:
        rec.close()
    summary = rec.summary(scenario, scheme.name, span.duration_s, span.step_s, span.start_s)
    summary["timing"] = {"geometry_ms_per_step": 1e3 * t_geom / n_steps,
                         "routing_ms_per_step": 1e3 * t_route / n_steps}
    files = [out / f for f in ("nodes.csv", "links.csv", "paths.csv", "summary.json")]
    if plots:
        from meshemu.report import maps as plotmod
        files.append(plotmod.plot_map(out / "map.png", sched, first_snapshot,
                                      title=f"{scenario.name} at t = 0 s"))
        files.append(plotmod.plot_path_delays(out / "path_delay.png", out / "paths.csv",
                                              title=f"{scenario.name}: path delay "
                                                    f"({scheme.name})"))
    summary["files"] = [str(f.name) for f in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PlanResult(out, summary, files)


def load_scheme(routing: str | RoutingScheme) -> RoutingScheme:
    """A routing scheme from a name, plug-in spec or instance (:func:`~meshemu.routing.
    get_scheme`), with whatever a plug-in raises while it is imported or constructed turned
    into a one-line :class:`RoutingError`."""
    try:
        return get_scheme(routing)
    except MeshemuError:
        raise
    except Exception as exc:  # a plug-in's own error, or a malformed spec such as ":"
        raise RoutingError(f"cannot load routing scheme {routing!r}: {type(exc).__name__}: "
                           f"{exc}") from None


def checked_tables(scheme: RoutingScheme, snap: Snapshot, destinations: np.ndarray,
                   k: int) -> ForwardingTables:
    """``scheme``'s forwarding tables for ``snap``, checked with
    :func:`~meshemu.routing.validate_tables`.

    Raises
    ------
    RoutingError
        The scheme raised (its error in one line), returned something that is not
        :class:`~meshemu.routing.ForwardingTables`, or tables with next hops that are not up
        neighbours, forward through ground nodes or loop.
    """
    where = f"routing scheme {scheme.name!r} at step {k} (t = {snap.t_s:g} s)"
    try:
        tables = scheme.forwarding_tables(snap, destinations)
    except MeshemuError:
        raise
    except Exception as exc:  # a plug-in's bug: one line, not a traceback
        raise RoutingError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(tables, ForwardingTables):
        raise RoutingError(f"{where} returned {type(tables).__name__}, not "
                           f"meshemu.routing.ForwardingTables")
    problems = validate_tables(tables, snap)
    if problems:
        raise RoutingError(f"{where} returned unusable tables: {'; '.join(problems[:3])}")
    return tables


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


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)

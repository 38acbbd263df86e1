"""The plan files of a run directory, written step by step: ``nodes.csv``, ``links.csv``,
``paths.csv`` (columns from :mod:`meshemu.report.files`), ``positions.npz`` and the plan
part of ``summary.json``.

:class:`PlanRecorder` is used by ``meshemu plan`` (:func:`meshemu.plan.run_plan`) and by the
live runner, which records the plan it emulates beside its measurements. This is the one
module of :mod:`meshemu.report` that imports the geometry and routing stages (it traces
paths and diffs snapshots); the readers never import it.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import ReportError
from meshemu.geometry import linkstate
from meshemu.geometry.linkstate import KIND_NAMES, Snapshot
from meshemu.geometry.orbit import ecef_to_geodetic
from meshemu.report import files
from meshemu.report.files import LINKS, NODES, PATHS, Positions
from meshemu.report.maps import MapNodes
from meshemu.routing import path_delay_s, route_diff, trace_path
from meshemu.spec.scenario import Nodes, Scenario

log = logging.getLogger(__name__)


@dataclass
class PairStats:
    """Delay statistics of one endpoint pair over the plan."""

    delays_ms: list[float] = field(default_factory=list)
    reachable_steps: int = 0
    path_changes: int = 0
    last_path: tuple[int, ...] | None = None


def node_positions_ecef_km(schedule: Any, t_s: float | np.ndarray) -> np.ndarray:
    """Earth-fixed positions (km) of every node of a
    :class:`~meshemu.geometry.schedule.LinkSchedule`: satellites
    (``schedule.positions_ecef_km``) then ground nodes (``schedule.ground_ecef_km``).

    Returns
    -------
    ndarray
        Shape (N, 3) for a scalar ``t_s``, (N, T, 3) for an array of T times.
    """
    t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
    sats = schedule.positions_ecef_km(t)  # (S, T, 3)
    ground = np.broadcast_to(
        schedule.ground_ecef_km[:, None, :], (schedule.ground_ecef_km.shape[0], t.size, 3)
    )
    r = np.concatenate([sats, ground], axis=0)
    return r[:, 0] if np.ndim(t_s) == 0 else r


def schedule_map_nodes(schedule: Any, t_s: float) -> MapNodes:
    """:class:`~meshemu.report.maps.MapNodes` of a LinkSchedule at ``t_s`` (propagated)."""
    lat, lon, _ = ecef_to_geodetic(node_positions_ecef_km(schedule, t_s))
    nodes = schedule.nodes
    return MapNodes(nodes.names, nodes.kind, lat, lon)


class _PositionLog:
    """Node positions of the recorded steps, thinned to stay under ``max_bytes``: when full,
    every other recorded step is dropped and the stride doubles (a power of two)."""

    def __init__(self, n_nodes: int, max_bytes: int = files.POSITIONS_MAX_BYTES):
        self.n_nodes = n_nodes
        per_step = 3 * 4 * max(n_nodes, 1) + 8
        self.max_steps = max(2, max_bytes // per_step)
        self.stride = 1
        self.t_s: list[float] = []
        self.ecef: list[np.ndarray] = []  # (N, 3) float32 per recorded step

    def add(self, step: int, t_s: float, r_km: np.ndarray) -> None:
        r = np.asarray(r_km, dtype=np.float64)
        if r.shape != (self.n_nodes, 3):
            raise ReportError(
                f"positions_ecef_km has shape {r.shape}, expected "
                f"({self.n_nodes}, 3): every node, satellites first "
                f"(see node_positions_ecef_km)"
            )
        if step % self.stride:
            return
        if len(self.t_s) >= self.max_steps:
            self.t_s, self.ecef = self.t_s[::2], self.ecef[::2]
            self.stride *= 2
            log.info(
                "positions.npz: keeping every %d-th step (at most %d steps of %d nodes)",
                self.stride,
                self.max_steps,
                self.n_nodes,
            )
            if step % self.stride:
                return
        self.t_s.append(float(t_s))
        self.ecef.append(r.astype(np.float32))

    def nearest(self, t_s: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude (deg) at the recorded step nearest ``t_s`` (first: None)."""
        if not self.t_s:
            raise ReportError(
                "no positions were recorded: pass positions_ecef_km to "
                "PlanRecorder.record to draw a map"
            )
        k = 0 if t_s is None else int(np.argmin(np.abs(np.array(self.t_s) - t_s)))
        lat, lon, _ = ecef_to_geodetic(self.ecef[k].astype(np.float64))
        return lat, lon

    def positions(self) -> Positions:
        r = (
            np.stack(self.ecef) if self.ecef else np.zeros((0, self.n_nodes, 3), np.float32)
        ).astype(np.float64)
        lat, lon, alt = ecef_to_geodetic(r)
        return Positions(
            np.array(self.t_s, dtype=np.float64),
            lat.astype(np.float32),
            lon.astype(np.float32),
            alt.astype(np.float32),
            self.stride,
        )


class PlanRecorder:
    """Writes ``nodes.csv``, ``links.csv`` and ``paths.csv`` step by step (and
    ``positions.npz`` on :meth:`close`) and keeps the statistics for ``summary.json``.

    Parameters
    ----------
    out : Path
        Output directory (exists).
    nodes : Nodes
    ends : ndarray of int
        Endpoint node ids; every ordered pair gets a row per step in ``paths.csv``.
    """

    def __init__(self, out: Path, nodes: Nodes, ends: np.ndarray):
        self.out = Path(out)
        self.nodes = nodes
        self.names = nodes.names
        self.ends = ends
        write_nodes_csv(self.out / NODES.name, nodes)
        self._lf, self._lw = files.open_csv(self.out, LINKS)
        self._pf, self._pw = files.open_csv(self.out, PATHS)
        self.pair_stats = {(int(s), int(d)): PairStats() for s in ends for d in ends if s != d}
        self.totals = {
            "links_added": 0,
            "links_removed": 0,
            "links_went_up": 0,
            "links_went_down": 0,
            "route_changes": 0,
        }
        self.route_changes_per_step: list[int] = []
        self.n_isl: list[int] = []
        self.n_gsl: list[int] = []
        self.steps = 0
        self._prev: Snapshot | None = None
        self._prev_tables: Any = None
        self._positions = _PositionLog(len(nodes))
        self._closed = False

    def record(
        self,
        snap: Snapshot,
        tables: Any,
        positions_ecef_km: np.ndarray | None = None,
        route_changes: int | None = None,
    ) -> dict[tuple[int, int], list[int] | None]:
        """Record one step; returns the path of every endpoint pair (None if unreachable).

        Parameters
        ----------
        snap : Snapshot
        tables : ForwardingTables
        positions_ecef_km : ndarray, shape (N, 3), optional
            Earth-fixed positions (km) of every node at ``snap.t_s``, satellites first
            (:func:`node_positions_ecef_km`); written to ``positions.npz`` when given.
        route_changes : int, optional
            The step's route changes when the caller has diffed the tables already (the live
            emulation's :class:`~meshemu.live.emulation.StepStats`); else they are diffed here.
        """
        if positions_ecef_km is not None:
            self._positions.add(self.steps, snap.t_s, positions_ecef_km)
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
        if route_changes is not None:
            rc = route_changes if self._prev_tables is not None else 0
        else:
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
            self._pw.writerow(
                [
                    f"{snap.t_s:g}",
                    names[s],
                    names[d_],
                    " ".join(names[x] for x in path),
                    len(path) - 1,
                    f"{delay_ms:.6f}",
                ]
            )
            st.delays_ms.append(delay_ms)
            st.reachable_steps += 1
            tp = tuple(path)
            if st.last_path is not None and tp != st.last_path:
                st.path_changes += 1
            st.last_path = tp
        self._prev, self._prev_tables = snap, tables
        self.steps += 1
        return paths

    def map_nodes(self, t_s: float | None = None) -> MapNodes:
        """Node positions at the recorded step nearest ``t_s`` (the first without), for
        :func:`meshemu.report.maps.plot_map`; ReportError when no positions were recorded."""
        lat, lon = self._positions.nearest(t_s)
        return MapNodes(self.names, self.nodes.kind, lat, lon)

    def flush(self) -> None:
        """Flush ``links.csv`` and ``paths.csv`` (positions are written on :meth:`close`)."""
        self._lf.flush()
        self._pf.flush()

    def close(self) -> None:
        """Close the CSV files and write ``positions.npz`` (when positions were recorded)."""
        if self._closed:
            return
        self._closed = True
        self._lf.close()
        self._pf.close()
        if self._positions.t_s:
            files.write_positions(self.out, self._positions.positions())

    def summary(
        self,
        scenario: Scenario,
        scheme_name: str,
        duration_s: float,
        step_s: float,
        start_s: float = 0.0,
    ) -> dict[str, Any]:
        """The plan part of ``summary.json``."""
        names = self.names
        n_steps = max(self.steps, 1)
        pairs = []
        for (s, d), st in self.pair_stats.items():
            arr = np.array(st.delays_ms)
            pairs.append(
                {
                    "src": names[s],
                    "dst": names[d],
                    "reachable_fraction": st.reachable_steps / n_steps,
                    "delay_ms_min": _f(arr.min()) if arr.size else None,
                    "delay_ms_mean": _f(arr.mean()) if arr.size else None,
                    "delay_ms_max": _f(arr.max()) if arr.size else None,
                    "path_changes": st.path_changes,
                }
            )
        nodes = self.nodes
        kinds = {str(k): int((nodes.kind == k).sum()) for k in np.unique(nodes.kind)}
        rc = self.route_changes_per_step
        return {
            "scenario": scenario.name,
            "source": scenario.source,
            "epoch": scenario.epoch.isoformat(),
            "start_s": start_s,
            "duration_s": duration_s,
            "step_s": step_s,
            "steps": self.steps,
            "routing": scheme_name,
            "nodes": len(nodes),
            "node_kinds": kinds,
            "satellites": nodes.n_sats,
            "endpoints": [names[e] for e in self.ends],
            "isl_count_mean": float(np.mean(self.n_isl)) if self.n_isl else 0.0,
            "gsl_count_mean": float(np.mean(self.n_gsl)) if self.n_gsl else 0.0,
            "events": dict(self.totals),
            "route_changes_per_step_max": int(max(rc) if rc else 0),
            "pairs": pairs,
        }


def write_nodes_csv(path: Path, nodes: Nodes) -> None:
    """``nodes.csv`` (:data:`meshemu.report.files.NODES`; -1 where not applicable)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NODES.columns)
        for i, name in enumerate(nodes.names):
            w.writerow(
                [
                    i,
                    name,
                    nodes.kind[i],
                    int(nodes.shell[i]),
                    int(nodes.plane[i]),
                    int(nodes.index[i]),
                    int(nodes.slot[i]) if nodes.slot.size else -1,
                    int(nodes.norad_id[i]) if nodes.norad_id.size else -1,
                ]
            )


def _write_links(w: Any, snap: Snapshot, names: tuple[str, ...]) -> None:
    t = f"{snap.t_s:g}"
    dist = np.round(snap.distance_m / 1e3, 3)
    delay = np.round(snap.delay_s * 1e3, 6)
    rate = snap.rate_bps / 1e6
    up = snap.up.astype(int)
    w.writerows(
        [t, names[a], names[b], KIND_NAMES[k], u, f"{dk:.3f}", f"{dm:.6f}", f"{r:g}"]
        for a, b, k, u, dk, dm, r in zip(
            snap.a.tolist(),
            snap.b.tolist(),
            snap.kind.tolist(),
            up.tolist(),
            dist.tolist(),
            delay.tolist(),
            rate.tolist(),
        )
    )


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)

"""The plan files of a run directory, written step by step: ``nodes.csv``, ``links.csv``,
``paths.csv`` (columns from :mod:`meshemu.report.files`; or the same tables as Parquet,
``nodes.parquet``, ``links.parquet``, ``paths.parquet``: :mod:`meshemu.report.parquet`),
``positions.npz`` and the plan part of ``summary.json``.

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
from meshemu.routing import route_diff, trace_paths
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
    table_format : {"csv", "parquet"}
        ``parquet`` writes ``nodes.parquet``, ``links.parquet`` and ``paths.parquet``
        instead, one file per step in each of the last two (see
        :mod:`meshemu.report.parquet`); the columns are the same.
    """

    def __init__(self, out: Path, nodes: Nodes, ends: np.ndarray, table_format: str = "csv"):
        if table_format not in ("csv", "parquet"):
            raise ReportError(
                f"PlanRecorder writes csv or parquet tables, not {table_format!r} "
                f"(resolve auto with meshemu.report.files.choose_format first)"
            )
        self.out = Path(out)
        self.nodes = nodes
        self.names = nodes.names
        self.ends = ends
        self.table_format = table_format
        self.pair_stats = {(int(s), int(d)): PairStats() for s in ends for d in ends if s != d}
        self._src = np.array([s for s, _ in self.pair_stats], dtype=np.int64)
        self._dst = np.array([d for _, d in self.pair_stats], dtype=np.int64)
        self._pq: dict[str, Any] = {}
        _remove_other_format(self.out, table_format)
        if table_format == "csv":
            write_nodes_csv(self.out / NODES.name, nodes)
            self._lf, self._lw = files.open_csv(self.out, LINKS)
            self._pf, self._pw = files.open_csv(self.out, PATHS)
        else:
            from meshemu.report import parquet

            write_nodes_parquet(self.out / NODES.parquet_name, nodes)
            self._links_pq = parquet.StepTable(self.out, LINKS)
            self._paths_pq = parquet.StepTable(self.out, PATHS)
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
        if self.table_format == "csv":
            _write_links(self._lw, snap, self.names)
        else:
            self._links_pq.write(self._link_columns(snap))
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
        paths = self._record_paths(snap, tables)
        self._prev, self._prev_tables = snap, tables
        self.steps += 1
        return paths

    def _record_paths(self, snap: Snapshot, tables: Any) -> dict[tuple[int, int], list[int] | None]:
        """Trace every endpoint pair (all at once), write their rows, update their stats."""
        names = self.names
        traced = trace_paths(tables, snap, self._src, self._dst)
        t = _num_text(snap.t_s)
        csv_rows = self.table_format == "csv"
        texts: list[str] = []
        delays = np.full(len(self.pair_stats), np.nan)
        props, accs = delays.copy(), delays.copy()
        paths: dict[tuple[int, int], list[int] | None] = {}
        for i, ((s, d_), st) in enumerate(self.pair_stats.items()):
            path = traced.path(i)
            paths[(s, d_)] = path
            if path is None:
                if csv_rows:
                    self._pw.writerow([t, names[s], names[d_], "", "", "", "", ""])
                texts.append("")
                if st.last_path is not None:
                    st.path_changes += 1
                st.last_path = None
                continue
            prop_ms = traced.delay_s(snap, i) * 1e3
            access_ms = traced.access_s(snap, i) * 1e3
            delay_ms = prop_ms + access_ms
            text = " ".join([names[x] for x in path])
            cell, pcell, acell = f"{delay_ms:.6f}", f"{prop_ms:.6f}", f"{access_ms:.6f}"
            if csv_rows:
                self._pw.writerow([t, names[s], names[d_], text, len(path) - 1, cell, pcell, acell])
            texts.append(text)
            delays[i] = float(cell)  # the value the CSV cell reads back as
            props[i], accs[i] = float(pcell), float(acell)
            st.delays_ms.append(delay_ms)
            st.reachable_steps += 1
            tp = tuple(path)
            if st.last_path is not None and tp != st.last_path:
                st.path_changes += 1
            st.last_path = tp
        if not csv_rows:
            none = traced.hops < 0
            self._paths_pq.write(
                {
                    "t_s": np.full(self._src.size, float(t)),
                    "src": self._pair_names("src", self._src),
                    "dst": self._pair_names("dst", self._dst),
                    "path": texts,
                    "hops": (traced.hops, none),
                    "delay_ms": (delays, none),
                    "propagation_ms": (props, none),
                    "access_ms": (accs, none),
                }
            )
        return paths

    def _pair_names(self, key: str, ids: np.ndarray) -> Any:
        """The names of ``ids`` as an Arrow array, made once (the pairs never change)."""
        if key not in self._pq:
            from meshemu.report import parquet

            pa = parquet._pa()
            self._pq[key] = pa.array([self.names[i] for i in ids.tolist()], type=pa.string())
        return self._pq[key]

    def _link_columns(self, snap: Snapshot) -> dict[str, Any]:
        """One step of ``links`` as Parquet columns, with the values the CSV cells hold."""
        from meshemu.report import parquet

        pa = parquet._pa()
        import pyarrow.compute as pc

        if "names" not in self._pq:
            self._pq["names"] = pa.array(self.names, type=pa.string())
            self._pq["kinds"] = pa.array(KIND_NAMES, type=pa.string())
        names, kinds = self._pq["names"], self._pq["kinds"]
        e = snap.n_links
        return {
            "t_s": np.full(e, float(_num_text(snap.t_s))),
            "a": pc.take(names, pa.array(snap.a, type=pa.int32())),
            "b": pc.take(names, pa.array(snap.b, type=pa.int32())),
            "kind": pc.take(kinds, pa.array(snap.kind.astype(np.int32), type=pa.int32())),
            "up": snap.up.astype(np.int8),
            "distance_km": np.round(snap.distance_m / 1e3, 3),
            "delay_ms": np.round(snap.delay_s * 1e3, 6),
            "rate_mbps": _as_text_values(snap.rate_bps / 1e6),
            "access_down_ms": np.round(snap.access_delays_s()[0] * 1e3, 6),
            "access_up_ms": np.round(snap.access_delays_s()[1] * 1e3, 6),
        }

    def map_nodes(self, t_s: float | None = None) -> MapNodes:
        """Node positions at the recorded step nearest ``t_s`` (the first without), for
        :func:`meshemu.report.maps.plot_map`; ReportError when no positions were recorded."""
        lat, lon = self._positions.nearest(t_s)
        return MapNodes(self.names, self.nodes.kind, lat, lon)

    def flush(self) -> None:
        """Flush ``links.csv`` and ``paths.csv`` (positions are written on :meth:`close`;
        a Parquet table is complete after every step)."""
        if self.table_format == "csv":
            self._lf.flush()
            self._pf.flush()

    def close(self) -> None:
        """Close the tables and write ``positions.npz`` (when positions were recorded)."""
        if self._closed:
            return
        self._closed = True
        if self.table_format == "csv":
            self._lf.close()
            self._pf.close()
        else:
            self._links_pq.close()
            self._paths_pq.close()
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
            "gsl": {
                "schedule": scenario.gsl.schedule,
                "slot_s": scenario.gsl.slot_s,
                "slot_offset_s": scenario.gsl.slot_offset_s,
            },
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


def write_nodes_parquet(path: Path, nodes: Nodes) -> None:
    """``nodes.parquet``: the columns and values of ``nodes.csv``, one Parquet file."""
    from meshemu.report import parquet

    n = len(nodes.names)
    minus = np.full(n, -1)
    parquet.write_file(
        path,
        NODES,
        {
            "id": np.arange(n, dtype=np.int64),
            "name": list(nodes.names),
            "kind": np.asarray(nodes.kind).astype(str),
            "shell": nodes.shell.astype(np.int32),
            "plane": nodes.plane.astype(np.int32),
            "index": nodes.index.astype(np.int32),
            "slot": (nodes.slot if nodes.slot.size else minus).astype(np.int32),
            "norad_id": (nodes.norad_id if nodes.norad_id.size else minus).astype(np.int64),
        },
    )


def _remove_other_format(out: Path, table_format: str) -> None:
    """Remove the plan tables of the other format that an earlier plan left in ``out``, so
    that readers never find a stale table beside the new one."""
    for spec in files.PARQUET_SPECS:
        if table_format == "parquet":
            (out / spec.name).unlink(missing_ok=True)
            continue
        old = out / spec.parquet_name
        if old.is_dir():
            for part in old.iterdir():
                if part.name.startswith(("part-", ".part-")):
                    part.unlink()
            try:
                old.rmdir()
            except OSError:  # something else lives there: leave it
                log.warning("left %s in place (it holds files meshemu did not write)", old)
        elif old.is_file():
            old.unlink()


def _num_text(x: float) -> str:
    """A time or rate as its CSV cell: 12 significant digits, no trailing zeros."""
    return f"{x:.12g}"


def _as_text_values(x: np.ndarray) -> np.ndarray:
    """``x`` with each value replaced by what its CSV cell (:func:`_num_text`) reads back as
    (rates: a handful of distinct values per plan)."""
    uniq, inv = np.unique(x, return_inverse=True)
    return np.array([float(_num_text(u)) for u in uniq.tolist()])[inv.reshape(-1)]


def _write_links(w: Any, snap: Snapshot, names: tuple[str, ...]) -> None:
    t = _num_text(snap.t_s)
    dist = np.round(snap.distance_m / 1e3, 3)
    delay = np.round(snap.delay_s * 1e3, 6)
    rate = snap.rate_bps / 1e6
    up = snap.up.astype(int)
    ab, ba = (np.round(x * 1e3, 6).tolist() for x in snap.access_delays_s())
    w.writerows(
        [
            t,
            names[a],
            names[b],
            KIND_NAMES[k],
            u,
            f"{dk:.3f}",
            f"{dm:.6f}",
            _num_text(r),
            _num_text(xd),
            _num_text(xu),
        ]
        for a, b, k, u, dk, dm, r, xd, xu in zip(
            snap.a.tolist(),
            snap.b.tolist(),
            snap.kind.tolist(),
            up.tolist(),
            dist.tolist(),
            delay.tolist(),
            rate.tolist(),
            ab,
            ba,
        )
    )


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)

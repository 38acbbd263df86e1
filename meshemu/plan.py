"""``meshemu plan``: the whole time line of a scenario, computed without root.

Data flow: scenario -> :class:`~meshemu.geometry.schedule.LinkSchedule` (orbit, geometry,
link state) -> routing scheme (forwarding tables per step) -> files in the output directory:

``nodes.csv``    ``id,name,kind,shell,plane,index``
``links.csv``    ``t_s,a,b,kind,up,distance_km,delay_ms,rate_mbps`` (every listed link, every step)
``paths.csv``    ``t_s,src,dst,path,hops,delay_ms`` for every ordered pair of endpoints
``positions.npz`` latitude, longitude and altitude of every node per step (for the maps)
``summary.json`` counts, link and route events, per-pair delay statistics, timings
``map.png``, ``path_delay.png`` (see :mod:`meshemu.report.maps`)

The three tables are CSV, or Parquet (``nodes.parquet``, ``links.parquet``,
``paths.parquet``, the same columns: :mod:`meshemu.report.parquet`): ``table_format``
``auto`` picks Parquet once the links of the first step and the endpoint pairs, times the
steps, reach :data:`~meshemu.report.files.AUTO_PARQUET_ROWS`. Parquet tables are written a
step at a time, each step complete on disk before the next is computed.

Routing is toward the endpoints only: one shortest-path tree rooted at each endpoint per
step (every node's next hop toward it), never all pairs of nodes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import MeshemuError, RoutingError
from meshemu.geometry import linkstate as linkstate
from meshemu.geometry.linkstate import Snapshot
from meshemu.geometry.schedule import LinkSchedule
from meshemu.report.files import choose_format
from meshemu.report.record import PairStats as PairStats
from meshemu.report.record import PlanRecorder as PlanRecorder
from meshemu.report.record import write_nodes_csv as write_nodes_csv
from meshemu.routing import (
    ECMP,
    ComputedScheme,
    ForwardingTables,
    RoutingScheme,
    ShortestDelay,
    get_scheme,
    validate_tables,
)
from meshemu.routing.hold import with_hold
from meshemu.spec.options import TimeSpan, check_out_dir, make_out_dir
from meshemu.spec.scenario import Nodes, Scenario, load_scenario

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def endpoint_ids(scenario: Scenario, nodes: Nodes) -> np.ndarray:
    """Endpoints for paths: the scenario's ``endpoints``, else every ground and compute node."""
    if scenario.endpoints:
        return np.array([nodes.id_of(n) for n in scenario.endpoints], dtype=np.int32)
    return np.nonzero(nodes.kind != "sat")[0].astype(np.int32)


@dataclass
class PlanResult:
    """What :func:`run_plan` computed and wrote."""

    out_dir: Path
    summary: dict[str, Any]
    files: list[Path]


def run_plan(
    scenario: Scenario | str | Path,
    duration_s: float,
    step_s: float = 1.0,
    routing: str | RoutingScheme = "shortest-delay",
    out_dir: Path | str = "plan",
    progress: ProgressFn | None = None,
    plots: bool = True,
    start_s: float = 0.0,
    table_format: str = "auto",
    route_hold_us: float = 0.0,
) -> PlanResult:
    """Compute snapshots, routes and paths over ``[start_s, start_s + duration_s]`` (seconds
    after the scenario epoch) and write the plan files.

    Every input is checked before anything is written: the time span
    (:class:`~meshemu.spec.options.TimeSpan`), the output directory, the routing scheme and
    the scenario's names. A plug-in's tables are checked at every step
    (:func:`~meshemu.routing.validate_tables`), as the live emulation does; the tables of
    meshemu's own schemes (:func:`builtin_tables`: also their subclasses that only change
    ``weights``) at the first step, as they are loop-free by construction (Dijkstra trees)
    and tested against networkx.

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
    table_format : {"auto", "csv", "parquet"}
        How the tables are written (see the module docstring).
    route_hold_us : float
        Route hold (:mod:`meshemu.routing.hold`), microseconds; 0 (the default) is off.

    Raises
    ------
    OptionsError, ScenarioError
        Bad time span, output path or scenario (nothing is written).
    ReportError
        Unknown ``table_format`` (nothing is written).
    RoutingError
        Unknown scheme (nothing written), or one that fails or returns unusable tables
        mid-plan.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    span = TimeSpan.checked(duration_s, step_s, start_s)
    out = check_out_dir(out_dir)
    choose_format(table_format, 0)  # an unknown format fails here, before anything is done
    scheme = with_hold(load_scheme(routing), route_hold_us)
    sched = LinkSchedule(scenario, span.step_s)  # validates names before anything is written
    ends = endpoint_ids(scenario, sched.nodes)
    n_steps = span.n_steps
    n_pairs = ends.size * (ends.size - 1)
    rec: PlanRecorder | None = None
    trusted = builtin_tables(scheme)
    t_geom = t_route = 0.0
    first_snapshot = None
    try:
        it = sched.steps(span.duration_s, start_s=span.start_s)
        for k in range(n_steps):
            t0 = time.perf_counter()
            snap, r_sats = next(it)
            t1 = time.perf_counter()
            tables = checked_tables(scheme, snap, ends, k, validate=k == 0 or not trusted)
            t2 = time.perf_counter()
            t_geom += t1 - t0
            t_route += t2 - t1
            if rec is None:
                first_snapshot = snap
                fmt = choose_format(table_format, (snap.n_links + n_pairs) * n_steps)
                make_out_dir(out)
                rec = PlanRecorder(out, sched.nodes, ends, table_format=fmt)
            r = np.concatenate([r_sats, sched.ground_ecef_km], axis=0)
            rec.record(snap, tables, positions_ecef_km=r)
            if progress:
                progress(k + 1, n_steps)
    finally:
        if rec is not None:
            rec.close()
    assert rec is not None  # a plan has at least one step
    summary = rec.summary(scenario, scheme.name, span.duration_s, span.step_s, span.start_s)
    summary["route_hold_us"] = float(route_hold_us)
    summary["catalogues"] = [c.as_dict() for c in sched.constellation.catalogues]
    summary["timing"] = {
        "geometry_ms_per_step": 1e3 * t_geom / n_steps,
        "routing_ms_per_step": 1e3 * t_route / n_steps,
    }
    tables_written = ("nodes", "links", "paths")
    suffix = ".csv" if rec.table_format == "csv" else ".parquet"
    files = [out / f"{t}{suffix}" for t in tables_written]
    files += [out / "positions.npz", out / "summary.json"]
    summary["table_format"] = rec.table_format
    if plots:
        from meshemu.report import maps as plotmod

        assert first_snapshot is not None  # a plan has at least one step

        files.append(
            plotmod.plot_map(
                out / "map.png",
                rec.map_nodes(first_snapshot.t_s),
                first_snapshot,
                title=f"{scenario.name} at t = 0 s",
            )
        )
        files.append(
            plotmod.plot_path_delays(
                out / "path_delay.png",
                out / f"paths{suffix}",
                title=f"{scenario.name}: path delay ({scheme.name})",
            )
        )
    summary["files"] = [str(f.name) for f in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PlanResult(out, summary, files)


def load_scheme(routing: str | RoutingScheme) -> ComputedScheme:
    """A routing scheme from a name, plug-in spec or instance (:func:`~meshemu.routing.
    get_scheme`), with whatever a plug-in raises while it is imported or constructed turned
    into a one-line :class:`RoutingError`."""
    try:
        return get_scheme(routing)
    except MeshemuError:
        raise
    except Exception as exc:  # a plug-in's own error, or a malformed spec such as ":"
        raise RoutingError(
            f"cannot load routing scheme {routing!r}: {type(exc).__name__}: {exc}"
        ) from None


def builtin_tables(scheme: ComputedScheme) -> bool:
    """True when ``scheme`` computes its tables with meshemu's own code (a built-in scheme,
    or a subclass that changes only ``weights``), whose tables are loop-free and use only
    up links by construction."""
    own = (ShortestDelay.forwarding_tables, ECMP.forwarding_tables)
    return getattr(type(scheme), "forwarding_tables", None) in own


def checked_tables(
    scheme: ComputedScheme,
    snap: Snapshot,
    destinations: np.ndarray,
    k: int,
    validate: bool = True,
) -> ForwardingTables:
    """``scheme``'s forwarding tables for ``snap``, checked with
    :func:`~meshemu.routing.validate_tables` (unless ``validate`` is False: then only their
    type).

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
        raise RoutingError(
            f"{where} returned {type(tables).__name__}, not meshemu.routing.ForwardingTables"
        )
    problems = validate_tables(tables, snap) if validate else []
    if problems:
        raise RoutingError(f"{where} returned unusable tables: {'; '.join(problems[:3])}")
    return tables

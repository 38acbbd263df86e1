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

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshemu.geometry import linkstate as linkstate
from meshemu.report.record import PairStats as PairStats
from meshemu.report.record import PlanRecorder as PlanRecorder
from meshemu.report.record import node_positions_ecef_km
from meshemu.report.record import write_nodes_csv as write_nodes_csv
from meshemu.routing import RoutingScheme, get_scheme
from meshemu.spec.scenario import Nodes, Scenario
from meshemu.geometry.schedule import LinkSchedule

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
    summary: dict
    files: list[Path]


def run_plan(scenario: Scenario, duration_s: float, step_s: float = 1.0,
             routing: str | RoutingScheme = "shortest-delay", out_dir: Path | str = "plan",
             progress: ProgressFn | None = None, plots: bool = True,
             start_s: float = 0.0) -> PlanResult:
    """Compute snapshots, routes and paths over ``[start_s, start_s + duration_s]`` (seconds
    after the scenario epoch) and write the plan files.

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
    sched = LinkSchedule(scenario, step_s)  # validates names before anything is written
    ends = endpoint_ids(scenario, sched.nodes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_steps = int(np.floor(duration_s / step_s + 1e-9)) + 1
    rec = PlanRecorder(out, sched.nodes, ends)
    t_geom = t_route = 0.0
    first_snapshot = None
    try:
        it = sched.snapshots(duration_s, start_s=start_s)
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
            rec.record(snap, tables, positions_ecef_km=node_positions_ecef_km(sched, snap.t_s))
            if progress:
                progress(k + 1, n_steps)
    finally:
        rec.close()
    summary = rec.summary(scenario, scheme.name, duration_s, step_s, start_s)
    summary["timing"] = {"geometry_ms_per_step": 1e3 * t_geom / n_steps,
                         "routing_ms_per_step": 1e3 * t_route / n_steps}
    files = [out / f for f in ("nodes.csv", "links.csv", "paths.csv", "summary.json")]
    if plots:
        from meshemu.report import maps as plotmod
        files.append(plotmod.plot_map(out / "map.png", rec.map_nodes(first_snapshot.t_s),
                                      first_snapshot, title=f"{scenario.name} at t = 0 s"))
        files.append(plotmod.plot_path_delays(out / "path_delay.png", out / "paths.csv",
                                              title=f"{scenario.name}: path delay "
                                                    f"({scheme.name})"))
    summary["files"] = [str(f.name) for f in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return PlanResult(out, summary, files)

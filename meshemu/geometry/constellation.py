"""Constellations: Walker shells and TLE files become SGP4 satellite records and named nodes.

Walker constellations follow Walker (1984), "Satellite constellations", J. Br. Interplanet.
Soc. 37: a shell i:T/P/F has P planes of S = T/P satellites; plane p has right ascension of
the ascending node ``p * spread / P`` (spread 360 deg for Walker delta, 180 deg for Walker
star) and satellite s of plane p has mean anomaly ``360 s / S + 360 F p / T``.
Orbits are circular; the SGP4 mean motion comes from Kepler's third law with WGS-72's mu.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
from sgp4.api import WGS72, Satrec

from meshemu.errors import ScenarioError
from meshemu.geometry.arrays import FloatArray, Int32Array, Int64Array
from meshemu.geometry.shells import CatalogueSummary, ShellLayout, infer_catalogue, walker_layout
from meshemu.spec.scenario import EARTH_RADIUS_KM, Nodes, Scenario, ShellSpec
from meshemu.spec.tle import TLE_TEMPLATE, node_names, parse_tle_text, write_tle

__all__ = [
    "TLE_TEMPLATE",
    "Constellation",
    "build_constellation",
    "build_nodes",
    "mean_motion_rad_per_min",
    "parse_tle_text",
    "walker_shell",
    "write_tle",
]

MU_KM3_S2 = 398600.8  # WGS-72 gravitational parameter (SGP4's constants)
_SGP4_EPOCH0 = dt.datetime(1949, 12, 31, tzinfo=dt.UTC)


@dataclass(frozen=True, eq=False)
class Constellation:
    """Satellites of a scenario as SGP4 records, in node order.

    Attributes
    ----------
    satrecs : list of Satrec
    names : tuple of str
    shell, plane, index : ndarray of int
        Shell number (Walker shells first, then the shells inferred from each TLE file),
        plane, and index (Walker: in the plane as generated; TLE: in the file). ``plane`` is
        -1 for TLE files read with ``shells: none``.
    shells : tuple of ShellSpec
        The Walker shells (TLE shells are in ``layouts``).
    epoch : datetime
        t = 0 of the plan.
    slot : ndarray of int32
        Slot in the plane, by argument of latitude at t = 0 (-1 without a plane).
    norad_id : ndarray of int64
        NORAD catalogue number (-1 for Walker satellites).
    layouts : tuple of ShellLayout
        Every shell's planes and slots, for +Grid.
    catalogues : tuple of CatalogueSummary
        What was inferred from each TLE file and what was left out.
    """

    satrecs: list[Satrec]
    names: tuple[str, ...]
    shell: Int32Array
    plane: Int32Array
    index: Int32Array
    shells: tuple[ShellSpec, ...]
    epoch: dt.datetime
    slot: Int32Array = field(default_factory=lambda: np.zeros(0, np.int32))
    norad_id: Int64Array = field(default_factory=lambda: np.zeros(0, np.int64))
    layouts: tuple[ShellLayout, ...] = ()
    catalogues: tuple[CatalogueSummary, ...] = ()

    def __len__(self) -> int:
        return len(self.satrecs)


def mean_motion_rad_per_min(altitude_km: float) -> float:
    """Mean motion of a circular orbit, rad/min: ``n = sqrt(mu / a^3)`` (Kepler's third law)."""
    a = EARTH_RADIUS_KM + altitude_km
    return math.sqrt(MU_KM3_S2 / a**3) * 60.0


def walker_shell(spec: ShellSpec, epoch: dt.datetime, first_satnum: int = 1) -> list[Satrec]:
    """SGP4 records of a Walker shell, plane-major (plane 0 index 0, plane 0 index 1, ...)."""
    epoch_days = (epoch - _SGP4_EPOCH0).total_seconds() / 86400.0
    n = mean_motion_rad_per_min(spec.altitude_km)
    total = spec.n_sats
    recs: list[Satrec] = []
    for p in range(spec.planes):
        raan = math.radians(p * spec.raan_spread_deg / spec.planes)
        for s in range(spec.sats_per_plane):
            m = math.radians(
                (360.0 * s / spec.sats_per_plane + 360.0 * spec.phasing * p / total) % 360.0
            )
            rec = Satrec()
            rec.sgp4init(
                WGS72,  # whichconst
                "i",  # opsmode (improved)
                (first_satnum + len(recs)) % 100000,  # satnum
                epoch_days,  # epoch, days since 1949-12-31
                0.0,  # bstar (no drag)
                0.0,  # ndot
                0.0,  # nddot
                0.0,  # ecco (circular)
                0.0,  # argpo
                math.radians(spec.inclination_deg),  # inclo
                m,  # mo, mean anomaly
                n,  # no_kozai, rad/min
                raan,  # nodeo
            )
            recs.append(rec)
    return recs


def build_constellation(scenario: Scenario) -> Constellation:
    """All satellites of a scenario, Walker shells first, then TLE files, in node order.

    Walker satellites are named ``s<shell>_<plane>_<index>``; catalogue satellites keep their
    catalogue names made safe (:func:`meshemu.spec.tle.node_names`) and come shell by shell,
    plane by plane, in slot order (:func:`meshemu.geometry.shells.infer_catalogue`).
    """
    recs: list[Satrec] = []
    names: list[str] = []
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("shell", "plane", "index", "slot", "norad")
    }
    layouts: list[ShellLayout] = []
    for k, spec in enumerate(scenario.shells):
        first = len(recs)
        recs.extend(walker_shell(spec, scenario.epoch, first_satnum=first + 1))
        layout, slot = walker_layout(spec, first)
        layouts.append(layout)
        names.extend(
            f"s{k}_{p}_{i}" for p in range(spec.planes) for i in range(spec.sats_per_plane)
        )
        cols["shell"].append(np.full(spec.n_sats, k))
        cols["plane"].append(np.repeat(np.arange(spec.planes), spec.sats_per_plane))
        cols["index"].append(np.tile(np.arange(spec.sats_per_plane), spec.planes))
        cols["slot"].append(slot)
        cols["norad"].append(np.full(spec.n_sats, -1))
    summaries = []
    taken = {g.name for g in scenario.ground} | set(names)
    for src in scenario.tle_sources:
        first, shell0 = len(recs), len(layouts)
        cat = infer_catalogue(src, scenario.epoch)
        chosen = [src.records[i] for i in cat.order]
        recs.extend(r.satrec for r in chosen)
        safe = node_names([r.name for r in chosen], taken)
        taken.update(safe)
        names.extend(safe)
        if src.shells == "none":
            cols["shell"].append(np.full(len(chosen), shell0))
            layouts_here: tuple[ShellLayout, ...] = ()
        else:
            cols["shell"].append(cat.shell + shell0)
            layouts_here = tuple(_offset(lay, first) for lay in cat.layouts)
        layouts.extend(layouts_here)
        cols["plane"].append(cat.plane)
        cols["index"].append(cat.order)
        cols["slot"].append(cat.slot)
        cols["norad"].append(np.array([r.norad_id for r in chosen], dtype=np.int64))
        summaries.append(cat.summary)
        if not chosen:
            raise ScenarioError(
                f"{src.label}: no satellite takes part ({_why_none(cat.summary)}); relax the "
                f"filters (min_altitude_km, shells, min_shell_sats, min_plane_sats)",
                field="constellation.tle_files",
                source=scenario.source or None,
            )

    def col(k: str, dtype: type) -> np.ndarray:
        return np.concatenate(cols[k]).astype(dtype) if cols[k] else np.zeros(0, dtype)

    return Constellation(
        recs,
        tuple(names),
        col("shell", np.int32),
        col("plane", np.int32),
        col("index", np.int32),
        scenario.shells,
        scenario.epoch,
        slot=col("slot", np.int32),
        norad_id=col("norad", np.int64),
        layouts=tuple(layouts),
        catalogues=tuple(summaries),
    )


def _offset(lay: ShellLayout, first: int) -> ShellLayout:
    planes = tuple((p + first).astype(np.int32) for p in lay.planes)
    return ShellLayout(
        lay.name, lay.inclination_deg, lay.altitude_km, planes, lay.raan_deg, lay.adjacent
    )


def _why_none(summary: CatalogueSummary) -> str:
    if not summary.excluded:
        return "the file is empty"
    return "; ".join(f"{n} {why}" for why, n in summary.excluded.items())


def build_nodes(scenario: Scenario, const: Constellation, sat_ecef0_km: FloatArray) -> Nodes:
    """Number every node and decide which satellites are compute nodes.

    Parameters
    ----------
    sat_ecef0_km : ndarray (S, 3)
        Satellite positions at t = 0 (for ``compute.satellites.cluster``: the ``size``
        satellites nearest to ``center``, the centre included).
    """
    n_sat = len(const)
    kinds = np.array(["sat"] * n_sat + [g.kind for g in scenario.ground], dtype=object)
    names = const.names + tuple(g.name for g in scenario.ground)
    dup = {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else set()
    if dup:
        raise ScenarioError(
            f"node names must be unique; {sorted(dup)[0]!r} is used twice "
            f"(ground nodes must not be named like satellites)",
            field="ground",
            source=scenario.source or None,
        )
    c = scenario.compute
    sat_ids = {n: i for i, n in enumerate(const.names)}

    def sat_id(name: str, fld: str) -> int:
        if name not in sat_ids:
            raise ScenarioError(
                f"unknown satellite {name!r}; satellites are named like "
                f"{', '.join(const.names[:3])} (Walker: s<shell>_<plane>_<index>; TLE: the "
                f"catalogue name with '_' for other characters, as in nodes.csv)",
                field=fld,
                source=scenario.source or None,
            )
        return sat_ids[name]

    if c.mode == "all":
        kinds[:n_sat] = "compute"
    elif c.mode == "every":
        kinds[: n_sat : c.every] = "compute"
    elif c.mode == "list":
        for n in c.names:
            kinds[sat_id(n, "compute.satellites.list")] = "compute"
    elif c.mode == "cluster":
        centre = sat_id(c.center, "compute.satellites.cluster.center")
        if c.size > n_sat:
            raise ScenarioError(
                f"cluster size {c.size} is larger than the constellation ({n_sat} satellites)",
                field="compute.satellites.cluster.size",
                source=scenario.source or None,
            )
        d = np.linalg.norm(sat_ecef0_km - sat_ecef0_km[centre], axis=1)
        kinds[np.argsort(d, kind="stable")[: c.size]] = "compute"
    nodes = Nodes(
        names,
        kinds.astype(str),
        np.concatenate([const.shell, -np.ones(len(scenario.ground), np.int32)]),
        np.concatenate([const.plane, -np.ones(len(scenario.ground), np.int32)]),
        np.concatenate([const.index, -np.ones(len(scenario.ground), np.int32)]),
        n_sat,
        slot=np.concatenate([const.slot, -np.ones(len(scenario.ground), np.int32)]),
        norad_id=np.concatenate([const.norad_id, -np.ones(len(scenario.ground), np.int64)]),
        relay=np.array(
            [False] * n_sat
            + [g.kind == "pop" or (g.kind == "station" and bool(g.pop)) for g in scenario.ground],
            bool,
        ),
    )
    for e in scenario.endpoints:
        nodes.id_of(e)  # raises with a clear message
    return nodes

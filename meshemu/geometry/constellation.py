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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sgp4 import exporter
from sgp4.api import WGS72, Satrec

from meshemu.errors import ScenarioError, TLEError
from meshemu.geometry.arrays import FloatArray, Int32Array
from meshemu.spec.scenario import EARTH_RADIUS_KM, Nodes, Scenario, ShellSpec

MU_KM3_S2 = 398600.8  # WGS-72 gravitational parameter (SGP4's constants)
_SGP4_EPOCH0 = dt.datetime(1949, 12, 31, tzinfo=dt.UTC)

TLE_TEMPLATE = (
    "1 NNNNNC NNNNNAAA NNNNN.NNNNNNNN +.NNNNNNNN +NNNNN-N +NNNNN-N N NNNNN\n"
    "2 NNNNN NNN.NNNN NNN.NNNN NNNNNNN NNN.NNNN NNN.NNNN NN.NNNNNNNNNNNNNN"
)


@dataclass(frozen=True, eq=False)
class Constellation:
    """Satellites of a scenario as SGP4 records, in node order.

    Attributes
    ----------
    satrecs : list of Satrec
    names : tuple of str
    shell, plane, index : ndarray of int
        Shell number (TLE files count as shells after the Walker ones), plane and index in
        plane (-1 for TLE satellites, whose plane is unknown).
    shells : tuple of ShellSpec
        The Walker shells (TLE shells are not listed).
    epoch : datetime
        t = 0 of the plan.
    """

    satrecs: list[Satrec]
    names: tuple[str, ...]
    shell: Int32Array
    plane: Int32Array
    index: Int32Array
    shells: tuple[ShellSpec, ...]
    epoch: dt.datetime

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


def _checksum(line: str) -> int:
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line[:68]) % 10


def parse_tle_text(text: str, source: str = "<tle>") -> list[tuple[str, Satrec]]:
    """Parse TLE or 3LE text (CelesTrak format) into ``(name, Satrec)`` pairs.

    Raises
    ------
    TLEError
        On the first malformed line, quoting it beside the expected template.
    """
    # Lines starting with '#' are comments (a meshemu extension, used to label generated files).
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    out: list[tuple[str, Satrec]] = []
    i = 0
    while i < len(lines):
        name = None
        if not lines[i].startswith("1 "):
            name = lines[i][2:].strip() if lines[i].startswith("0 ") else lines[i].strip()
            i += 1
        if i + 1 >= len(lines):
            raise TLEError(
                f"line {i + 1}: element set is cut short: expected line 1 and line 2 "
                f"after {lines[i - 1]!r}\nexpected:\n{TLE_TEMPLATE}",
                source=source,
            )
        l1, l2 = lines[i], lines[i + 1]
        for num, ln, lineno in (("1", l1, i + 1), ("2", l2, i + 2)):
            if not ln.startswith(num + " ") or len(ln) != 69:
                raise TLEError(
                    f"line {lineno}: not a TLE line {num} (must start with '{num} ' and be 69 "
                    f"characters, got {len(ln)}):\n  {ln}\nexpected:\n{TLE_TEMPLATE}",
                    source=source,
                )
            if ln[68].isdigit() and int(ln[68]) != _checksum(ln):
                raise TLEError(
                    f"line {lineno}: checksum is {ln[68]} but the line sums to "
                    f"{_checksum(ln)}:\n  {ln}",
                    source=source,
                )
        if l1[2:7] != l2[2:7]:
            raise TLEError(
                f"line {i + 1}: satellite numbers differ between line 1 "
                f"({l1[2:7]!r}) and line 2 ({l2[2:7]!r})",
                source=source,
            )
        try:
            rec = Satrec.twoline2rv(l1, l2, WGS72)
        except (ValueError, IndexError) as exc:
            raise TLEError(
                f"line {i + 1}: cannot parse element set ({exc}):\n  {l1}\n  {l2}\n"
                f"expected:\n{TLE_TEMPLATE}",
                source=source,
            ) from None
        if rec.error != 0 or not (0 < rec.no_kozai < 0.2):
            raise TLEError(
                f"line {i + 2}: implausible mean motion "
                f"{rec.no_kozai * 1440 / (2 * math.pi):.4f} rev/day:\n  {l2}",
                source=source,
            )
        out.append((name or f"SAT{l1[2:7].strip()}", rec))
        i += 2
    if not out:
        raise TLEError(f"no element sets found\nexpected:\n{TLE_TEMPLATE}", source=source)
    return out


def write_tle(path: Path | str, named_recs: list[tuple[str, Satrec]], header: str = "") -> None:
    """Write records as a 3LE file (name line, line 1, line 2)."""
    with open(path, "w") as f:
        for line in header.splitlines():
            f.write(f"# {line}\n")
        for name, rec in named_recs:
            l1, l2 = exporter.export_tle(rec)
            f.write(f"{name}\n{l1}\n{l2}\n")


def _sanitize(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name.strip()).strip("_")
    return out or "sat"


def build_constellation(scenario: Scenario) -> Constellation:
    """All satellites of a scenario, Walker shells first, then TLE files, in node order.

    Names: ``s<shell>_<plane>_<index>`` for Walker satellites, ``t<shell>_<n>`` for TLE ones.
    """
    recs: list[Satrec] = []
    names: list[str] = []
    shell_ix: list[int] = []
    plane: list[int] = []
    index: list[int] = []
    for k, spec in enumerate(scenario.shells):
        recs.extend(walker_shell(spec, scenario.epoch, first_satnum=len(recs) + 1))
        for p in range(spec.planes):
            for s in range(spec.sats_per_plane):
                names.append(f"s{k}_{p}_{s}")
                shell_ix.append(k)
                plane.append(p)
                index.append(s)
    for j, src in enumerate(scenario.tle_sources):
        k = len(scenario.shells) + j
        try:
            text = src.path.read_text()
        except OSError as exc:
            raise TLEError(f"cannot read TLE file: {exc.strerror}", source=str(src.path)) from None
        pairs = parse_tle_text(text, str(src.path))
        if src.max_satellites:
            pairs = pairs[: src.max_satellites]
        for n, (_, rec) in enumerate(pairs):
            recs.append(rec)
            names.append(f"t{k}_{n}")
            shell_ix.append(k)
            plane.append(-1)
            index.append(n)
    return Constellation(
        recs,
        tuple(names),
        np.array(shell_ix, dtype=np.int32),
        np.array(plane, dtype=np.int32),
        np.array(index, dtype=np.int32),
        scenario.shells,
        scenario.epoch,
    )


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
                f"{', '.join(const.names[:3])} (s<shell>_<plane>_<index>)",
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
    )
    for e in scenario.endpoints:
        nodes.id_of(e)  # raises with a clear message
    return nodes

"""Shells, planes and slots: given by Walker shells, inferred from TLE catalogues.

A :class:`ShellLayout` lists a shell's planes in order of right ascension of the ascending
node (RAAN), each plane's satellites in slot order, and which planes are adjacent; the +Grid
builder (:mod:`meshemu.geometry.grid`) needs nothing else, so Walker shells and catalogues
get the same links.

Inference from a catalogue, all at the plan's t = 0 (issue 9):

1. mean elements at t = 0: inclination, mean altitude ``a - R`` (SGP4's un-Kozai'd semi-major
   axis, WGS-72 equatorial radius), RAAN and mean argument of latitude ``u = omega + M``
   advanced from the element set's epoch by SGP4's own secular J2 rates (``nodedot``,
   ``argpdot``, ``mdot``; Hoots & Roehrich 1980, Spacetrack Report #3). For the near-circular
   orbits of LEO constellations ``u`` is the satellite's angle from the ascending node;
2. shells (``shells: auto``): satellites are grouped by inclination (sorted, split where two
   neighbours differ by more than :data:`INCLINATION_GAP_DEG`), then by mean altitude: in 1 km
   bins, runs of bins holding at least :data:`DENSE_FRACTION` of the group (and at least 3)
   are shells, and a satellite belongs to the nearest run within :data:`ALTITUDE_MARGIN_KM`.
   Satellites between runs (raising or lowering their orbits) and clusters smaller than
   ``min_shell_sats`` are left out, by reason. ``shells: [...]`` matches the listed shells
   instead, within their tolerances;
3. planes: within a shell, RAANs sorted around the circle, split where the gap exceeds
   ``plane_gap_deg``; planes are numbered by mean RAAN from 0 deg, planes smaller than
   ``min_plane_sats`` are left out;
4. slots: within a plane, by ``u`` from the ascending node (slot 0 nearest after it);
5. adjacency: planes p and p + 1 in RAAN order, cyclically; a RAAN gap wider than
   :data:`SEAM_FACTOR` times the shell's median gap is a seam (a partly filled shell, or the
   counter-rotating seam of a star-like shell), linked only with ``isl.allow_seam``.

Walker shells: plane p has RAAN ``p * spread / P``; slots are counted the same way (by ``u``
at t = 0); a delta shell wraps from the last plane to the first, a star shell's wrap is its
seam.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshemu.geometry.arrays import FloatArray, Int32Array
from meshemu.spec.scenario import EARTH_RADIUS_KM, ShellSpec
from meshemu.spec.tle import ShellMatch, TLERecord, TLESource

#: Neighbouring inclinations (sorted) further apart than this start a new group (deg).
INCLINATION_GAP_DEG = 0.03
#: A 1 km altitude bin is part of a shell when it holds this fraction of its inclination group.
DENSE_FRACTION = 0.01
#: A satellite belongs to an altitude run it is at most this far from (km).
ALTITUDE_MARGIN_KM = 2.0
#: A gap between adjacent planes wider than this many median gaps is a seam.
SEAM_FACTOR = 2.5


@dataclass(frozen=True, eq=False)
class ShellLayout:
    """One shell's planes and slots.

    Attributes
    ----------
    name : str
    inclination_deg, altitude_km : float
        Median of its satellites (Walker: the specification).
    planes : tuple of ndarray of int32
        Satellite ids (constellation order) of each plane, in slot order.
    raan_deg : ndarray
        Mean RAAN of each plane at t = 0.
    adjacent : tuple of (p, q, seam)
        Pairs of adjacent planes (q after p in RAAN); ``seam`` pairs are linked only with
        ``isl.allow_seam``.
    """

    name: str
    inclination_deg: float
    altitude_km: float
    planes: tuple[Int32Array, ...]
    raan_deg: FloatArray
    adjacent: tuple[tuple[int, int, bool], ...]

    @property
    def n_sats(self) -> int:
        return int(sum(p.size for p in self.planes))

    def plane_sizes(self) -> list[int]:
        return [int(p.size) for p in self.planes]


@dataclass(frozen=True)
class CatalogueSummary:
    """What was inferred from one TLE file and what was left out.

    Attributes
    ----------
    source : str
    n_read : int
    shells : tuple of dict
        ``name``, ``inclination_deg``, ``altitude_km``, ``satellites``, ``planes``,
        ``per_plane`` (min, median, max).
    excluded : dict of str to int
        Satellites left out, by reason.
    """

    source: str
    n_read: int
    shells: tuple[dict[str, Any], ...]
    excluded: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The summary as printed by ``meshemu plan`` and ``meshemu run``."""
        kept = sum(s["satellites"] for s in self.shells)
        out = [
            f"{self.source}: {self.n_read} element sets, {kept} satellites in "
            f"{len(self.shells)} shell(s)"
        ]
        for s in self.shells:
            lo, med, hi = s["per_plane"]
            out.append(
                f"  shell {s['name']}: {s['satellites']} satellites, {s['planes']} planes, "
                f"{lo}/{med:g}/{hi} per plane (min/median/max)"
            )
        for why, n in sorted(self.excluded.items(), key=lambda kv: -kv[1]):
            out.append(f"  left out: {n} {why}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_read": self.n_read,
            "shells": list(self.shells),
            "excluded": dict(self.excluded),
        }


@dataclass(frozen=True, eq=False)
class CatalogueShells:
    """A catalogue turned into satellites: which records take part, in node order, and the
    shells they form.

    Attributes
    ----------
    order : ndarray of int
        Indices into the source's records, in node order (shell, plane, slot).
    shell, plane, slot : ndarray of int32
        Per satellite in ``order``: shell number within this catalogue, plane, slot (-1 with
        ``shells: none``).
    layouts : tuple of ShellLayout
        Satellite ids relative to the first satellite of this catalogue.
    summary : CatalogueSummary
    """

    order: np.ndarray
    shell: Int32Array
    plane: Int32Array
    slot: Int32Array
    layouts: tuple[ShellLayout, ...]
    summary: CatalogueSummary


# ----------------------------------------------------------------------------- elements


def mean_elements(
    records: Sequence[TLERecord], t0: dt.datetime
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Mean inclination, altitude (km), RAAN and argument of latitude (deg) at ``t0``."""
    n = len(records)
    inc, alt, raan, u = (np.empty(n) for _ in range(4))
    for i, r in enumerate(records):
        s = r.satrec
        dt_min = (t0 - r.epoch).total_seconds() / 60.0
        inc[i] = s.inclo
        alt[i] = s.a * EARTH_RADIUS_KM - EARTH_RADIUS_KM
        raan[i] = s.nodeo + s.nodedot * dt_min
        u[i] = s.argpo + s.argpdot * dt_min + s.mo + s.mdot * dt_min
    return np.degrees(inc), alt, np.degrees(raan) % 360.0, np.degrees(u) % 360.0


# ----------------------------------------------------------------------------- shells


def _split_sorted(x: FloatArray, gap: float) -> list[np.ndarray]:
    """Indices of ``x`` grouped where sorted neighbours differ by more than ``gap``."""
    order = np.argsort(x, kind="stable")
    cuts = np.nonzero(np.diff(x[order]) > gap)[0] + 1
    return list(np.split(order, cuts))


def auto_shells(
    inc: FloatArray, alt: FloatArray, min_sats: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Shells found in (inclination, altitude): member indices of each shell, and the
    indices left over (between altitude runs or in clusters smaller than ``min_sats``)."""
    shells: list[np.ndarray] = []
    left: list[np.ndarray] = []
    if inc.size == 0:
        return shells, np.zeros(0, np.int64)
    for grp in _split_sorted(inc, INCLINATION_GAP_DEG):
        a = alt[grp]
        lo = math.floor(a.min())
        counts = np.bincount((np.floor(a) - lo).astype(np.int64))
        dense = counts >= max(3, DENSE_FRACTION * grp.size)
        runs = _runs(dense)
        if not runs:
            left.append(grp)
            continue
        # distance (km) of each satellite to each run [lo + r0, lo + r1 + 1)
        d = np.stack([np.maximum(lo + r0 - a, a - (lo + r1 + 1)).clip(0) for r0, r1 in runs])
        best = np.argmin(d, axis=0)
        near = d[best, np.arange(a.size)] <= ALTITUDE_MARGIN_KM
        left.append(grp[~near])
        for k in range(len(runs)):
            members = grp[near & (best == k)]
            if members.size >= min_sats:
                shells.append(members)
            else:
                left.append(members)
    rest = np.concatenate(left) if left else np.zeros(0, np.int64)
    return shells, rest


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) of each run of True in ``mask``; runs one False apart are merged."""
    idx = np.nonzero(mask)[0]
    if idx.size == 0:
        return []
    cuts = np.nonzero(np.diff(idx) > 2)[0] + 1
    return [(int(g[0]), int(g[-1])) for g in np.split(idx, cuts)]


def matched_shells(
    inc: FloatArray, alt: FloatArray, wanted: Sequence[ShellMatch]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Members of each listed shell (the nearest match within its tolerances), and the rest."""
    score = np.stack(
        [
            np.maximum(
                np.abs(inc - w.inclination_deg) / w.tolerance_deg,
                np.abs(alt - w.altitude_km) / w.tolerance_km,
            )
            for w in wanted
        ]
    )
    best = np.argmin(score, axis=0)
    ok = score[best, np.arange(inc.size)] <= 1.0
    members = [np.nonzero(ok & (best == k))[0] for k in range(len(wanted))]
    return members, np.nonzero(~ok)[0]


# ----------------------------------------------------------------------------- planes


def split_planes(raan_deg: FloatArray, gap_deg: float) -> list[np.ndarray]:
    """Indices grouped into planes: RAANs sorted around the circle, split at gaps wider than
    ``gap_deg``; planes in order of circular mean RAAN in [0, 360)."""
    n = raan_deg.size
    order = np.argsort(raan_deg, kind="stable")
    r = raan_deg[order]
    gaps = np.diff(np.concatenate([r, r[:1] + 360.0]))  # gaps[i]: from r[i] to r[i+1]
    cuts = np.nonzero(gaps > gap_deg)[0]
    if cuts.size == 0:
        return [order]
    start = (cuts[-1] + 1) % n  # first satellite after the last wide gap
    rolled = np.roll(order, -start)
    bounds = np.sort((cuts + 1 - start) % n)
    planes = [g for g in np.split(rolled, bounds) if g.size]
    means = [circular_mean_deg(raan_deg[g]) for g in planes]
    return [planes[k] for k in np.argsort(means, kind="stable")]


def circular_mean_deg(x: FloatArray) -> float:
    """Mean of angles (deg), in [0, 360)."""
    m = math.degrees(math.atan2(np.sin(np.radians(x)).mean(), np.cos(np.radians(x)).mean()))
    return m % 360.0


def adjacency(raan_deg: FloatArray) -> tuple[tuple[int, int, bool], ...]:
    """Adjacent planes (p, p + 1 cyclically) with seam flags: a RAAN gap wider than
    :data:`SEAM_FACTOR` median gaps is a seam."""
    n = raan_deg.size
    if n < 2:
        return ()
    if n == 2:
        return ((0, 1, False),)
    gaps = (np.roll(raan_deg, -1) - raan_deg) % 360.0
    med = float(np.median(gaps))
    return tuple((p, (p + 1) % n, bool(gaps[p] > SEAM_FACTOR * med)) for p in range(n))


def walker_layout(spec: ShellSpec, first_id: int) -> tuple[ShellLayout, Int32Array]:
    """The layout of a Walker shell whose satellites are ids ``first_id ...`` (plane-major,
    generation index order) and each satellite's slot (by argument of latitude at t = 0)."""
    P, S, T = spec.planes, spec.sats_per_plane, spec.n_sats
    ids = first_id + np.arange(T, dtype=np.int32).reshape(P, S)
    planes, slot = [], np.empty(T, np.int32)
    for p in range(P):
        u = (360.0 * np.arange(S) / S + 360.0 * spec.phasing * p / T) % 360.0
        order = np.argsort(u, kind="stable")
        planes.append(ids[p][order])
        slot[p * S + order] = np.arange(S, dtype=np.int32)
    if P == 1:
        adj: tuple[tuple[int, int, bool], ...] = ()
    elif P == 2:
        adj = ((0, 1, False),)
    else:
        star = spec.type == "walker-star"
        adj = tuple((p, (p + 1) % P, star and p == P - 1) for p in range(P))
    raan = np.arange(P) * spec.raan_spread_deg / P
    layout = ShellLayout(
        spec.name, spec.inclination_deg, spec.altitude_km, tuple(planes), raan, adj
    )
    return layout, slot


# ----------------------------------------------------------------------------- catalogues


def infer_catalogue(source: TLESource, t0: dt.datetime) -> CatalogueShells:
    """Shells, planes and slots of one TLE file at ``t0`` (see the module docstring)."""
    recs = source.records
    inc, alt, raan, u = mean_elements(recs, t0)
    excluded: Counter[str] = Counter()
    keep = np.ones(len(recs), bool)
    if source.min_altitude_km is not None:
        low = alt < source.min_altitude_km
        excluded[f"below min_altitude_km {source.min_altitude_km:g}"] += int(low.sum())
        keep &= ~low
    if source.max_altitude_km is not None:
        high = alt > source.max_altitude_km
        excluded[f"above max_altitude_km {source.max_altitude_km:g}"] += int((high & keep).sum())
        keep &= ~high
    idx = np.nonzero(keep)[0]
    if source.shells == "none":
        n = idx.size
        minus = -np.ones(n, np.int32)
        summary = CatalogueSummary(source.label, len(recs), (), _nonzero(excluded))
        return CatalogueShells(idx, np.zeros(n, np.int32), minus, minus, (), summary)
    if source.shells == "auto":
        min_sats = source.min_shell_sats or max(10, math.ceil(0.01 * len(recs)))
        groups, rest = auto_shells(inc[idx], alt[idx], min_sats)
        if rest.size:
            excluded[
                f"off any shell (between shell altitudes, e.g. raising or lowering orbit, or "
                f"in a cluster of fewer than min_shell_sats {min_sats})"
            ] += int(rest.size)
        groups.sort(key=lambda g: (round(float(np.median(inc[idx[g]])), 1), np.median(alt[idx[g]])))
        names = [f"{np.median(inc[idx[g]]):.2f}deg/{np.median(alt[idx[g]]):.0f}km" for g in groups]
    else:
        assert isinstance(source.shells, tuple)
        groups, rest = matched_shells(inc[idx], alt[idx], source.shells)
        if rest.size:
            excluded["matching none of the listed shells"] += int(rest.size)
        names = [w.name or f"{w.inclination_deg:g}deg/{w.altitude_km:g}km" for w in source.shells]
    order: list[np.ndarray] = []
    shell_l: list[np.ndarray] = []
    plane_l: list[np.ndarray] = []
    slot_l: list[np.ndarray] = []
    layouts: list[ShellLayout] = []
    infos: list[dict[str, Any]] = []
    n_done = 0
    for g, name in zip(groups, names):
        members = idx[g]
        planes = [members[p] for p in split_planes(raan[members], source.plane_gap_deg)]
        small = [p for p in planes if p.size < source.min_plane_sats]
        if small:
            excluded[f"in planes of fewer than min_plane_sats {source.min_plane_sats}"] += sum(
                p.size for p in small
            )
        planes = [p for p in planes if p.size >= source.min_plane_sats]
        if not planes:
            continue
        ids, raans = [], []
        for pi, p in enumerate(planes):
            p = p[np.argsort(u[p], kind="stable")]
            order.append(p)
            ids.append(np.arange(n_done, n_done + p.size, dtype=np.int32))
            raans.append(circular_mean_deg(raan[p]))
            shell_l.append(np.full(p.size, len(layouts), np.int32))
            plane_l.append(np.full(p.size, pi, np.int32))
            slot_l.append(np.arange(p.size, dtype=np.int32))
            n_done += p.size
        raan_arr = np.array(raans)
        all_m = np.concatenate(planes)
        layout = ShellLayout(
            name,
            float(np.median(inc[all_m])),
            float(np.median(alt[all_m])),
            tuple(ids),
            raan_arr,
            adjacency(raan_arr),
        )
        layouts.append(layout)
        sizes = layout.plane_sizes()
        infos.append(
            {
                "name": name,
                "inclination_deg": round(layout.inclination_deg, 3),
                "altitude_km": round(layout.altitude_km, 1),
                "satellites": layout.n_sats,
                "planes": len(sizes),
                "per_plane": (min(sizes), float(np.median(sizes)), max(sizes)),
            }
        )
    summary = CatalogueSummary(source.label, len(recs), tuple(infos), _nonzero(excluded))
    return CatalogueShells(
        _cat(order, np.int64),
        _cat(shell_l, np.int32),
        _cat(plane_l, np.int32),
        _cat(slot_l, np.int32),
        tuple(layouts),
        summary,
    )


def _cat(xs: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)


def _nonzero(c: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in c.items() if v}

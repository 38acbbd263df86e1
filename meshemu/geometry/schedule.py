"""From positions to link state over time: a :class:`~meshemu.geometry.linkstate.Snapshot`
per step.

:class:`LinkSchedule` turns a scenario into a stream of snapshots: it propagates the
constellation (:mod:`meshemu.geometry.orbit`), decides feasible ISLs and GSLs
(:mod:`meshemu.geometry.visibility`), applies the link policies (laser terminals, GSL
handover rule) and the acquisition time (a newly formed link is listed but not ``up`` for
``acquisition_s``; links present at t = 0 are taken as already acquired), and fills delay
(distance / c), rate, queue size and loss.

GSL handover
------------
``nearest``: at each step a station uses the ``links_per_station`` nearest satellites above
its minimum elevation. ``longest-visible``: a station keeps its satellites while they are
visible; a free slot takes the visible satellite that stays visible longest (looked ahead
with SGP4 over the next 30 minutes). In both, when a station changes satellite and the new
GSL is still acquiring, the old one stays up while it is visible (make before break).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from meshemu.errors import ScenarioError
from meshemu.geometry.arrays import BoolArray, FloatArray, Int32Array, Int64Array
from meshemu.geometry.constellation import Constellation, build_constellation, build_nodes
from meshemu.geometry.grid import GridLinks, plus_grid
from meshemu.geometry.linkstate import C_M_PER_S, GSL, ISL, Snapshot
from meshemu.geometry.orbit import (
    ecef_to_geodetic,
    geodetic_to_ecef_km,
    propagate_ecef_km,
    up_vector,
)
from meshemu.geometry.visibility import (
    distance_km,
    elevation_deg,
    isl_feasible,
    nearest_isls,
)
from meshemu.spec.scenario import Nodes, Scenario

log = logging.getLogger(__name__)

LOOKAHEAD_S = 1800.0
LOOKAHEAD_STEP_S = 10.0


def _no_pairs() -> tuple[Int32Array, Int32Array]:
    return np.zeros(0, np.int32), np.zeros(0, np.int32)


@dataclass
class _History:
    """What one step hands to the next: the edge keys (sorted), when each link was formed,
    and the ISLs chosen (``nearest`` pattern: satellite ids a < b, sorted by (a, b))."""

    keys: Int64Array = field(default_factory=lambda: np.zeros(0, np.int64))
    formed: FloatArray = field(default_factory=lambda: np.zeros(0, np.float64))
    isl: tuple[Int32Array, Int32Array] = field(default_factory=_no_pairs)


@dataclass
class _GslState:
    current: list[set[int]]  # per station: selected satellites
    linger: list[dict[int, float]]  # per station: old satellite -> kept until t


class LinkSchedule:
    """Snapshots of a scenario at ``t = 0, step, 2 step, ...``.

    Parameters
    ----------
    scenario : Scenario
    step_s : float
        Time between snapshots.

    Attributes
    ----------
    nodes : Nodes
    constellation : Constellation
    ground_ecef_km : ndarray (G, 3)
    """

    def __init__(self, scenario: Scenario, step_s: float = 1.0) -> None:
        if not step_s > 0:
            raise ScenarioError(f"step must be > 0 s, got {step_s!r}")
        self.scenario = scenario
        self.step_s = float(step_s)
        self.constellation: Constellation = build_constellation(scenario)
        r0 = propagate_ecef_km(self.constellation.satrecs, scenario.epoch, np.array([0.0]))[:, 0]
        self.nodes: Nodes = build_nodes(scenario, self.constellation, r0)
        g = scenario.ground
        self.ground_ecef_km = geodetic_to_ecef_km(
            [x.lat_deg for x in g], [x.lon_deg for x in g], [x.alt_m for x in g]
        ).reshape(-1, 3)
        self.ground_up = up_vector([x.lat_deg for x in g], [x.lon_deg for x in g]).reshape(-1, 3)
        self.n_sats = len(self.constellation)
        for summary in self.constellation.catalogues:
            for line in summary.lines():
                log.info("%s", line)
        if scenario.isl.pattern == "plus-grid":
            grid = plus_grid_links(scenario, self.constellation, r0)
            self.grid_a, self.grid_b, self.grid_cross = grid.a, grid.b, grid.cross
        self.transit = self.nodes.transit

    # ------------------------------------------------------------------ public
    def positions_ecef_km(self, t_s: npt.ArrayLike) -> FloatArray:
        """Satellite positions (S, T, 3) at times ``t_s``."""
        return propagate_ecef_km(self.constellation.satrecs, self.scenario.epoch, t_s)

    def snapshots(
        self, duration_s: float, chunk_steps: int = 120, start_s: float = 0.0
    ) -> Iterator[Snapshot]:
        """Yield the snapshot at every step from ``start_s`` to ``start_s + duration_s``
        inclusive (times after the scenario epoch; links present at ``start_s`` count as
        acquired)."""
        n_steps = int(np.floor(duration_s / self.step_s + 1e-9)) + 1
        state = self._fresh_gsl_state()
        hist = _History()
        for c0 in range(0, n_steps, chunk_steps):
            ts = start_s + np.arange(c0, min(c0 + chunk_steps, n_steps)) * self.step_s
            pos = self.positions_ecef_km(ts)
            for j, t in enumerate(ts):
                snap, hist = self._snapshot(float(t), pos[:, j], state, hist, first=(c0 + j == 0))
                yield snap

    def snapshot_at(self, t_s: float) -> Snapshot:
        """The snapshot at one time, without history (every present link counts as acquired)."""
        pos = self.positions_ecef_km(np.array([t_s]))[:, 0]
        snap, _ = self._snapshot(float(t_s), pos, self._fresh_gsl_state(), _History(), first=True)
        return snap

    # ------------------------------------------------------------------ one step
    def _fresh_gsl_state(self) -> _GslState:
        ground = self.scenario.ground
        return _GslState([set() for _ in ground], [{} for _ in ground])

    def _isls(
        self, r: FloatArray, prev_isl: tuple[Int32Array, Int32Array]
    ) -> tuple[Int32Array, Int32Array, FloatArray, tuple[Int32Array, Int32Array]]:
        """ISLs at this step: (a, b, km, the pairs to keep at the next step)."""
        sc = self.scenario
        if self.n_sats and sc.isl.pattern == "plus-grid":
            lat = ecef_to_geodetic(r)[0] if sc.isl.cross_plane_max_lat_deg is not None else None
            ok, dist = isl_feasible(r, self.grid_a, self.grid_b, sc.isl, lat, self.grid_cross)
            return self.grid_a[ok], self.grid_b[ok], dist[ok], prev_isl
        if self.n_sats:
            ia, ib = nearest_isls(r, sc.isl, keep=prev_isl)
            return ia, ib, distance_km(r[ia], r[ib]), (ia, ib)
        empty = np.zeros(0, np.int32)
        return empty, empty, np.zeros(0), _no_pairs()

    def _snapshot(
        self, t: float, r: FloatArray, state: _GslState, hist: _History, first: bool
    ) -> tuple[Snapshot, _History]:
        sc = self.scenario
        n = len(self.nodes)
        ia, ib, idist, isl_now = self._isls(r, hist.isl)
        ga, gb, gdist, linger = self._gsls(t, r, state)
        a = np.concatenate([ia, ga]).astype(np.int32)
        b = np.concatenate([ib, gb]).astype(np.int32)
        kind = np.concatenate([np.full(ia.size, ISL, np.int8), np.full(ga.size, GSL, np.int8)])
        dist_km = np.concatenate([idist, gdist])
        rate = np.concatenate(
            [np.full(ia.size, sc.isl.rate_mbps * 1e6), np.full(ga.size, sc.gsl.rate_mbps * 1e6)]
        )
        acq = np.concatenate(
            [np.full(ia.size, sc.isl.acquisition_s), np.full(ga.size, sc.gsl.acquisition_s)]
        )
        lingering = np.concatenate([np.zeros(ia.size, bool), linger])
        key = a.astype(np.int64) * n + b
        order = np.argsort(key, kind="stable")
        a, b, kind, key = a[order], b[order], kind[order], key[order]
        dist_km, rate, acq, lingering = dist_km[order], rate[order], acq[order], lingering[order]
        # --- acquisition: when was each present link formed?
        formed = np.full(key.size, t if not first else -np.inf)
        if hist.keys.size:
            pos = np.searchsorted(hist.keys, key)
            pos_c = np.minimum(pos, hist.keys.size - 1)
            cont = hist.keys[pos_c] == key
            formed[cont] = hist.formed[pos_c[cont]]
        up = (t - formed) >= acq - 1e-9
        up |= lingering  # a lingering (make-before-break) GSL is one that was up already
        is_isl = kind == ISL
        snap = Snapshot(
            t_s=t,
            n_nodes=n,
            a=a,
            b=b,
            kind=kind,
            up=up,
            distance_m=dist_km * 1000.0,
            delay_s=dist_km * 1000.0 / C_M_PER_S,
            rate_bps=rate,
            transit=self.transit,
            queue_packets=np.where(is_isl, sc.isl.queue_packets, sc.gsl.queue_packets).astype(
                np.int32
            ),
            loss=np.where(is_isl, sc.isl.loss, sc.gsl.loss),
        )
        return snap, _History(key, formed, isl_now)

    def _gsls(
        self, t: float, r: FloatArray, state: _GslState
    ) -> tuple[Int32Array, Int32Array, FloatArray, BoolArray]:
        """Selected (and lingering) GSLs at this step: (sat ids, ground ids, km, lingering)."""
        sc = self.scenario
        G = len(sc.ground)
        if G == 0 or self.n_sats == 0:
            z = np.zeros(0)
            return z.astype(np.int32), z.astype(np.int32), z, z.astype(bool)
        elev = elevation_deg(self.ground_ecef_km, self.ground_up, r)  # (G, S)
        dist = np.linalg.norm(r[None, :, :] - self.ground_ecef_km[:, None, :], axis=-1)
        vis = self._visible(elev, dist)
        L = sc.gsl.links_per_station or self.n_sats
        sats, gnds, kms, lingers = [], [], [], []
        need_lookahead: list[int] = []
        new_sel: list[set[int]] = []
        for g in range(G):
            visible = np.nonzero(vis[g])[0]
            if sc.gsl.handover == "nearest":
                sel = set(visible[np.argsort(dist[g, visible], kind="stable")[:L]].tolist())
            else:
                sel = {s for s in state.current[g] if vis[g, s]}
                if len(sel) < L and visible.size > len(sel):
                    need_lookahead.append(g)
            new_sel.append(sel)
        if need_lookahead:
            self._fill_longest_visible(t, vis, need_lookahead, new_sel)
        for g in range(G):
            sel = new_sel[g]
            if sc.gsl.acquisition_s > 0:
                # make before break: a satellite dropped from the selection stays linked while
                # it is visible and the links that replace it are still acquiring
                for s in state.current[g] - sel:
                    state.linger[g].setdefault(s, t + sc.gsl.acquisition_s)
            state.linger[g] = {
                s: until
                for s, until in state.linger[g].items()
                if until > t + 1e-9 and vis[g, s] and s not in sel
            }
            for s in sorted(sel | set(state.linger[g])):
                sats.append(s)
                gnds.append(self.n_sats + g)
                kms.append(dist[g, s])
                lingers.append(s in state.linger[g])
            state.current[g] = sel
        return (
            np.array(sats, np.int32),
            np.array(gnds, np.int32),
            np.array(kms, float),
            np.array(lingers, bool),
        )

    def _visible(self, elev_deg: FloatArray, range_km: FloatArray) -> BoolArray:
        """Which satellites may serve a station: elevation and, if set, slant range."""
        gsl = self.scenario.gsl
        with np.errstate(invalid="ignore"):
            ok: BoolArray = elev_deg >= gsl.min_elevation_deg
            if gsl.max_range_km is not None:
                ok &= range_km <= gsl.max_range_km
        return ok

    def _fill_longest_visible(
        self, t: float, vis: BoolArray, stations: list[int], sel: list[set[int]]
    ) -> None:
        sc = self.scenario
        cand = sorted({int(s) for g in stations for s in np.nonzero(vis[g])[0]})
        look = np.arange(0.0, LOOKAHEAD_S + LOOKAHEAD_STEP_S, LOOKAHEAD_STEP_S) + t
        recs = [self.constellation.satrecs[s] for s in cand]
        pos = propagate_ecef_km(recs, sc.epoch, look)  # (C, T, 3)
        for g in stations:
            el = elevation_deg(
                self.ground_ecef_km[g : g + 1], self.ground_up[g : g + 1], pos.reshape(-1, 3)
            ).reshape(len(cand), look.size)
            visible_now = vis[g, cand]
            rng = np.linalg.norm(pos.reshape(-1, 3) - self.ground_ecef_km[g], axis=-1).reshape(
                len(cand), look.size
            )
            above = self._visible(el, rng)
            # steps until first not-visible sample (all visible -> full window)
            remaining = np.where(above.all(axis=1), look.size, np.argmin(above, axis=1))
            remaining = np.where(visible_now, remaining, -1)
            for j in np.argsort(-remaining, kind="stable"):
                if len(sel[g]) >= (sc.gsl.links_per_station or self.n_sats) or remaining[j] < 0:
                    break
                sel[g].add(cand[j])


def plus_grid_links(scenario: Scenario, const: Constellation, r0: FloatArray) -> GridLinks:
    """The +Grid candidates of a scenario; a shell that gets no link at t = 0 is an error
    naming the shell and why."""
    isl = scenario.isl
    if not const.layouts:
        raise ScenarioError(
            "+Grid needs shells with planes, and this scenario has none (TLE files read with "
            "shells: none); use shells: auto or a list, or isl.pattern: nearest",
            field="isl.pattern",
            source=scenario.source or None,
        )
    grid = plus_grid(const.layouts, r0, isl.cross_plane_shift, isl.allow_seam, isl.max_range_km)
    ok, dist = isl_feasible(r0, grid.a, grid.b, isl)
    for k, lay in enumerate(const.layouts):
        mine = grid.shell == k
        if (ok & mine).any():
            continue
        if not mine.any():
            why = f"its planes hold {lay.plane_sizes()} satellites, too few for any link"
        else:
            why = (
                f"all {int(mine.sum())} candidate links are out of range or below the grazing "
                f"altitude (shortest {np.nanmin(dist[mine]):.0f} km; isl.max_range_km "
                f"{isl.max_range_km:g}, isl.min_grazing_altitude_km "
                f"{isl.min_grazing_altitude_km:g})"
            )
        raise ScenarioError(
            f"+Grid yields no link in shell {lay.name} at t = 0: {why}",
            field="isl.pattern",
            source=scenario.source or None,
        )
    return grid

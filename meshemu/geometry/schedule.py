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
``nearest``: at each step a station uses the ``links_per_station`` (a gateway:
``gateway_links``) nearest satellites above
its minimum elevation. ``longest-visible``: a station keeps its satellites while they are
visible; a free slot takes the visible satellite that stays visible longest (looked ahead
with SGP4 over the next 30 minutes). ``hysteresis_km`` (``nearest`` only) keeps a station's
satellite until another is nearer by more than the margin, so two satellites at nearly the
same range do not make it flap.

When assignments change (``gsl.schedule``)
------------------------------------------
``continuous``: at any step, as above. ``slotted``: only at the boundaries of UTC-aligned
slots (:class:`~meshemu.geometry.slots.SlotClock`; Starlink: every 15 s at seconds 12, 27,
42, 57 of the minute). At a boundary a station picks its satellites by its handover rule,
preferring those that stay above the mask until the slot ends (their positions at the end
of the slot are propagated once per boundary); the satellites picked stay assigned for the
slot while they remain visible. Only a station left without any visible satellite picks a
new one before the next boundary.

How a switch happens (``gsl.handover_mode``)
--------------------------------------------
``make-before-break`` (default): when a station changes satellite and the new GSL is still
acquiring (``acquisition_s``), the old one stays up while it is visible. ``break-before-make``:
the old GSL goes at the switch and the new one is listed but not up for ``outage_s`` (the
measured reply gap at Starlink slot boundaries, about 0.7 s; Pan, Zhao and Cai, ICC 2024), or
for ``acquisition_s`` if that is longer. The outage is seen at step resolution: a plan with
1 s steps shows a 0.7 s outage as one step down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sgp4.api import SatrecArray

from meshemu.errors import ScenarioError
from meshemu.geometry.arrays import BoolArray, FloatArray, Int32Array, Int64Array
from meshemu.geometry.constellation import Constellation, build_constellation, build_nodes
from meshemu.geometry.grid import GridLinks, plus_grid
from meshemu.geometry.linkstate import C_M_PER_S, GSL, ISL, TRL, Snapshot, link_draw
from meshemu.geometry.orbit import (
    ecef_to_geodetic,
    geodetic_to_ecef_km,
    propagate_ecef_km,
    up_vector,
)
from meshemu.geometry.slots import SlotClock
from meshemu.geometry.visibility import (
    distance_km,
    elevation_deg,
    isl_feasible,
    nearest_isls,
)
from meshemu.spec.access import C_M_PER_S as _C
from meshemu.spec.access import great_circle_km
from meshemu.spec.scenario import Nodes, Scenario

log = logging.getLogger(__name__)

LOOKAHEAD_S = 1800.0
LOOKAHEAD_STEP_S = 10.0
#: Largest block of satellite positions propagated at once (bytes): a chunk of steps holds
#: S x steps x 3 float64, so a million satellites propagate a few steps at a time.
POSITIONS_CHUNK_BYTES = 256 * 2**20
#: Stations whose satellites' heights above the horizon are computed in one block
#: (:func:`_visible_sats`: S x block float64).
STATION_BLOCK = 8


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
    outage: list[dict[int, float]]  # per station: new satellite -> not up until t
    slot: int | None = None  # slotted: the slot of the previous step


@dataclass(frozen=True)
class _Visible:
    """The satellites each station may use at one step: ids (ascending) and slant range."""

    ids: list[Int64Array]
    range_km: list[FloatArray]

    def has(self, g: int, s: int) -> bool:
        ids = self.ids[g]
        i = int(np.searchsorted(ids, s))
        return i < ids.size and int(ids[i]) == s

    def mask(self, g: int, sats: npt.NDArray[np.integer]) -> BoolArray:
        ids = self.ids[g]
        if ids.size == 0:
            return np.zeros(len(sats), bool)
        i = np.minimum(np.searchsorted(ids, sats), ids.size - 1)
        found: BoolArray = ids[i] == sats
        return found

    def km(self, g: int, s: int) -> float:
        return float(self.range_km[g][int(np.searchsorted(self.ids[g], s))])


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
        sats = self.constellation.satrecs
        if len(sats) > 100_000:
            log.info("%d satellites: SGP4 records made; propagating t = 0", len(sats))
        # every propagation goes through one SatrecArray (making one copies every record)
        self._satarray: SatrecArray | list[object] = SatrecArray(sats) if sats else []
        r0 = propagate_ecef_km(self._satarray, scenario.epoch, np.array([0.0]))[:, 0]
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
            if len(sats) > 100_000:
                log.info("+Grid: %d candidate ISLs", grid.a.size)
        self.transit = self.nodes.transit
        self.tier = self.nodes.tier
        self.relay = self.nodes.relays
        #: ground nodes with a radio (GSLs); PoPs and servers have terrestrial links only
        self.radio = np.array([x.kind not in ("pop", "server") for x in g], bool)
        self.trl_a, self.trl_b, self.trl_km, self.trl_delay_s = self._terrestrial()
        gsl = scenario.gsl
        self.slots: SlotClock | None = (
            SlotClock(scenario.epoch, gsl.slot_s, gsl.slot_offset_s)
            if gsl.schedule == "slotted"
            else None
        )

    def _terrestrial(self) -> tuple[Int32Array, Int32Array, FloatArray, FloatArray]:
        """The access network's terrestrial links: every gateway (station with a PoP) to
        its PoP and every server to its PoP. Length is the fibre route (great-circle
        distance x route factor), delay that over the speed of light in fibre
        (:func:`meshemu.spec.access.backhaul_delay_s`)."""
        acc = self.scenario.access
        ground = self.scenario.ground
        a: list[int] = []
        b: list[int] = []
        km: list[float] = []
        if acc is not None:
            ids = {x.name: self.n_sats + i for i, x in enumerate(ground)}
            for i, x in enumerate(ground):
                if x.pop and x.kind in ("station", "server"):
                    q = ground[ids[x.pop] - self.n_sats]
                    u, w = sorted((self.n_sats + i, ids[x.pop]))
                    a.append(u)
                    b.append(w)
                    gc = great_circle_km(x.lat_deg, x.lon_deg, q.lat_deg, q.lon_deg)
                    km.append(max(gc, 0.001) * acc.route_factor)
        fibre_km = np.array(km, float)
        vf = acc.fibre_velocity_factor if acc is not None else 1.0
        return (
            np.array(a, np.int32),
            np.array(b, np.int32),
            fibre_km,
            fibre_km * 1e3 / (_C * vf),
        )

    # ------------------------------------------------------------------ public
    def positions_ecef_km(self, t_s: npt.ArrayLike) -> FloatArray:
        """Satellite positions (S, T, 3) at times ``t_s``."""
        return propagate_ecef_km(self._satarray, self.scenario.epoch, t_s)

    def snapshots(
        self, duration_s: float, chunk_steps: int = 120, start_s: float = 0.0
    ) -> Iterator[Snapshot]:
        """Yield the snapshot at every step from ``start_s`` to ``start_s + duration_s``
        inclusive (times after the scenario epoch; links present at ``start_s`` count as
        acquired)."""
        for snap, _ in self.steps(duration_s, chunk_steps, start_s):
            yield snap

    def steps(
        self, duration_s: float, chunk_steps: int = 120, start_s: float = 0.0
    ) -> Iterator[tuple[Snapshot, FloatArray]]:
        """As :meth:`snapshots`, with the satellites' Earth-fixed positions (S, 3), km, that
        each snapshot was made from.

        Positions are propagated ``chunk_steps`` steps at a time, fewer when a chunk would
        take more than :data:`POSITIONS_CHUNK_BYTES`.
        """
        n_steps = int(np.floor(duration_s / self.step_s + 1e-9)) + 1
        if self.slots is not None and not self.slots.steps_align(start_s, self.step_s):
            log.warning(
                "gsl.schedule slotted: steps of %g s from t = %g s do not fall on the slot "
                "boundaries (%g s slots, the first at t = %g s); assignments change at the "
                "first step after each boundary",
                self.step_s,
                start_s,
                self.slots.slot_s,
                self.slots.phase_s,
            )
        per_step = 24 * max(self.n_sats, 1)
        chunk_steps = max(1, min(chunk_steps, POSITIONS_CHUNK_BYTES // per_step))
        state = self._fresh_gsl_state()
        hist = _History()
        for c0 in range(0, n_steps, chunk_steps):
            ts = start_s + np.arange(c0, min(c0 + chunk_steps, n_steps)) * self.step_s
            pos = self.positions_ecef_km(ts)
            for j, t in enumerate(ts):
                r = pos[:, j]
                snap, hist = self._snapshot(float(t), r, state, hist, first=(c0 + j == 0))
                yield snap, r

    def snapshot_at(self, t_s: float) -> Snapshot:
        """The snapshot at one time, without history (every present link counts as acquired)."""
        pos = self.positions_ecef_km(np.array([t_s]))[:, 0]
        snap, _ = self._snapshot(float(t_s), pos, self._fresh_gsl_state(), _History(), first=True)
        return snap

    # ------------------------------------------------------------------ one step
    def _fresh_gsl_state(self) -> _GslState:
        ground = self.scenario.ground
        return _GslState([set() for _ in ground], [{} for _ in ground], [{} for _ in ground])

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
        ga, gb, gdist, linger, blocked = self._gsls(t, r, state)
        ta, tb, nt = self.trl_a, self.trl_b, self.trl_a.size
        trl_rate = sc.access.rate_mbps * 1e6 if sc.access is not None else 0.0
        a = np.concatenate([ia, ga, ta]).astype(np.int32)
        b = np.concatenate([ib, gb, tb]).astype(np.int32)
        kind = np.concatenate(
            [
                np.full(ia.size, ISL, np.int8),
                np.full(ga.size, GSL, np.int8),
                np.full(nt, TRL, np.int8),
            ]
        )
        dist_km = np.concatenate([idist, gdist, self.trl_km])
        delay = np.concatenate(
            [np.concatenate([idist, gdist]) * 1000.0 / C_M_PER_S, self.trl_delay_s]
        )
        rate = np.concatenate(
            [
                np.full(ia.size, sc.isl.rate_mbps * 1e6),
                np.full(ga.size, sc.gsl.rate_mbps * 1e6),
                np.full(nt, trl_rate),
            ]
        )
        acq = np.concatenate(
            [np.full(ia.size, sc.isl.acquisition_s), np.full(ga.size, sc.gsl.acquisition_s)]
            + [np.zeros(nt)]
        )
        lingering = np.concatenate([np.zeros(ia.size, bool), linger, np.zeros(nt, bool)])
        blocked = np.concatenate([np.zeros(ia.size, bool), blocked, np.zeros(nt, bool)])
        queue = np.concatenate(
            [
                np.full(ia.size, sc.isl.queue_packets),
                np.full(ga.size, sc.gsl.queue_packets),
                np.full(nt, sc.access.queue_packets if sc.access is not None else 0),
            ]
        ).astype(np.int32)
        loss = np.concatenate([np.full(ia.size, sc.isl.loss), np.full(ga.size, sc.gsl.loss)])
        loss = np.concatenate([loss, np.zeros(nt)])
        key = a.astype(np.int64) * n + b
        order = np.argsort(key, kind="stable")
        a, b, kind, key = a[order], b[order], kind[order], key[order]
        dist_km, rate, acq, lingering = dist_km[order], rate[order], acq[order], lingering[order]
        blocked = blocked[order]
        delay, queue, loss = delay[order], queue[order], loss[order]
        model = sc.gsl.access_model
        # the access model is a user terminal's: every GSL but a gateway's (b is the ground end)
        access = (kind == GSL) & ~self.relay[b] if model is not None else np.zeros(0, bool)
        # --- acquisition: when was each present link formed?
        formed = np.full(key.size, t if not first else -np.inf)
        if hist.keys.size:
            pos = np.searchsorted(hist.keys, key)
            pos_c = np.minimum(pos, hist.keys.size - 1)
            cont = hist.keys[pos_c] == key
            formed[cont] = hist.formed[pos_c[cont]]
        up = (t - formed) >= acq - 1e-9
        up |= lingering  # a lingering (make-before-break) GSL is one that was up already
        up &= ~blocked  # a break-before-make GSL in its outage
        snap = Snapshot(
            t_s=t,
            n_nodes=n,
            a=a,
            b=b,
            kind=kind,
            up=up,
            distance_m=dist_km * 1000.0,
            delay_s=delay,
            rate_bps=rate,
            transit=self.transit,
            queue_packets=queue,
            loss=loss,
            tier=self.tier,
            relay=self.relay,
            access=access,
            access_draw=np.where(access, link_draw(key), 0.0) if model is not None else np.zeros(0),
            access_model=model,
        )
        return snap, _History(key, formed, isl_now)

    def _gsls(
        self, t: float, r: FloatArray, state: _GslState
    ) -> tuple[Int32Array, Int32Array, FloatArray, BoolArray, BoolArray]:
        """Selected (and lingering) GSLs at this step: (sat ids, ground ids, km, lingering,
        in a break-before-make outage)."""
        sc = self.scenario
        gsl = sc.gsl
        G = len(sc.ground)
        if G == 0 or self.n_sats == 0:
            z = np.zeros(0)
            return z.astype(np.int32), z.astype(np.int32), z, z.astype(bool), z.astype(bool)
        vis = self._visible_sats(r)
        L_user = gsl.links_per_station or self.n_sats
        L_gateway = gsl.gateway_links or self.n_sats
        # slotted: is this step the first of a slot (where assignments may change)?
        boundary = True
        stays: list[BoolArray] | None = None
        if self.slots is not None:
            k = int(self.slots.slot_index(t))
            boundary = state.slot is None or k != state.slot
            state.slot = k
            if boundary:
                stays = self._visible_at(self.slots.slot_start(k + 1) - 1e-3, vis)
        sats, gnds, kms, lingers, blocks = [], [], [], [], []
        need_lookahead: list[int] = []
        new_sel: list[set[int]] = []
        for g in range(G):
            if not self.radio[g]:
                new_sel.append(set())
                continue
            visible = vis.ids[g]
            L = L_gateway if self.relay[self.n_sats + g] else L_user
            kept = {s for s in state.current[g] if vis.has(g, s)}
            if not boundary and (kept or visible.size == 0):
                new_sel.append(kept)  # mid-slot: the slot's assignment holds
                continue
            if not boundary:
                log.debug("t = %g s: station %d lost its satellites mid-slot", t, g)
            if gsl.handover == "nearest":
                rank = vis.range_km[g]
                if stays is not None:  # prefer satellites that stay visible all slot
                    rank = rank + np.where(stays[g], 0.0, 1e9)
                order = np.argsort(rank, kind="stable")
                if gsl.hysteresis_km > 0 and kept:
                    new_sel.append(self._with_hysteresis(g, vis, kept, order, L))
                else:
                    new_sel.append(set(visible[order[:L]].tolist()))
            else:
                if len(kept) < L and visible.size > len(kept):
                    need_lookahead.append(g)
                new_sel.append(kept)
        if need_lookahead:
            self._fill_longest_visible(t, vis, need_lookahead, new_sel)
        bbm = gsl.handover_mode == "break-before-make"
        for g in range(G):
            sel = new_sel[g]
            before = state.current[g]
            if bbm:
                if before and sel != before:
                    for s in sel - before:
                        state.outage[g][s] = t + gsl.outage_s
                state.outage[g] = {
                    s: until for s, until in state.outage[g].items() if until > t + 1e-9
                }
            elif gsl.acquisition_s > 0:
                # make before break: a satellite dropped from the selection stays linked while
                # it is visible and the links that replace it are still acquiring
                for s in before - sel:
                    state.linger[g].setdefault(s, t + gsl.acquisition_s)
            state.linger[g] = {
                s: until
                for s, until in state.linger[g].items()
                if until > t + 1e-9 and vis.has(g, s) and s not in sel
            }
            state.current[g] = sel
            chosen = np.array(sorted(sel | set(state.linger[g])), dtype=np.int64)
            if chosen.size == 0:
                continue
            pos = np.searchsorted(vis.ids[g], chosen)
            sats.append(chosen)
            gnds.append(np.full(chosen.size, self.n_sats + g))
            kms.append(vis.range_km[g][pos])
            lingers.append(np.array([s in state.linger[g] for s in chosen.tolist()], bool))
            blocks.append(np.array([s in state.outage[g] for s in chosen.tolist()], bool))
        return (
            np.concatenate(sats).astype(np.int32) if sats else np.zeros(0, np.int32),
            np.concatenate(gnds).astype(np.int32) if gnds else np.zeros(0, np.int32),
            np.concatenate(kms).astype(float) if kms else np.zeros(0),
            np.concatenate(lingers) if lingers else np.zeros(0, bool),
            np.concatenate(blocks) if blocks else np.zeros(0, bool),
        )

    def _with_hysteresis(
        self, g: int, vis: _Visible, kept: set[int], order: npt.NDArray[np.intp], n_links: int
    ) -> set[int]:
        """``nearest`` with a margin: the station keeps its visible satellites, fills free
        links with the nearest others, and swaps a kept satellite for a free one only when
        that one is nearer by more than ``gsl.hysteresis_km``."""
        margin = self.scenario.gsl.hysteresis_km
        ids, km = vis.ids[g], vis.range_km[g]
        sel = set(sorted(kept, key=lambda s: vis.km(g, s))[:n_links])
        free = [int(ids[i]) for i in order if int(ids[i]) not in sel]
        while len(sel) < n_links and free:
            sel.add(free.pop(0))
        for s in sorted(sel, key=lambda s: -vis.km(g, s)):  # the farthest kept one first
            if free and float(km[np.searchsorted(ids, free[0])]) < vis.km(g, s) - margin:
                sel.discard(s)
                sel.add(free.pop(0))
        return sel

    def _visible_at(self, t: float, vis: _Visible) -> list[BoolArray]:
        """Per station, which of its visible satellites (``vis.ids``) are still visible at
        ``t`` (only those satellites are propagated)."""
        sc = self.scenario
        cand = np.unique(np.concatenate(vis.ids)) if vis.ids else np.zeros(0, np.int64)
        if cand.size == 0:
            return [np.zeros(0, bool) for _ in vis.ids]
        recs = [self.constellation.satrecs[int(s)] for s in cand]
        pos = propagate_ecef_km(recs, sc.epoch, np.array([t]))[:, 0]  # (C, 3)
        out = []
        for g, ids in enumerate(vis.ids):
            p = pos[np.searchsorted(cand, ids)]
            el = elevation_deg(self.ground_ecef_km[g : g + 1], self.ground_up[g : g + 1], p)
            d = np.linalg.norm(p - self.ground_ecef_km[g], axis=-1)[None, :]
            out.append(self._visible(el, d)[0])
        return out

    def _visible_sats(self, r: FloatArray) -> _Visible:
        """Per station, the satellites above its minimum elevation (and within
        ``max_range_km``), with their slant range.

        With a minimum elevation of 0 deg or more, only satellites above the station's
        horizon plane (``(S - G) . u >= 0``) can qualify; their elevation and range are
        computed exactly, by the same formulas as for all, so a constellation of a million
        satellites costs one (S x stations) product per block of stations instead of
        (stations x S x 3) arrays.
        """
        G = len(self.scenario.ground)
        prefilter = self.scenario.gsl.min_elevation_deg >= 0
        ids: list[Int64Array] = []
        rng: list[FloatArray] = []
        for g0 in range(0, G, STATION_BLOCK):
            gs = slice(g0, min(g0 + STATION_BLOCK, G))
            up = self.ground_up[gs]
            above = np.zeros((0, 0), bool)
            if prefilter:
                with np.errstate(invalid="ignore"):
                    # (1 m of slack for rounding: this only picks whom to test exactly)
                    above = (r @ up.T) >= np.einsum("gi,gi->g", self.ground_ecef_km[gs], up) - 1e-3
            for k, g in enumerate(range(gs.start, gs.stop)):
                cand = np.flatnonzero(above[:, k]) if prefilter else np.arange(self.n_sats)
                rc = r[cand]
                el = elevation_deg(self.ground_ecef_km[g : g + 1], self.ground_up[g : g + 1], rc)
                d = np.linalg.norm(rc[None, :, :] - self.ground_ecef_km[g][None, None, :], axis=-1)
                ok = self._visible(el, d)[0]
                ids.append(cand[ok].astype(np.int64))
                rng.append(d[0][ok])
        return _Visible(ids, rng)

    def _visible(self, elev_deg: FloatArray, range_km: FloatArray) -> BoolArray:
        """Which satellites may serve a station: elevation and, if set, slant range."""
        gsl = self.scenario.gsl
        with np.errstate(invalid="ignore"):
            ok: BoolArray = elev_deg >= gsl.min_elevation_deg
            if gsl.max_range_km is not None:
                ok &= range_km <= gsl.max_range_km
        return ok

    def _fill_longest_visible(
        self, t: float, vis: _Visible, stations: list[int], sel: list[set[int]]
    ) -> None:
        sc = self.scenario
        cand = np.unique(np.concatenate([vis.ids[g] for g in stations])).tolist()
        look = np.arange(0.0, LOOKAHEAD_S + LOOKAHEAD_STEP_S, LOOKAHEAD_STEP_S) + t
        recs = [self.constellation.satrecs[s] for s in cand]
        pos = propagate_ecef_km(recs, sc.epoch, look)  # (C, T, 3)
        for g in stations:
            el = elevation_deg(
                self.ground_ecef_km[g : g + 1], self.ground_up[g : g + 1], pos.reshape(-1, 3)
            ).reshape(len(cand), look.size)
            visible_now = vis.mask(g, np.array(cand, dtype=np.int64))
            rng = np.linalg.norm(pos.reshape(-1, 3) - self.ground_ecef_km[g], axis=-1).reshape(
                len(cand), look.size
            )
            above = self._visible(el, rng)
            # steps until first not-visible sample (all visible -> full window)
            remaining = np.where(above.all(axis=1), look.size, np.argmin(above, axis=1))
            remaining = np.where(visible_now, remaining, -1)
            for j in np.argsort(-remaining, kind="stable"):
                gw = bool(self.relay[self.n_sats + g])
                limit = (sc.gsl.gateway_links if gw else sc.gsl.links_per_station) or self.n_sats
                if len(sel[g]) >= limit or remaining[j] < 0:
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

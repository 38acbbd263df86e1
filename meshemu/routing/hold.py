"""Route hold: keep a next hop while it is still good enough (issue 12).

In a moving +Grid, shortest-delay routing to every node changes thousands of next hops at
every step (18,000 at the p99 step of Starlink Gen1), most of them between paths whose
delays differ by microseconds. Each change is a kernel route update, and they make up
nearly all of a step's apply time. A router would not chase such gains either: link-state
IGPs damp their SPF runs, and a route is only worth moving for a real improvement.

:class:`HeldRoutes` wraps a single-path computed scheme. At each step, an entry (node ``i``
towards destination ``d``) whose next hop the scheme changed keeps its previous next hop
``p`` while all of these hold:

- ``p`` is still an up neighbour of ``i``, and may forward (a transit node that is not a
  relay) or is ``d`` itself;
- ``p`` is *downstream* of ``i``: its cost to ``d`` over the scheme's new tables is below
  ``i``'s (the downstream-path condition of RFC 5286, section 3.6, on loop-free
  alternates). Every hop of a held table then strictly lowers that cost, so held tables
  never loop (and the check below, which walks every held path, would also release an
  entry whose path did not arrive);
- ``i``'s path to ``d`` over the held tables is at most ``tolerance_s`` longer (one-way
  propagation delay) than its path over the scheme's new tables.

Every entry that differs from the scheme's is checked again at every step, so the bound
holds for every node and destination at every step: no path is more than ``tolerance_s``
longer than the scheme's own (an entry the scheme does not change follows its next hop,
whose excess is bounded in turn). Removals are never held: an entry the scheme leaves
without a route loses it.

The hold is stateful (it remembers the previous step's held tables), so it is called once
per step, in step order; the route processes of a live run and ``meshemu plan`` do.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import numpy.typing as npt

from meshemu.errors import OptionsError, RoutingError
from meshemu.geometry.arrays import FloatArray, Int32Array, Int64Array
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing.base import ComputedScheme, ForwardingTables
from meshemu.routing.computed import ShortestDelay

#: Largest route hold tolerance accepted (us): a tenth of a second.
MAX_HOLD_US = 100_000.0
#: Rounds of releasing entries whose held path broke the bound (each round releases at
#: least one; the last round releases every entry still differing).
MAX_ROUNDS = 8


class _Weights:
    """One-way delay of the up link u-v, by node pair (inf: no up link)."""

    def __init__(self, snap: Snapshot):
        n = snap.n_nodes
        up = np.asarray(snap.up, dtype=bool)
        a = snap.a[up].astype(np.int64)
        b = snap.b[up].astype(np.int64)
        w = np.maximum(np.asarray(snap.delay_s, dtype=np.float64)[up], 1e-9)
        keys = np.concatenate([a * n + b, b * n + a])
        order = np.argsort(keys, kind="stable")
        self.n = n
        self.keys: Int64Array = keys[order]
        self.w: FloatArray = np.concatenate([w, w])[order]

    def __call__(self, u: Int64Array, v: Int64Array) -> FloatArray:
        out = np.full(u.shape, np.inf)
        ok = v >= 0
        if not self.keys.size or not ok.any():
            return out
        k = u[ok] * self.n + v[ok]
        pos = np.minimum(np.searchsorted(self.keys, k), self.keys.size - 1)
        hit = self.keys[pos] == k
        vals = np.full(k.shape, np.inf)
        vals[hit] = self.w[pos[hit]]
        out[ok] = vals
        return out


def _path_cost(
    nh: Int32Array, start: Int64Array, col: Int64Array, dest: Int64Array, w: _Weights
) -> FloatArray:
    """One-way delay from each ``start[i]`` to ``dest[i]`` (column ``col[i]``) following
    ``nh`` (N, D); inf where the walk meets no route or does not arrive within N hops."""
    cost = np.zeros(start.shape)
    cur = start.astype(np.int64).copy()
    active = np.flatnonzero(cur != dest)
    for _ in range(nh.shape[0]):
        if not active.size:
            break
        nxt = nh[cur[active], col[active]].astype(np.int64)
        cost[active] += w(cur[active], nxt)
        cur[active] = np.where(nxt >= 0, nxt, cur[active])
        still = (nxt >= 0) & (nxt != dest[active]) & np.isfinite(cost[active])
        active = active[still]
    cost[active] = np.inf
    return cost


def hold_next_hops(
    prev: Int32Array,
    new: Int32Array,
    destinations: npt.ArrayLike,
    snap: Snapshot,
    tolerance_s: float,
    delays: FloatArray | None = None,
) -> tuple[Int32Array, int]:
    """The held next hops (N, D) and how many entries kept their previous next hop.

    ``prev`` are the previous step's held next hops, ``new`` the scheme's for ``snap``
    (both (N, D), -1 for no route); ``new`` is changed in place into the held next hops
    (at 4,418 x 4,418 entries a copy costs more than the hold). See the module docstring
    for the rule. ``delays`` (D, N), optional: each node's one-way delay to each destination
    over ``new`` (shortest-delay's Dijkstra distances); without it those are walked.
    """
    dests = np.asarray(destinations, dtype=np.int64)
    out = new
    ci, cj = np.nonzero(prev != new)
    if ci.size:
        sel = (prev[ci, cj] >= 0) & (new[ci, cj] >= 0)
        ci, cj = ci[sel].astype(np.int64), cj[sel].astype(np.int64)
    if not ci.size or tolerance_s <= 0:
        return out, 0
    scheme_nh = new[ci, cj].copy()  # the scheme's own next hops of the candidates
    p = prev[ci, cj].astype(np.int64)
    d = dests[cj]
    w = _Weights(snap)
    w_ip = w(ci, p)
    plain = np.asarray(snap.transit, dtype=bool)
    if np.asarray(snap.relay).size:
        plain = plain & ~np.asarray(snap.relay, dtype=bool)
    ok = np.isfinite(w_ip) & (plain[p] | (p == d))
    if delays is not None:
        d_i = delays[cj, ci]
        d_p = np.where(ok, delays[cj, p], np.inf)
    else:
        d_i = _path_cost(new, ci, cj, d, w)
        d_p = np.full(ci.shape, np.inf)
        d_p[ok] = _path_cost(new, p[ok], cj[ok], d[ok], w)
    # downstream (loop-free), and no worse than the tolerance on the first hop already
    ok &= (d_p < d_i) & (w_ip + d_p <= d_i + tolerance_s)
    keep = np.flatnonzero(ok)
    for _ in range(MAX_ROUNDS):
        out[ci[keep], cj[keep]] = p[keep]
        if not keep.size:
            break
        held = _path_cost(out, ci[keep], cj[keep], d[keep], w)
        bad = ~(held <= d_i[keep] + tolerance_s)
        if not bad.any():
            return out, int(keep.size)
        gone = keep[bad]
        out[ci[gone], cj[gone]] = scheme_nh[gone]
        keep = keep[~bad]
    out[ci[keep], cj[keep]] = scheme_nh[keep]  # (not settled: the scheme's)
    return out, 0


class HeldRoutes:
    """A single-path computed scheme with route hold (see the module docstring).

    Parameters
    ----------
    scheme : ComputedScheme
        One next hop per entry (shortest-delay, fewest-hops, a single-path plug-in).
    tolerance_s : float
        How much longer (one-way delay) than the scheme's a held path may be; > 0.
    """

    def __init__(self, scheme: ComputedScheme, tolerance_s: float):
        if not tolerance_s > 0:
            raise RoutingError(f"route hold needs a tolerance above 0 s, got {tolerance_s!r}")
        self.scheme = scheme
        self.name = scheme.name
        self.tolerance_s = float(tolerance_s)
        self.held_total = 0
        self._prev: ForwardingTables | None = None
        # shortest-delay itself (not a subclass with other weights or tables): its Dijkstra
        # distances are the delays the hold needs, so it need not walk them
        kind = type(scheme)
        self._by_delay = (
            getattr(kind, "weights", None) is ShortestDelay.weights
            and getattr(kind, "forwarding_tables", None) is ShortestDelay.forwarding_tables
        )

    def forwarding_tables(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> ForwardingTables:
        """The scheme's tables for ``snapshot``, with the entries held that may be."""
        delays = None
        if self._by_delay:
            sd = cast(ShortestDelay, self.scheme)
            t, delays = sd.forwarding_tables_and_costs(snapshot, destinations)
        else:
            t = self.scheme.forwarding_tables(snapshot, destinations)
        if t.next_hop.shape[2] > 1 and np.any(t.next_hop[:, :, 1:] >= 0):
            raise RoutingError(
                f"route hold applies to single-path schemes; {self.name!r} installs several "
                f"next hops per destination (give --route-hold-us 0, or a single-path scheme "
                f"such as shortest-delay)"
            )
        prev = self._prev
        if (
            prev is not None
            and prev.next_hop.shape[:2] == t.next_hop.shape[:2]
            and np.array_equal(prev.destinations, t.destinations)
        ):
            nh = np.array(t.next_hop[:, :, 0])  # (the scheme's tables stay its own)
            nh, n_held = hold_next_hops(
                prev.next_hop[:, :, 0], nh, t.destinations, snapshot, self.tolerance_s, delays
            )
            self.held_total += n_held
            t = ForwardingTables(t.destinations, nh[:, :, None], t.scheme)
        self._prev = t
        return t


def check_route_hold_us(us: object) -> float:
    """``--route-hold-us`` checked: a number of microseconds from 0 (off) to
    :data:`MAX_HOLD_US`."""
    if (
        isinstance(us, bool)
        or not isinstance(us, (int, float))
        or not math.isfinite(us)
        or not 0 <= us <= MAX_HOLD_US
    ):
        raise OptionsError(
            f"must be a number of microseconds from 0 (off) to {MAX_HOLD_US:.0f}; got {us!r}",
            field="--route-hold-us",
        )
    return float(us)


def with_hold(scheme: ComputedScheme, us: float) -> ComputedScheme:
    """``scheme`` with route hold of ``us`` microseconds (``scheme`` itself for 0)."""
    return HeldRoutes(scheme, check_route_hold_us(us) * 1e-6) if us else scheme

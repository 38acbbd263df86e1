"""Computed schemes: meshemu computes the forwarding tables of every node from a snapshot.

Built in: :class:`ShortestDelay` (Dijkstra on propagation delay), :class:`FewestHops`
(Dijkstra on hop count, ties broken by delay) and :class:`ECMP` (equal-cost multipath on hop
count, up to :data:`MAX_PATHS` next hops, primary = lowest delay).

All three run one multi-source Dijkstra (``scipy.sparse.csgraph.dijkstra``) rooted at the
destinations over a graph in which non-transit nodes cannot be passed through and relays
(gateways, PoPs) only between tiers, never between two satellites (:func:`_split_graph`):
with symmetric link weights, the predecessor of node ``u`` in the tree rooted at ``d`` is
``u``'s next hop towards ``d``. So a user's traffic to its home PoP goes up to a satellite,
over ISLs if needed, down to a gateway that backhauls to that PoP, and over the backhaul.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from meshemu.errors import RoutingError
from meshemu.geometry.arrays import FloatArray, Int32Array, Int64Array
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing.base import ForwardingTables, RoutingScheme

#: Largest number of next hops a built-in multipath scheme installs per destination.
MAX_PATHS = 4


# -- graph helpers ---------------------------------------------------------------------------
def _split_graph(snap: Snapshot, w: FloatArray) -> tuple[csr_matrix, Int64Array, Int64Array]:
    """Directed graph in which non-transit nodes cannot be passed through and relays
    (gateways, PoPs: ``snap.relay``) only between tiers.

    Node ``x`` keeps index ``x`` as its *arrival* copy (no outgoing edges if ``x`` is not a
    transit node); each non-transit node gets an extra *departure* copy holding its outgoing
    edges. A relay ``x`` has two arrival copies: ``x`` for arrivals from a lower tier
    (``snap.tier``), whose outgoing edges go to higher tiers, and ``up_of[x]`` for arrivals
    from a higher tier, whose outgoing edges go to lower tiers. Returns the matrix,
    ``src_of`` (node id -> departure index) and ``up_of`` (node id -> its second arrival
    copy, the node itself when it has none).
    """
    n = snap.n_nodes
    transit = np.asarray(snap.transit, dtype=bool)
    relay = np.asarray(snap.relay, dtype=bool) & ~transit
    tier = np.asarray(snap.tier, dtype=np.int64)
    nt = np.flatnonzero(~transit)
    rl = np.flatnonzero(relay)
    src_of = np.arange(n, dtype=np.int64)
    src_of[nt] = n + np.arange(nt.size)
    up_of = np.arange(n, dtype=np.int64)
    up_of[rl] = n + nt.size + np.arange(rl.size)
    up = np.asarray(snap.up, dtype=bool)
    a = snap.a[up].astype(np.int64)
    b = snap.b[up].astype(np.int64)
    ww = np.asarray(w, dtype=np.float64)[up]
    u = np.concatenate([a, b])  # directed edges u -> v
    v = np.concatenate([b, a])
    wd = np.concatenate([ww, ww])
    climbs = tier[v] > tier[u]
    # arrival copy of v: a relay reached from a higher tier lands on its second copy
    dst = np.where(relay[v] & ~climbs, up_of[v], v)
    rows = [src_of[u]]
    cols = [dst]
    data = [wd]
    # a relay forwards what arrived from below upwards (copy u), from above downwards
    fwd = relay[u] & (tier[v] != tier[u])
    rows.append(np.where(climbs[fwd], u[fwd], up_of[u[fwd]]))
    cols.append(dst[fwd])
    data.append(wd[fwd])
    m = n + nt.size + rl.size
    g = csr_matrix(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m)
    )
    return g, src_of, up_of


def _trees(
    snap: Snapshot, w: FloatArray, dests: Int32Array
) -> tuple[FloatArray, Int32Array, Int64Array]:
    """Shortest-path trees rooted at each destination (weights symmetric).

    Returns ``dist`` (D, N) cost from each node to each destination, ``pred`` (D, N) the next
    hop of each node towards the destination (-1 none), and ``src_of``. A relay's entry is
    that of its nearer arrival copy.
    """
    g, src_of, up_of = _split_graph(snap, w)
    dist, pred = _tree_rows(g, src_of, up_of, snap.n_nodes, dests)
    return dist, pred, src_of


def _tree_rows(
    g: csr_matrix, src_of: Int64Array, up_of: Int64Array, n: int, dests: Int32Array
) -> tuple[FloatArray, Int32Array]:
    """:func:`_trees`' ``dist`` and ``pred`` for the destinations ``dests``, on the graph
    :func:`_split_graph` made."""
    roots = src_of[dests]
    dist_all, pred_all = dijkstra(g, directed=True, indices=roots, return_predecessors=True)
    dist_all = np.asarray(dist_all, dtype=np.float64)
    pred_all = np.asarray(pred_all, dtype=np.int32)
    dist: FloatArray = (
        dist_all[:, :n].copy() if up_of.size and np.any(up_of != np.arange(n)) else dist_all[:, :n]
    )
    # scipy's int32 predecessors, fixed in place (a million nodes by dozens of destinations:
    # no int64 copy)
    pred = pred_all[:, :n]
    rl = np.flatnonzero(up_of != np.arange(n))
    if rl.size:
        second = dist_all[:, up_of[rl]]
        better = second < dist[:, rl]
        dist[:, rl] = np.where(better, second, dist[:, rl])
        pred[:, rl] = np.where(better, pred_all[:, up_of[rl]], pred[:, rl])
    # a predecessor that is a departure (or second arrival) copy stands for its node
    dep = pred >= n
    if np.any(dep):
        inv = np.full(g.shape[0], -1, dtype=np.int32)
        inv[src_of] = np.arange(n, dtype=np.int32)
        inv[up_of[rl]] = rl.astype(np.int32)
        pred[dep] = inv[pred[dep]]
    np.maximum(pred, -1, out=pred)  # scipy marks "none" with -9999
    pred[np.arange(dests.size), dests] = -1
    return dist, pred


#: Destinations routed at a time by :meth:`ShortestDelay.forwarding_tables`.
TREE_CHUNK = 256


def _next_hops_chunked(snap: Snapshot, w: FloatArray, dests: Int32Array) -> Int32Array:
    """Next hop of every node towards each of ``dests``, shape (N, D, 1), routing
    :data:`TREE_CHUNK` destinations at a time.

    The same trees as :func:`_trees`, without its (D, N) distances: Dijkstra's output for
    a chunk (float64 costs and int32 predecessors of 256 trees, 13.6 MB on Starlink Gen1)
    stays in cache while its next hops are written out, and the memory is used again for
    the next chunk, where all of Gen1's 4,418 trees at once are 234 MB of fresh pages
    every step.
    """
    g, src_of, up_of = _split_graph(snap, w)
    n = snap.n_nodes
    nh = np.empty((n, dests.size, 1), dtype=np.int32)
    for i in range(0, dests.size, TREE_CHUNK):
        _, pred = _tree_rows(g, src_of, up_of, n, dests[i : i + TREE_CHUNK])
        _transpose_into(nh[:, i : i + TREE_CHUNK, 0], pred)
    return nh


#: Rows per block of :func:`_transpose_into` (64 rows of a Gen1 table, 1.1 MB, stay in cache).
_TRANSPOSE_BLOCK = 64


def _transpose_into(out: npt.NDArray[np.int32], pred: Int32Array) -> None:
    """``out[:] = pred.T`` a block of ``pred``'s rows at a time.

    numpy copies a transposed view element by element in the destination's order, so every
    read of a large table lands on another cache line; a block of rows stays in cache while
    it is read. Starlink Gen1's 4,418 x 4,418 next hops: 0.034 s against 0.052 s (in
    memory already touched; a fresh table's page faults cost more than either).
    """
    for i in range(0, pred.shape[0], _TRANSPOSE_BLOCK):
        out[:, i : i + _TRANSPOSE_BLOCK] = pred[i : i + _TRANSPOSE_BLOCK].T


def _check_snapshot(snap: Snapshot, destinations: npt.ArrayLike) -> Int32Array:
    """``destinations`` as node ids of ``snap`` (RoutingError if ``snap`` is no Snapshot or
    an id is out of range)."""
    if not isinstance(snap, Snapshot):
        raise RoutingError(
            f"a routing scheme needs a meshemu.geometry.linkstate.Snapshot, got "
            f"{type(snap).__name__}"
        )
    d = np.asarray(destinations, dtype=np.int32).ravel()
    if d.size and (d.min() < 0 or d.max() >= snap.n_nodes):
        raise RoutingError(f"destinations must be node ids in 0..{snap.n_nodes - 1}")
    return d


# -- built-in schemes ------------------------------------------------------------------------
class ShortestDelay(RoutingScheme):
    """Shortest path by one-way propagation delay (what a link-state IGP with delay metrics
    converges to). Subclasses may override :meth:`weights`."""

    name = "shortest-delay"

    def weights(self, snapshot: Snapshot) -> FloatArray:
        """Cost of each link of the snapshot (positive)."""
        return np.maximum(snapshot.delay_s, 1e-9)

    def forwarding_tables(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> ForwardingTables:
        """Next hop of every node towards each destination along the least-cost path.

        Raises
        ------
        RoutingError
            A bad snapshot or destination, or :meth:`weights` returned something other than
            one positive finite cost per link.
        """
        dests = _check_snapshot(snapshot, destinations)
        w = self._checked_weights(snapshot)
        return ForwardingTables(dests, _next_hops_chunked(snapshot, w, dests), self.name)

    def _checked_weights(self, snapshot: Snapshot) -> FloatArray:
        w = np.asarray(self.weights(snapshot), dtype=np.float64)
        if w.shape != snapshot.delay_s.shape or np.any(~np.isfinite(w)) or np.any(w <= 0):
            raise RoutingError(
                f"scheme {self.name}: weights() must return one positive finite "
                f"cost per link ({snapshot.n_links})"
            )
        return w

    def forwarding_tables_and_costs(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> tuple[ForwardingTables, FloatArray]:
        """:meth:`forwarding_tables` and each node's cost (by :meth:`weights`) to each
        destination, shape (D, N), inf where unreachable (the route hold uses them)."""
        dests = _check_snapshot(snapshot, destinations)
        w = self._checked_weights(snapshot)
        dist, pred, _ = _trees(snapshot, w, dests)
        nh = np.empty((snapshot.n_nodes, dests.size, 1), dtype=np.int32)
        _transpose_into(nh[:, :, 0], pred)
        return ForwardingTables(dests, nh, self.name), dist


class FewestHops(ShortestDelay):
    """Fewest hops; among equal hop counts the lowest delay (delay scaled to << 1 hop)."""

    name = "fewest-hops"

    def weights(self, snapshot: Snapshot) -> FloatArray:
        """``1 + delay_s / 100`` per link: a hop outweighs any path's delay."""
        return 1.0 + np.maximum(snapshot.delay_s, 0.0) * 1e-2


class ECMP(RoutingScheme):
    """Equal-cost multipath on hop count: every neighbour that is one hop closer to the
    destination is a next hop (up to ``max_paths``, lowest-delay path first). The kernel
    spreads flows over them by hash, as ECMP does in data centres."""

    name = "ecmp"

    def __init__(self, max_paths: int = MAX_PATHS) -> None:
        if max_paths < 1:
            raise RoutingError(f"ecmp: max_paths must be >= 1, got {max_paths}")
        self.max_paths = max_paths

    def forwarding_tables(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> ForwardingTables:
        """Up to ``max_paths`` next hops per node and destination, all on fewest-hop paths;
        column 0 is the lowest-delay one.

        Raises
        ------
        RoutingError
            A bad snapshot or destination.
        """
        dests = _check_snapshot(snapshot, destinations)
        n = snapshot.n_nodes
        # one Dijkstra on fewest-hops costs (1 + delay_s / 100 per link): the integer part
        # of a distance is the hop count (paths are shorter than 100 s), the rest is delay
        cost, pred, _ = _trees(snapshot, FewestHops().weights(snapshot), dests)
        hops = np.floor(cost)
        with np.errstate(invalid="ignore"):  # unreachable: inf - inf, never read
            delay = cost - hops
        k = self.max_paths
        nh = np.full((n, dests.size, k), -1, dtype=np.int32)
        _transpose_into(nh[:, :, 0], pred)
        if k > 1:
            self._fill_alternates(snapshot, dests, hops, delay, nh)
        return ForwardingTables(dests, nh, self.name)

    def _fill_alternates(
        self,
        snapshot: Snapshot,
        dests: Int32Array,
        hops: FloatArray,
        delay: FloatArray,
        nh: Int32Array,
    ) -> None:
        """Fill columns 1.. of ``nh`` in place: the other neighbours one hop closer to each
        destination, by the delay of the path through them."""
        k = self.max_paths
        up = np.asarray(snapshot.up, dtype=bool)
        a = snapshot.a[up].astype(np.int64)
        b = snapshot.b[up].astype(np.int64)
        dl = snapshot.delay_s[up]
        transit = np.asarray(snapshot.transit, dtype=bool)
        # directed candidate edges u -> v
        u = np.concatenate([a, b])
        v = np.concatenate([b, a])
        wd = np.concatenate([dl, dl])
        for j, d in enumerate(dests.tolist()):
            hv, hu = hops[j, v], hops[j, u]
            ok = (
                np.isfinite(hu)
                & (hv == hu - 1)
                & (u != d)
                & (transit[v] | (v == d))
                & (v != nh[u, j, 0])
            )
            if not ok.any():
                continue
            uu, vv = u[ok], v[ok]
            cost = wd[ok] + delay[j, vv]
            order = np.lexsort((cost, uu))
            uu, vv = uu[order], vv[order]
            starts = np.r_[True, uu[1:] != uu[:-1]]
            pos = np.arange(uu.size)
            rank = pos - np.maximum.accumulate(np.where(starts, pos, 0))
            keep = rank < k - 1
            nh[uu[keep], j, rank[keep] + 1] = vv[keep]

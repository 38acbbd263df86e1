"""Using forwarding tables: follow a path, its delay, what changed between two steps, and
snapshots made from an edge list (for tests, examples and custom topologies).

These work on tables from any computed scheme; none of them computes routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from meshemu.errors import RoutingError
from meshemu.geometry import linkstate
from meshemu.geometry.arrays import IndexArray, Int32Array
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing.base import ForwardingTables


def trace_path(tables: ForwardingTables, snap: Snapshot, src: int, dst: int) -> list[int] | None:
    """The path the primary next hops take from ``src`` to ``dst``.

    Returns
    -------
    list of int or None
        Node ids from ``src`` to ``dst`` following primary next hops over up links, or None
        (no route, a next hop without an up link, or a loop).

    Raises
    ------
    RoutingError
        ``dst`` is not a destination of ``tables``.
    """
    if src == dst:
        return [src]
    j = tables.dest_index(dst)
    prim = tables.next_hop[:, j, 0]
    path = [src]
    u = src
    for _ in range(tables.n_nodes):
        v = int(prim[u])
        if v < 0:
            return None
        e = snap.edge_index(u, v)
        if e < 0 or not snap.up[e]:
            return None
        path.append(v)
        if v == dst:
            return path
        u = v
    return None


@dataclass(frozen=True, eq=False)
class TracedPaths:
    """The paths of many pairs along primary next hops (:func:`trace_paths`).

    Attributes
    ----------
    hops : ndarray of int32, shape (P,)
        Links on pair i's path (0 when source = destination), -1 when there is none.
    nodes : ndarray of int32, shape (P, L + 1)
        ``nodes[i, :hops[i] + 1]`` is pair i's path, source to destination; -1 beyond.
    links : ndarray of int64, shape (P, L)
        Index in the snapshot of each link of the path; -1 beyond.
    """

    hops: Int32Array
    nodes: Int32Array
    links: npt.NDArray[np.int64]

    def path(self, i: int) -> list[int] | None:
        """Pair i's path as :func:`trace_path` gives it (None: no path)."""
        h = int(self.hops[i])
        return None if h < 0 else [int(x) for x in self.nodes[i, : h + 1]]

    def delay_s(self, snap: Snapshot, i: int) -> float:
        """One-way delay of pair i's path (as :func:`path_delay_s` sums it); NaN: no path."""
        h = int(self.hops[i])
        if h < 0:
            return float("nan")
        return float(snap.delay_s[self.links[i, :h]].sum()) if h else 0.0

    def access_s(self, snap: Snapshot, i: int) -> float:
        """Mean extra delay of pair i's path on its access links, each in the direction the
        path takes it (:meth:`Snapshot.access_delays_s`); 0 without them, NaN: no path."""
        h = int(self.hops[i])
        if h < 0:
            return float("nan")
        if not h or snap.access_model is None:
            return 0.0
        links = self.links[i, :h]
        on = snap.access[links]
        if not on.any():
            return 0.0
        ab, ba = snap.access_delays_s()
        forward = self.nodes[i, :h] < self.nodes[i, 1 : h + 1]  # a -> b
        return float(np.where(forward, ab[links], ba[links])[on].sum())


def trace_paths(
    tables: ForwardingTables, snap: Snapshot, src: npt.ArrayLike, dst: npt.ArrayLike
) -> TracedPaths:
    """The paths of many (src, dst) pairs at once, as :func:`trace_path` follows each: primary
    next hops over up links, None (``hops`` -1) for no route, a next hop without an up link,
    or a loop.

    All pairs advance one hop per round (numpy over the pairs), so the rounds are as many as
    the longest path has hops; the links are looked up in the snapshot's sorted keys.

    Raises
    ------
    RoutingError
        A destination is not one of ``tables``' destinations.
    """
    s = np.asarray(src, dtype=np.int64).ravel()
    d = np.asarray(dst, dtype=np.int64).ravel()
    n = tables.n_nodes
    col = np.full(n, -1, np.int64)
    col[tables.destinations] = np.arange(tables.destinations.size)
    j = col[d] if d.size else np.zeros(0, np.int64)
    if np.any(j < 0):
        missing = int(d[np.flatnonzero(j < 0)[0]])
        raise RoutingError(f"node {missing} is not a destination of these forwarding tables")
    prim = tables.next_hop[:, :, 0]
    keys = snap.key
    up = np.asarray(snap.up, dtype=bool)
    p = s.size
    hops = np.zeros(p, np.int32)
    ok = np.ones(p, bool)
    cur = s.copy()
    active = np.flatnonzero(s != d)
    if keys.size == 0:  # no link: only the pairs of a node with itself have a path
        ok[active] = False
        active = active[:0]
    node_cols = [s.astype(np.int32)]
    link_cols: list[npt.NDArray[np.int64]] = []
    for _ in range(n):
        if active.size == 0:
            break
        u = cur[active]
        v = prim[u, j[active]].astype(np.int64)
        lo, hi = np.minimum(u, v), np.maximum(u, v)
        k = lo * n + hi
        e = np.minimum(np.searchsorted(keys, k), keys.size - 1)
        good = (v >= 0) & (keys[e] == k) & up[e]
        ok[active[~good]] = False
        active, v, e = active[good], v[good], e[good]
        nc = np.full(p, -1, np.int32)
        lc = np.full(p, -1, np.int64)
        nc[active] = v
        lc[active] = e
        node_cols.append(nc)
        link_cols.append(lc)
        hops[active] += 1
        cur[active] = v
        active = active[v != d[active]]
    else:
        ok[active] = False  # still going after n hops: a loop
    hops[~ok] = -1
    nodes = np.stack(node_cols, axis=1)
    links = np.stack(link_cols, axis=1) if link_cols else np.zeros((p, 0), np.int64)
    return TracedPaths(hops, nodes, links)


def path_delay_s(snap: Snapshot, path: Sequence[int]) -> float:
    """One-way propagation delay along ``path`` (sum of its links' delays), seconds.

    Raises
    ------
    RoutingError
        Two consecutive nodes of ``path`` have no link in ``snap``.
    """
    p = np.asarray(path, dtype=np.int64)
    if p.size < 2:
        return 0.0
    lo, hi = np.minimum(p[:-1], p[1:]), np.maximum(p[:-1], p[1:])
    keys = lo * snap.n_nodes + hi
    idx = np.searchsorted(snap.key, keys)
    idx = np.minimum(idx, snap.n_links - 1)
    if np.any(snap.key[idx] != keys):
        raise RoutingError("path uses a pair of nodes that has no link in this snapshot")
    return float(snap.delay_s[idx].sum())


@dataclass(frozen=True, eq=False)
class RouteDiff:
    """Forwarding entries that differ between two tables: node ``nodes[i]`` towards
    ``destinations[dest_index[i]]`` went from next hops ``old[i]`` to ``new[i]``."""

    nodes: IndexArray
    dest_index: IndexArray
    old: Int32Array
    new: Int32Array

    def __len__(self) -> int:
        return int(self.nodes.size)


def route_diff(old: ForwardingTables | None, new: ForwardingTables) -> RouteDiff:
    """Entries of ``new`` that differ from ``old``.

    Parameters
    ----------
    old : ForwardingTables or None
        None: every entry of ``new`` that has a route counts as changed.
    new : ForwardingTables
        Must have the same nodes and destinations as ``old``.

    Raises
    ------
    RoutingError
        The two tables have different nodes or destinations.
    """
    nh = new.next_hop
    if old is None:
        u, j = np.nonzero(nh[:, :, 0] >= 0)
        return RouteDiff(u, j, np.full((u.size, nh.shape[2]), -1, np.int32), nh[u, j])
    if old.next_hop.shape[:2] != nh.shape[:2] or not np.array_equal(
        old.destinations, new.destinations
    ):
        raise RoutingError("route_diff: the tables have different nodes or destinations")
    k = max(old.next_hop.shape[2], nh.shape[2])
    o = _pad(old.next_hop, k)
    n = _pad(nh, k)
    u, j = np.nonzero(np.any(o != n, axis=2))
    return RouteDiff(u, j, o[u, j], n[u, j])


def _pad(nh: Int32Array, k: int) -> Int32Array:
    if nh.shape[2] == k:
        return nh
    out = np.full((*nh.shape[:2], k), -1, dtype=np.int32)
    out[:, :, : nh.shape[2]] = nh
    return out


def _per_edge(
    x: npt.ArrayLike | None,
    default: float | int | bool,
    dtype: npt.DTypeLike,
    order: IndexArray,
) -> npt.NDArray[np.generic]:
    """One value per edge (``default`` for all if ``x`` is None), in ``order``."""
    m = order.size
    arr = np.full(m, default, dtype=dtype) if x is None else np.asarray(x, dtype=dtype)
    if arr.shape != (m,):
        raise RoutingError(f"need one value per edge ({m}), got shape {arr.shape}")
    return arr[order]


def snapshot_from_edges(
    n_nodes: int,
    edges: Sequence[tuple[int, int]],
    delays: npt.ArrayLike,
    transit: npt.ArrayLike | None = None,
    up: npt.ArrayLike | None = None,
    rates: npt.ArrayLike | None = None,
    t_s: float = 0.0,
    kinds: npt.ArrayLike | None = None,
) -> Snapshot:
    """A :class:`Snapshot` from an edge list (for tests, examples and custom topologies).

    Parameters
    ----------
    n_nodes : int
    edges : sequence of (int, int)
        In any order and orientation; stored with ``a < b``, sorted.
    delays : array_like, shape (E,)
        One-way delay of each edge, seconds (distance = delay * c).
    transit : array_like of bool, shape (n_nodes,), optional
        Default: every node.
    up : array_like of bool, shape (E,), optional
        Default: every link.
    rates : array_like, shape (E,), optional
        Default: 1 Gbit/s.
    t_s : float
    kinds : array_like, shape (E,), optional
        Default: ISL.

    Raises
    ------
    RoutingError
        Bad node ids, self-links, duplicate links, or a column of the wrong length.
    """
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if np.any(e < 0) or np.any(e >= n_nodes) or np.any(e[:, 0] == e[:, 1]):
        raise RoutingError("edges must join two different node ids in 0..n_nodes-1")
    a, b = np.minimum(e[:, 0], e[:, 1]), np.maximum(e[:, 0], e[:, 1])
    keys = a * n_nodes + b
    if np.unique(keys).size != keys.size:
        raise RoutingError("edge list has duplicate links")
    order = np.argsort(keys)
    delay = _per_edge(delays, 0.0, np.float64, order).astype(np.float64, copy=False)
    tr = np.ones(n_nodes, dtype=bool) if transit is None else np.asarray(transit, dtype=bool).copy()
    if tr.shape != (n_nodes,):
        raise RoutingError(f"transit needs one flag per node ({n_nodes})")
    return Snapshot(
        t_s=float(t_s),
        n_nodes=int(n_nodes),
        a=a[order].astype(np.int32),
        b=b[order].astype(np.int32),
        kind=_per_edge(kinds, linkstate.ISL, np.int8, order).astype(np.int8, copy=False),
        up=_per_edge(up, True, bool, order).astype(bool, copy=False),
        distance_m=delay * linkstate.C_M_PER_S,
        delay_s=delay,
        rate_bps=_per_edge(rates, 1e9, np.float64, order).astype(np.float64, copy=False),
        transit=tr,
    )

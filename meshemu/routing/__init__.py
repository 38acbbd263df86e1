"""Routing schemes: from a link-state snapshot to forwarding tables.

A scheme is anything with a ``name`` and a method
``forwarding_tables(snapshot, destinations) -> ForwardingTables``. Forwarding tables are
dense arrays so that they can be diffed and installed in bulk::

    next_hop[u, j, m]   the m-th next hop of node u towards node destinations[j]
                        (-1: no route / no further next hop; next_hop[d, j, :] = -1 at d itself)

Column ``m = 0`` is the primary next hop (the one :func:`trace_path` follows); a multipath
scheme fills further columns. Only links that are *up* carry routes, and nodes that are not
transit nodes (ground stations, users, data centres) never forward for others: they appear
only as the first or the last node of a path.

Built-in schemes (:data:`SCHEMES`): ``shortest-delay`` (Dijkstra on propagation delay),
``fewest-hops`` (Dijkstra on hop count, ties broken by delay) and ``ecmp`` (equal-cost
multipath on hop count, up to four next hops, primary = lowest delay). A researcher's own
scheme is registered with :func:`register` or named in ``--routing`` as ``path/to/file.py:Class``
or ``package.module:Class``; see :class:`RoutingScheme`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from meshemu.geometry import linkstate as linkstate
from meshemu.errors import RoutingError, choices_message
from meshemu.geometry.linkstate import Snapshot

#: Largest number of next hops a built-in multipath scheme installs per destination.
MAX_PATHS = 4


@dataclass(frozen=True, eq=False)
class ForwardingTables:
    """Per node, per destination: next hop(s).

    Attributes
    ----------
    destinations : ndarray of int32, shape (D,)
        Destination node ids, the columns of ``next_hop``.
    next_hop : ndarray of int32, shape (N, D, K)
        Next hops, -1 padded (see the module docstring).
    scheme : str
        Name of the scheme that made them.
    """

    destinations: np.ndarray
    next_hop: np.ndarray
    scheme: str = ""

    def __post_init__(self):
        d = np.asarray(self.destinations, dtype=np.int32)
        nh = np.asarray(self.next_hop, dtype=np.int32)
        if nh.ndim == 2:
            nh = nh[:, :, None]
        if nh.ndim != 3 or nh.shape[1] != d.shape[0]:
            raise RoutingError(f"next_hop must have shape (nodes, {d.shape[0]} destinations, "
                               f"paths); got {nh.shape}")
        object.__setattr__(self, "destinations", d)
        object.__setattr__(self, "next_hop", nh)

    @property
    def n_nodes(self) -> int:
        return int(self.next_hop.shape[0])

    def primary(self) -> np.ndarray:
        """Primary next hop, shape (N, D)."""
        return self.next_hop[:, :, 0]

    def dest_index(self, d: int) -> int:
        """Column of destination node ``d`` (RoutingError if it is not a destination)."""
        j = np.flatnonzero(self.destinations == d)
        if j.size == 0:
            raise RoutingError(f"node {d} is not a destination of these forwarding tables")
        return int(j[0])


class RoutingScheme(ABC):
    """A routing scheme. Subclass it, give it a ``name``, implement ``forwarding_tables``.

    Example (a file ``myscheme.py``, used as ``--routing myscheme.py:Detour``)::

        import numpy as np
        from meshemu.routing import RoutingScheme, ShortestDelay

        class Detour(ShortestDelay):
            name = "detour"
            def weights(self, snapshot):
                w = snapshot.delay_s.copy()
                w[snapshot.kind == 0] *= 1.5     # make ISLs look longer
                return w
    """

    name: str = "custom"

    @abstractmethod
    def forwarding_tables(self, snapshot: Snapshot, destinations: np.ndarray) -> ForwardingTables:
        """Forwarding tables for every node towards each of ``destinations``."""


# -- graph helpers ---------------------------------------------------------------------------
def _split_graph(snap: Snapshot, w: np.ndarray) -> tuple[csr_matrix, np.ndarray]:
    """Directed graph in which non-transit nodes cannot be passed through.

    Node ``x`` keeps index ``x`` as its *arrival* copy (no outgoing edges if ``x`` is not a
    transit node); each non-transit node gets an extra *departure* copy ``N + j`` holding its
    outgoing edges. Returns the matrix and ``src_of`` mapping node id -> departure index.
    """
    n = snap.n_nodes
    transit = np.asarray(snap.transit, dtype=bool)
    nt = np.flatnonzero(~transit)
    src_of = np.arange(n, dtype=np.int64)
    src_of[nt] = n + np.arange(nt.size)
    up = np.asarray(snap.up, dtype=bool)
    a = snap.a[up].astype(np.int64)
    b = snap.b[up].astype(np.int64)
    ww = np.asarray(w, dtype=np.float64)[up]
    rows = np.concatenate([src_of[a], src_of[b]])
    cols = np.concatenate([b, a])
    data = np.concatenate([ww, ww])
    m = n + nt.size
    g = csr_matrix((data, (rows, cols)), shape=(m, m))
    return g, src_of


def _trees(snap: Snapshot, w: np.ndarray, dests: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shortest-path trees rooted at each destination (weights symmetric).

    Returns ``dist`` (D, N) cost from each node to each destination, ``pred`` (D, N) the next
    hop of each node towards the destination (-1 none), and ``src_of``.
    """
    n = snap.n_nodes
    g, src_of = _split_graph(snap, w)
    roots = src_of[dests]
    dist, pred = dijkstra(g, directed=True, indices=roots, return_predecessors=True)
    dist = dist[:, :n]
    pred = pred[:, :n].astype(np.int64)
    # a predecessor that is a departure copy stands for its node
    dep = pred >= n
    if np.any(dep):
        inv = np.full(g.shape[0], -1, dtype=np.int64)
        inv[src_of] = np.arange(n)
        pred[dep] = inv[pred[dep]]
    pred[pred < 0] = -1
    pred[np.arange(dests.size), dests] = -1
    return dist, pred.astype(np.int32), src_of


def _check_snapshot(snap: Snapshot, destinations) -> np.ndarray:
    if not isinstance(snap, Snapshot):
        raise RoutingError(f"a routing scheme needs a meshemu.geometry.linkstate.Snapshot, got "
                           f"{type(snap).__name__}")
    d = np.asarray(destinations, dtype=np.int32).ravel()
    if d.size and (d.min() < 0 or d.max() >= snap.n_nodes):
        raise RoutingError(f"destinations must be node ids in 0..{snap.n_nodes - 1}")
    return d


# -- built-in schemes ------------------------------------------------------------------------
class ShortestDelay(RoutingScheme):
    """Shortest path by one-way propagation delay (what a link-state IGP with delay metrics
    converges to). Subclasses may override :meth:`weights`."""

    name = "shortest-delay"

    def weights(self, snapshot: Snapshot) -> np.ndarray:
        """Cost of each link of the snapshot (positive)."""
        return np.maximum(snapshot.delay_s, 1e-9)

    def forwarding_tables(self, snapshot: Snapshot, destinations) -> ForwardingTables:
        dests = _check_snapshot(snapshot, destinations)
        w = np.asarray(self.weights(snapshot), dtype=np.float64)
        if w.shape != snapshot.delay_s.shape or np.any(~np.isfinite(w)) or np.any(w <= 0):
            raise RoutingError(f"scheme {self.name}: weights() must return one positive finite "
                               f"cost per link ({snapshot.n_links})")
        _, pred, _ = _trees(snapshot, w, dests)
        return ForwardingTables(dests, pred.T[:, :, None].copy(), self.name)


class FewestHops(ShortestDelay):
    """Fewest hops; among equal hop counts the lowest delay (delay scaled to << 1 hop)."""

    name = "fewest-hops"

    def weights(self, snapshot: Snapshot) -> np.ndarray:
        return 1.0 + np.maximum(snapshot.delay_s, 0.0) * 1e-2


class ECMP(RoutingScheme):
    """Equal-cost multipath on hop count: every neighbour that is one hop closer to the
    destination is a next hop (up to ``max_paths``, lowest-delay path first). The kernel
    spreads flows over them by hash, as ECMP does in data centres."""

    name = "ecmp"

    def __init__(self, max_paths: int = MAX_PATHS):
        if max_paths < 1:
            raise RoutingError(f"ecmp: max_paths must be >= 1, got {max_paths}")
        self.max_paths = max_paths

    def forwarding_tables(self, snapshot: Snapshot, destinations) -> ForwardingTables:
        dests = _check_snapshot(snapshot, destinations)
        n = snapshot.n_nodes
        # one Dijkstra on fewest-hops costs (1 + delay_s / 100 per link): the integer part
        # of a distance is the hop count (paths are shorter than 100 s), the rest is delay
        cost, pred, _ = _trees(snapshot, FewestHops().weights(snapshot), dests)
        hops = np.floor(cost)
        with np.errstate(invalid="ignore"):      # unreachable: inf - inf, never read
            delay = cost - hops
        k = self.max_paths
        nh = np.full((n, dests.size, k), -1, dtype=np.int32)
        nh[:, :, 0] = pred.T
        if k == 1:
            return ForwardingTables(dests, nh, self.name)
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
            ok = (np.isfinite(hu) & (hv == hu - 1) & (u != d) & (transit[v] | (v == d))
                  & (v != nh[u, j, 0]))
            if not ok.any():
                continue
            uu, vv = u[ok], v[ok]
            cost = wd[ok] + delay[j, vv]
            order = np.lexsort((cost, uu))
            uu, vv = uu[order], vv[order]
            starts = np.r_[True, uu[1:] != uu[:-1]]
            rank = np.arange(uu.size) - np.maximum.accumulate(np.where(starts, np.arange(uu.size), 0))
            keep = rank < k - 1
            nh[uu[keep], j, rank[keep] + 1] = vv[keep]
        return ForwardingTables(dests, nh, self.name)


#: Registry of routing schemes by name.
SCHEMES: dict[str, type[RoutingScheme]] = {
    ShortestDelay.name: ShortestDelay,
    FewestHops.name: FewestHops,
    ECMP.name: ECMP,
}


def register(cls: type[RoutingScheme]) -> type[RoutingScheme]:
    """Class decorator: make a scheme available by its ``name`` (``--routing NAME``)."""
    if not (inspect.isclass(cls) and issubclass(cls, RoutingScheme)):
        raise RoutingError(f"register() takes a RoutingScheme subclass, got {cls!r}")
    SCHEMES[cls.name] = cls
    return cls


def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points
    try:
        return {ep.name: ep for ep in entry_points(group="meshemu.routing")}
    except Exception:  # broken metadata of some other package must not break meshemu
        return {}


def available_schemes() -> list[str]:
    """Names accepted by :func:`get_scheme` (built-in, registered, entry points)."""
    return sorted(set(SCHEMES) | set(_entry_points()))


def _load_class(spec: str) -> type:
    target, _, cls_name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise RoutingError(f"routing scheme file {path} does not exist (give "
                               f"path/to/file.py:ClassName)")
        mod_name = f"meshemu_user_scheme_{abs(hash(str(path.resolve())))}"
        sp = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(sp)
        try:
            sp.loader.exec_module(mod)
        except Exception as exc:
            raise RoutingError(f"could not load routing scheme file {path}: "
                               f"{type(exc).__name__}: {exc}") from None
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as exc:
            raise RoutingError(f"could not import module {target!r} for routing scheme "
                               f"{spec!r}: {exc}") from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        names = [k for k, v in vars(mod).items()
                 if inspect.isclass(v) and issubclass(v, RoutingScheme) and v is not RoutingScheme]
        raise RoutingError(f"{target} has no class {cls_name!r}; routing schemes there: "
                           f"{', '.join(names) or 'none'}")
    return cls


def get_scheme(spec: str | RoutingScheme) -> RoutingScheme:
    """A routing scheme instance from a name, ``file.py:Class``, ``module:Class`` or an
    instance.

    Raises
    ------
    RoutingError
        Unknown name (the message lists the valid ones), unloadable file or module, or a
        class that is not a routing scheme.
    """
    if isinstance(spec, RoutingScheme):
        return spec
    if not isinstance(spec, str) or not spec:
        raise RoutingError(f"routing scheme must be a name or file.py:Class, got {spec!r}")
    if ":" in spec:
        cls = _load_class(spec)
    elif spec in SCHEMES:
        cls = SCHEMES[spec]
    elif spec in (eps := _entry_points()):
        cls = eps[spec].load()
    else:
        raise RoutingError(choices_message("routing scheme", spec, available_schemes())
                           + "; or give your own as path/to/file.py:ClassName")
    if not (inspect.isclass(cls) and issubclass(cls, RoutingScheme)):
        if callable(getattr(cls, "forwarding_tables", None)) and hasattr(cls, "name"):
            return cls() if inspect.isclass(cls) else cls
        raise RoutingError(f"{spec}: {cls!r} is not a routing scheme (subclass "
                           f"meshemu.routing.RoutingScheme and implement forwarding_tables)")
    try:
        return cls()
    except TypeError as exc:
        raise RoutingError(f"routing scheme {spec}: its class must be constructible without "
                           f"arguments ({exc})") from None


# -- using tables ----------------------------------------------------------------------------
def trace_path(tables: ForwardingTables, snap: Snapshot, src: int, dst: int) -> list[int] | None:
    """Node ids from ``src`` to ``dst`` following primary next hops over up links, or None
    (no route, a next hop without an up link, or a loop)."""
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


def path_delay_s(snap: Snapshot, path: Sequence[int]) -> float:
    """One-way propagation delay along ``path`` (sum of its links' delays)."""
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

    nodes: np.ndarray
    dest_index: np.ndarray
    old: np.ndarray
    new: np.ndarray

    def __len__(self) -> int:
        return int(self.nodes.size)


def route_diff(old: ForwardingTables | None, new: ForwardingTables) -> RouteDiff:
    """Entries of ``new`` that differ from ``old`` (all entries with a route if ``old`` is
    None). Both must have the same destinations."""
    nh = new.next_hop
    if old is None:
        u, j = np.nonzero(nh[:, :, 0] >= 0)
        return RouteDiff(u, j, np.full((u.size, nh.shape[2]), -1, np.int32), nh[u, j])
    if old.next_hop.shape[:2] != nh.shape[:2] or not np.array_equal(old.destinations,
                                                                     new.destinations):
        raise RoutingError("route_diff: the tables have different nodes or destinations")
    k = max(old.next_hop.shape[2], nh.shape[2])
    o = _pad(old.next_hop, k)
    n = _pad(nh, k)
    u, j = np.nonzero(np.any(o != n, axis=2))
    return RouteDiff(u, j, o[u, j], n[u, j])


def _pad(nh: np.ndarray, k: int) -> np.ndarray:
    if nh.shape[2] == k:
        return nh
    out = np.full(nh.shape[:2] + (k,), -1, dtype=np.int32)
    out[:, :, :nh.shape[2]] = nh
    return out


def validate_tables(tables: ForwardingTables, snap: Snapshot) -> list[str]:
    """Problems with tables made by a (user's) scheme for ``snap``: next hops that are not
    up neighbours, forwarding through non-transit nodes, loops. Empty list: fine."""
    problems: list[str] = []
    n = snap.n_nodes
    if tables.n_nodes != n:
        return [f"tables are for {tables.n_nodes} nodes, the snapshot has {n}"]
    nh = tables.next_hop
    u, j, m = np.nonzero(nh >= 0)
    v = nh[u, j, m].astype(np.int64)
    if np.any(v >= n):
        return [f"next hop {int(v.max())} is not a node id (0..{n - 1})"]
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    keys = lo * n + hi
    upkeys = snap.key[np.asarray(snap.up, dtype=bool)]
    bad = ~np.isin(keys, upkeys)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problems.append(f"{int(bad.sum())} next hop(s) without an up link, e.g. node {u[i]} "
                        f"-> {v[i]} towards {tables.destinations[j[i]]}")
    transit = np.asarray(snap.transit, dtype=bool)
    d = tables.destinations[j]
    via = ~transit[v] & (v != d)
    if via.any():
        i = int(np.flatnonzero(via)[0])
        problems.append(f"{int(via.sum())} next hop(s) forward through non-transit node(s), "
                        f"e.g. {u[i]} -> {v[i]} towards {d[i]}")
    prim = tables.primary()
    for jj, dd in enumerate(tables.destinations.tolist()):
        # follow primary hops from everywhere at once; a loop never reaches dd
        cur = np.arange(n)
        cur[prim[:, jj] < 0] = dd
        for _ in range(n):
            nxt = prim[cur, jj]
            move = (cur != dd) & (nxt >= 0)
            if not move.any():
                break
            cur = np.where(move, nxt, cur)
        looping = (cur != dd)
        if looping.any():
            problems.append(f"{int(looping.sum())} node(s) loop towards destination {dd}, e.g. "
                            f"node {int(np.flatnonzero(looping)[0])}")
            break
    return problems


def snapshot_from_edges(n_nodes: int, edges: Sequence[tuple[int, int]], delays,
                        transit=None, up=None, rates=None, t_s: float = 0.0,
                        kinds=None) -> Snapshot:
    """A :class:`Snapshot` from an edge list (for tests, examples and custom topologies).

    Edges may be given in any order and orientation; they are stored with ``a < b``, sorted.
    ``transit`` defaults to every node; ``up`` to all links; ``rates`` to 1 Gbit/s; ``kinds``
    to ISL.
    """
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if np.any(e < 0) or np.any(e >= n_nodes) or np.any(e[:, 0] == e[:, 1]):
        raise RoutingError("edges must join two different node ids in 0..n_nodes-1")
    a, b = np.minimum(e[:, 0], e[:, 1]), np.maximum(e[:, 0], e[:, 1])
    keys = a * n_nodes + b
    if np.unique(keys).size != keys.size:
        raise RoutingError("edge list has duplicate links")
    order = np.argsort(keys)
    m = e.shape[0]

    def col(x, default, dtype):
        arr = np.full(m, default, dtype=dtype) if x is None else np.asarray(x, dtype=dtype)
        if arr.shape != (m,):
            raise RoutingError(f"need one value per edge ({m}), got shape {arr.shape}")
        return arr[order]

    delay = col(delays, 0.0, np.float64)
    tr = (np.ones(n_nodes, dtype=bool) if transit is None
          else np.asarray(transit, dtype=bool).copy())
    if tr.shape != (n_nodes,):
        raise RoutingError(f"transit needs one flag per node ({n_nodes})")
    return Snapshot(
        t_s=float(t_s), n_nodes=int(n_nodes), a=a[order].astype(np.int32),
        b=b[order].astype(np.int32), kind=col(kinds, linkstate.ISL, np.int8),
        up=col(up, True, bool), distance_m=delay * linkstate.C_M_PER_S, delay_s=delay, rate_bps=col(rates, 1e9, np.float64), transit=tr)

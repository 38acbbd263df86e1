"""The routing interface: forwarding tables, what a scheme is, and how tables are checked.

Forwarding tables are dense arrays so that they can be diffed and installed in bulk::

    next_hop[u, j, m]   the m-th next hop of node u towards node destinations[j]
                        (-1: no route / no further next hop; next_hop[d, j, :] = -1 at d itself)

Column ``m = 0`` is the primary next hop (the one :func:`meshemu.routing.trace_path`
follows); a multipath scheme fills further columns. Only links that are *up* carry routes,
and nodes that are not transit nodes (ground stations, users, data centres) never forward
for others: they appear only as the first or the last node of a path.

Kinds of scheme
---------------
A scheme has a :data:`SchemeKind`:

- ``"computed"`` (every scheme today): meshemu computes the tables itself from each snapshot,
  ahead of the clock, and installs them in the nodes (:class:`RoutingScheme`,
  :mod:`meshemu.routing.computed`);
- ``"daemon"`` (reserved for the next step, :mod:`meshemu.routing.daemons`): a routing daemon
  (OSPF, IS-IS) runs inside each node and converges on its own; such a scheme has no
  ``forwarding_tables``.

Consumers that only know computed schemes check :func:`scheme_kind` first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from meshemu.errors import RoutingError
from meshemu.geometry.arrays import Int32Array
from meshemu.geometry.linkstate import Snapshot

#: How a scheme produces routes: ``computed`` tables or a ``daemon`` inside the nodes.
SchemeKind = Literal["computed", "daemon"]

#: The kinds there are (``SchemeKind``'s values).
SCHEME_KINDS: tuple[SchemeKind, ...] = ("computed", "daemon")


@dataclass(frozen=True, eq=False)
class ForwardingTables:
    """Per node, per destination: next hop(s).

    Attributes
    ----------
    destinations : ndarray of int32, shape (D,)
        Destination node ids, the columns of ``next_hop``.
    next_hop : ndarray of int32, shape (N, D, K)
        Next hops, -1 padded (see the module docstring). A 2-D array (N, D) is taken as one
        next hop per entry.
    scheme : str
        Name of the scheme that made them.
    """

    destinations: Int32Array
    next_hop: Int32Array
    scheme: str = ""

    def __post_init__(self) -> None:
        d = np.asarray(self.destinations, dtype=np.int32)
        nh = np.asarray(self.next_hop, dtype=np.int32)
        if nh.ndim == 2:
            nh = nh[:, :, None]
        if nh.ndim != 3 or nh.shape[1] != d.shape[0]:
            raise RoutingError(
                f"next_hop must have shape (nodes, {d.shape[0]} destinations, "
                f"paths); got {nh.shape}"
            )
        object.__setattr__(self, "destinations", d)
        object.__setattr__(self, "next_hop", nh)

    @property
    def n_nodes(self) -> int:
        """Number of nodes (rows of ``next_hop``)."""
        return int(self.next_hop.shape[0])

    def primary(self) -> Int32Array:
        """Primary next hop, shape (N, D)."""
        return self.next_hop[:, :, 0]

    def dest_index(self, d: int) -> int:
        """Column of destination node ``d``.

        Raises
        ------
        RoutingError
            ``d`` is not one of the destinations.
        """
        j = np.flatnonzero(self.destinations == d)
        if j.size == 0:
            raise RoutingError(f"node {d} is not a destination of these forwarding tables")
        return int(j[0])


@runtime_checkable
class ComputedScheme(Protocol):
    """What the planner and the emulator need of a computed scheme: a ``name`` and
    ``forwarding_tables``. :class:`RoutingScheme` subclasses satisfy it, and so does any
    duck-typed plug-in class that :func:`meshemu.routing.get_scheme` accepts."""

    name: str

    def forwarding_tables(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> ForwardingTables:
        """Forwarding tables for every node towards each of ``destinations``."""
        ...


class RoutingScheme(ABC):
    """A computed routing scheme. Subclass it, give it a ``name``, implement
    ``forwarding_tables``.

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
    #: Tables computed by meshemu from each snapshot (see the module docstring).
    kind: ClassVar[SchemeKind] = "computed"

    @abstractmethod
    def forwarding_tables(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> ForwardingTables:
        """Forwarding tables for every node towards each of ``destinations``."""


def scheme_kind(scheme: object) -> SchemeKind:
    """The :data:`SchemeKind` of a scheme (class or instance); ``"computed"`` when it
    declares none (duck-typed plug-ins).

    Raises
    ------
    RoutingError
        The scheme declares a kind that is not one of :data:`SCHEME_KINDS`.
    """
    kind = getattr(scheme, "kind", "computed")
    for k in SCHEME_KINDS:
        if kind == k:
            return k
    raise RoutingError(
        f"routing scheme {getattr(scheme, 'name', scheme)!r} has kind {kind!r}; "
        f"a kind is one of: {', '.join(SCHEME_KINDS)}"
    )


#: Forwarding entries (nodes x destinations) :func:`validate_tables` checks in one block.
VALIDATE_BLOCK_ENTRIES = 1 << 22


def validate_tables(tables: ForwardingTables, snap: Snapshot) -> list[str]:
    """Problems with tables made by a (user's) scheme for ``snap``.

    Parameters
    ----------
    tables : ForwardingTables
    snap : Snapshot
        The snapshot the tables were made for.

    Returns
    -------
    list of str
        One line per kind of problem found: next hops that are not up neighbours, forwarding
        through non-transit nodes (a relay only between a lower and a higher tier), loops.
        Empty: fine.

    Notes
    -----
    The destinations are checked a block at a time (:data:`VALIDATE_BLOCK_ENTRIES` entries),
    so a million nodes by a few dozen destinations need no (N x D x 3) index arrays: up
    links are looked up in a sparse adjacency matrix, and loops found by pointer doubling
    (:func:`_unreached`).
    """
    n = snap.n_nodes
    if tables.n_nodes != n:
        return [f"tables are for {tables.n_nodes} nodes, the snapshot has {n}"]
    nh = tables.next_hop
    top = int(nh.max(initial=-1))
    if top >= n:
        return [f"next hop {top} is not a node id (0..{n - 1})"]
    up = np.asarray(snap.up, dtype=bool)
    a, b = snap.a[up].astype(np.int64), snap.b[up].astype(np.int64)
    adj = csr_matrix(
        (np.ones(2 * a.size, np.int8), (np.concatenate([a, b]), np.concatenate([b, a]))),
        shape=(n, n),
    )
    adj.sum_duplicates()
    transit = np.asarray(snap.transit, dtype=bool)
    relay = np.asarray(snap.relay, dtype=bool)
    tier = np.asarray(snap.tier, dtype=np.int64)
    dests = tables.destinations.astype(np.int64)
    no_link: list[tuple[int, int, int, int]] = []  # (count, u, v, dest) of the first block
    via: list[tuple[int, int, int, int]] = []
    loop: str | None = None
    bad_links = bad_via = 0
    block = max(1, VALIDATE_BLOCK_ENTRIES // max(n, 1))
    for j0 in range(0, dests.size, block):
        js = np.arange(j0, min(j0 + block, dests.size))
        sub = nh[:, js, :]  # (N, B, K)
        u, jj, m = np.nonzero(sub >= 0)
        v = sub[u, jj, m].astype(np.int64)
        d = dests[js][jj]
        lacking = np.asarray(adj[u, v]).ravel() == 0 if u.size else np.zeros(0, bool)
        if lacking.any():
            i = int(np.flatnonzero(lacking)[0])
            bad_links += int(lacking.sum())
            no_link.append((0, int(u[i]), int(v[i]), int(d[i])))
        through = ~transit[v] & (v != d)
        if relay.any():  # a relay may pass traffic on, but only between tiers
            rv = through & relay[v]
            w = np.full(v.size, -1, np.int64)
            w[rv] = sub[v[rv], jj[rv], 0]
            tu, tv, tw = tier[u], tier[v], tier[np.maximum(w, 0)]
            between = (w >= 0) & (((tu < tv) & (tv < tw)) | ((tw < tv) & (tv < tu)))
            through &= ~(rv & between)
        if through.any():
            i = int(np.flatnonzero(through)[0])
            bad_via += int(through.sum())
            via.append((0, int(u[i]), int(v[i]), int(d[i])))
        if loop is None:
            loop = _first_loop(sub[:, :, 0], dests[js])
    problems: list[str] = []
    if bad_links:
        _, u0, v0, d0 = no_link[0]
        problems.append(
            f"{bad_links} next hop(s) without an up link, e.g. node {u0} -> {v0} towards {d0}"
        )
    if bad_via:
        _, u0, v0, d0 = via[0]
        problems.append(
            f"{bad_via} next hop(s) forward through non-transit node(s), "
            f"e.g. {u0} -> {v0} towards {d0}"
        )
    if loop is not None:
        problems.append(loop)
    return problems


def _first_loop(prim: Int32Array, dests: npt.NDArray[np.int64]) -> str | None:
    """A message about the first destination (column of ``prim``, the primary next hops
    (N, B)) towards which next hops loop or end before it, or None."""
    bad = _unreached(prim, dests)
    cols = np.flatnonzero(bad.any(axis=0))
    if cols.size == 0:
        return None
    j = int(cols[0])
    looping = bad[:, j]
    return (
        f"{int(looping.sum())} node(s) loop towards destination {int(dests[j])}, e.g. "
        f"node {int(np.flatnonzero(looping)[0])}"
    )


def _unreached(prim: Int32Array, dests: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """(N, B): nodes that have a next hop towards ``dests[j]`` but, following primary next
    hops, never get there (a loop, or a node without a next hop on the way).

    Pointer doubling: ``g`` maps each node to the node ``2^k`` hops ahead (a node without a
    next hop, and the destination, to itself), squared until nothing moves or ``2^k`` passes
    the number of nodes, so the rounds are about log2 of the longest path.
    """
    n, nb = prim.shape
    own = np.arange(n, dtype=np.int64)[:, None]
    g = np.where(prim >= 0, prim, own).astype(np.int64)
    g[dests, np.arange(nb)] = dests
    col = np.arange(nb)[None, :]
    for _ in range(max(1, int(np.ceil(np.log2(max(n, 2))))) + 1):
        g2 = g[g, col]
        if np.array_equal(g2, g):
            break
        g = g2
    unreached: npt.NDArray[np.bool_] = (prim >= 0) & (g != dests[None, :])
    unreached[dests, np.arange(nb)] = False
    return unreached

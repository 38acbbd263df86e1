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

The package, one module per concern:

- :mod:`~meshemu.routing.base`: the interface and value types (:class:`ForwardingTables`,
  :class:`RoutingScheme`, the :class:`ComputedScheme` protocol, :data:`SchemeKind`,
  :func:`validate_tables`);
- :mod:`~meshemu.routing.computed`: the schemes whose tables meshemu computes (every scheme
  today, ``kind = "computed"``);
- :mod:`~meshemu.routing.daemons`: the place for schemes run by routing daemons inside the
  nodes (``kind = "daemon"``; not implemented yet);
- :mod:`~meshemu.routing.registry`: names, plug-in files and modules, entry points;
- :mod:`~meshemu.routing.tables`: using tables (:func:`trace_path`, :func:`path_delay_s`,
  :func:`route_diff`) and :func:`snapshot_from_edges`.
"""

from __future__ import annotations

from meshemu.geometry import linkstate as linkstate
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing.base import (
    SCHEME_KINDS,
    ComputedScheme,
    ForwardingTables,
    RoutingScheme,
    SchemeKind,
    scheme_kind,
    validate_tables,
)
from meshemu.routing.computed import ECMP, MAX_PATHS, FewestHops, ShortestDelay
from meshemu.routing.registry import (
    ENTRY_POINT_GROUP,
    SCHEMES,
    available_schemes,
    get_scheme,
    register,
)
from meshemu.routing.tables import (
    RouteDiff,
    path_delay_s,
    route_diff,
    snapshot_from_edges,
    trace_path,
    trace_paths,
)

__all__ = [
    "ECMP",
    "ENTRY_POINT_GROUP",
    "MAX_PATHS",
    "SCHEMES",
    "SCHEME_KINDS",
    "ComputedScheme",
    "FewestHops",
    "ForwardingTables",
    "RouteDiff",
    "RoutingScheme",
    "SchemeKind",
    "ShortestDelay",
    "Snapshot",
    "available_schemes",
    "get_scheme",
    "linkstate",
    "path_delay_s",
    "register",
    "route_diff",
    "scheme_kind",
    "snapshot_from_edges",
    "trace_path",
    "trace_paths",
    "validate_tables",
]

"""The route installer: forwarding tables into the nodes' kernels, over netlink.

A route in node ``u`` to node ``d`` with next hop ``v`` over link ``k`` is
``<addr d>/32 via <v's address on k> dev <u's interface on k> src <addr u>``
(:mod:`meshemu.live.addressing`); with several next hops it is one multipath route. A node
without a route to ``d`` (next hop -1) has none in its kernel.

:meth:`RouteInstaller.install_full` installs whole tables (the build: ``N x D`` routes, a
block of nodes at a time, as numpy records sent thousands per ``sendmsg``);
:meth:`RouteInstaller.apply_diff` applies a :class:`meshemu.routing.RouteDiff` (one step: one
netlink batch per node that has changes). Both go through :meth:`RouteInstaller.route_ops`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from meshemu.errors import EmulationError
from meshemu.linux import netlink
from meshemu.live import addressing as adr
from meshemu.routing import RouteDiff


def check_tables(tables: Any, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Destinations (int64) and next hops of forwarding tables for ``n_nodes`` nodes.

    Raises
    ------
    EmulationError
        ``next_hop`` is not ``(N, D, K)`` or a destination is not a node id.
    """
    dests = np.asarray(tables.destinations, dtype=np.int64)
    nh = np.asarray(tables.next_hop)
    if nh.ndim != 3 or nh.shape[0] != n_nodes or nh.shape[1] != dests.size:
        raise EmulationError(
            f"forwarding tables must have next_hop of shape (N={n_nodes}"
            f", D={dests.size}, K); got {nh.shape}"
        )
    if dests.size and (dests.min() < 0 or dests.max() >= n_nodes):
        raise EmulationError(f"destinations must be node ids in 0..{n_nodes - 1}")
    return dests, nh


class RouteInstaller:
    """Installs routes in the nodes' kernels.

    Parameters
    ----------
    plan : AddressPlan
        Addresses and link ids.
    ifindex : ndarray of int32, shape (L, 2)
        Interface index of each link's a and b end, in its node.
    sockets : sequence of Netlink
        Each node's rtnetlink socket, by node id.
    local : ndarray of bool, optional
        Per node id: on this host (a run over several hosts). Routes of the other nodes are
        skipped (their hosts install them). Default: every node.
    """

    def __init__(
        self,
        plan: adr.AddressPlan,
        ifindex: np.ndarray,
        sockets: Sequence[netlink.Netlink | None],
        local: np.ndarray | None = None,
    ) -> None:
        self.plan = plan
        self.ifindex = ifindex
        self.sockets = sockets
        self.local = None if local is None or bool(np.all(local)) else np.asarray(local, bool)

    @property
    def names(self) -> tuple[str, ...]:
        return self.plan.names

    def install_full(self, dests: np.ndarray, nh: np.ndarray, block: int = 128) -> int:
        """Install every route of next-hop table ``nh`` (``(N, D, K)``, -1 padded) towards
        ``dests``, a block of nodes at a time (bounded memory). Returns the routes sent."""
        n = self.plan.n_nodes
        total = 0
        for u0 in range(0, n, block):
            u1 = min(n, u0 + block)
            hops = nh[u0:u1]
            k = hops.shape[2]
            uu = np.repeat(np.arange(u0, u1, dtype=np.int64), dests.size)
            dd = np.tile(dests, u1 - u0)
            flat = hops.reshape(-1, k)
            keep = (flat[:, 0] >= 0) & (uu != dd)
            total += self.route_ops(uu[keep], dd[keep], flat[keep])
        return total

    def apply_diff(self, diff: RouteDiff, dests: np.ndarray) -> int:
        """Apply the changed entries of ``diff`` (towards ``dests[diff.dest_index]``); a
        node's route to itself is never touched. Returns the routes replaced, added or
        removed."""
        nodes = np.asarray(diff.nodes, dtype=np.int64)
        order = np.argsort(nodes, kind="stable")
        u = nodes[order]
        d = dests[np.asarray(diff.dest_index)[order]]
        hops = np.asarray(diff.new)[order]
        keep = u != d
        return self.route_ops(u[keep], d[keep], hops[keep])

    def route_ops(self, u: np.ndarray, d: np.ndarray, hops: np.ndarray) -> int:
        """Make node ``u[m]``'s route to node ``d[m]`` use next hops ``hops[m]`` (-1 padded;
        all -1: no route). Rows must be sorted by ``u``. Returns the number of rows.

        Raises
        ------
        EmulationError
            A next hop that is not a neighbour over a link of the run, or routes the kernel
            refused (the first few are listed).
        """
        if self.local is not None:
            here = self.local[u]
            u, d, hops = u[here], d[here], hops[here]
        m = u.size
        if m == 0:
            return 0
        prim = hops[:, 0].astype(np.int64)
        delete = prim < 0
        multi = ~delete & (hops[:, 1] >= 0) if hops.shape[1] > 1 else np.zeros(m, bool)
        single = ~delete & ~multi
        seq = np.arange(m, dtype=np.uint32)
        dst_addr = adr.node_address_int(d.astype(np.int64)).astype(np.uint32)
        src_addr = self.plan.node_addr[u]

        per_node: dict[int, list[Any]] = {}
        rows = np.flatnonzero(single)
        if rows.size:
            gw, oif = self._hop_fields(u, d, hops, rows, prim[rows])
            rec = netlink.route_records(dst_addr[rows], gw, oif, src_addr[rows], seq[rows])
            self._split(per_node, u[rows], rec)
        rows = np.flatnonzero(delete)
        if rows.size:
            rec = netlink.delroute_records(dst_addr[rows], seq[rows])
            self._split(per_node, u[rows], rec)
        rows = np.flatnonzero(multi)
        if rows.size:
            self._multipath(per_node, u, d, hops, rows, dst_addr, src_addr)

        failures = []
        for node, chunks in per_node.items():
            sock = self.sockets[node]
            if sock is None:
                raise EmulationError(
                    f"node {self.names[node]} has no netlink socket (the "
                    f"emulation is not built, or stopped)"
                )
            for s, err, text in sock.send_batch(chunks, ignore=(errno.ESRCH,)):
                failures.append((node, s, err, text))
        if failures:
            self._raise_failures(failures, d, hops, delete, dst_addr)
        return m

    def _hop_fields(
        self, u: np.ndarray, d: np.ndarray, hops: np.ndarray, rows: np.ndarray, v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gateway address and outgoing interface index of next hop ``v`` of each row."""
        plan = self.plan
        n = plan.n_nodes
        names = self.names
        uu = u[rows]
        wrong = (v < 0) | (v >= n) | (v == uu)
        if np.any(wrong):
            r = rows[wrong][0]
            raise EmulationError(
                f"forwarding table: node {names[u[r]]} has next hop "
                f"{hops[r].tolist()} to {names[d[r]]}"
            )
        key = np.minimum(uu, v) * n + np.maximum(uu, v)
        k = np.searchsorted(plan.link_keys, key)
        k = np.minimum(k, max(plan.n_links - 1, 0))
        bad = (plan.link_keys[k] != key) if plan.n_links else np.ones(k.size, bool)
        if np.any(bad):
            r = rows[bad][0]
            vv = v[bad][0]
            raise EmulationError(
                f"forwarding table: node {names[u[r]]} forwards to "
                f"{names[d[r]]} via {names[vv]}, but there is no "
                f"link {names[u[r]]}-{names[vv]} in link_keys"
            )
        s_u = (uu > v).astype(np.int64)  # 0: u is end a
        gw = adr.link_address_int(k, 1 - s_u).astype(np.uint32)
        oif = self.ifindex[k, s_u]
        return gw, oif

    def _multipath(
        self,
        per_node: dict[int, list[Any]],
        u: np.ndarray,
        d: np.ndarray,
        hops: np.ndarray,
        rows: np.ndarray,
        dst_addr: np.ndarray,
        src_addr: np.ndarray,
    ) -> None:
        """Append a multipath route message per row of ``rows`` to ``per_node``."""
        kk = hops.shape[1]
        # per column j: the j-th next hop (or the primary where there is none)
        fields = [
            self._hop_fields(
                u,
                d,
                hops,
                rows,
                np.where(hops[rows, j] >= 0, hops[rows, j], hops[rows, 0]).astype(np.int64),
            )
            for j in range(kk)
        ]
        msgs: dict[int, list[bytes]] = {}
        for i, r in enumerate(rows.tolist()):
            nh_list: list[tuple[int, int]] = []
            for j in range(kk):
                pair = (int(fields[j][0][i]), int(fields[j][1][i]))
                if hops[r, j] >= 0 and pair not in nh_list:
                    nh_list.append(pair)
            msgs.setdefault(int(u[r]), []).append(
                netlink.multipath_route_msg(int(dst_addr[r]), nh_list, int(src_addr[r]), r)
            )
        for node, ms in msgs.items():
            per_node.setdefault(node, []).extend(netlink.pack_messages(ms))

    def _raise_failures(
        self,
        failures: list[tuple[int, int, int, str]],
        d: np.ndarray,
        hops: np.ndarray,
        delete: np.ndarray,
        dst_addr: np.ndarray,
    ) -> None:
        names = self.names
        lines = []
        for node, s, err, text in failures[:5]:
            op = "delete" if delete[s] else "replace"
            lines.append(
                f"{names[node]}: {op} route to {names[d[s]]} "
                f"({adr.int_to_ip(dst_addr[s])}) via {hops[s].tolist()}: "
                f"{os.strerror(err)}{' (' + text + ')' if text else ''}"
            )
        raise EmulationError(
            f"{len(failures)} route change(s) failed, e.g.:\n  " + "\n  ".join(lines)
        )

    @staticmethod
    def _split(per_node: dict[int, list[Any]], u: np.ndarray, rec: np.ndarray) -> None:
        """Append each node's records (``u`` sorted) to ``per_node`` as send-sized chunks."""
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        ends = np.r_[starts[1:], u.size]
        buf = rec.tobytes()
        size = rec.itemsize
        for s, e in zip(starts.tolist(), ends.tolist()):
            per_node.setdefault(int(u[s]), []).extend(
                netlink.chunked(memoryview(buf)[s * size : e * size], size)
            )

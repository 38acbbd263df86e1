"""The route installer: forwarding tables into the nodes' kernels, over netlink.

A route in node ``u`` to node ``d`` with next hop ``v`` over link ``k`` is
``<addr d>/32 via <v's address on k> dev <u's interface on k> src <addr u>``
(:mod:`meshemu.live.addressing`); with several next hops it is one multipath route. A node
without a route to ``d`` (next hop -1) has none in its kernel.

:meth:`RouteInstaller.install_full` installs whole tables (the build: ``N x D`` routes, a
block of nodes at a time, as numpy records sent thousands per ``sendmsg``);
:meth:`RouteInstaller.apply_diff` applies a :class:`meshemu.routing.RouteDiff` (one step: one
netlink batch per node that has changes). Both go through :meth:`RouteInstaller.route_ops`.

**Aggregation** (``aggregate=True``, the default from :data:`AGGREGATE_FROM_NODES` nodes):
node addresses are consecutive (:mod:`meshemu.live.addressing`), and a node sends whole
runs of them the same way (a satellite reaches most of a distant plane, or a distant shell,
through one neighbour). :func:`aggregate_rows` finds, per node, the largest aligned address
blocks whose destinations all share one next hop, and the build installs one prefix route
per block instead of one /32 per destination (Starlink shell 1: 2.5 M routes become about
0.86 M). The aggregates are never changed afterwards: a step's route changes go in as /32
routes, which the kernel's longest-prefix match prefers: a destination whose next hop now
differs from its aggregate's gets a /32 (an ``unreachable`` /32 when it has no route), and
one that returns to its aggregate's next hop loses its /32. What each node forwards is
exactly what the tables say, at every step (``tests/unit/test_route_aggregation.py``
checks it by longest-prefix match, ``tests/integration/test_emulator.py`` in the kernel).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from meshemu.errors import EmulationError
from meshemu.linux import netlink
from meshemu.live import addressing as adr
from meshemu.routing import RouteDiff

#: Route aggregation is on by default from this many nodes (below it every route is a /32,
#: as ``ip route`` shows them one per destination).
AGGREGATE_FROM_NODES = 1000
#: Threads that send the build's routes (:meth:`RouteInstaller.install_full`).
BUILD_SEND_THREADS = 2
#: Next-hop value of a destination that any aggregate may cover (its own address, and the
#: destinations with several next hops, which get a /32 multipath route of their own).
DONT_CARE = -2


def aggregate_rows(
    vals: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The aggregate prefixes of some nodes' next hops (pure).

    Parameters
    ----------
    vals : ndarray of int32, shape (B, S)
        Per node (row) and address slot ``s`` (the address ``10.0.0.0 + s``; ``S`` a power
        of two, at most 65,536): the next hop, -1 for no route, :data:`DONT_CARE` for a slot
        any prefix may cover.

    Returns
    -------
    row, start, prefix_len, value : ndarray
        One element per prefix: the row, its first slot, its length (``32 - log2 size``) and
        its next hop. Prefixes are disjoint; each is the largest aligned block around its
        slots whose non-don't-care slots all have that next hop (never a block of no
        route). Every slot with a next hop >= 0 is in exactly one; no slot of another next
        hop, or without a route, is in any.
    cover : ndarray of int32, shape (B, S)
        The next hop of the prefix shorter than /32 that holds each slot, -1 where none
        does (a /32 prefix is a plain route: a step's /32 for that destination replaces it,
        so it covers nothing).
    """
    b, s = vals.shape
    if s & (s - 1) or s > 1 << 16:
        raise EmulationError(f"aggregate_rows needs a power of two up to 65536 slots, got {s}")
    big = np.iinfo(np.int32).max
    lo = np.where(vals == DONT_CARE, big, vals).astype(np.int32)
    hi = np.where(vals == DONT_CARE, np.iinfo(np.int32).min, vals).astype(np.int32)
    levels = []  # per level L (blocks of 2**L slots): (uniform, value)
    while True:
        uni = (lo == hi) | (lo == big)
        levels.append((uni, lo))
        if lo.shape[1] == 1:
            break
        lo = np.minimum(lo[:, 0::2], lo[:, 1::2])
        hi = np.maximum(hi[:, 0::2], hi[:, 1::2])
    rows, starts, lens, values = [], [], [], []
    cover = np.full((b, s), -1, dtype=np.int32)
    top = len(levels) - 1
    for lvl, (uni, val) in enumerate(levels):
        em = uni & (val >= 0) & (val != big)
        if lvl < top:
            em &= ~np.repeat(levels[lvl + 1][0], 2, axis=1)
        r, blk = np.nonzero(em)
        if not r.size:
            continue
        v = val[r, blk]
        rows.append(r)
        starts.append(blk << lvl)
        lens.append(np.full(r.size, 32 - lvl, dtype=np.int32))
        values.append(v)
        size = 1 << lvl
        if size > 1:
            cv = cover.reshape(b, s // size, size)
            cv[r, blk, :] = v[:, None]
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z.astype(np.int32), z.astype(np.int32), cover
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(starts).astype(np.int64),
        np.concatenate(lens),
        np.concatenate(values).astype(np.int32),
        cover,
    )


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
    aggregate : bool
        Install whole tables as aggregate prefixes (see the module docstring).

    Attributes
    ----------
    cover : ndarray of int32, shape (N, N), or None
        With aggregation, after :meth:`install_full`: the next hop of the aggregate prefix
        that covers each node's route to each destination (-1: none).
    local : ndarray of bool, optional
        Per node id: on this host (a run over several hosts). Routes of the other nodes are
        skipped (their hosts install them). Default: every node.
    """

    def __init__(
        self,
        plan: adr.AddressPlan,
        ifindex: np.ndarray,
        sockets: Sequence[netlink.Netlink | None],
        aggregate: bool = False,
        local: np.ndarray | None = None,
    ) -> None:
        self.plan = plan
        self.ifindex = ifindex
        self.sockets = sockets
        self.aggregate = aggregate
        self.cover: np.ndarray | None = None
        self.local = None if local is None or bool(np.all(local)) else np.asarray(local, bool)
        #: Threads sending the nodes' batches (the build's: :data:`BUILD_SEND_THREADS`).
        self.send_threads = 1

    @property
    def names(self) -> tuple[str, ...]:
        return self.plan.names

    def install_full(self, dests: np.ndarray, nh: np.ndarray, block: int = 128) -> int:
        """Install every route of next-hop table ``nh`` (``(N, D, K)``, -1 padded) towards
        ``dests``, a block of nodes at a time (bounded memory). Returns the routes sent.

        With aggregation (and routes towards every node, in node order) the routes are
        aggregate prefixes, plus a /32 per destination with several next hops."""
        self.send_threads = BUILD_SEND_THREADS
        try:
            return self._install_full(dests, nh, block)
        finally:
            self.send_threads = 1

    def _install_full(self, dests: np.ndarray, nh: np.ndarray, block: int) -> int:
        n = self.plan.n_nodes
        if self.aggregate and dests.size == n and np.array_equal(dests, np.arange(n)):
            return self._install_aggregated(nh, block)
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

    def _install_aggregated(self, nh: np.ndarray, block: int) -> int:
        n = self.plan.n_nodes
        slots = max(2, 1 << n.bit_length())  # slots 0 .. n used (node d at slot d + 1)
        self.cover = np.full((n, n), -1, dtype=np.int32)
        k = nh.shape[2]
        total = 0
        for u0 in range(0, n, block):
            u1 = min(n, u0 + block)
            hops = nh[u0:u1]
            rows = np.arange(u1 - u0)
            multi = (hops[:, :, 1] >= 0) & (hops[:, :, 0] >= 0) if k > 1 else None
            vals = np.full((u1 - u0, slots), DONT_CARE, dtype=np.int32)
            prim = hops[:, :, 0].astype(np.int32)
            vals[:, 1 : n + 1] = prim if multi is None else np.where(multi, DONT_CARE, prim)
            vals[rows, rows + u0 + 1] = DONT_CARE  # its own address is local
            r, start, plen, value, cover = aggregate_rows(vals)
            self.cover[u0:u1] = cover[:, 1 : n + 1]
            total += self._prefix_ops(r + u0, start, plen, value)
            if multi is not None:
                mu, md = np.nonzero(multi)
                keep = (mu + u0) != md
                mu, md = mu[keep], md[keep]
                if mu.size:
                    total += self.route_ops(mu + u0, md, hops[mu, md])
        return total

    def _prefix_ops(
        self, u: np.ndarray, start: np.ndarray, plen: np.ndarray, value: np.ndarray
    ) -> int:
        """Node ``u[m]``'s route to the prefix of ``plen[m]`` bits at address slot
        ``start[m]`` via its neighbour ``value[m]`` (rows sorted by ``u``)."""
        if self.local is not None:  # other hosts' nodes: their hosts install them
            here = self.local[u]
            u, start, plen, value = u[here], start[here], plen[here], value[here]
        m = u.size
        if m == 0:
            return 0
        order = np.argsort(u, kind="stable")
        u, start, plen, value = u[order], start[order], plen[order], value[order]
        first = np.maximum(start - 1, 0)  # (for error messages: a node in the prefix)
        rows = np.arange(m)
        gw, oif = self._hop_fields(u, first, value[:, None], rows, value.astype(np.int64))
        dst = (np.uint32(int(adr.NODE_NET.network_address)) + start.astype(np.uint32)).astype(
            np.uint32
        )
        rec = netlink.route_records(
            dst, gw, oif, self.plan.node_addr[u], np.arange(m, dtype=np.uint32), plen
        )
        per_node: dict[int, list[Any]] = {}
        self._split(per_node, u, rec)
        failures = self._send(per_node)
        if failures:
            node, s, err, text = failures[0]
            raise EmulationError(
                f"{len(failures)} aggregate route(s) failed, e.g. {self.names[node]}: "
                f"{adr.int_to_ip(dst[s])}/{plen[s]} via {self.names[value[s]]}: "
                f"{os.strerror(err)}{' (' + text + ')' if text else ''}"
            )
        return m

    def _send(self, per_node: dict[int, list[Any]]) -> list[tuple[int, int, int, str]]:
        """Send each node's chunks on its socket; the failures as (node, seq, errno, text).

        With :attr:`send_threads` > 1 the nodes are dealt out to that many threads: the
        kernel inserts routes one message at a time under the RTNL lock, but copying,
        allocating and parsing each message happen outside it, and so does numpy's and the
        socket calls' share of Python (``sendmsg`` releases the GIL)."""
        for node in per_node:
            if self.sockets[node] is None:
                raise EmulationError(
                    f"node {self.names[node]} has no netlink socket (the "
                    f"emulation is not built, or stopped)"
                )
        nodes = list(per_node)
        threads = min(self.send_threads, len(nodes))

        def send(part: list[int]) -> list[tuple[int, int, int, str]]:
            out = []
            for node in part:
                sock = self.sockets[node]
                assert sock is not None
                for s, err, text in sock.send_batch(per_node[node], ignore=(errno.ESRCH,)):
                    out.append((node, s, err, text))
            return out

        if threads <= 1:
            return send(nodes)
        with ThreadPoolExecutor(threads, thread_name_prefix="meshemu-routes") as pool:
            parts = list(pool.map(send, [nodes[i::threads] for i in range(threads)]))
        return sorted((f for part in parts for f in part), key=lambda f: (f[0], f[1]))

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
        if self.cover is not None:  # aggregated: /32s over the aggregates
            u, d, hops = u[keep], d[keep], hops[keep]
            return self.route_ops(u, d, hops, self.cover[u, d])
        return self.route_ops(u[keep], d[keep], hops[keep])

    def route_ops(
        self, u: np.ndarray, d: np.ndarray, hops: np.ndarray, cover: np.ndarray | None = None
    ) -> int:
        """Make node ``u[m]``'s route to node ``d[m]`` use next hops ``hops[m]`` (-1 padded;
        all -1: no route). Rows must be sorted by ``u``. Returns the number of rows.

        With ``cover`` (the next hop of the aggregate that holds each row's destination, -1:
        none), a row whose next hop is its aggregate's loses its /32, and one without a route
        under an aggregate gets an unreachable /32.

        Raises
        ------
        EmulationError
            A next hop that is not a neighbour over a link of the run, or routes the kernel
            refused (the first few are listed).
        """
        if self.local is not None:
            here = self.local[u]
            u, d, hops = u[here], d[here], hops[here]
            if cover is not None:
                cover = cover[here]
        m = u.size
        if m == 0:
            return 0
        prim = hops[:, 0].astype(np.int64)
        none = prim < 0
        multi = ~none & (hops[:, 1] >= 0) if hops.shape[1] > 1 else np.zeros(m, bool)
        if cover is None:
            delete, unreach = none, np.zeros(m, bool)
        else:
            unreach = none & (cover >= 0)
            delete = (none & (cover < 0)) | (~none & ~multi & (prim == cover))
        single = ~none & ~multi & ~delete
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
            rec = netlink.delroute_records(dst_addr[rows], seq[rows], any_type=cover is not None)
            self._split(per_node, u[rows], rec)
        rows = np.flatnonzero(unreach)
        if rows.size:
            rec = netlink.unreachable_records(dst_addr[rows], seq[rows])
            self._split(per_node, u[rows], rec)
        rows = np.flatnonzero(multi)
        if rows.size:
            self._multipath(per_node, u, d, hops, rows, dst_addr, src_addr)

        failures = self._send(per_node)
        if failures:
            self._raise_failures(failures, d, hops, delete | unreach, dst_addr)
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

"""Route aggregation (issue 12): aggregate prefixes at the build, /32s over them at each step,
and what every node forwards is exactly what its tables say, checked by longest-prefix
match in a model of the kernel's FIB fed with the very netlink messages the installer sends.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from meshemu.linux import netlink
from meshemu.live import addressing as adr
from meshemu.live.routes import DONT_CARE, RouteInstaller, aggregate_rows
from meshemu.routing import get_scheme, route_diff


# ---- the pure aggregation ----------------------------------------------------------------
def check_prefixes(vals: np.ndarray) -> int:
    """Check aggregate_rows' contract on ``vals``; the number of prefixes."""
    row, start, plen, value, cover = aggregate_rows(vals)
    b, s = vals.shape
    held = np.full((b, s), -1, dtype=np.int64)  # which prefix holds each slot
    for i in range(row.size):
        size = 1 << (32 - int(plen[i]))
        assert start[i] % size == 0  # aligned
        blk = slice(int(start[i]), int(start[i]) + size)
        assert np.all(held[row[i], blk] == -1)  # disjoint
        held[row[i], blk] = i
        seg = vals[row[i], blk]
        assert np.all((seg == value[i]) | (seg == DONT_CARE)) and np.any(seg == value[i])
        if size < s:  # maximal: the enclosing block of twice the size is not uniform
            pb = int(start[i]) // (2 * size) * 2 * size
            par = vals[row[i], pb : pb + 2 * size]
            par = par[par != DONT_CARE]
            assert np.unique(par).size > 1
        assert np.all(cover[row[i], blk] == (value[i] if size > 1 else -1))
    routed = vals >= 0
    assert np.all(held[routed] >= 0)  # every routed slot in one prefix
    assert np.all(held[vals == -1] == -1)  # a slot without a route in none
    assert np.all(cover[held == -1] == -1)
    return int(row.size)


def test_aggregate_prefixes_hold_each_routed_address_once_and_nothing_else():
    rng = np.random.default_rng(3)
    # runs of equal next hops (as a +Grid gives), some holes without a route, don't-cares
    for _ in range(20):
        s = 1 << int(rng.integers(1, 11))
        runs = rng.integers(1, 40, size=s)
        vals = np.repeat(rng.integers(-1, 5, size=s), runs)[:s].astype(np.int32)
        vals = np.resize(vals, (3, s)).astype(np.int32)
        vals[rng.random((3, s)) < 0.05] = DONT_CARE
        vals[1] = rng.integers(-1, 3, size=s)  # a noisy row too
        n = check_prefixes(vals)
        assert n <= np.count_nonzero(vals >= 0)
    # one next hop everywhere: one prefix of the whole space
    vals = np.full((1, 256), 7, dtype=np.int32)
    vals[0, 0] = DONT_CARE
    row, start, plen, value, _ = aggregate_rows(vals)
    assert (start.tolist(), plen.tolist(), value.tolist()) == ([0], [24], [7])
    with pytest.raises(Exception, match="power of two"):
        aggregate_rows(np.zeros((1, 12), dtype=np.int32))


# ---- the installer against a model of the kernel's FIB -------------------------------------
class FibModel:
    """A node's main table as the kernel keeps it, from the installer's netlink messages."""

    def __init__(self) -> None:
        self.routes: dict[tuple[int, int], tuple] = {}

    def send_batch(self, chunks, ignore=()):
        for chunk in chunks:
            buf = bytes(chunk)
            off = 0
            while off < len(buf):
                length, mtype = struct.unpack_from("=IH", buf, off)
                self._message(mtype, buf[off + 16 : off + length])
                off += (length + 3) & ~3
        return []

    def _message(self, mtype: int, body: bytes) -> None:
        family, dst_len, _, _, _, _, _, rtype, _ = struct.unpack_from("=BBBBBBBBI", body, 0)
        assert family == socket.AF_INET
        attrs = {}
        off = 12
        while off < len(body):
            alen, atype = struct.unpack_from("=HH", body, off)
            attrs[atype] = body[off + 4 : off + alen]
            off += (alen + 3) & ~3
        dst = int.from_bytes(attrs[netlink.RTA_DST], "big")
        key = (dst, dst_len)
        if mtype == netlink.RTM_DELROUTE:
            kept = self.routes.get(key)
            if kept is not None and (rtype == netlink.RTN_UNSPEC or kept[0] == rtype):
                del self.routes[key]
            return
        assert mtype == netlink.RTM_NEWROUTE
        if rtype == netlink.RTN_UNREACHABLE:
            self.routes[key] = (rtype,)
        elif netlink.RTA_MULTIPATH in attrs:
            mp, gws, o = attrs[netlink.RTA_MULTIPATH], set(), 0
            while o < len(mp):
                nlen = struct.unpack_from("=H", mp, o)[0]
                sub, so = mp[o + 8 : o + nlen], 0
                while so < len(sub):
                    alen, atype = struct.unpack_from("=HH", sub, so)
                    if atype == netlink.RTA_GATEWAY:
                        gws.add(int.from_bytes(sub[so + 4 : so + 8], "big"))
                    so += (alen + 3) & ~3
                o += (nlen + 3) & ~3
            self.routes[key] = (netlink.RTN_UNICAST, frozenset(gws))
        else:
            gw = int.from_bytes(attrs[netlink.RTA_GATEWAY], "big")
            self.routes[key] = (netlink.RTN_UNICAST, frozenset([gw]))

    def lookup(self, addr: int) -> frozenset[int] | None:
        """Gateways of the longest prefix that holds ``addr`` (None: no route or
        unreachable)."""
        for plen in range(32, -1, -1):
            net = addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
            r = self.routes.get((net, plen))
            if r is not None:
                return None if r[0] == netlink.RTN_UNREACHABLE else r[1]
        return None


def forwarding_agrees(inst: RouteInstaller, fibs: list[FibModel], tables, plan) -> None:
    n = plan.n_nodes
    nh = np.asarray(tables.next_hop)
    key_index = {int(k): i for i, k in enumerate(plan.link_keys)}
    for u in range(n):
        for d in range(n):
            if u == d:
                continue
            got = fibs[u].lookup(adr.node_address_int(d))
            want = {int(v) for v in nh[u, d] if v >= 0}
            if not want:
                assert got is None, (u, d, got)
                continue
            gws = set()
            for v in want:
                k = key_index[min(u, v) * n + max(u, v)]
                gws.add(int(adr.link_address_int(k, 0 if v < u else 1)))
            assert got == gws, (u, d)


@pytest.mark.parametrize("scheme", ["shortest-delay", "ecmp"])
def test_aggregated_routes_forward_as_the_tables_say_at_every_step(scheme):
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.live.links import RunLinks
    from meshemu.spec.scenario import load_scenario

    sched = LinkSchedule(load_scenario("default"), 1.0)
    snaps = list(sched.snapshots(40))
    nodes = sched.nodes
    n = len(nodes)
    links = RunLinks.from_snapshots(snaps)
    plan = adr.AddressPlan.from_links(nodes.names, nodes.kind, links.key, isl=links.isl)
    fibs = [FibModel() for _ in range(n)]
    ifindex = np.ones((plan.n_links, 2), dtype=np.int32)
    sch = get_scheme(scheme)
    dests = np.arange(n, dtype=np.int32)
    tables = [sch.forwarding_tables(s, dests) for s in snaps]
    inst = RouteInstaller(plan, ifindex, fibs, aggregate=True)  # type: ignore[arg-type]
    sent = inst.install_full(dests.astype(np.int64), np.asarray(tables[0].next_hop))
    full = int(np.count_nonzero(np.asarray(tables[0].next_hop)[:, :, 0] >= 0))
    assert inst.cover is not None and sent < full  # fewer routes than one per destination
    forwarding_agrees(inst, fibs, tables[0], plan)
    changed = 0
    for k in range(1, len(tables)):
        diff = route_diff(tables[k - 1], tables[k])
        changed += len(diff)
        inst.apply_diff(diff, dests.astype(np.int64))
        forwarding_agrees(inst, fibs, tables[k], plan)
    assert changed > 0  # the routes did move
    # a destination nobody can reach any more (under aggregates: unreachable /32s), then back
    from meshemu.routing import ForwardingTables

    last = tables[-1]
    cut = np.asarray(last.next_hop).copy()
    lost = int(np.argmax(np.count_nonzero(inst.cover >= 0, axis=0)))  # the most covered
    cut[:, lost, :] = -1
    gone = ForwardingTables(last.destinations, cut, last.scheme)
    for old, new in ((last, gone), (gone, last)):
        inst.apply_diff(route_diff(old, new), dests.astype(np.int64))
        forwarding_agrees(inst, fibs, new, plan)

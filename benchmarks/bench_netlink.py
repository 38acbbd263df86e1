"""Netlink encode/decode cost: meshemu's struct codec against pyroute2's message classes.

For each message kind meshemu sends or parses in bulk, at Starlink shell-1 size, the time
per message both ways:

- netem qdisc changes (``RTM_NEWQDISC``): ~3,200 interfaces change per step;
- address and neighbour messages (``RTM_NEWADDR``/``RTM_NEWNEIGH``) and link-up
  (``RTM_NEWLINK``): ~3,200 each when the network is built;
- routes (``RTM_NEWROUTE``): 2.5 million at build (numpy records against one pyroute2 message
  at a time, extrapolated from a sample);
- decoding a dump of 1,600 links (``RTM_GETLINK``, from this machine's own ``lo``, replicated)
  and of 1,600 netem qdiscs with statistics (``RTM_GETQDISC``).

Needs no root. Run: ``.venv/bin/python benchmarks/bench_netlink.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time
from collections.abc import Callable

import numpy as np
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import sched_netem, tcmsg

from meshemu.linux import netlink
from meshemu.live.shapers import LinkParams, netem_limit, netem_qdisc_msg

N_IFACES = 3200
N_LINKS_DUMP = 1600
N_ROUTES = 1584 * 1583


def per_msg_us(fn: Callable[[int], object], n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``fn(i) for i in range(n)``, microseconds per call."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def _pr_header(m, mtype: int, flags: int, seq: int) -> None:
    m["header"]["type"] = mtype
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq


def pr_netem(i: int, p: LinkParams) -> bytes:
    """pyroute2's closest netem message (it has no TCA_NETEM_LATENCY64/RATE64)."""
    m = tcmsg()
    m["family"], m["index"], m["handle"], m["parent"] = 0, i + 1, 0x10000, 0xFFFFFFFF
    _pr_header(m, netlink.RTM_NEWQDISC, netlink.NLM_F_REQUEST, i)
    opts = sched_netem.get_parameters(
        {
            "delay": int(p.delay_s * 1e6),
            "limit": netem_limit(p),
            "loss": p.loss * 100,
            "rate": f"{int(p.rate_bps)}bit",
        }
    )
    m["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", opts]]
    m.encode()
    return m.data


def pr_addr(i: int) -> bytes:
    m = ifaddrmsg()
    m["family"], m["prefixlen"], m["index"] = socket.AF_INET, 31, i + 1
    _pr_header(m, netlink.RTM_NEWADDR, 0x501, i)
    a = socket.inet_ntoa(struct.pack(">I", 0x0A400000 + i))
    m["attrs"] = [["IFA_LOCAL", a], ["IFA_ADDRESS", a]]
    m.encode()
    return m.data


def pr_neigh(i: int) -> bytes:
    m = ndmsg()
    m["family"], m["ifindex"], m["state"] = socket.AF_INET, i + 1, netlink.NUD_PERMANENT
    _pr_header(m, netlink.RTM_NEWNEIGH, 0x501, i)
    m["attrs"] = [
        ["NDA_DST", socket.inet_ntoa(struct.pack(">I", 0x0A400000 + i))],
        ["NDA_LLADDR", "02:00:00:00:00:01"],
    ]
    m.encode()
    return m.data


def pr_link_up(i: int) -> bytes:
    m = ifinfmsg()
    m["index"], m["flags"], m["change"] = i + 1, 1, 1
    _pr_header(m, netlink.RTM_NEWLINK, netlink.NLM_F_REQUEST, i)
    m.encode()
    return m.data


def pr_route(i: int) -> bytes:
    m = rtmsg()
    m["family"], m["dst_len"], m["table"] = socket.AF_INET, 32, netlink.RT_TABLE_MAIN
    m["proto"], m["type"], m["flags"] = netlink.RTPROT_MESHEMU, 1, netlink.RTNH_F_ONLINK
    _pr_header(m, netlink.RTM_NEWROUTE, 0x501, i)
    m["attrs"] = [
        ["RTA_DST", "10.0.0.5"],
        ["RTA_GATEWAY", "10.64.0.1"],
        ["RTA_OIF", 3],
        ["RTA_PREFSRC", "10.0.0.1"],
    ]
    m.encode()
    return m.data


def real_link_dump() -> bytes:
    """This namespace's link dump, its ``lo`` message replicated to :data:`N_LINKS_DUMP`."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE) as s:
        s.send(netlink.link_dump_request())
        data = b""
        while True:
            part = s.recv(1 << 20)
            data += part
            if any(t == netlink.NLMSG_DONE for _, _, t, _, _ in netlink.messages(part)):
                break
    off, length, _, _, _ = next(iter(netlink.messages(data)))
    one = data[off : off + ((length + 3) & ~3)]
    return one * N_LINKS_DUMP


def qdisc_dump() -> bytes:
    """:data:`N_LINKS_DUMP` root netem qdiscs with ``TCA_STATS``, as the kernel dumps them."""
    out = []
    for i in range(N_LINKS_DUMP):
        req = netem_qdisc_msg(i + 1, LinkParams(0.004, 1e9), "change", i)
        body = req[16:] + netlink.rta(
            netlink.TCA_STATS, struct.pack("=QIIIIIII", 10 * i, i, 0, 0, 0, 0, 0, 0)
        )
        out.append(netlink.msg(netlink.RTM_NEWQDISC, 2, i, body))
    return b"".join(out)


def pr_decode(data: bytes, cls: type, want: tuple[str, ...]) -> int:
    n = 0
    for off, length, _, _, _ in netlink.messages(data):
        m = cls(data[off : off + length])
        m.decode()
        for attr in want:
            m.get_attr(attr)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    p = LinkParams(0.0123, 1e9, 100, 0.001)
    res: dict[str, dict[str, float]] = {}
    res["netem qdisc change"] = {
        "struct": per_msg_us(lambda i: netem_qdisc_msg(i + 1, p, "change", i), N_IFACES),
        "pyroute2": per_msg_us(lambda i: pr_netem(i, p), N_IFACES),
    }
    res["address"] = {
        "struct": per_msg_us(lambda i: netlink.addr_msg(i + 1, 0x0A400000 + i, 31, i), N_IFACES),
        "pyroute2": per_msg_us(pr_addr, N_IFACES),
    }
    mac = bytes.fromhex("020000000001")
    res["neighbour"] = {
        "struct": per_msg_us(lambda i: netlink.neigh_msg(i + 1, 0x0A400000 + i, mac, i), N_IFACES),
        "pyroute2": per_msg_us(pr_neigh, N_IFACES),
    }
    res["link up"] = {
        "struct": per_msg_us(lambda i: netlink.link_up_msg(i + 1, i), N_IFACES),
        "pyroute2": per_msg_us(pr_link_up, N_IFACES),
    }
    ones = np.ones(N_ROUTES, np.uint32)
    t = time.perf_counter()
    netlink.route_records(
        ones * 5, ones, ones.astype(np.int32), ones, np.arange(N_ROUTES, dtype=np.uint32)
    ).tobytes()
    res["route"] = {
        "struct": (time.perf_counter() - t) / N_ROUTES * 1e6,
        "pyroute2": per_msg_us(pr_route, N_IFACES),
    }
    links = real_link_dump()
    t = time.perf_counter()
    got, _ = netlink.parse_link_dump(links)
    mine = time.perf_counter() - t
    assert len(got) == N_LINKS_DUMP
    t = time.perf_counter()
    assert pr_decode(links, ifinfmsg, ("IFLA_IFNAME", "IFLA_OPERSTATE")) == N_LINKS_DUMP
    res["link dump decode"] = {
        "struct": mine / N_LINKS_DUMP * 1e6,
        "pyroute2": (time.perf_counter() - t) / N_LINKS_DUMP * 1e6,
    }
    qd = qdisc_dump()
    t = time.perf_counter()
    got_q, _ = netlink.parse_qdisc_dump(qd)
    mine = time.perf_counter() - t
    assert len(got_q) == N_LINKS_DUMP
    t = time.perf_counter()
    assert pr_decode(qd, tcmsg, ("TCA_KIND", "TCA_STATS")) == N_LINKS_DUMP
    res["qdisc dump decode"] = {
        "struct": mine / N_LINKS_DUMP * 1e6,
        "pyroute2": (time.perf_counter() - t) / N_LINKS_DUMP * 1e6,
    }
    if args.json:
        print(json.dumps(res, indent=1))
        return
    counts = {
        "netem qdisc change": N_IFACES,
        "address": N_IFACES,
        "neighbour": N_IFACES,
        "link up": N_IFACES,
        "route": N_ROUTES,
        "link dump decode": N_LINKS_DUMP,
        "qdisc dump decode": N_LINKS_DUMP,
    }
    print(
        f"{'message kind':<20} {'struct us':>10} {'pyroute2 us':>12} {'ratio':>6} "
        f"{'batch':>9} {'struct s':>9} {'pyroute2 s':>11}"
    )
    for k, v in res.items():
        n = counts[k]
        print(
            f"{k:<20} {v['struct']:>10.2f} {v['pyroute2']:>12.2f} "
            f"{v['pyroute2'] / v['struct']:>6.1f} {n:>9} {v['struct'] * n / 1e6:>9.3f} "
            f"{v['pyroute2'] * n / 1e6:>11.3f}"
        )


if __name__ == "__main__":
    main()

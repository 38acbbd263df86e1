"""Benchmark: meshemu's build, memory and stop against vanilla Mininet's, in the same run (root).

Both build the same network: the nodes of a scenario (Starlink shell 1 by default) as hosts
acting as routers, every link up at t = 0 as a veth pair with a /31 at each end, IP
forwarding on, and a route from every node to every other node (shortest delay at t = 0).

- **meshemu**: :class:`meshemu.live.emulation.Emulation` with a real shaper (userspace by
  default: the delay line owns every link), routes in one netlink batch per node.
- **vanilla Mininet**: what a user of Mininet's Python API writes (``Mininet(topo=None,
  controller=None, build=False)``, ``addHost``, ``addLink``, ``build()``,
  ``Intf.setIP``), with plain veth links (``Link``: this kernel has no netem for
  ``TCLink``), and each host's routes (meshemu's: ``<addr>/32 via <neighbour> dev <if> src
  <own addr>``) written to a file and loaded with one ``ip -batch`` through ``host.cmd``
  (much faster than one ``ip route add`` per route).

Prints, for each: build time, system memory used by the built network (MemTotal -
MemAvailable after the build, minus before), routes installed, stop time; then meshemu's
figures as ratios of vanilla's. Writes them to
``benchmarks/results/vs-mininet-<scenario>-<time>.json``.

Usage: sudo .venv/bin/python benchmarks/bench_vs_mininet.py [--scenario starlink-shell1]
       [--shaper userspace] [--only meshemu|mininet]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from meshemu.geometry.schedule import LinkSchedule
from meshemu.linux.limits import mem_available_bytes
from meshemu.live import addressing as adr
from meshemu.live.emulation import Emulation
from meshemu.live.shapers import make_shaper
from meshemu.routing import get_scheme
from meshemu.spec.scenario import load_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def used_memory() -> int:
    with open("/proc/meminfo") as f:
        total = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:"))
    return total - mem_available_bytes()


def settle_memory(timeout_s: float = 30.0) -> int:
    """Used memory once it stops falling (namespaces and sockets are freed lazily)."""
    gc.collect()
    last = used_memory()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = used_memory()
        if abs(now - last) < 8 * 2**20:
            return now
        last = now
    return last


def network(scenario: str):
    """Names, kinds, the t = 0 snapshot (links up only) and shortest-delay tables."""
    sc = load_scenario(scenario)
    sched = LinkSchedule(sc, 1.0)
    snap = next(sched.snapshots(0.0))
    nodes = sched.nodes
    dests = np.arange(len(nodes), dtype=np.int32)
    tables = get_scheme("shortest-delay").forwarding_tables(snap, dests)
    return list(nodes.names), list(nodes.kind), snap, tables


def bench_meshemu(names, kinds, snap, tables, shaper_name: str) -> dict:
    run_id = f"bvm{uuid.uuid4().hex[:5]}"
    mem0 = settle_memory()
    shaper = make_shaper(shaper_name, run_id)
    out: dict = {}
    with tempfile.TemporaryDirectory() as run_dir:
        emu = Emulation(names, kinds, shaper, run_dir, run_id)
        try:
            t0 = time.perf_counter()
            emu.build(snap.key, snap, tables)
            out["build_s"] = time.perf_counter() - t0
            out["phases_s"] = {k: round(v, 3) for k, v in emu.timings.items()}
            n = len(names)
            # what a node costs, per part of the build (system memory, kernel included)
            out["per_node_kib"] = {
                k.replace("_bytes", ""): round(v / n / 1024, 1) for k, v in emu.memory.items()
            }
            out["mem_gib"] = (settle_memory() - mem0) / 2**30
            out["routes"] = _routes(tables)
            out["ping_ok"] = _ping(emu.node(names[-1]), adr.node_address(0))
        finally:
            t0 = time.perf_counter()
            emu.stop()
            out["stop_s"] = time.perf_counter() - t0
    return out


def _ping(node, addr: str) -> bool:
    """Whether the last node reaches node 0 (the network each side built forwards)."""
    return " 0% packet loss" in node.cmd(f"ping -c 3 -i 0.2 -W 3 {addr}")


def _routes(tables) -> int:
    nh = np.asarray(tables.next_hop)[:, :, 0]
    return int(np.count_nonzero(nh >= 0))


def bench_mininet(names, kinds, snap, tables) -> dict:
    from mininet.link import Link
    from mininet.net import Mininet

    n = len(names)
    up = np.flatnonzero(np.asarray(snap.up, bool))
    a = np.asarray(snap.a)[up].astype(int)
    b = np.asarray(snap.b)[up].astype(int)
    mem0 = settle_memory()
    out: dict = {}
    net = Mininet(topo=None, controller=None, build=False, autoSetMacs=False, waitConnected=False)
    t0 = time.perf_counter()
    try:
        hosts = [net.addHost(f"v{i}", ip=None) for i in range(n)]
        mem_hosts = used_memory()
        # one /31 per link, as meshemu's addressing plan (the link index as in the snapshot)
        links = []
        for k, (i, j) in enumerate(zip(a.tolist(), b.tolist())):
            links.append(
                net.addLink(
                    hosts[i], hosts[j], cls=Link, intfName1=f"v{i}-{k}", intfName2=f"v{j}-{k}"
                )
            )
        net.build()
        t_links = time.perf_counter()
        mem_links = used_memory()
        for k, lk in enumerate(links):
            lk.intf1.setIP(adr.int_to_ip(adr.link_address_int(k, 0)), 31)
            lk.intf2.setIP(adr.int_to_ip(adr.link_address_int(k, 1)), 31)
        for i, h in enumerate(hosts):
            h.cmd(f"ip addr add {adr.node_address(i)}/32 dev lo; sysctl -qw net.ipv4.ip_forward=1")
        t_addr = time.perf_counter()
        mem_addr = used_memory()
        # routes: each host's, through its next hop over the link they share
        nh = np.asarray(tables.next_hop)[:, :, 0]
        link_of = {(int(x), int(y)): k for k, (x, y) in enumerate(zip(a, b))}
        total = 0
        with tempfile.TemporaryDirectory() as tmp:
            for u in range(n):
                lines = []
                for d in np.flatnonzero(nh[u] >= 0).tolist():
                    if d == u:
                        continue
                    v = int(nh[u, d])
                    k = link_of.get((min(u, v), max(u, v)))
                    if k is None:
                        continue
                    side = 0 if u < v else 1
                    gw = adr.int_to_ip(adr.link_address_int(k, 1 - side))
                    lines.append(
                        f"route add {adr.node_address(d)}/32 via {gw} dev v{u}-{k} "
                        f"src {adr.node_address(u)}"
                    )
                path = Path(tmp) / f"r{u}"
                path.write_text("\n".join(lines) + "\n")
                hosts[u].cmd(f"ip -batch {path}")
                total += len(lines)
        t_routes = time.perf_counter()
        out["build_s"] = t_routes - t0
        out["phases_s"] = {
            "hosts_links_s": round(t_links - t0, 3),
            "addresses_s": round(t_addr - t_links, 3),
            "routes_s": round(t_routes - t_addr, 3),
        }
        out["routes"] = total
        mem_routes = used_memory()
        # what a node costs, per part of the build (as meshemu's per_node_kib; the shells
        # are Mininet's addHost, the links its build())
        out["per_node_kib"] = {
            k: round(v / n / 1024, 1)
            for k, v in (
                ("shells", mem_hosts - mem0),
                ("links", mem_links - mem_hosts),
                ("addresses", mem_addr - mem_links),
                ("routes", mem_routes - mem_addr),
            )
        }
        out["mem_gib"] = (settle_memory() - mem0) / 2**30
        out["ping_ok"] = _ping(hosts[-1], adr.node_address(0))
    finally:
        t0 = time.perf_counter()
        net.stop()
        out["stop_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="starlink-shell1")
    ap.add_argument("--shaper", default="userspace")
    ap.add_argument("--only", choices=("meshemu", "mininet"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_vs_mininet needs root (network namespaces): run it with sudo")
    names, kinds, snap, tables = network(args.scenario)
    n_up = int(np.count_nonzero(snap.up))
    print(f"{args.scenario}: {len(names)} nodes, {n_up} links up at t = 0", flush=True)
    res: dict = {"scenario": args.scenario, "nodes": len(names), "links": n_up}
    if args.only != "mininet":
        res["meshemu"] = bench_meshemu(names, kinds, snap, tables, args.shaper)
        print("meshemu:", json.dumps(res["meshemu"]), flush=True)
        per = res["meshemu"]["per_node_kib"]
        print(
            "  memory per node (KiB): "
            + ", ".join(f"{k} {v:g}" for k, v in per.items())
            + f"; {res['meshemu']['routes'] / len(names):.0f} routes per node",
            flush=True,
        )
    if args.only != "meshemu":
        res["mininet"] = bench_mininet(names, kinds, snap, tables)
        print("vanilla Mininet:", json.dumps(res["mininet"]), flush=True)
    if "meshemu" in res and "mininet" in res:
        m, v = res["meshemu"], res["mininet"]
        res["ratios"] = {
            "build_speedup": v["build_s"] / m["build_s"],
            "memory_ratio": m["mem_gib"] / v["mem_gib"] if v["mem_gib"] > 0 else None,
            "stop_speedup": v["stop_s"] / m["stop_s"],
        }
        r = res["ratios"]
        print(
            f"meshemu against vanilla Mininet: build {r['build_speedup']:.1f}x faster "
            f"({m['build_s']:.1f} s vs {v['build_s']:.1f} s), memory "
            f"{m['mem_gib']:.2f} vs {v['mem_gib']:.2f} GiB (ratio {r['memory_ratio']:.2f}), "
            f"stop {m['stop_s']:.1f} s vs {v['stop_s']:.1f} s"
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = RESULTS / f"vs-mininet-{args.scenario}-{stamp}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Benchmark: build, step and tear down the live emulation of a synthetic +Grid (root).

For each N in ``--sats`` (default 100, 500, 1584; 22 satellites per plane) plus a few ground
stations, builds the network with a real shaper (userspace by default), applies one step
with realistic changes (every ISL delay changes slightly, a few GSL handovers, the routes
that follow) and stops it. Prints build time (with its parts), the system's used memory
(MemTotal - MemAvailable) before/after the build, this process' peak RSS, apply time and
stop time. ``--steps K`` applies K steps, alternating between the two states (every step
then changes every ISL delay and the routes that follow), and prints the median and the
slowest apply.

Targets (issue 3): Starlink shell 1 (1,584 satellites + ~10 ground nodes) builds in
< 30 s, stops in < 15 s, uses < 3 GiB.

Usage: sudo .venv/bin/python benchmarks/bench_emulator.py [--sats 100 500 1584]
       [--ground 10] [--steps 5] [--shaper userspace|veth|netem]   (veth: unshaped veth pairs)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from meshemu.geometry.linkstate import GSL, ISL
from meshemu.linux.limits import mem_available_bytes
from meshemu.live.emulation import Emulation
from meshemu.live.shapers import batch_text, make_shaper, veth_cmd
from meshemu.routing import get_scheme, snapshot_from_edges

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from doubles import FakeShaper  # noqa: E402  (the test double; not a registered shaper)

SATS_PER_PLANE = 22
#: Ground stations each see this many candidate satellites over the run.
GSL_CANDIDATES = 4


def plus_grid(
    n_sats: int, n_ground: int, seed: int = 1
) -> tuple[list[str], list[str], list[tuple[int, int]], np.ndarray, np.ndarray]:
    """A +Grid of ``n_sats`` satellites (22 per plane) and ``n_ground`` stations.

    Returns names, kinds, every link of the run (ISLs + every candidate GSL), their delays
    (s) and which are ISLs.
    """
    rng = np.random.default_rng(seed)
    planes = -(-n_sats // SATS_PER_PLANE)
    idx = {}
    for i in range(n_sats):
        idx[(i // SATS_PER_PLANE, i % SATS_PER_PLANE)] = i
    edges = set()
    for (p, j), i in idx.items():
        spp = sum(1 for (q, _) in idx if q == p)
        nxt = idx[(p, (j + 1) % spp)]
        if nxt != i:
            edges.add((min(i, nxt), max(i, nxt)))
        other = idx.get(((p + 1) % planes, j))
        if other is not None and other != i:
            edges.add((min(i, other), max(i, other)))
    isl = sorted(edges)
    names = [f"sat{i}" for i in range(n_sats)] + [f"gs{g}" for g in range(n_ground)]
    kinds = ["sat"] * n_sats + ["station"] * n_ground
    gsl = []
    for g in range(n_ground):
        for s in rng.choice(n_sats, size=min(GSL_CANDIDATES, n_sats), replace=False):
            gsl.append((int(s), n_sats + g))
    links = isl + gsl
    delays = np.concatenate(
        [rng.uniform(0.003, 0.006, len(isl)), rng.uniform(0.0018, 0.004, len(gsl))]
    )
    return names, kinds, links, delays, np.r_[np.ones(len(isl), bool), np.zeros(len(gsl), bool)]


class VethShaper(FakeShaper):
    """Plain veth pairs between the nodes, unshaped (``--shaper veth``): shows the emulator's
    own cost without a shaper's."""

    name = "veth"

    def create_links(self, links):
        super().create_links(links)
        cmds = [veth_cmd(e.if_a, e.pid_a, e.if_b, e.pid_b) for e, _ in links]
        subprocess.run(["ip", "-batch", "-"], input=batch_text(cmds), text=True, check=True)


def used_memory() -> int:
    with open("/proc/meminfo") as f:
        total = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:"))
    return total - mem_available_bytes()


def bench(n_sats: int, n_ground: int, shaper_name: str, handovers: int, steps: int = 1) -> dict:
    names, kinds, links, delays, isl = plus_grid(n_sats, n_ground)
    n = len(names)
    transit = np.array([k == "sat" for k in kinds])
    rng = np.random.default_rng(7)
    # step 0: each ground station uses its first candidate satellite
    gs_first = np.zeros(len(links), bool)
    seen = set()
    for i, (_s, g) in enumerate(links):
        if not isl[i] and g not in seen:
            gs_first[i] = True
            seen.add(g)
    up0 = isl | gs_first
    kinds_l = np.where(isl, ISL, GSL)
    snap0 = snapshot_from_edges(
        n, links, delays, transit=transit, up=up0, rates=np.full(len(links), 1e9), kinds=kinds_l
    )
    # step 1: ISL delays change by up to +-0.5 %, a few stations hand over
    delays1 = delays * (1 + rng.uniform(-0.005, 0.005, len(links)))
    up1 = up0.copy()
    gsl_idx = np.flatnonzero(~isl)
    for g in range(min(handovers, n_ground)):
        mine = [i for i in gsl_idx if links[i][1] == n_sats + g]
        up1[mine[0]] = False
        up1[mine[1]] = True
    snap1 = snapshot_from_edges(
        n,
        links,
        delays1,
        transit=transit,
        up=up1,
        rates=np.full(len(links), 1e9),
        t_s=1.0,
        kinds=kinds_l,
    )
    scheme = get_scheme("shortest-delay")
    dests = np.arange(n, dtype=np.int32)
    t0 = time.perf_counter()
    tab0 = scheme.forwarding_tables(snap0, dests)
    tab1 = scheme.forwarding_tables(snap1, dests)
    t_routing = (time.perf_counter() - t0) / 2
    run_id = f"bench{uuid.uuid4().hex[:6]}"
    mem0 = used_memory()
    shaper = VethShaper(run_id) if shaper_name == "veth" else make_shaper(shaper_name, run_id)
    out = {"sats": n_sats, "nodes": n, "links": len(links), "routing_s": t_routing}
    with tempfile.TemporaryDirectory() as run_dir:
        emu = Emulation(names, kinds, shaper, run_dir, run_id)
        try:
            t0 = time.perf_counter()
            emu.build(snap0.key, snap0, tab0)
            out["build_s"] = time.perf_counter() - t0
            out.update({k: v for k, v in emu.timings.items() if k != "build_s"})
            out["mem_used_gib"] = (used_memory() - mem0) / 2**30
            st = emu.apply(snap1, tab1)
            out["apply_s"] = st.apply_s
            out["link_updates"] = st.n_link_updates
            out["route_changes"] = st.n_route_changes
            applies = [st.apply_s]
            for k in range(2, steps + 1):  # back and forth: every step changes as much
                snap, tab = (snap0, tab0) if k % 2 == 0 else (snap1, tab1)
                applies.append(emu.apply(dataclasses.replace(snap, t_s=float(k)), tab).apply_s)
            out["apply_med_s"] = float(np.median(applies))
            out["apply_max_s"] = float(np.max(applies))
            ping = emu.node("gs0").cmd(f"ping -c 3 -i 0.2 -W 2 {emu.node_address(names[-1])}")
            out["ping_ok"] = " 0% packet loss" in ping
            if not out["ping_ok"]:
                logging.getLogger("bench").warning("ping gs0 -> %s failed:\n%s", names[-1], ping)
        finally:
            t0 = time.perf_counter()
            emu.stop()
            out["stop_s"] = time.perf_counter() - t0
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sats", type=int, nargs="+", default=[100, 500, 1584])
    ap.add_argument("--ground", type=int, default=10)
    ap.add_argument("--handovers", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="steps to apply (>= 1)")
    ap.add_argument("--shaper", default="userspace")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cols = [
        "sats",
        "nodes",
        "links",
        "build_s",
        "shells_s",
        "netns_s",
        "links_s",
        "addresses_s",
        "routes_s",
        "mem_used_gib",
        "peak_rss_gib",
        "apply_s",
        "apply_med_s",
        "apply_max_s",
        "link_updates",
        "route_changes",
        "stop_s",
        "ping_ok",
    ]
    print(" ".join(f"{c:>13}" for c in cols))
    for n in args.sats:
        r = bench(n, args.ground, args.shaper, args.handovers, max(1, args.steps))
        print(
            " ".join(
                f"{r.get(c, float('nan')):>13.3f}"
                if isinstance(r.get(c), float)
                else f"{str(r.get(c, '')):>13}"
                for c in cols
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

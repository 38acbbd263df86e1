"""Benchmark: route hold (meshemu/routing/hold.py) against the scheme alone, no root.

Routes every node to every node over a scenario's steps, as a live run's route processes
do, once with shortest-delay alone and once per hold tolerance, and prints per step the
route changes (what the kernel would be told: ``route_diff`` of consecutive tables, p50,
p99, max) and the routing cost (tables, and the hold on top). The figures are written as
JSON (``--json``, by default ``benchmarks/results/route-hold-<time>.json``).

Usage: .venv/bin/python benchmarks/bench_route_hold.py [--scenario starlink-shell1]
       [--steps 40] [--hold-us 20 100 500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from meshemu.geometry.schedule import LinkSchedule
from meshemu.routing import get_scheme, route_diff
from meshemu.routing.hold import HeldRoutes
from meshemu.spec.scenario import load_scenario


def measure(snaps: list, hold_us: float) -> dict:
    n = snaps[0].n_nodes
    dests = np.arange(n, dtype=np.int32)
    scheme = get_scheme("shortest-delay")
    if hold_us > 0:
        scheme = HeldRoutes(scheme, hold_us * 1e-6)
    prev, changes, cost = None, [], []
    for s in snaps:
        t0 = time.perf_counter()
        t = scheme.forwarding_tables(s, dests)
        cost.append(time.perf_counter() - t0)
        if prev is not None:
            changes.append(len(route_diff(prev, t)))
        prev = t
    ch = np.array(changes)
    return {
        "hold_us": hold_us,
        "route_changes_p50": float(np.percentile(ch, 50)),
        "route_changes_p99": float(np.percentile(ch, 99)),
        "route_changes_max": int(ch.max()),
        "routing_ms_per_step": 1e3 * float(np.mean(cost[1:])),  # (step 0 holds nothing)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="starlink-shell1")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--hold-us", type=float, nargs="+", default=[20.0, 100.0, 500.0])
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    sched = LinkSchedule(load_scenario(args.scenario), 1.0)
    snaps = list(sched.snapshots(float(args.steps)))
    print(
        f"{args.scenario}: {snaps[0].n_nodes} nodes, {len(snaps)} steps of 1 s, every node "
        f"routed to every node (shortest-delay)",
        flush=True,
    )
    rows = []
    for hold in [0.0, *args.hold_us]:
        r = measure(snaps, hold)
        rows.append(r)
        print(
            f"  hold {hold:6.0f} us: route changes per step p50 {r['route_changes_p50']:8.0f}"
            f" p99 {r['route_changes_p99']:8.0f} max {r['route_changes_max']:7d}; routing "
            f"{r['routing_ms_per_step']:.0f} ms per step",
            flush=True,
        )
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    dest = Path(args.json or Path(__file__).parent / "results" / f"route-hold-{stamp}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"scenario": args.scenario, "steps": len(snaps), "rows": rows}))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()

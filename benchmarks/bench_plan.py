"""Benchmark: geometry and routing per step, and a whole `meshemu plan`.

Prints, for Starlink shell 1 (1,584 satellites + 10 ground stations) and a 10,000-satellite
shell: the time per step of geometry (SGP4 + ISL/GSL feasibility + link state), of routing
for all endpoint pairs, and the wall time of `meshemu plan default --duration 600`.

Targets (issue 2): Starlink geometry < 20 ms/step, geometry + routing < 300 ms/step;
10,000 satellites geometry < 100 ms/step; plan of the default scenario for 600 s < 10 s.

Usage: python benchmarks/bench_plan.py [--steps N]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np

from meshemu.geometry.schedule import LinkSchedule
from meshemu.plan import endpoint_ids, run_plan
from meshemu.routing import get_scheme
from meshemu.spec.scenario import Scenario, load_scenario


def bench_schedule(
    name: str, scenario: Scenario, steps: int, routing: bool, all_dests: bool = False
) -> None:
    """Print geometry and routing times per step of ``scenario`` over ``steps`` steps."""
    t0 = time.perf_counter()
    sched = LinkSchedule(scenario, 1.0)
    t_init = time.perf_counter() - t0
    ends = endpoint_ids(scenario, sched.nodes)
    schemes = [get_scheme(n) for n in ("shortest-delay", "fewest-hops")] if routing else []
    geo, rt = [], {s.name: [] for s in schemes}
    it = sched.snapshots(steps - 1, chunk_steps=60)
    for _ in range(steps):
        t0 = time.perf_counter()
        snap = next(it)
        geo.append(time.perf_counter() - t0)
        for s in schemes:
            t0 = time.perf_counter()
            s.forwarding_tables(snap, ends)
            rt[s.name].append(time.perf_counter() - t0)
    g = np.array(geo) * 1e3
    print(
        f"{name}: {len(sched.nodes)} nodes, {snap.n_links} links, {ends.size} endpoints; "
        f"init {t_init * 1e3:.0f} ms"
    )
    print(f"  geometry per step: mean {g.mean():.2f} ms, p99 {np.percentile(g, 99):.2f} ms")
    for k, v in rt.items():
        r = np.array(v) * 1e3
        tot = g + r
        print(
            f"  routing {k} (all {ends.size}x{ends.size - 1} endpoint pairs): mean "
            f"{r.mean():.2f} ms; geometry + routing mean {tot.mean():.2f} ms, "
            f"p99 {np.percentile(tot, 99):.2f} ms"
        )
    if all_dests:
        # what the live emulator needs: routes from every node to every node
        every = np.arange(len(sched.nodes), dtype=np.int32)
        for n in ("shortest-delay", "ecmp"):
            t0 = time.perf_counter()
            get_scheme(n).forwarding_tables(snap, every)
            print(
                f"  routing {n} to all {every.size} nodes (the emulator's tables, computed "
                f"ahead of the clock): {(time.perf_counter() - t0) * 1e3:.0f} ms"
            )


def main() -> None:
    """Run the three benchmarks (see the module docstring)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    star = load_scenario("starlink-shell1")
    bench_schedule("Starlink shell 1", star, args.steps, routing=True, all_dests=True)
    big = copy.deepcopy(star.raw)
    big["constellation"]["shells"][0].update(planes=100, sats_per_plane=100, phasing=1)
    big["name"] = "walker-10000"
    bench_schedule(
        "10,000 satellites (100 x 100, 550 km)",
        Scenario.from_dict(big),
        max(10, args.steps // 3),
        routing=True,
    )
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_plan(load_scenario("default"), 600, 1.0, "shortest-delay", d)
        print(
            f"meshemu plan default --duration 600 --step 1: {time.perf_counter() - t0:.2f} s "
            f"(files + plots)"
        )


if __name__ == "__main__":
    main()

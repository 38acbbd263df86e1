"""Benchmark: geometry and routing per step, and a whole `meshemu plan`.

Prints, for Starlink shell 1 (1,584 satellites + 10 ground stations) and a 10,000-satellite
shell: the time per step of geometry (SGP4 + ISL/GSL feasibility + link state: one `next()`
of `LinkSchedule.snapshots`), of routing for all endpoint pairs, and the wall time of
`meshemu plan default --duration 600`. Then the geometry per step with the `nearest` ISL
pattern on the real Starlink catalogue (10,359 satellites, `../shared/data/`, skipped with a
note when absent) and on the 10,000-satellite Walker shell, and +Grid on that catalogue.
The p99 includes the first step, which propagates a whole chunk of steps with SGP4 and picks
every ISL afresh.

Targets (issue 2): Starlink geometry < 20 ms/step, geometry + routing < 300 ms/step;
10,000 satellites geometry < 100 ms/step; plan of the default scenario for 600 s < 10 s.
The `nearest` pattern at 10,000 satellites: geometry < 100 ms/step too (issue 9), and +Grid
on the shells inferred from the real catalogue (9,570 satellites in 9 shells, every station
linked to every satellite above 25 deg): geometry < 50 ms/step (issue 9).

All figures are also written as JSON (default benchmarks/results/bench_plan.json).

Usage: python benchmarks/bench_plan.py [--steps N] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.geometry.schedule import LinkSchedule
from meshemu.plan import endpoint_ids, run_plan
from meshemu.routing import get_scheme
from meshemu.spec.scenario import Scenario, load_scenario

HERE = Path(__file__).resolve().parent
#: The real Starlink catalogue, from the shared data beside the repository.
STARLINK_TLE = HERE.parent.parent / "shared" / "data" / "starlink-2026-05-21.tle"
DEFAULT_JSON = HERE / "results" / "bench_plan.json"


def bench_schedule(
    name: str, scenario: Scenario, steps: int, routing: bool, all_dests: bool = False
) -> dict[str, Any]:
    """Print geometry and routing times per step of ``scenario`` over ``steps`` steps.

    Returns
    -------
    dict
        The figures printed (times in ms).
    """
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
    res: dict[str, Any] = {
        "satellites": sched.n_sats,
        "nodes": len(sched.nodes),
        "links": snap.n_links,
        "endpoints": int(ends.size),
        "isl_pattern": scenario.isl.pattern,
        "steps": steps,
        "init_ms": t_init * 1e3,
        "geometry_mean_ms": float(g.mean()),
        "geometry_p50_ms": float(np.percentile(g, 50)),
        "geometry_p99_ms": float(np.percentile(g, 99)),
        "routing": {},
    }
    print(
        f"{name}: {len(sched.nodes)} nodes, {snap.n_links} links, {ends.size} endpoints; "
        f"init {t_init * 1e3:.0f} ms"
    )
    print(
        f"  geometry per step: mean {g.mean():.2f} ms, p50 {np.percentile(g, 50):.2f} ms, "
        f"p99 {np.percentile(g, 99):.2f} ms"
    )
    for k, v in rt.items():
        r = np.array(v) * 1e3
        tot = g + r
        print(
            f"  routing {k} (all {ends.size}x{ends.size - 1} endpoint pairs): mean "
            f"{r.mean():.2f} ms; geometry + routing mean {tot.mean():.2f} ms, "
            f"p99 {np.percentile(tot, 99):.2f} ms"
        )
        res["routing"][k] = {
            "mean_ms": float(r.mean()),
            "geometry_plus_routing_mean_ms": float(tot.mean()),
            "geometry_plus_routing_p99_ms": float(np.percentile(tot, 99)),
        }
    if all_dests:
        # what the live emulator needs: routes from every node to every node
        every = np.arange(len(sched.nodes), dtype=np.int32)
        res["routing_all_nodes_ms"] = {}
        for n in ("shortest-delay", "ecmp"):
            t0 = time.perf_counter()
            get_scheme(n).forwarding_tables(snap, every)
            ms = (time.perf_counter() - t0) * 1e3
            res["routing_all_nodes_ms"][n] = ms
            print(
                f"  routing {n} to all {every.size} nodes (the emulator's tables, computed "
                f"ahead of the clock): {ms:.0f} ms"
            )
    return res


def real_starlink(ground: list[dict[str, Any]], pattern: str = "nearest") -> Scenario:
    """The real Starlink catalogue with the given ground stations: every one of its 10,359
    satellites with ``nearest`` ISLs (``shells: none``), or +Grid on the shells inferred
    from it (``shells: auto``, every satellite in a shell: 9,570)."""
    entry: dict[str, Any] = {"file": str(STARLINK_TLE)}
    if pattern == "nearest":
        entry["shells"] = "none"
    return Scenario.from_dict(
        {
            "name": f"starlink-catalogue-{pattern}",
            "epoch": "2026-05-21T00:00:00Z",
            "constellation": {"tle_files": [entry]},
            "ground": ground,
            "isl": {"pattern": pattern, "max_range_km": 5016, "terminals": 4},
            "gsl": {"min_elevation_deg": 25, "links_per_station": "all"},
        }
    )


def main() -> None:
    """Run the benchmarks (see the module docstring) and write their figures as JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument(
        "--json",
        "--out",
        default=str(DEFAULT_JSON),
        help=f"write the figures to this JSON file (default {DEFAULT_JSON})",
    )
    args = ap.parse_args()
    out: dict[str, Any] = {"steps": args.steps, "cases": {}}
    cases = out["cases"]
    star = load_scenario("starlink-shell1")
    name = "Starlink shell 1"
    cases[name] = bench_schedule(name, star, args.steps, routing=True, all_dests=True)
    big = copy.deepcopy(star.raw)
    big["constellation"]["shells"][0].update(planes=100, sats_per_plane=100, phasing=1)
    big["name"] = "walker-10000"
    name = "10,000 satellites (100 x 100, 550 km)"
    cases[name] = bench_schedule(
        name, Scenario.from_dict(big), max(10, args.steps // 3), routing=True
    )
    name = "nearest, real Starlink catalogue (10,359 sats)"
    if STARLINK_TLE.is_file():
        sc = real_starlink(star.raw["ground"])
        cases[name] = bench_schedule(name, sc, args.steps, routing=False)
    else:
        print(f"{name}: skipped, no {STARLINK_TLE}")
        cases[name] = {"skipped": f"no {STARLINK_TLE}"}
    name = "+Grid, real Starlink catalogue (inferred shells)"
    if STARLINK_TLE.is_file():
        sc = real_starlink(star.raw["ground"], "plus-grid")
        cases[name] = bench_schedule(name, sc, args.steps, routing=True)
    else:
        print(f"{name}: skipped, no {STARLINK_TLE}")
        cases[name] = {"skipped": f"no {STARLINK_TLE}"}
    near = copy.deepcopy(big)
    near["isl"]["pattern"] = "nearest"
    near["name"] = "walker-10000-nearest"
    name = "nearest, 10,000 Walker"
    cases[name] = bench_schedule(name, Scenario.from_dict(near), args.steps, routing=False)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_plan(load_scenario("default"), 600, 1.0, "shortest-delay", d)
        wall = time.perf_counter() - t0
        out["plan_default_600s_s"] = wall
        print(f"meshemu plan default --duration 600 --step 1: {wall:.2f} s (files + plots)")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()

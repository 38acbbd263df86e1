"""Benchmark: `meshemu plan` at scale (issue 12).

Prints, each case in its own process (so that each peak RSS is its own):

- Starlink Gen1 (5 shells, 4,408 satellites + 10 stations), 600 s at 1 s steps, tables as
  Parquet (what ``--format auto`` picks) and as CSV in the same run, the ratio of the two;
  wall time of the whole ``run_plan`` (files and plots) and peak RSS;
- ``topologies/million.yaml`` (1,000,000 satellites in 3 shells, 30 stations, endpoint
  routing), ``--steps`` steps without plots: setup (SGP4 records, +Grid), time per step
  after the first (geometry, routing toward the 30 endpoints, Parquet tables) and peak RSS;
- the map (``map.png``) of a 100,000-satellite shell at t = 0: drawing time.

Targets (issue 12): Gen1 600 s plan < 10 s; a million satellites < 5 s per step and < 8 GiB.
Peer: Hypatia's satgenpy is on PyPI, but this benchmark does not run it (its generation is
per-pair Python over ephem and writes only its own state files); the CSV path of the same
run is the comparison.

The figures are written as JSON to ``benchmarks/results/plan-scale-<time>.json``.
This is a heavy run: ``flock /tmp/meshemu-heavy.lock python benchmarks/bench_plan_scale.py``.

Usage: python benchmarks/bench_plan_scale.py [--steps N] [--json PATH] [--only CASE ...]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("gen1-parquet", "gen1-csv", "million", "map-100k")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case_gen1(table_format: str) -> dict[str, Any]:
    from meshemu.plan import run_plan

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = run_plan("starlink-gen1", 600, 1.0, out_dir=d, table_format=table_format)
        wall = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
    s = res.summary
    return {
        "scenario": "starlink-gen1",
        "nodes": s["nodes"],
        "steps": s["steps"],
        "table_format": s["table_format"],
        "plan_s": wall,
        "geometry_ms_per_step": s["timing"]["geometry_ms_per_step"],
        "routing_ms_per_step": s["timing"]["routing_ms_per_step"],
        "output_mib": size / 2**20,
        "peak_rss_mib": peak_rss_mib(),
    }


def case_million(steps: int) -> dict[str, Any]:
    from meshemu.plan import run_plan

    stamps: list[float] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = run_plan(
            "million",
            steps - 1,
            1.0,
            out_dir=d,
            plots=False,
            progress=lambda done, total: stamps.append(time.perf_counter()),
        )
    wall = time.perf_counter() - t0
    per = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    s = res.summary
    return {
        "scenario": "million",
        "satellites": s["satellites"],
        "endpoints": len(s["endpoints"]),
        "steps": s["steps"],
        "table_format": s["table_format"],
        "setup_and_first_step_s": stamps[0] - t0,
        "step_s": per,
        "step_s_mean": sum(per) / len(per) if per else None,
        "step_s_max": max(per) if per else None,
        "geometry_ms_per_step": s["timing"]["geometry_ms_per_step"],
        "routing_ms_per_step": s["timing"]["routing_ms_per_step"],
        "pairs_reachable": sum(p["delay_ms_mean"] is not None for p in s["pairs"]),
        "pairs": len(s["pairs"]),
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
    }


def case_map() -> dict[str, Any]:
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.report import maps
    from meshemu.report.record import schedule_map_nodes
    from meshemu.spec.scenario import Scenario, load_scenario

    raw = copy.deepcopy(load_scenario("starlink-shell1").raw)
    raw["constellation"]["shells"][0].update(planes=250, sats_per_plane=400, phasing=1)
    raw["isl"]["cross_plane_shift"] = 0
    raw["name"] = "walker-100000"
    sched = LinkSchedule(Scenario.from_dict(raw), 1.0)
    snap = sched.snapshot_at(0.0)
    nodes = schedule_map_nodes(sched, 0.0)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        maps.plot_map(Path(d) / "map.png", nodes, snap, title="100,000 satellites")
        draw = time.perf_counter() - t0
    return {
        "satellites": sched.n_sats,
        "links": snap.n_links,
        "draw_s": draw,
        "max_drawn_links": maps.MAX_DRAWN_LINKS,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_case(name: str, steps: int) -> dict[str, Any]:
    if name == "gen1-parquet":
        return case_gen1("parquet")
    if name == "gen1-csv":
        return case_gen1("csv")
    if name == "million":
        return case_million(steps)
    if name == "map-100k":
        return case_map()
    raise SystemExit(f"unknown case {name!r}; cases: {', '.join(CASES)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="steps of the million plan (6)")
    ap.add_argument("--json", help="figures file (default benchmarks/results/plan-scale-*.json)")
    ap.add_argument("--only", nargs="+", choices=CASES, help="run only these cases")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case, in the child process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.steps)))
        return
    out: dict[str, Any] = {"when": dt.datetime.now(dt.UTC).isoformat(), "cases": {}}
    for name in args.only or CASES:
        child = subprocess.run(
            [sys.executable, __file__, "--case", name, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            print(f"{name}: failed\n{child.stderr[-2000:]}")
            out["cases"][name] = {"failed": child.stderr[-2000:]}
            continue
        res = json.loads(child.stdout.strip().splitlines()[-1])
        out["cases"][name] = res
        if name.startswith("gen1"):
            print(
                f"Gen1 600 s plan, {res['table_format']}: {res['plan_s']:.1f} s (geometry "
                f"{res['geometry_ms_per_step']:.1f} ms/step, routing "
                f"{res['routing_ms_per_step']:.1f} ms/step), output {res['output_mib']:.0f} "
                f"MiB, peak RSS {res['peak_rss_mib']:.0f} MiB"
            )
        elif name == "million":
            print(
                f"1,000,000 satellites, {res['endpoints']} endpoints: setup + first step "
                f"{res['setup_and_first_step_s']:.1f} s; per step mean {res['step_s_mean']:.2f}"
                f" s, max {res['step_s_max']:.2f} s (geometry {res['geometry_ms_per_step']:.0f}"
                f" ms, routing {res['routing_ms_per_step']:.0f} ms, averaged over all "
                f"{res['steps']} steps); peak RSS {res['peak_rss_mib'] / 1024:.2f} GiB; "
                f"{res['pairs_reachable']}/{res['pairs']} pairs reachable"
            )
        else:
            print(
                f"map of {res['satellites']:,} satellites, {res['links']:,} links: "
                f"{res['draw_s']:.2f} s"
            )
    cs = out["cases"]
    if "plan_s" in cs.get("gen1-csv", {}) and "plan_s" in cs.get("gen1-parquet", {}):
        ratio = cs["gen1-csv"]["plan_s"] / cs["gen1-parquet"]["plan_s"]
        out["gen1_csv_over_parquet"] = ratio
        print(f"Gen1: the CSV path takes {ratio:.2f}x the Parquet path's time (same run)")
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = Path(args.json) if args.json else HERE / "results" / f"plan-scale-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()

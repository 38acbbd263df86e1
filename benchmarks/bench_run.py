"""Benchmark: `meshemu run` end to end on real scenarios (root).

For Walker shells of 100 and 500 satellites and Starlink shell 1 (1,584 satellites), each
with the Starlink scenario's ground stations, runs the live emulation in real time without
traffic and prints: build time, stop time, memory used by the whole system during the run
(peak of MemTotal - MemAvailable, minus the idle baseline), the per-step apply time (p50,
p99, max), the start lag (p99 over the first and the last minute, so growth is visible) and
the link and route changes applied.

Targets (issue 3), Starlink shell 1 plus ground stations: build < 30 s, stop < 15 s,
< 3 GiB, apply p99 < 200 ms, no lag growth over 10 minutes.

Usage: sudo .venv/bin/python benchmarks/bench_run.py [--duration 600] [--sizes 100 500 1584]
       [--shaper userspace] [--delay-tolerance-us 1] [--route-hold-us 0 100]
       (--sizes 4408: Starlink Gen1; several --route-hold-us values: each size is run with
       each, one after the other in the same session, for a side-by-side comparison)

The figures are printed and written as JSON (``--json``, by default
``benchmarks/results/run-<time>.json``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from meshemu.linux.limits import mem_available_bytes
from meshemu.live.runner import run_emulation
from meshemu.spec.scenario import load_scenario


def mem_used_bytes() -> int:
    with open("/proc/meminfo") as f:
        total = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")) * 1024
    return total - mem_available_bytes()


def scenario_for(n_sats: int):
    """Starlink shell 1 itself (1584), Starlink Gen1 (4408: five shells, 10 stations), or a
    53 deg / 550 km Walker shell of about ``n_sats``."""
    if n_sats == 4408:
        return load_scenario("starlink-gen1")
    sc = load_scenario("starlink-shell1")
    if n_sats == 1584:
        return sc
    raw = copy.deepcopy(sc.raw)
    planes = {100: 10, 500: 20}.get(n_sats) or max(2, round(np.sqrt(n_sats)))
    shell = raw["constellation"]["shells"][0]
    shell.update(planes=planes, sats_per_plane=n_sats // planes, phasing=1)
    raw["name"] = f"walker-{n_sats}"
    raw.pop("compute", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        import yaml

        yaml.safe_dump(raw, f)
    return load_scenario(f.name)


def bench(
    n_sats: int, duration: float, shaper: str, tolerance_us: float = 1.0, hold_us: float = 0.0
) -> dict:
    sc = scenario_for(n_sats)
    base = mem_used_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], mem_used_bytes())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = Path(tempfile.mkdtemp(prefix=f"bench-run-{n_sats}-"))
    t0 = time.perf_counter()
    try:
        res = run_emulation(
            sc,
            duration_s=duration,
            step_s=1.0,
            shaper=shaper,
            out_dir=out,
            traffic=None,
            plots=False,
            delay_tolerance_us=tolerance_us,
            route_hold_us=hold_us,
        )
    finally:
        done.set()
        th.join()
    wall = time.perf_counter() - t0
    with open(out / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))[1:]
    lag = np.array([float(r["lag_ms"]) for r in steps])
    apply_ms = np.array([float(r["apply_ms"]) for r in steps])
    routes_ms = np.array([float(r["routes_ms"]) for r in steps])
    links_ms = np.array([float(r["links_ms"]) for r in steps])
    wait_ms = np.array([float(r["route_wait_ms"]) for r in steps])
    changes = np.array([int(r["route_changes"]) for r in steps])
    t = res.summary["timing"]
    first, last = lag[:60], lag[-60:]
    return {
        "sats": n_sats,
        "route_hold_us": hold_us,
        "nodes": res.summary["nodes"],
        "links": res.summary["links_total"],
        "build_s": t["build_s"],
        "build_phases_s": t.get("build_phases_s"),
        "stop_s": t["stop_s"],
        "plan_s": t["plan_s"],
        "mem_gib": (peak[0] - base) / 2**30,
        "apply_p50_ms": float(np.percentile(apply_ms, 50)),
        "apply_p99_ms": float(np.percentile(apply_ms, 99)),
        "apply_max_ms": float(apply_ms.max()),
        "links_p99_ms": float(np.percentile(links_ms, 99)),
        "routes_p99_ms": float(np.percentile(routes_ms, 99)),
        "route_wait_p99_ms": float(np.percentile(wait_ms, 99)),
        "routing_ms_p50": t["routing_ms_p50"],
        "lag_p99_first_min_ms": float(np.percentile(first, 99)),
        "lag_p99_last_min_ms": float(np.percentile(last, 99)),
        "link_updates": res.summary["link_updates_total"],
        "route_changes": res.summary["route_changes_total"],
        "route_changes_p50": float(np.percentile(changes, 50)),
        "route_changes_p99": float(np.percentile(changes, 99)),
        "wall_s": wall,
        "run_dir": str(out),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1584])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--shaper", default="userspace")
    ap.add_argument(
        "--delay-tolerance-us", type=float, default=1.0, help="as meshemu run's (default 1)"
    )
    ap.add_argument(
        "--route-hold-us",
        type=float,
        nargs="+",
        default=[0.0],
        help="as meshemu run's; several values run each size with each (default 0: off)",
    )
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        for hold in args.route_hold_us:
            print(
                f"== {n} satellites, {args.duration:g} s in real time, route hold {hold:g} us ...",
                flush=True,
            )
            r = bench(n, args.duration, args.shaper, args.delay_tolerance_us, hold)
            rows.append(r)
            print(
                "   "
                + ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                ),
                flush=True,
            )
    cols = [
        "sats",
        "route_hold_us",
        "nodes",
        "links",
        "build_s",
        "stop_s",
        "mem_gib",
        "apply_p50_ms",
        "apply_p99_ms",
        "apply_max_ms",
        "lag_p99_first_min_ms",
        "lag_p99_last_min_ms",
        "route_changes_p99",
        "routes_p99_ms",
    ]
    print()
    print(" ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(
            " ".join(f"{r[c]:>20.3f}" if isinstance(r[c], float) else f"{r[c]:>20}" for c in cols)
        )
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    dest = Path(args.json or Path(__file__).parent / "results" / f"run-{stamp}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rows, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()

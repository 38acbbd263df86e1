"""Benchmark: routing daemons in the nodes (issue 11), as root.

For each routing scheme on a scenario, one run with a probe workload (1 Mbit/s bulk flows
between consecutive endpoints), and its figures from the run's own files:

- build time; time to the first full routing (the clock starts after it);
- daemons: CPU (% of one core, per node and in all) and memory per node (PSS: shared pages
  split among the processes; RSS beside it), from ``daemons.csv``;
- control plane: the protocol's packets and bytes per link and direction per second
  (``control.csv``);
- convergence per topology event kind (p50/p99, not converged, loops, blackholes:
  ``convergence.csv``);
- loss around events: frames the probes lost, and the longest outage (``disruption.csv``);
- whether the run kept real time (step lag p99, steps the shaper fell behind).

A computed scheme (``fewest-hops``: routes installed at each step, no daemons) runs beside
them as the reference for loss around events.

Scenarios: any shipped name, or ``walker500`` (20 planes x 25 at 550 km, 53 deg, cross-plane
links off above 50 deg latitude, five ground stations as endpoints).

Usage: python benchmarks/bench_daemons.py [--scenario default] [--start 170]
       [--duration 100] [--schemes fewest-hops ospf isis bird-ospf] [--json PATH]
Starlink shell 1 with the lightest daemon:
       python benchmarks/bench_daemons.py --scenario starlink-shell1 --schemes bird-ospf
       --duration 60 --start 0
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshemu.errors import MeshemuError
from meshemu.live.runner import run_emulation
from meshemu.spec.profile import Profile
from meshemu.spec.scenario import Scenario, load_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def walker500() -> Scenario:
    return Scenario.from_dict(
        {
            "name": "walker500",
            "epoch": "2026-01-01T00:00:00Z",
            "constellation": {
                "shells": [
                    {
                        "name": "w",
                        "type": "walker-delta",
                        "planes": 20,
                        "sats_per_plane": 25,
                        "phasing": 1,
                        "altitude_km": 550,
                        "inclination_deg": 53,
                    }
                ]
            },
            "ground": [
                {"name": "london", "lat_deg": 51.5, "lon_deg": -0.1},
                {"name": "new_york", "lat_deg": 40.7, "lon_deg": -74.0},
                {"name": "nairobi", "lat_deg": -1.3, "lon_deg": 36.8},
                {"name": "tokyo", "lat_deg": 35.7, "lon_deg": 139.7},
                {"name": "sydney", "lat_deg": -33.9, "lon_deg": 151.2},
            ],
            "isl": {
                "pattern": "plus-grid",
                "max_range_km": 5000,
                "cross_plane_max_lat_deg": 50,
                "rate_mbps": 100,
            },
            "gsl": {"min_elevation_deg": 25, "rate_mbps": 100},
        }
    )


def scenario_of(name: str) -> Scenario:
    return walker500() if name == "walker500" else load_scenario(name)


def probes(sc: Scenario, n: int = 4) -> Profile:
    """1 Mbit/s bulk flows between consecutive endpoints (ground and compute nodes)."""
    ends = list(sc.endpoints) or [g.name for g in sc.ground]
    ends = ends[: n + 1]
    flows = [
        {"kind": "bulk", "name": f"probe{i}", "src": a, "dst": b, "rate_mbps": 1.0}
        for i, (a, b) in enumerate(zip(ends, ends[1:]))
    ]
    return Profile.from_dict({"name": "probes", "workloads": flows})


def bench(sc: Scenario, scheme: str, duration: float, start: float) -> dict[str, Any]:
    """One run of ``scheme`` on ``sc``; its figures."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = run_emulation(
            sc,
            duration_s=duration,
            start_s=start,
            shaper="userspace",
            routing=scheme,
            out_dir=Path(d) / "r",
            traffic=probes(sc),
            plots=False,
        )
        wall = time.perf_counter() - t0
    s = res.summary
    return {
        "nodes": s["nodes"],
        "build_s": s["timing"]["build_s"],
        "wall_s": round(wall, 1),
        "lag_ms_p99": s["timing"]["lag_ms_p99"],
        "shaper_steps_affected": (s.get("fidelity") or {}).get("steps_affected"),
        "initial_convergence_s": (s.get("convergence") or {}).get("initial_s"),
        "convergence": s.get("convergence"),
        "control": s.get("control"),
        "daemon_usage": s.get("daemon_usage"),
        "disruption": s.get("disruption"),
        "max_rss_mib_benchmark": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def fmt_run(scheme: str, name: str, r: dict[str, Any]) -> list[str]:
    lines = [
        f"{scheme} on {name} ({r['nodes']} nodes): build {r['build_s']:.1f} s, first full "
        f"routing {r['initial_convergence_s']} s, step lag p99 {r['lag_ms_p99']:.0f} ms, "
        f"shaper fell behind in {r['shaper_steps_affected']} steps"
    ]
    du = r.get("daemon_usage") or {}
    if du.get("nodes"):
        lines.append(
            f"  daemons: {du['pss_mib_per_node']:.1f} MiB PSS ({du['rss_mib_per_node']:.1f} "
            f"RSS) per node, {du['pss_mib_total']:.0f} MiB in all; CPU "
            f"{du['cpu_pct_per_node']:.2f} % of a core per node, {du['cpu_pct_total']:.0f} % "
            f"in all (step p99 {du['cpu_pct_step_p99']} %)"
        )
    ctl = r.get("control") or {}
    if ctl.get("links"):
        lines.append(
            f"  control plane: {ctl['packets_per_link_s']:.2f} packets/s, "
            f"{ctl['bytes_per_link_s']:.0f} B/s per link and direction (p99 "
            f"{ctl['bytes_per_link_s_p99']:.0f} B/s), busiest step {ctl['bytes_step_max']} B, "
            f"missed {ctl['missed']}"
        )
    for kind, c in (r.get("convergence") or {}).items():
        if isinstance(c, dict):
            lines.append(
                f"  {kind}: {c['events']} events, convergence p50 {c['convergence_s_p50']:.3f} "
                f"s, p99 {c['convergence_s_p99']:.3f} s; not converged {c['not_converged']}; "
                f"loops {c['loop_s_total']:.3f} s, blackholes {c['blackhole_s_total']:.3f} s"
            )
    for kind, c in (r.get("disruption") or {}).items():
        lines.append(
            f"  probes around {kind} events: {c['lost']} of {c['sent']} frames lost "
            f"({c['events_with_loss']} of {c['events']} events), outage p50 "
            f"{c['outage_s_p50']:.3f} s, max {c['outage_s_max']:.3f} s"
        )
    return lines


def main() -> None:
    """Run every scheme and print and write the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="default")
    # the default scenario's links change at 182, 249, 254 and 262 s after its epoch
    ap.add_argument("--start", type=float, default=170.0)
    ap.add_argument("--duration", type=float, default=100.0)
    ap.add_argument("--schemes", nargs="+", default=["fewest-hops", "ospf", "isis", "bird-ospf"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sc = scenario_of(args.scenario)
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "start_s": args.start,
        "duration_s": args.duration,
        "schemes": {},
    }
    path = Path(args.json or RESULTS / f"bench_daemons-{args.scenario}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    for scheme in args.schemes:
        try:
            r = bench(sc, scheme, args.duration, args.start)
        except MeshemuError as exc:  # e.g. out of memory or time: a result too
            print(f"{scheme} on {args.scenario}: FAILED: {exc}", file=sys.stderr)
            out["schemes"][scheme] = {"error": str(exc)}
            continue
        out["schemes"][scheme] = r
        print("\n".join(fmt_run(scheme, args.scenario, r)), flush=True)
        path.write_text(json.dumps(out, indent=2, default=str))
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()

"""Benchmark: one run over simulated hosts against the same run on one host (root).

Runs a scenario (default: Starlink shell 1) without traffic, first on one host, then over
H simulated hosts (network namespaces on a bridge, a Ray node in each:
``meshemu/live/cluster/simhosts.py``), the driver in host 0 both times. Prints and writes to
``benchmarks/results/cluster-<time>.json``: build time, apply p50/p99 overall and per host,
the driver's round trip per step (p99), links between hosts, substrate latency and clock
offsets.

All simulated hosts share this machine's cores, so the figures are an upper bound on what
the control plane costs, not a speed-up: see README, Beyond one machine.

Usage: sudo flock /tmp/meshemu-heavy.lock flock /tmp/meshemu-root.lock \\
       .venv/bin/python benchmarks/bench_cluster.py [--scenario starlink-shell1] [--hosts 2]
       [--duration 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from meshemu.live.cluster.simhosts import SimulatedHosts

RESULTS = Path(__file__).resolve().parent / "results"


def run(hosts: SimulatedHosts, out: Path, args: argparse.Namespace, cluster: bool) -> dict:
    meshemu = str(Path(sys.executable).with_name("meshemu"))
    argv = [meshemu, "run", args.scenario, "--duration", str(args.duration)]
    argv += ["--traffic", "none", "--shaper", "userspace", "--out", str(out)]
    if cluster:
        argv += ["--cluster", hosts.head_address]
    p = subprocess.run(hosts.exec_argv(0, argv), env=hosts.env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    summary: dict = json.loads((out / "summary.json").read_text())
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="starlink-shell1")
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--duration", type=float, default=30.0)
    args = ap.parse_args()
    res: dict = {"scenario": args.scenario, "hosts": args.hosts, "duration_s": args.duration}
    tmp = Path(tempfile.mkdtemp(prefix="meshemu-bench-cluster-"))
    with SimulatedHosts(args.hosts) as hosts:
        one = run(hosts, tmp / "one", args, cluster=False)
        many = run(hosts, tmp / "many", args, cluster=True)
        hosts.run_ids |= {many["run_id"] + f"h{i}" for i in range(args.hosts)}
    for name, s in (("one_host", one), (f"{args.hosts}_hosts", many)):
        t = s["timing"]
        res[name] = {
            "build_s": t["build_s"],
            "stop_s": t["stop_s"],
            "apply_ms_p50": t["apply_ms_p50"],
            "apply_ms_p99": t["apply_ms_p99"],
            "lag_ms_p99": t["lag_ms_p99"],
        }
    c = many["cluster"]
    res["cluster"] = {
        "cut_links": c["partition"]["cut_links"],
        "links_total": c["partition"]["links_total"],
        "method": c["partition"]["method"],
        "per_host": c["hosts"],
        "driver_call_ms_p99": c["overall_call_ms_p99"],
        "substrate_one_way_ms": c["substrate_one_way_ms"],
        "clock_offset_bound_ms": c["clock_offset_bound_ms"],
    }
    print(json.dumps(res, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = RESULTS / f"cluster-{stamp}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Benchmark: routing daemons in the nodes (issue 11), as root.

For each daemon scheme (``ospf``, ``isis``, ``bird-ospf``) on a scenario: build time, time
to the first full routing (the clock starts after it), memory of the daemons per node (RSS
of their processes, summed per node), convergence per topology event kind (p50/p99 from
``convergence.csv``), and the loops and blackholes seen.

Usage: python benchmarks/bench_daemons.py [--scenario default] [--start 170] [--duration 100]
       [--schemes ospf isis bird-ospf] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from meshemu.live.runner import run_emulation

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_daemons.json"


def rss_kib_of_daemons(emu: Any) -> list[int]:
    """RSS (KiB) of each node's daemon processes, summed per node."""
    out = []
    for plist in emu.daemon_runner.procs:
        total = 0
        for _, p in plist:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        out.append(total)
    return out


def bench(scenario: str, scheme: str, duration: float, start: float) -> dict[str, Any]:
    """One run of ``scheme`` on ``scenario``; its figures."""
    mem: dict[str, list[int]] = {}

    def built(emu: Any) -> None:
        mem["rss"] = rss_kib_of_daemons(emu)

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = run_emulation(
            scenario,
            duration_s=duration,
            start_s=start,
            shaper="userspace",
            routing=scheme,
            out_dir=Path(d) / "r",
            traffic=None,
            plots=False,
            on_built=built,
        )
        wall = time.perf_counter() - t0
    s = res.summary
    conv = s.get("convergence", {})
    rss = mem.get("rss", [0])
    return {
        "nodes": s["nodes"],
        "build_s": s["timing"]["build_s"],
        "initial_convergence_s": conv.get("initial_s"),
        "wall_s": wall,
        "daemon_rss_mib_per_node_mean": sum(rss) / max(len(rss), 1) / 1024,
        "convergence": conv,
    }


def main() -> None:
    """Run every scheme and print and write the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="default")
    # the default scenario's links change at 182, 249, 254 and 262 s after its epoch
    ap.add_argument("--start", type=float, default=170.0)
    ap.add_argument("--duration", type=float, default=100.0)
    ap.add_argument("--schemes", nargs="+", default=["ospf", "isis", "bird-ospf"])
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    args = ap.parse_args()
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "start_s": args.start,
        "duration_s": args.duration,
        "schemes": {},
    }
    for scheme in args.schemes:
        r = bench(args.scenario, scheme, args.duration, args.start)
        out["schemes"][scheme] = r
        print(
            f"{scheme} on {args.scenario} ({r['nodes']} nodes): build {r['build_s']:.1f} s, "
            f"first full routing {r['initial_convergence_s']} s, daemons "
            f"{r['daemon_rss_mib_per_node_mean']:.1f} MiB RSS per node"
        )
        for kind, c in r["convergence"].items():
            if isinstance(c, dict):
                print(
                    f"  {kind}: {c['events']} events, convergence p50 "
                    f"{c['convergence_s_p50']:.3f} s, p99 {c['convergence_s_p99']:.3f} s; "
                    f"not converged {c['not_converged']}; loops {c['loop_s_total']:.3f} s, "
                    f"blackholes {c['blackhole_s_total']:.3f} s in all"
                )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()

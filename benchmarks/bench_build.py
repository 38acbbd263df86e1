"""Benchmark: where an emulation's build time goes, phase by phase (root).

Builds a scenario's network with :class:`meshemu.live.emulation.Emulation` (every link of
the first ``--steps`` steps, the first step's routes) and prints each build phase's seconds
(``Emulation.timings``: shells, namespaces, links, addresses, routes, carrier) and the
memory it added.

``--feed nice`` or ``--feed idle`` runs the run's route processes
(:class:`meshemu.live.feed.RouteFeed` over the same steps) during the build, at nice 5 or
under ``SCHED_IDLE`` and stopped while the node shells spawn (what ``meshemu run`` does),
so what they cost the build shows against ``--feed off``; ``--feed idle-all`` keeps them
under ``SCHED_IDLE`` without stopping them. ``--perf DIR`` records each phase
system-wide with ``perf record -a -g`` into ``DIR/<phase>.data`` (read them with
``perf report -i``).

Writes ``benchmarks/results/build-<scenario>-<label>-<time>.json``.

Usage: sudo .venv/bin/python benchmarks/bench_build.py [--scenario starlink-shell1]
       [--steps 60] [--feed off|nice|idle|idle-all] [--repeat 1] [--perf DIR] [--label NAME]
       (--scenario starlink-gen1: 4,418 nodes, about 6 GiB: take the heavy lock)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from meshemu.geometry.schedule import LinkSchedule
from meshemu.live.emulation import Emulation, RunLinks
from meshemu.live.feed import RouteFeed
from meshemu.live.routes import RouteInstaller
from meshemu.live.shapers import make_shaper
from meshemu.routing import get_scheme
from meshemu.spec.scenario import load_scenario

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("_spawn_nodes", "_setup_namespaces", "_create_links", "_configure_addresses")


@contextlib.contextmanager
def perf_phase(perf_dir: Path | None, name: str):
    """``perf record -a -g`` around a phase (nothing without ``perf_dir``)."""
    if perf_dir is None:
        yield
        return
    p = subprocess.Popen(
        ["perf", "record", "-q", "-a", "-g", "-o", str(perf_dir / f"{name}.data")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # perf's start-up
    try:
        yield
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)


def build_once(scenario: str, steps: int, feed: str, perf_dir: Path | None) -> dict:
    sc = load_scenario(scenario)
    sched = LinkSchedule(sc, 1.0)
    snaps = list(sched.snapshots(float(steps - 1)))[:steps]
    nodes = sched.nodes
    n = len(nodes)
    dests = np.arange(n, dtype=np.int32)
    scheme = get_scheme("shortest-delay")
    route_feed = None
    if feed != "off":
        workers = 2 if n >= 2000 and (os.cpu_count() or 1) > 1 else 1
        route_feed = RouteFeed(snaps, scheme, dests, workers=workers)
        tables = route_feed.get(0)
        if feed.startswith("idle"):  # as meshemu run does
            route_feed.yield_cpu(True)
    else:
        tables = scheme.forwarding_tables(snaps[0], dests)
    run_id = f"bb{uuid.uuid4().hex[:6]}"
    shaper = make_shaper("userspace", run_id)
    out: dict = {"scenario": scenario, "nodes": n, "feed": feed}
    with tempfile.TemporaryDirectory() as run_dir:
        emu = Emulation(list(nodes.names), list(nodes.kind), shaper, run_dir, run_id)
        if perf_dir is not None:
            for name in PHASES:
                fn = getattr(emu, name)

                def wrapped(*a, _fn=fn, _name=name, **k):
                    with perf_phase(perf_dir, _name.strip("_")):
                        return _fn(*a, **k)

                setattr(emu, name, wrapped)
            full = RouteInstaller.install_full

            def install_full(self, *a, **k):
                with perf_phase(perf_dir, "install_routes"):
                    return full(self, *a, **k)

            RouteInstaller.install_full = install_full  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            emu.build(
                RunLinks.from_snapshots(snaps),
                snaps[0],
                tables,
                quiet=route_feed.paused if route_feed is not None and feed == "idle" else None,
            )
            out["build_s"] = time.perf_counter() - t0
            out["links"] = int(emu.plan.n_links)
            out["phases_s"] = {k: round(v, 3) for k, v in emu.timings.items()}
            out["memory_mib"] = {
                k.replace("_bytes", ""): round(v / 2**20, 1) for k, v in emu.memory.items()
            }
            if route_feed is not None:
                out["steps_routed_during_build"] = route_feed.steps_ready()
        finally:
            t1 = time.perf_counter()
            emu.stop()
            out["stop_s"] = time.perf_counter() - t1
            if route_feed is not None:
                route_feed.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="starlink-shell1")
    ap.add_argument("--steps", type=int, default=60, help="steps whose links are built")
    ap.add_argument(
        "--feed",
        choices=("off", "nice", "idle", "idle-all"),
        default="off",
        help="route processes during the build: none, at nice 5, SCHED_IDLE and stopped "
        "while the shells spawn (as `meshemu run` has them), or SCHED_IDLE all along "
        "(default off)",
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--perf", type=Path, help="perf record each phase into this directory")
    ap.add_argument("--label", default="", help="a name for this series in the JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_build needs root (network namespaces): run it with sudo")
    if args.perf is not None:
        args.perf.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.repeat):
        r = build_once(args.scenario, args.steps, args.feed, args.perf)
        runs.append(r)
        print(f"build {i + 1}: {json.dumps(r)}", flush=True)
    builds = [r["build_s"] for r in runs]
    print(
        f"{args.scenario} ({runs[0]['nodes']} nodes, {runs[0]['links']} links, "
        f"route processes {args.feed}): build median "
        f"{float(np.median(builds)):.1f} s over {len(builds)}; phases (median s): "
        + ", ".join(
            f"{k} {float(np.median([r['phases_s'][k] for r in runs])):.2f}"
            for k in runs[0]["phases_s"]
        )
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = RESULTS / f"build-{args.scenario}-{args.label or 'run'}-{stamp}.json"
    path.write_text(json.dumps({"label": args.label, "runs": runs}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

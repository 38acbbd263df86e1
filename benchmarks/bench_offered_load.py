"""Benchmark: the highest offered load at which measured one-way delays still match the
plan within 1 ms (root, userspace shaper by default).

A static chain ``g0 -- s0 -- s1 -- g1`` (three links of 5 ms at 1 Gbit/s, so the links
themselves never queue at these loads) carries one paced bulk flow g0 -> g1 from a traffic
agent at increasing rates. For each rate it prints the achieved rate, loss, and the error
of the measured one-way delay against the planned path delay (15 ms) at p50/p99/max, then
the highest rate whose p99 error stays below 1 ms.

Usage: sudo .venv/bin/python benchmarks/bench_offered_load.py [--rates 10 50 100 ...]
       [--seconds 4] [--shaper userspace] [--workers 2]
(``MESHEMU_DELAYLINE=python`` measures the Python delay line instead of the compiled one.)
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from meshemu.live import emulation as em
from meshemu.live.shapers import make_shaper
from meshemu.routing import get_scheme, snapshot_from_edges, trace_path
from meshemu.spec.profile import Profile
from meshemu.traffic.runtime import start_traffic

NAMES = ["s0", "s1", "g0", "g1"]
KINDS = ["sat", "sat", "station", "station"]
EDGES = [(2, 0), (0, 1), (1, 3)]
DELAY_S = 0.005
RATE_BPS = 1e9


def run_rate(emu, snap, tab, rate_mbps: float, seconds: float, out: Path) -> dict:
    prof = Profile.from_dict(
        {
            "name": f"load-{rate_mbps:g}",
            "seed": 1,
            "workloads": [
                {
                    "kind": "bulk",
                    "name": "bulk",
                    "src": "g0",
                    "dst": "g1",
                    "rate_mbps": rate_mbps,
                    "start_s": 0.2,
                    "duration_s": seconds,
                }
            ],
        }
    )
    sched = SimpleNamespace(nodes=SimpleNamespace(names=tuple(NAMES), kind=np.array(KINDS)))
    n_steps = int(seconds) + 2
    run = start_traffic(prof, None, emu, sched, [snap] * n_steps, out, seconds + 1)
    paths = {(s, d): trace_path(tab, snap, s, d) for s in range(4) for d in range(4) if s != d}
    try:
        t0 = time.monotonic()
        for k in range(n_steps):
            time.sleep(max(0.0, t0 + k - time.monotonic()))
            run.step(k, float(k), paths)
        run.finish()
    finally:
        run.stop()
    with open(out / "packets.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    owd = np.array([float(r["owd_ms"]) for r in rows])
    rx = sum(int(r["rx_bytes"]) for r in csv.DictReader(open(out / "flow_throughput.csv")))
    err = owd - 3 * DELAY_S * 1e3
    s = run.summary()
    return {
        "offered_mbps": rate_mbps,
        "achieved_mbps": rx * 8 / seconds / 1e6,
        "samples": owd.size,
        "err_p50_ms": float(np.percentile(err, 50)),
        "err_p99_ms": float(np.percentile(err, 99)),
        "err_max_ms": float(err.max()),
        "lines": s.get("lines", []),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[10, 50, 100, 200, 400, 600, 800])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--shaper", default="userspace")
    ap.add_argument("--workers", type=int, default=1, help="delay-line workers (userspace)")
    args = ap.parse_args()
    run_id = f"bol{uuid.uuid4().hex[:6]}"
    snap = snapshot_from_edges(
        4, EDGES, [DELAY_S] * 3, transit=[True, True, False, False], rates=[RATE_BPS] * 3
    )
    tab = get_scheme("shortest-delay").forwarding_tables(snap, np.arange(4, dtype=np.int32))
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    opts = {"workers": args.workers} if args.shaper == "userspace" else {}
    emu = em.Emulation(NAMES, KINDS, make_shaper(args.shaper, run_id, **opts), tmp, run_id)
    results = []
    try:
        emu.build(snap.key, snap, tab)
        print(
            f"{'offered':>10} {'achieved':>10} {'samples':>8} {'err p50':>9} {'err p99':>9} "
            f"{'err max':>9}  (Mbit/s, ms; planned one-way delay 15 ms, 3 hops)"
        )
        for r in args.rates:
            res = run_rate(emu, snap, tab, r, args.seconds, tmp / f"r{r:g}")
            results.append(res)
            print(
                f"{res['offered_mbps']:>10.0f} {res['achieved_mbps']:>10.1f} "
                f"{res['samples']:>8d} {res['err_p50_ms']:>9.3f} {res['err_p99_ms']:>9.3f} "
                f"{res['err_max_ms']:>9.3f}",
                flush=True,
            )
    finally:
        emu.stop()
    ok = [
        r["offered_mbps"]
        for r in results
        if r["err_p99_ms"] < 1.0 and r["achieved_mbps"] > 0.9 * r["offered_mbps"]
    ]
    print(
        f"highest offered load with p99 delay error < 1 ms (and >= 90 % delivered): "
        f"{max(ok) if ok else 'none'} Mbit/s (shaper {args.shaper})"
    )


if __name__ == "__main__":
    main()

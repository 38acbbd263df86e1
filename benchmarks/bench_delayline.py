"""Benchmark of the userspace delay line (root): accuracy, packet rate, throughput, scale.

Prints:

- per-hop delay error (one-way delay measured with kernel receive timestamps minus the
  configured delay) p50/p99/max at several packet rates;
- the highest packet rate the delay line forwards (64-byte UDP flood both ways), with one
  and two worker processes;
- TCP throughput through an unshaped link;
- the time to create N links (N = 100, 1000, 6000 by default) between 100 namespaces, to
  update 3,000 of them, to read counters and to close.

Run: ``sudo .venv/bin/python benchmarks/bench_delayline.py`` (about 1.5 minutes; ``--quick``
for a smaller run). Timings are wall-clock on a shared machine: run it twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from doubles import Netns  # noqa: E402  (the namespace holder the tests use; no pytest)

from meshemu.live.shapers import LinkEnds, LinkParams, UserspaceShaper  # noqa: E402

ADDR_A, ADDR_B = "10.78.0.1", "10.78.0.2"

RECEIVER = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    s.bind(("0.0.0.0", 9000))
    s.settimeout(30)
    print("ready", flush=True)
    out = []
    while True:
        data, anc, _, _ = s.recvmsg(2048, 64)
        if data == b"end":
            break
        sec, nsec = struct.unpack("qq", anc[0][2][:16])
        out.append(sec * 1_000_000_000 + nsec - struct.unpack_from("<q", data)[0])
    print(" ".join(map(str, out)), flush=True)
""")

SENDER = textwrap.dedent("""
    import socket, struct, sys, time
    dst, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((dst, 9000))
    pad = bytes(92)
    n = int(rate * seconds)
    step = 1e9 / rate
    t0 = time.time_ns()
    now = time.time_ns
    for i in range(n):
        due = t0 + int(i * step)
        while True:
            left = due - now()
            if left <= 0:
                break
            if left > 300_000:
                time.sleep((left - 200_000) / 1e9)
        try:
            s.send(struct.pack("<q", now()) + pad)
        except OSError:
            pass
""")


def _pair(run_id: str, params: LinkParams, workers: int = 1):
    a, b = Netns("bench-a"), Netns("bench-b")
    s = UserspaceShaper(run_id, workers=workers)
    s.create_links([(LinkEnds(0, a.pid, "mxa", b.pid, "mxb"), params)])
    a.run(["ip", "addr", "add", f"{ADDR_A}/24", "dev", "mxa"])
    b.run(["ip", "addr", "add", f"{ADDR_B}/24", "dev", "mxb"])
    a.run(["ping", "-c", "1", "-W", "2", ADDR_B], check=False)
    return a, b, s


def delay_error(loads: list[int], seconds: float, delay_s: float = 0.005, workers: int = 1) -> None:
    print(
        f"\n== per-hop delay error (one traversal, {delay_s * 1e3:.0f} ms configured, "
        f"kernel rx timestamps, {seconds:.0f} s per load, {workers} worker(s))"
    )
    print(f"{'load pps':>9} {'pkts':>7} {'lost':>5} {'p50 us':>8} {'p99 us':>8} {'max us':>8}")
    a, b, s = _pair(f"bench{uuid.uuid4().hex[:6]}", LinkParams(delay_s, 0), workers)
    try:
        for pps in loads:
            rx = b.popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
            rx.stdout.readline()
            a.run(
                [sys.executable, "-c", SENDER, ADDR_B, str(pps), str(seconds)], timeout=seconds + 60
            )
            time.sleep(delay_s + 0.2)
            a.run(
                [
                    sys.executable,
                    "-c",
                    "import socket; s=socket.socket(2, 2); "
                    f"[s.sendto(b'end', ('{ADDR_B}', 9000)) for _ in range(3)]",
                ]
            )
            vals = [int(v) for v in rx.communicate(timeout=60)[0].split()][10:]
            err = sorted((v - delay_s * 1e9) / 1e3 for v in vals)
            sent = int(pps * seconds) - 10
            p = (
                (lambda q, err=err: err[min(len(err) - 1, int(q * len(err)))])
                if err
                else (lambda q: 0)
            )
            print(
                f"{pps:>9} {len(err):>7} {max(0, sent - len(err)):>5} {p(0.5):>8.1f} "
                f"{p(0.99):>8.1f} {err[-1] if err else 0:>8.1f}"
            )
    finally:
        s.close()
        a.close()
        b.close()


def max_rate(seconds: float) -> None:
    print(f"\n== max forwarding rate (64-byte UDP flood, both directions, {seconds:.0f} s)")
    for workers in (1, 2):
        a, b, s = _pair(f"bench{uuid.uuid4().hex[:6]}", LinkParams(0.0, 0), workers=workers)
        try:
            srv = b.popen(
                ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.3)
            before = s.counters()[0]
            t0 = time.perf_counter()
            r = a.run(
                [
                    "iperf3",
                    "-c",
                    ADDR_B,
                    "-u",
                    "-b",
                    "0",
                    "-l",
                    "64",
                    "--bidir",
                    "-t",
                    str(int(seconds)),
                    "-J",
                ],
                check=False,
                timeout=seconds + 30,
            )
            elapsed = time.perf_counter() - t0
            after = s.counters()[0]
            srv.kill()
            srv.wait()
            sent = 0
            try:
                for st in json.loads(r.stdout)["end"]["streams"]:
                    sent += st["udp"]["packets"]
            except (KeyError, ValueError):
                pass
            fwd = after[0] - before[0]
            print(
                f"workers={workers}: forwarded {fwd / elapsed:>9,.0f} pps "
                f"(offered {sent / seconds:,.0f} pps; {after[2] - before[2]:,} dropped by the "
                f"delay line, rest lost before it: ring full)"
            )
        finally:
            s.close()
            a.close()
            b.close()


def tcp_throughput(seconds: float) -> None:
    print(f"\n== TCP throughput, iperf3 {seconds:.0f} s")
    for rate in (0, 50e6):
        a, b, s = _pair(f"bench{uuid.uuid4().hex[:6]}", LinkParams(0.001, rate))
        try:
            srv = b.popen(
                ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.3)
            r = a.run(
                ["iperf3", "-c", ADDR_B, "-t", str(int(seconds)), "-J"],
                check=False,
                timeout=seconds + 30,
            )
            srv.wait(timeout=10)
            got = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
            label = "unshaped" if not rate else f"{rate / 1e6:.0f} Mbit/s link"
            print(f"{label:>18}: {got / 1e6:8.1f} Mbit/s goodput")
        finally:
            s.close()
            a.close()
            b.close()


def scale(sizes: list[int], n_ns: int = 100, n_update: int = 3000) -> None:
    print(f"\n== scale ({n_ns} node namespaces; times in s unless noted)")
    nss = [Netns(f"bench-{i}") for i in range(n_ns)]
    try:
        print(f"{'links':>6} {'create':>7} {'update ms':>10} {'counters ms':>12} {'close':>6}")
        for n in sizes:
            s = UserspaceShaper(f"bench{uuid.uuid4().hex[:6]}")
            try:
                links = [
                    (
                        LinkEnds(
                            i, nss[i % n_ns].pid, f"l{i}a", nss[(7 * i + 1) % n_ns].pid, f"l{i}b"
                        ),
                        LinkParams(0.002 + 1e-6 * i, 1e9),
                    )
                    for i in range(n)
                ]
                t0 = time.perf_counter()
                s.create_links(links)
                t_create = time.perf_counter() - t0
                k = min(n, n_update)
                ups = []
                for rep in range(5):
                    ch = [
                        (i, LinkParams(0.003 + 1e-6 * (i + rep), 2e9, up=bool(rep % 2)))
                        for i in range(k)
                    ]
                    t0 = time.perf_counter()
                    s.update(ch)
                    ups.append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                s.counters()
                t_cnt = (time.perf_counter() - t0) * 1e3
            finally:
                t0 = time.perf_counter()
                s.close()
                t_close = time.perf_counter() - t0
            print(
                f"{n:>6} {t_create:>7.2f} {statistics.median(ups):>6.1f} ({k}) "
                f"{t_cnt:>12.1f} {t_close:>6.2f}"
            )
    finally:
        for ns in nss:
            ns.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller loads and sizes")
    p.add_argument("--loads", type=int, nargs="*", default=None, help="pps for delay error")
    p.add_argument("--sizes", type=int, nargs="*", default=None, help="link counts to create")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_delayline needs root (network namespaces)")
    logging.basicConfig(level=logging.WARNING)
    loads = args.loads or ([1000, 5000] if args.quick else [1000, 5000, 20000])
    sizes = args.sizes or ([100, 1000] if args.quick else [100, 1000, 6000])
    secs = 2.0 if args.quick else 4.0
    t0 = time.perf_counter()
    delay_error(loads, secs)
    delay_error(loads[-1:], secs, workers=2)
    max_rate(secs)
    tcp_throughput(secs)
    scale(sizes)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

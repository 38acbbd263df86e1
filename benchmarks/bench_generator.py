"""Benchmark of the traffic generator: packets and bits per second one core can send.

Prints:

- header build rate: Scapy ``bytes(MeshemuHeader(...)/Raw(...))`` per packet versus the
  fast path (one Scapy template, ``struct.pack_into`` per packet);
- the fast path with ``sendto`` to a UDP sink on loopback as fast as it goes (full-size
  1428-byte packets and 100-byte packets), counted by the sink in another process;
- two real agents (:mod:`meshemu.traffic.agent`) on 127.0.0.1 and 127.0.0.2: a paced bulk
  flow at several rates, achieved rate and the receiver's packet count, and the sender's
  CPU use per Mbit/s.

No root needed. Run: ``.venv/bin/python benchmarks/bench_generator.py`` (about 40 s;
``--quick`` for ~15 s).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from scapy.packet import Raw

from meshemu.traffic import header as H
from meshemu.traffic.config import AgentConfig, StreamConfig
from meshemu.traffic.supervision import AGENT_FILES, AgentSupervisor

SINK_PORT = 47999


def bench_build(n: int) -> None:
    t0 = time.perf_counter()
    for i in range(n // 10):
        bytes(
            H.MeshemuHeader(
                flow_id=1, msg_id=2, seq=i, frag=i & 0xFFFF, n_frags=9, send_ns=time.time_ns()
            )
            / Raw(bytes(H.MAX_PAYLOAD))
        )
    scapy_rate = (n // 10) / (time.perf_counter() - t0)
    buf = H.template(1, 2, 9, 1000, H.MAX_PAYLOAD)
    t0 = time.perf_counter()
    for i in range(n):
        H.patch_fast(buf, i, i & 0xFFFF, 9, time.time_ns(), 0)
    fast_rate = n / (time.perf_counter() - t0)
    print(
        f"header build: Scapy {scapy_rate:,.0f} packets/s, fast path (template + "
        f"pack_into) {fast_rate:,.0f} packets/s ({fast_rate / scapy_rate:.0f}x)"
    )


def _sink(q: mp.Queue, duration_s: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", SINK_PORT))
    s.settimeout(0.5)
    q.put("ready")
    n = by = 0
    end = time.monotonic() + duration_s + 1.0
    while time.monotonic() < end:
        try:
            data = s.recv(2048)
        except TimeoutError:
            continue
        n += 1
        by += len(data)
    q.put((n, by))


def bench_send(payload: int, duration_s: float) -> None:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_sink, args=(q, duration_s))
    p.start()
    q.get(timeout=10)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    buf = H.template(1, 0, 1, payload, payload)
    mv = memoryview(buf)
    dst = ("127.0.0.1", SINK_PORT)
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + duration_s
    while True:
        for _ in range(256):
            H.patch_fast(buf, n, n & 0xFFFF, 1, time.time_ns(), 0)
            try:
                s.sendto(mv, dst)
            except BlockingIOError:
                pass
            n += 1
        if time.perf_counter() >= end:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    got, by = q.get(timeout=duration_s + 10)
    p.join()
    ip = len(buf) + H.IP_UDP_BYTES
    print(
        f"send loop, {ip}-byte IP packets to a loopback sink: {n / wall:,.0f} packets/s "
        f"= {n / wall * ip * 8 / 1e6:,.0f} Mbit/s of IP packets at {cpu / wall:.0%} of a "
        f"core ({n / cpu:,.0f} packets per CPU-second); the sink got {got / n:.1%}"
    )


def bench_agents(rates_mbps: list[float], seconds: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        for rate in rates_mbps:
            addrs = {"a": "127.0.0.1", "b": "127.0.0.2"}
            cfg_a = AgentConfig(
                node="a",
                bind="127.0.0.1",
                addrs=addrs,
                out_dir=d,
                control=True,
                streams=(
                    StreamConfig(
                        flow_id=1, dst="b", rate_bps=rate * 1e6, start_s=0, duration_s=seconds
                    ),
                ),
            )
            cfg_b = AgentConfig(node="b", bind="127.0.0.2", addrs=addrs, out_dir=d, control=True)
            sup = AgentSupervisor(Path(d))
            try:
                sup.start({"b": cfg_b, "a": cfg_a})
                start = time.time_ns() + 200_000_000
                end = start + int((seconds + 0.5) * 1e9)
                sup.go(start, end)
                # wait until the sender has finished, then stop both
                sup.wait_done(["a"], end / 1e9 + 3)
            finally:
                st = sup.stop(wait_s=10)
            rows = (Path(d) / "b.packets.csv").read_text().splitlines()
            if rows:
                t_first = int(rows[0].split(",")[7])
                t_last = int(rows[-1].split(",")[7])
                span = max(1e-9, (t_last - t_first) / 1e9)
                frames = (len(rows) - 1) * (H.MAX_IP_BYTES + H.ETH_BYTES) * 8 / span / 1e6
            else:
                frames = 0.0
            print(
                f"agent bulk flow at {rate:g} Mbit/s for {seconds:g} s: sent "
                f"{st['a'].sent_packets} packets, received {len(rows)}, achieved "
                f"{frames:.1f} Mbit/s (Ethernet frames)"
            )
            for suffix in AGENT_FILES:
                for node in "ab":
                    (Path(d) / f"{node}{suffix}").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    secs = 1.0 if args.quick else 3.0
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    bench_build(20_000 if args.quick else 100_000)
    bench_send(H.MAX_PAYLOAD, secs)
    bench_send(100 - H.IP_UDP_BYTES - H.HEADER_BYTES, secs)
    bench_agents([10, 100, 500] if args.quick else [10, 50, 100, 200, 500, 1000], secs)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"(agents' total CPU: {ru.ru_utime + ru.ru_stime:.1f} s)")


if __name__ == "__main__":
    main()

"""Benchmark of the data plane (root): the kernel path, the Python and the compiled delay line
side by side, in one run.

Paths measured:

- ``kernel``: a veth pair straight between two namespaces, offloads off as on the delay
  line's node ends (the physical ceiling of this host; no delay, no rate);
- ``python``: the Python delay line (1 worker);
- ``c1``, ``c2``: the compiled delay line with 1 and 2 workers;
- ``kernel-gso``, ``c1-gso``, ``c2-gso``: the same with the nodes' segmentation offloads on
  (the kernel's ceiling for TCP; the compiled delay line with GSO passthrough).

Figures:

- maximum forwarding rate of 64-byte and 1514-byte frames (a 1500-byte MTU packet),
  one direction and both directions at once (aggregate): raw frames from ``dlbench flood``
  (``benchmarks/tools/dlbench.c``, compiled here with gcc; a Python sender cannot offer
  1 Mpps), counted on the receiving interfaces while the flood runs; link delay 1 ms,
  unlimited rate; with the delay line's guard (ring drops, lateness p99) over the flood;
- per-hop delay error (receive time - send time - configured 5 ms, kernel receive
  timestamps, each probe stamped right before its own send) p50/p99/max at several rates up
  to half of that path's maximum 64-byte rate;
- iperf3 TCP over 3 hops (4 namespaces, routed) of 1 Gbit/s and of 10 Gbit/s links with 5 ms
  each (the kernel path: the same 3 hops of bare veth, no delay, no rate limit).

Prints the tables and writes them to ``benchmarks/results/dataplane-<UTC time>.json``.

Run: ``sudo .venv/bin/python benchmarks/bench_dataplane.py`` (about 4 minutes; ``--quick``
for about 1.5). Other developers' root tests share the machine: run it under
``flock /tmp/meshemu-root.lock``. The machine is shared and noisy: run it twice.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from doubles import Netns  # noqa: E402  (the namespace holder the tests use; no pytest)
from waits import wait_for  # noqa: E402

from meshemu.linux import commands, ifaces  # noqa: E402
from meshemu.live.shapers import (  # noqa: E402
    LinkEnds,
    LinkParams,
    UserspaceShaper,
    delayline_binary,
    veth_cmd,
)

HERE = Path(__file__).resolve().parent
TOOL_SRC = HERE / "tools" / "dlbench.c"
#: path name -> (delay-line implementation or None for the bare kernel path, workers)
#: path -> (delay line, workers, GSO): the ``-gso`` paths keep the nodes' segmentation
#: offloads (the kernel's: on its bare veths; the delay line's: GSO passthrough)
PATHS = {
    "kernel": (None, 0, False),
    "python": ("python", 1, False),
    "c1": ("c", 1, False),
    "c2": ("c", 2, False),
    "kernel-gso": (None, 0, True),
    "c1-gso": ("c", 1, True),
    "c2-gso": ("c", 2, True),
}
FLOOD_DELAY_S = 0.001
PROBE_DELAY_S = 0.005
HOP_DELAY_S = 0.005


def build_tool(tmp: Path) -> Path:
    out = tmp / "dlbench"
    subprocess.run(
        ["gcc", "-O2", "-std=c11", "-Wall", "-o", str(out), str(TOOL_SRC)],
        check=True,
        capture_output=True,
    )
    return out


def _uid() -> str:
    return f"bdp{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def pair(path: str, params: LinkParams) -> Iterator[tuple[Netns, Netns, UserspaceShaper | None]]:
    """Namespaces A and B joined by interfaces ``mxa`` / ``mxb`` over ``path``."""
    impl, workers, gso = PATHS[path]
    a, b = Netns("bench-a"), Netns("bench-b")
    s = None
    try:
        if impl is None:
            commands.batch("ip", [veth_cmd("mxa", a.pid, "mxb", b.pid)])
            ifaces.configure_interfaces(
                {a.pid: [("mxa", True, not gso)], b.pid: [("mxb", True, not gso)]}
            )
        else:
            s = UserspaceShaper(_uid(), workers=workers, delayline=impl, gso=gso)
            s.create_links([(LinkEnds(0, a.pid, "mxa", b.pid, "mxb"), params)])
        yield a, b, s
    finally:
        if s is not None:
            s.close()
        a.close()
        b.close()


def rx_packets(ns: Netns, ifname: str) -> int:
    for ln in ns.run(["cat", "/proc/net/dev"]).stdout.splitlines():
        name, _, rest = ln.partition(":")
        if name.strip() == ifname:
            return int(rest.split()[1])
    raise LookupError(ifname)


def _guard_summary(s: UserspaceShaper | None) -> dict:
    if s is None:
        return {}
    recs = s.worker_guard()
    links = [r for r in recs if not r.is_worker]
    return {
        "ring_drops": sum(r.frames for r in recs if r.is_worker),
        "lateness_p99_us": max((r.lateness_p99_ns for r in links), default=0) / 1e3,
        "lateness_max_us": max((r.lateness_max_ns for r in links), default=0) / 1e3,
    }


def max_rate(tool: Path, path: str, size: int, bidir: bool, seconds: float) -> dict:
    with pair(path, LinkParams(FLOOD_DELAY_S, 0)) as (a, b, s):
        ends = [(a, "mxa", b, "mxb")] + ([(b, "mxb", a, "mxa")] if bidir else [])
        _guard_summary(s)  # reset
        gens = [
            src.popen(
                [str(tool), "flood", sif, str(size), str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for src, sif, _, _ in ends
        ]
        # count on the receivers over the middle of the flood (no start or drain effects)
        time.sleep(min(1.0, seconds / 3))
        c0 = [rx_packets(dst, dif) for _, _, dst, dif in ends]
        t0 = time.perf_counter()
        time.sleep(seconds - 2 * min(1.0, seconds / 3))
        c1 = [rx_packets(dst, dif) for _, _, dst, dif in ends]
        t1 = time.perf_counter()
        outs = [json.loads(g.communicate(timeout=seconds + 30)[0]) for g in gens]
        fwd = sum(c1) - sum(c0)
        pps = fwd / (t1 - t0)
        res = {
            "path": path,
            "size": size,
            "bidir": bidir,
            "offered_pps": sum(o["sent"] / o["seconds"] for o in outs),
            "forwarded_pps": pps,
            "gbps": pps * size * 8 / 1e9,
            **_guard_summary(s),
        }
    return res


def delay_error(tool: Path, path: str, rates: list[int], seconds: float) -> list[dict]:
    out = []
    with pair(path, LinkParams(PROBE_DELAY_S, 0)) as (a, b, s):
        delay_ns = 0 if s is None else PROBE_DELAY_S * 1e9
        for rate in rates:
            rx = b.popen([str(tool), "rx", "mxb"], stdout=subprocess.PIPE, text=True)
            assert rx.stdout is not None
            rx.stdout.readline()  # "ready": bound and listening
            _guard_summary(s)
            r = a.run([str(tool), "tx", "mxa", "64", str(rate), str(seconds)], timeout=seconds + 60)
            sent = json.loads(r.stdout)["sent"]
            got = json.loads(rx.communicate(timeout=30)[0])
            out.append(
                {
                    "path": path,
                    "rate_pps": rate,
                    "n": got["n"],
                    "lost": sent - got["n"],
                    "p50_us": (got["p50_ns"] - delay_ns) / 1e3,
                    "p99_us": (got["p99_ns"] - delay_ns) / 1e3,
                    "max_us": (got["max_ns"] - delay_ns) / 1e3,
                    **_guard_summary(s),
                }
            )
    return out


@contextlib.contextmanager
def chain(path: str, rate_bps: float) -> Iterator[tuple[list[Netns], str, UserspaceShaper | None]]:
    """Four namespaces n0 - n1 - n2 - n3 routed over 3 hops; yields them, n3's address and
    the shaper (None on the kernel path)."""
    impl, workers, gso = PATHS[path]
    nss = [Netns(f"bench-{i}") for i in range(4)]
    s = None
    try:
        ends = [LinkEnds(i, nss[i].pid, f"e{i}a", nss[i + 1].pid, f"e{i}b") for i in range(3)]
        if impl is None:
            commands.batch("ip", [veth_cmd(e.if_a, e.pid_a, e.if_b, e.pid_b) for e in ends])
            jobs: dict[int, list[tuple[str, bool, bool]]] = {}
            for e in ends:
                jobs.setdefault(e.pid_a, []).append((e.if_a, True, not gso))
                jobs.setdefault(e.pid_b, []).append((e.if_b, True, not gso))
            ifaces.configure_interfaces(jobs)
        else:
            s = UserspaceShaper(_uid(), workers=workers, delayline=impl, gso=gso)
            s.create_links([(e, LinkParams(HOP_DELAY_S, rate_bps)) for e in ends])
        for i, e in enumerate(ends):
            nss[i].run(["ip", "addr", "add", f"10.80.{i}.1/24", "dev", e.if_a])
            nss[i + 1].run(["ip", "addr", "add", f"10.80.{i}.2/24", "dev", e.if_b])
        nss[0].run(["ip", "route", "add", "default", "via", "10.80.0.2"])
        nss[1].run(["ip", "route", "add", "10.80.2.0/24", "via", "10.80.1.2"])
        nss[2].run(["ip", "route", "add", "10.80.0.0/24", "via", "10.80.1.1"])
        nss[3].run(["ip", "route", "add", "default", "via", "10.80.2.1"])
        for ns in nss[1:3]:
            ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for ns in (nss[0], nss[3]):  # windows for 10 Gbit/s x 30 ms
            ns.run(["sysctl", "-qw", "net.ipv4.tcp_rmem=4096 131072 134217728"])
            ns.run(["sysctl", "-qw", "net.ipv4.tcp_wmem=4096 131072 134217728"])
        nss[0].run(["ping", "-c", "2", "-W", "2", "10.80.2.2"], check=False)
        yield nss, "10.80.2.2", s
    finally:
        if s is not None:
            s.close()
        for ns in nss:
            ns.close()


def iperf3(path: str, rate_bps: float, seconds: float) -> dict:
    with chain(path, rate_bps) as (nss, dst, s):
        _guard_summary(s)
        srv = nss[3].popen(
            ["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: ":5201" in nss[3].run(["ss", "-ltn"]).stdout, 5)
        r = nss[0].run(
            ["iperf3", "-c", dst, "-t", str(int(seconds)), "-O", "1", "-J"],
            check=False,
            timeout=seconds + 30,
        )
        srv.wait(timeout=10)
        end = json.loads(r.stdout)["end"]
        return {
            "path": path,
            "link_gbps": rate_bps / 1e9,
            "mbps": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": end["sum_sent"].get("retransmits", 0),
            # drops of the model (drop-tail queues), as opposed to the guard's ring drops
            "queue_drops": sum(c[2] for c in s.counters().values()) if s else 0,
            **_guard_summary(s),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter runs, fewer rates")
    p.add_argument("--paths", nargs="*", default=list(PATHS), choices=list(PATHS))
    p.add_argument("--skip", nargs="*", default=[], choices=["rate", "delay", "iperf"])
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: results/)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_dataplane needs root (network namespaces)")
    if delayline_binary() is None and any(PATHS[x][0] == "c" for x in args.paths):
        sys.exit("the compiled delay line is not built: run ./install.sh")
    logging.basicConfig(level=logging.WARNING)
    secs = 2.0 if args.quick else 4.0
    results: dict = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "max_rate": [],
        "delay_error": [],
        "iperf3": [],
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        tool = build_tool(Path(tmp))
        max64: dict[str, float] = {}
        if "rate" not in args.skip:
            print("\n== max forwarding rate (raw frames, link delay 1 ms, unlimited rate)")
            print(
                f"{'path':>10} {'frame':>6} {'dirs':>5} {'offered pps':>12} {'forwarded pps':>14} "
                f"{'Gbit/s':>7} {'ring drops':>10} {'late p99 us':>11}"
            )
            for size in (64, 1514):
                for bidir in (False, True):
                    for path in args.paths:
                        r = max_rate(tool, path, size, bidir, secs + 1)
                        results["max_rate"].append(r)
                        if size == 64:
                            max64[path] = max(max64.get(path, 0), r["forwarded_pps"])
                        print(
                            f"{path:>10} {size:>6} {'both' if bidir else 'one':>5} "
                            f"{r['offered_pps']:>12,.0f} {r['forwarded_pps']:>14,.0f} "
                            f"{r['gbps']:>7.2f} {r.get('ring_drops', ''):>10} "
                            f"{r.get('lateness_p99_us', float('nan')):>11.1f}",
                            flush=True,
                        )
        if "delay" not in args.skip:
            rates = (
                [1000, 20000, 100000, 250000]
                if args.quick
                else [1000, 10000, 50000, 100000, 200000, 300000, 400000]
            )
            print(
                f"\n== per-hop delay error ({PROBE_DELAY_S * 1e3:.0f} ms configured; "
                "kernel rx timestamps; up to half of each path's max 64-byte rate)"
            )
            print(
                f"{'path':>10} {'rate pps':>9} {'frames':>8} {'lost':>6} {'p50 us':>8} "
                f"{'p99 us':>8} {'max us':>9} {'late p99 us':>11}"
            )
            for path in args.paths:
                cap = max64.get(path, float("inf")) / 2
                use = [r for r in rates if r <= cap] or rates[:1]
                for r in delay_error(tool, path, use, secs):
                    results["delay_error"].append(r)
                    print(
                        f"{path:>10} {r['rate_pps']:>9} {r['n']:>8} {r['lost']:>6} "
                        f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['max_us']:>9.1f} "
                        f"{r.get('lateness_p99_us', float('nan')):>11.1f}",
                        flush=True,
                    )
        if "iperf" not in args.skip:
            print("\n== iperf3 TCP over 3 hops (5 ms per hop; kernel: bare veths, no delay)")
            print(
                f"{'path':>10} {'links':>9} {'goodput Mbit/s':>15} {'retransmits':>12} "
                f"{'queue drops':>11} {'ring drops':>10} {'late p99 us':>11}"
            )
            for rate in (1e9, 1e10):
                for path in args.paths:
                    r = iperf3(path, rate, secs + 2)
                    results["iperf3"].append(r)
                    label = f"{rate / 1e9:g} Gbit/s" if PATHS[path][0] else "bare"
                    print(
                        f"{path:>10} {label:>9} {r['mbps']:>15.1f} {r['retransmits']:>12} "
                        f"{r['queue_drops']:>11} {r.get('ring_drops', ''):>10} "
                        f"{r.get('lateness_p99_us', float('nan')):>11.1f}",
                        flush=True,
                    )
    results["seconds"] = time.perf_counter() - t_start
    out = args.out or HERE / "results" / f"dataplane-{results['when'][:19].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n(total {results['seconds']:.0f} s; figures in {out})")


if __name__ == "__main__":
    main()

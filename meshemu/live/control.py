"""What a routing protocol costs: its packets and bytes per link, its daemons' CPU and memory
(issue 11).

**Packets and bytes.** A daemon scheme names its own packets as a pcap filter expression
(:attr:`~meshemu.routing.daemons.DaemonScheme.control_filter`, tcpdump syntax: ``ip proto
89`` for OSPF, ``isis``, ``udp port 520``). It is compiled once by libpcap (through Scapy)
to classic BPF and attached to ``AF_PACKET`` sockets in every node, so the kernel hands over
only the protocol's frames, cut to 64 bytes; the frame's full length comes back through
``MSG_TRUNC``. Frames are counted as they *arrive* at a node, per interface, that is per
link and direction. The sockets are bound to the IPv4 and 802.2 LLC (IS-IS) ethertypes (and
IPv6 for schemes that keep it), never to ``ETH_P_ALL``: an all-protocol tap would make the
kernel clone every frame every node sends, slowing the data plane; these see only received
frames of their type, at the cost of one BPF run each. Frames a socket could not queue are
counted by the kernel (``PACKET_STATISTICS``) and reported as ``missed``: the counts are
then lower bounds.

``control.csv`` (:data:`meshemu.report.files.CONTROL`): per step, one row per link direction
that carried protocol frames since the previous row: ``t_s,a,b,packets,bytes`` (frames from
``a`` received by ``b``, Ethernet header included).

**CPU and memory.** Each step (every few steps for many nodes) the daemons' ``/proc/<pid>/
stat`` (user + system time) and ``statm`` (resident pages) are read:
``daemon_usage.csv`` (:data:`meshemu.report.files.DAEMON_USAGE`) has per step and daemon
name ``t_s,daemon,processes,cpu_s,cpu_pct,rss_mib`` (``cpu_pct``: of one core, over the
interval since the previous row). Before the daemons stop, ``daemons.csv`` records each
process: total CPU seconds, resident, proportional (``smaps_rollup``: shared pages split
among the processes that map them) and peak memory.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import EmulationError
from meshemu.linux import netns as nl
from meshemu.report.files import CONTROL, DAEMON_USAGE, DAEMONS

log = logging.getLogger(__name__)

SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_802_2 = 0x0004  # 802.3 frames with an LLC header (IS-IS)
#: Bytes of each frame copied to us (the length comes from MSG_TRUNC).
SNAP = 64
#: Read every daemon's /proc files at most this many times per step.
USAGE_READS_PER_STEP = 2000
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def compile_filter(expr: str) -> bytes:
    """A pcap filter expression as classic BPF instructions (``struct sock_filter[]``).

    Raises
    ------
    EmulationError
        libpcap rejected the expression (the message names it).
    """
    from scapy.arch.common import compile_filter as pcap_compile
    from scapy.data import DLT_EN10MB
    from scapy.error import Scapy_Exception

    try:
        prog = pcap_compile(expr, linktype=DLT_EN10MB)
    except (Scapy_Exception, OSError) as exc:
        raise EmulationError(
            f"control_filter {expr!r} is not a valid pcap filter expression ({exc}); use "
            f"tcpdump syntax, e.g. 'ip proto 89' or 'udp port 520'"
        ) from None
    return ctypes.string_at(prog.bf_insns, prog.bf_len * 8)


def _attach(sock: socket.socket, insns: bytes) -> None:
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(insns) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def packet_socket(insns: bytes, ethertype: int) -> socket.socket:
    """A packet socket of the calling thread's namespace, on every interface, that
    receives only frames of ``ethertype`` that the filter accepts (what was queued before
    the filter was attached is read and dropped)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    try:
        _attach(s, insns)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                s.recv(1)
    except BaseException:
        s.close()
        raise
    return s


class ControlCounters:
    """Counts a routing protocol's frames per link and direction in every node (see the
    module docstring).

    Parameters
    ----------
    pids : sequence of int
        A process in each node's namespace, by node id.
    plan : meshemu.live.addressing.AddressPlan
        Link ``k`` joins ``plan.a[k] < plan.b[k]`` over interfaces named ``plan.ifname(k)``.
    names : sequence of str
    expr : str
        The pcap filter expression.
    out : Path
        The run directory (``control.csv``).
    ipv6 : bool
        Also count IPv6 frames.
    """

    def __init__(
        self,
        pids: Sequence[int],
        plan: Any,
        names: Sequence[str],
        expr: str,
        out: Path,
        ipv6: bool = False,
    ):
        self.expr = expr
        self.names = list(names)
        self.a = np.asarray(plan.a, dtype=np.int64)
        self.b = np.asarray(plan.b, dtype=np.int64)
        self.link_of = {plan.ifname(k): k for k in range(plan.n_links)}
        insns = compile_filter(expr)
        self.counts = np.zeros((plan.n_links, 2, 2), dtype=np.int64)  # link, dir, (pk, B)
        self.last = self.counts.copy()
        self.base = self.counts.copy()
        self.missed = 0
        self.seen: set[tuple[int, int]] = set()
        self.t_first: float | None = None
        self.t_last = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        types = (ETH_P_IP, ETH_P_802_2, *((ETH_P_IPV6,) if ipv6 else ()))
        per_node: list[list[socket.socket]] = nl.in_namespaces(
            pids, lambda i, pid: [packet_socket(insns, t) for t in types], threads=4
        )
        self._socks = [s for socks in per_node for s in socks]
        self._node_of_fd = {s.fileno(): i for i, socks in enumerate(per_node) for s in socks}
        self._sock_of_fd = {s.fileno(): s for s in self._socks}
        self._f = open(out / CONTROL.name, "w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(CONTROL.columns)
        self.step_bytes: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="meshemu-control", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = select.poll()
        for s in self._socks:
            poller.register(s.fileno(), select.POLLIN)
        buf = bytearray(SNAP)
        flags = socket.MSG_TRUNC | socket.MSG_DONTWAIT
        while not self._stop.is_set():
            for fd, _ in poller.poll(100):
                node = self._node_of_fd[fd]
                sock = self._sock_of_fd[fd]
                got: list[tuple[int, int, int]] = []
                while len(got) < 4096:
                    try:
                        n, addr = sock.recvfrom_into(buf, SNAP, flags)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    if addr[2] == PACKET_OUTGOING:  # (never, on these sockets)
                        continue
                    k = self.link_of.get(addr[0])
                    if k is not None:  # arrived at node: from a to b is direction 0
                        got.append((k, 0 if self.b[k] == node else 1, n))
                if got:
                    with self._lock:
                        for k, d, n in got:
                            self.counts[k, d, 0] += 1
                            self.counts[k, d, 1] += n

    def _missed_now(self) -> int:
        missed = 0
        for s in self._socks:
            with contextlib.suppress(OSError):
                raw = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
                missed += struct.unpack("II", raw)[1]  # tp_packets, tp_drops (reset on read)
        return missed

    def poll(self, t_s: float) -> None:
        """Write the frames counted since the previous poll as rows at ``t_s``."""
        with self._lock:
            now = self.counts.copy()
        delta = now - self.last
        self.last = now
        self.missed += self._missed_now()
        if self.t_first is None:
            self.base = now.copy()  # the first convergence's frames: written, not rated
        ks, ds = np.nonzero(delta[:, :, 0])
        for k, d in zip(ks.tolist(), ds.tolist()):
            a, b = (self.a[k], self.b[k]) if d == 0 else (self.b[k], self.a[k])
            self._w.writerow(
                (t_s, self.names[a], self.names[b], int(delta[k, d, 0]), int(delta[k, d, 1]))
            )
            self.seen.add((k, d))
        if self.t_first is None:
            self.t_first = t_s
        else:
            self.step_bytes.append(int(delta[:, :, 1].sum()))
        self.t_last = t_s

    def summary(self, t0_s: float) -> dict[str, Any]:
        """Per link direction that carried any: packets/s and bytes/s (mean, p99), totals."""
        span = max(self.t_last - t0_s, 1e-9)
        dirs = sorted(self.seen)
        if not dirs:
            return {"filter": self.expr, "links": 0, "missed": self.missed}
        run = self.last - self.base
        per = np.array([run[k, d] for k, d in dirs], dtype=float) / span
        return {
            "filter": self.expr,
            "links": len(dirs),
            "seconds": round(span, 3),
            "packets": int(run[:, :, 0].sum()),
            "bytes": int(run[:, :, 1].sum()),
            "packets_per_link_s": round(float(per[:, 0].mean()), 3),
            "bytes_per_link_s": round(float(per[:, 1].mean()), 1),
            "bytes_per_link_s_p99": round(float(np.percentile(per[:, 1], 99)), 1),
            "bytes_step_max": max(self.step_bytes) if self.step_bytes else 0,
            "missed": self.missed,
        }

    def close(self) -> None:
        """Stop counting; close the sockets and the file. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        self._socks = []
        with contextlib.suppress(ValueError):
            self._f.close()


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def _proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE // 1024
    except (OSError, IndexError, ValueError):
        return None


def _proc_kib(pid: int, file: str, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class DaemonUsage:
    """The daemons' CPU time and memory over the run (see the module docstring).

    Parameters
    ----------
    procs : sequence of (node name, daemon name, pid)
    out : Path
        The run directory.
    """

    def __init__(self, procs: Sequence[tuple[str, str, int]], out: Path):
        self.procs = list(procs)
        self.out = out
        self.every = max(1, -(-len(self.procs) // USAGE_READS_PER_STEP))
        self.daemons = sorted({d for _, d, _ in self.procs})
        self._f = open(out / DAEMON_USAGE.name, "w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(DAEMON_USAGE.columns)
        self._polls = 0
        self._prev: tuple[float, dict[str, float]] | None = None
        self.final: list[tuple[str, str, int, float, int, int, int]] = []
        self.pct: list[float] = []
        self.cpu0 = 0.0

    def poll(self, t_s: float) -> None:
        """A row per daemon name (every :attr:`every`-th call)."""
        self._polls += 1
        if (self._polls - 1) % self.every:
            return
        now = time.monotonic()
        cpu: dict[str, float] = dict.fromkeys(self.daemons, 0.0)
        rss: dict[str, int] = dict.fromkeys(self.daemons, 0)
        alive: dict[str, int] = dict.fromkeys(self.daemons, 0)
        for _, d, pid in self.procs:
            c, r = _proc_cpu_s(pid), _proc_rss_kib(pid)
            if c is None or r is None:
                continue
            cpu[d] += c
            rss[d] += r
            alive[d] += 1
        prev = self._prev
        total_pct = 0.0
        for d in self.daemons:
            pct = float("nan")
            if prev is not None and now > prev[0]:
                pct = 100.0 * (cpu[d] - prev[1].get(d, 0.0)) / (now - prev[0])
                total_pct += pct
            self._w.writerow(
                (t_s, d, alive[d], round(cpu[d], 3), round(pct, 2), round(rss[d] / 1024, 2))
            )
        if prev is not None:
            self.pct.append(total_pct)
        else:
            self.cpu0 = sum(cpu.values())  # CPU spent before the clock started
        self._prev = (now, cpu)

    def finish(self) -> None:
        """``daemons.csv``: each process's CPU seconds and memory, read while it still runs
        (call before the daemons stop). Idempotent."""
        if self.final:
            return
        for node, d, pid in self.procs:
            c = _proc_cpu_s(pid)
            if c is None:
                continue
            self.final.append(
                (
                    node,
                    d,
                    pid,
                    round(c, 3),
                    _proc_rss_kib(pid) or 0,
                    _proc_kib(pid, "smaps_rollup", "Pss:") or 0,
                    _proc_kib(pid, "status", "VmHWM:") or 0,
                )
            )
        with open(self.out / DAEMONS.name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(DAEMONS.columns)
            w.writerows(self.final)

    def summary(self, n_nodes: int, seconds: float) -> dict[str, Any]:
        """CPU (% of one core, over the run) and memory per node."""
        if not self.final:
            return {"nodes": 0}
        cpu = sum(r[3] for r in self.final) - self.cpu0
        pss = sum(r[5] for r in self.final) / 1024
        rss = sum(r[4] for r in self.final) / 1024
        seconds = max(seconds, 1e-9)
        return {
            "nodes": n_nodes,
            "processes": len(self.final),
            "cpu_s_total": round(cpu, 2),
            "cpu_s_before_clock": round(self.cpu0, 2),
            "cpu_pct_total": round(100 * cpu / seconds, 1),
            "cpu_pct_per_node": round(100 * cpu / seconds / n_nodes, 3),
            "cpu_pct_step_p99": round(float(np.percentile(self.pct, 99)), 1) if self.pct else None,
            "pss_mib_total": round(pss, 1),
            "pss_mib_per_node": round(pss / n_nodes, 2),
            "rss_mib_per_node": round(rss / n_nodes, 2),
            "seconds": round(seconds, 3),
        }

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self._f.close()


class ControlMonitor:
    """Both of the above for one daemon-routed run: created once the daemons are ready,
    polled each step, closed before they stop."""

    def __init__(self, emu: Any, scheme: Any, out: Path):
        runner = emu.daemon_runner
        self.n_nodes = len(runner.nodes)
        self.t_start = time.monotonic()
        self.usage = DaemonUsage(
            [
                (runner.nodes[i].name, name, proc.pid)
                for i, plist in enumerate(runner.procs)
                for name, proc in plist
            ],
            out,
        )
        self.counters: ControlCounters | None = None
        self.t0_s = 0.0
        expr = getattr(scheme, "control_filter", None)
        try:
            if expr:
                self.counters = ControlCounters(
                    emu.pids, emu.plan, emu.names, expr, out, bool(getattr(scheme, "ipv6", 0))
                )
        except BaseException:
            self.usage.close()
            raise
        self._closed = False
        self.seconds = 0.0

    def start(self, t0_s: float) -> None:
        """The clock started at emulated ``t0_s``: count from here."""
        self.t0_s = t0_s
        self.t_start = time.monotonic()
        if self.counters is not None:
            self.counters.poll(t0_s)  # what came before (the first convergence) at t0
        self.usage.poll(t0_s)

    def poll(self, t_s: float) -> None:
        if self.counters is not None:
            self.counters.poll(t_s)
        self.usage.poll(t_s)

    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(``control``, ``daemon_usage``) of ``summary.json``."""
        ctl = (
            self.counters.summary(self.t0_s)
            if self.counters is not None
            else {"filter": None, "links": 0, "note": "the scheme names no control_filter"}
        )
        return ctl, self.usage.summary(self.n_nodes, self.seconds)

    def close(self) -> None:
        """Read the daemons' last figures, stop counting. Idempotent; call before the
        daemons stop."""
        if self._closed:
            return
        self._closed = True
        self.seconds = time.monotonic() - self.t_start
        try:
            self.usage.finish()
        finally:
            self.usage.close()
            if self.counters is not None:
                self.counters.close()

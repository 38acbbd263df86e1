"""Helpers for the tests inside the VM: network namespaces, ping, RTT assertions."""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

#: Tolerance of RTT checks. qemu -accel tcg emulates the CPU in software, on a host shared
#: with other jobs, so timers fire late by up to several ms (ping mdev of 5-10 ms was seen) and
#: now and then by tens of ms. netem never sends a packet early, so the lower bound is tight
#: (``RTT_EARLY_MS`` only covers clock rounding); the smallest RTT must be within
#: ``RTT_MIN_SLACK_MS`` of the expected one and the median within ``RTT_MEDIAN_SLACK_MS``.
RTT_EARLY_MS = 0.5
RTT_MIN_SLACK_MS = 10.0
RTT_MEDIAN_SLACK_MS = 25.0


# ---- namespaces ---------------------------------------------------------------------------
class Netns:
    """A network namespace held by a process; ``pid`` is what shapers take."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
        self.pid = self.holder.pid
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.pid}/ns/net") == own:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                self.close()
                raise RuntimeError("unshare -n did not make a network namespace")
            time.sleep(0.005)

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a command inside; the completed process (text output).

        With ``check``, a failure raises AssertionError quoting the command and its stderr.
        """
        p = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"`{' '.join(argv)}` in netns of pid {self.pid} failed "
                f"(exit {p.returncode}): {p.stderr.strip()}"
            )
        return p

    def links(self) -> list[str]:
        """Interface names in this namespace."""
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()]

    def qdisc(self, dev: str) -> dict:
        """The root qdisc of ``dev`` with statistics (``tc -s -j``), as a dict."""
        qs = json.loads(self.run(["tc", "-s", "-j", "qdisc", "show", "dev", dev]).stdout)
        roots = [q for q in qs if q.get("root")]
        assert len(roots) == 1, f"{dev}: expected one root qdisc, got {qs}"
        return roots[0]

    def qdiscs(self) -> list[dict]:
        return json.loads(self.run(["tc", "-j", "qdisc", "show"]).stdout or "[]")

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()


# ---- ping ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ping:
    sent: int
    received: int
    rtts_ms: list[float]
    output: str

    @property
    def min_ms(self) -> float:
        return min(self.rtts_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rtts_ms)


def ping(
    ns: Netns,
    dst: str,
    count: int = 20,
    interval_s: float = 0.05,
    size: int = 56,
    wait_s: float = 2.0,
) -> Ping:
    """``ping`` from ``ns``; never raises on loss."""
    p = ns.run(
        [
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval_s),
            "-s",
            str(size),
            "-W",
            str(wait_s),
            dst,
        ],
        check=False,
        timeout=count * interval_s + wait_s + 60,
    )
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", p.stdout)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return Ping(sent, received, rtts, p.stdout + p.stderr)


def assert_rtt(result: Ping, expected_ms: float) -> None:
    """Most pings came back, the smallest RTT is ``expected_ms`` (never less) within
    :data:`RTT_MIN_SLACK_MS`, and the median within :data:`RTT_MEDIAN_SLACK_MS`."""
    assert result.received >= 0.8 * result.sent > 0, result.output
    assert result.min_ms >= expected_ms - RTT_EARLY_MS, (
        f"RTT {result.min_ms} ms is below the {expected_ms} ms netem must impose\n{result.output}"
    )
    assert result.min_ms <= expected_ms + RTT_MIN_SLACK_MS, (
        f"smallest RTT {result.min_ms} ms, expected {expected_ms} (+{RTT_MIN_SLACK_MS}) ms\n"
        f"{result.output}"
    )
    assert result.median_ms <= expected_ms + RTT_MEDIAN_SLACK_MS, (
        f"median RTT {result.median_ms} ms, expected {expected_ms} "
        f"(+{RTT_MEDIAN_SLACK_MS}) ms\n{result.output}"
    )


# ---- qdiscs of many namespaces, read over rtnetlink ---------------------------------------
# Running `nsenter ... tc -j qdisc show` per namespace costs ~250 ms per process under qemu
# TCG (17 s for the 68 nodes of the default scenario), so a test sampling every step reads the
# kernel's qdisc dump directly: RTM_GETQDISC with NLM_F_DUMP from a thread that setns-es into
# each namespace. This decoder is the tests' own (linux/rtnetlink.h, linux/pkt_sched.h,
# net/sched/sch_netem.c netem_dump()); it shares nothing with meshemu's encoder, and
# test_netem_run.py cross-checks it against `tc -j` on a few namespaces.
RTM_GETQDISC = 38
RTM_NEWQDISC = 36
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCA_KIND, TCA_OPTIONS, TCA_STATS = 1, 2, 3
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64 = 6, 8, 10
U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class Qdisc:
    """A root qdisc as the kernel reports it (netem fields are None for other kinds)."""

    dev: str
    kind: str
    handle: int
    parent: int
    packets: int
    bytes: int
    drops: int
    delay_ns: int | None = None
    rate_bytes_per_s: int | None = None
    limit: int | None = None
    loss_u32: int | None = None


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = buf[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return out


def parse_qdisc_dump(data: bytes) -> tuple[list[tuple[int, Qdisc]], bool]:
    """(ifindex, Qdisc) of each RTM_NEWQDISC in ``data``; True once NLMSG_DONE was seen."""
    out, off, done = [], 0, False
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, off + 16)[0]
            raise OSError(err, f"RTM_GETQDISC dump: {os.strerror(err)}")
        elif mtype == RTM_NEWQDISC:
            _fam, ifindex, handle, parent, _info = struct.unpack_from("=BxxxiIII", data, off + 16)
            a = _attrs(data, off + 36, off + length)
            kind = a.get(TCA_KIND, b"").rstrip(b"\0").decode()
            nbytes, packets, drops = (
                struct.unpack_from("=QII", a[TCA_STATS]) if TCA_STATS in a else (0, 0, 0)
            )
            fields: dict = {}
            if kind == "netem" and TCA_OPTIONS in a:
                opt = a[TCA_OPTIONS]
                latency_ticks, limit, loss = struct.unpack_from("=III", opt)
                nested = _attrs(opt, 24, len(opt))
                rate = (
                    struct.unpack_from("=I", nested[TCA_NETEM_RATE])[0]
                    if TCA_NETEM_RATE in nested
                    else 0
                )
                if TCA_NETEM_RATE64 in nested:
                    rate = struct.unpack_from("=Q", nested[TCA_NETEM_RATE64])[0]
                delay = (
                    struct.unpack_from("=q", nested[TCA_NETEM_LATENCY64])[0]
                    if TCA_NETEM_LATENCY64 in nested
                    else latency_ticks << 6
                )
                fields = {
                    "delay_ns": delay,
                    "rate_bytes_per_s": rate,
                    "limit": limit,
                    "loss_u32": loss,
                }
            out.append((ifindex, Qdisc("", kind, handle, parent, packets, nbytes, drops, **fields)))
        off += (length + 3) & ~3
    return out, done


def _dump_qdiscs_here() -> dict[str, Qdisc]:
    """Root qdiscs of the calling thread's network namespace, by interface name."""
    import dataclasses

    names = {i: n for i, n in socket.if_nameindex()}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:
        s.bind((0, 0))
        req = struct.pack("=IHHII", 36, RTM_GETQDISC, 0x1 | 0x300, 1, 0) + struct.pack(
            "=BxxxiIII", 0, 0, 0, 0, 0
        )
        s.send(req)
        out: dict[str, Qdisc] = {}
        done = False
        while not done:
            items, done = parse_qdisc_dump(s.recv(1 << 20))
            for ifindex, q in items:
                if q.parent == U32_MAX and ifindex in names:
                    out[names[ifindex]] = dataclasses.replace(q, dev=names[ifindex])
    return out


def read_qdiscs(pids: Sequence[int]) -> dict[int, dict[str, Qdisc]]:
    """Root qdiscs by interface name, of the network namespace of each of ``pids``."""
    from meshemu.linux.netns import in_namespaces

    res = in_namespaces(list(pids), lambda i, pid: _dump_qdiscs_here(), threads=2)
    return dict(zip(pids, res))

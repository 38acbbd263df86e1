"""Helpers for the tests inside the VM: network namespaces, ping, RTT assertions."""

from __future__ import annotations

import json
import os
import re
import statistics
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

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        """Run a command inside; the completed process (text output).

        With ``check``, a failure raises AssertionError quoting the command and its stderr.
        """
        p = subprocess.run(["nsenter", "-t", str(self.pid), "-n", *argv],
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"`{' '.join(argv)}` in netns of pid {self.pid} failed "
                                 f"(exit {p.returncode}): {p.stderr.strip()}")
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


def ping(ns: Netns, dst: str, count: int = 20, interval_s: float = 0.05, size: int = 56,
         wait_s: float = 2.0) -> Ping:
    """``ping`` from ``ns``; never raises on loss."""
    p = ns.run(["ping", "-n", "-c", str(count), "-i", str(interval_s),
                "-s", str(size), "-W", str(wait_s), dst], check=False,
               timeout=count * interval_s + wait_s + 60)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", p.stdout)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return Ping(sent, received, rtts, p.stdout + p.stderr)


def assert_rtt(result: Ping, expected_ms: float) -> None:
    """Most pings came back, the smallest RTT is ``expected_ms`` (never less) within
    :data:`RTT_MIN_SLACK_MS`, and the median within :data:`RTT_MEDIAN_SLACK_MS`."""
    assert result.received >= 0.8 * result.sent > 0, result.output
    assert result.min_ms >= expected_ms - RTT_EARLY_MS, (
        f"RTT {result.min_ms} ms is below the {expected_ms} ms netem must impose\n"
        f"{result.output}")
    assert result.min_ms <= expected_ms + RTT_MIN_SLACK_MS, (
        f"smallest RTT {result.min_ms} ms, expected {expected_ms} (+{RTT_MIN_SLACK_MS}) ms\n"
        f"{result.output}")
    assert result.median_ms <= expected_ms + RTT_MEDIAN_SLACK_MS, (
        f"median RTT {result.median_ms} ms, expected {expected_ms} "
        f"(+{RTT_MEDIAN_SLACK_MS}) ms\n{result.output}")

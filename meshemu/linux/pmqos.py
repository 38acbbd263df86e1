"""A CPU latency QoS request: keep the CPUs out of idle states that are slow to leave.

While ``/dev/cpu_dma_latency`` is held open with a value written to it, the kernel keeps
every CPU out of idle states whose exit latency exceeds that value (the kernel's admin
guide, ``pm/cpuidle.rst``, "Power Management Quality of Service for CPUs"); closing it,
also by the process ending, withdraws the request, so nothing outlives its holder.

Why meshemu holds one (0 us) while a run shapes links: in a KVM guest with
``cpuidle-haltpoll`` and ``guest_halt_poll_ns`` 0 (the machine this was measured on), an
idle vCPU halts at once, and a timer wake-up from halt came up to milliseconds late. That
is the delay line's wake-up for a departure, and netem's qdisc watchdog. With the default
run's traffic the userspace delay line left its links with lateness p99 0.59 ms at the
median step (p90 4.2 ms); with the request, 0.03 ms (p90 0.06 ms). The cost: idle CPUs
poll instead of halting (no deep C-states; the host sees busy vCPUs) for as long as it is
held. ``MESHEMU_CPU_LATENCY=off`` leaves the machine's idle policy alone. The compiled
delay line holds its own (``meshemu/live/dlc/delayline.c``, ``hold_cpu_latency``).
"""

from __future__ import annotations

import os
import struct

PATH = "/dev/cpu_dma_latency"


class CpuLatencyRequest:
    """A held request of ``latency_us`` (:meth:`hold`; :meth:`release`, idempotent)."""

    def __init__(self, latency_us: int = 0):
        self.latency_us = int(latency_us)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self) -> bool:
        """Make the request (best effort: no device, no permission or
        ``MESHEMU_CPU_LATENCY=off``: nothing is held). Returns whether it is held."""
        if self._fd is not None:
            return True
        if os.environ.get("MESHEMU_CPU_LATENCY") == "off":
            return False
        try:
            fd = os.open(PATH, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            os.write(fd, struct.pack("=i", self.latency_us))
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def current_target_us() -> int | None:
    """The kernel's current CPU latency target (the smallest request; 2,000,000,000 when
    there is none), or None where it cannot be read. (Opening the device makes a request
    of that default value for as long as it is open, which changes nothing.)"""
    try:
        fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(struct.unpack("=i", os.read(fd, 4))[0])
    finally:
        os.close(fd)

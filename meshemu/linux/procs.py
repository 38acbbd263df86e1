"""Processes, read from ``/proc``: who runs, in which network namespace, started when; kill
and wait.

The one ``/proc`` scanner of meshemu: :mod:`meshemu.live.clean` finds a crashed run's node
shells and marked processes with it, the emulator its stray processes, and the userspace
shaper its delay-line workers (:func:`processes_running`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

#: Seconds between two looks while waiting for processes to go.
POLL_S = 0.005


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def scan_processes() -> dict[int, tuple[int, list[str]]]:
    """Every process: pid -> (network namespace inode, argv). Unreadable ones are skipped."""
    out: dict[int, tuple[int, list[str]]] = {}
    for pid in _pids():
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        out[pid] = (ino, [a.decode(errors="replace") for a in argv if a])
    return out


def processes_running(module: str) -> dict[int, list[str]]:
    """Processes whose argv holds ``module`` as one argument (e.g. ``python -m MODULE``):
    pid -> argv."""
    return {pid: argv for pid, (_, argv) in scan_processes().items() if module in argv}


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of ``inodes`` (this process excluded)."""
    me = os.getpid()
    out = []
    for pid in _pids():
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                out.append(pid)
        except OSError:
            continue
    return out


def _stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/PID/stat`` from field 3 (state) on, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot, ``/proc/PID/stat`` field 22), or None
    if there is no such process or it is a zombie. Tells a pid from a recycled one."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def parent_pid(pid: int) -> int | None:
    """Parent of ``pid`` (``/proc/PID/stat`` field 4), or None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def wait_gone(pids: Iterable[int], timeout_s: float = 5.0) -> list[int]:
    """Wait (up to ``timeout_s``) until every one of ``pids`` has exited; return those still
    there (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    left = list(pids)
    while left:
        left = [p for p in left if process_start_ticks(p) is not None]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    return left


def kill_and_wait(pids: Iterable[int], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL ``pids`` and wait (up to ``timeout_s``) until they are gone; return those
    that were killed."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    wait_gone(killed, timeout_s)
    return killed


def pids_with_env(name: str) -> dict[int, str]:
    """Processes whose environment holds variable ``name``: pid -> its value."""
    key = name.encode() + b"="
    me = os.getpid()
    out: dict[int, str] = {}
    for pid in _pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        i = env.find(b"\0" + key) + 1 if not env.startswith(key) else 0
        if i > 0 or env.startswith(key):
            end = env.find(b"\0", i + len(key))
            out[pid] = env[i + len(key) : end if end >= 0 else None].decode(errors="replace")
    return out

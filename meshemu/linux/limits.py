"""Process privileges and kernel resource limits: root, open files, ptys, memory.

Each check raises an error that names the limit, its value and how to raise it.
"""

from __future__ import annotations

import os
import resource

from meshemu.errors import EmulationError, NotRootError, ResourceError

#: Descriptors below this number are left to ``select()``-based code (Mininet's shells).
FD_FLOOR = 1024


def require_root(what: str = "meshemu run") -> None:
    """Raise :class:`NotRootError` unless running as root (effective uid 0)."""
    if os.geteuid() != 0:
        raise NotRootError(what)


def raise_nofile_limit(needed: int, what: str = "this emulation") -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit to at least ``needed`` (up to the hard limit).

    Returns
    -------
    int
        The new soft limit.

    Raises
    ------
    ResourceError
        The hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ResourceError(
            f"{what} needs {needed} open files but the hard limit "
            f"(ulimit -Hn) is {hard}; raise it (e.g. `ulimit -Hn {needed}` "
            f"as root, or LimitNOFILE= in a systemd unit)"
        )
    new = needed if hard == resource.RLIM_INFINITY else max(needed, min(hard, 1 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def room_for_fds(n: int, what: str = "this emulation") -> int:
    """Make sure ``n`` more descriptors can be opened above the highest one in use (and
    above :data:`FD_FLOOR`, where meshemu moves its long-lived sockets)."""
    try:
        highest = max(int(f) for f in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        highest = 0
    return raise_nofile_limit(max(highest, FD_FLOOR) + n + 64, what)


def ensure_ptys(n: int) -> None:
    """Make sure ``n`` more ptys can be opened (``kernel.pty.max``)."""
    try:
        with open("/proc/sys/kernel/pty/max") as f:
            cur = int(f.read())
        with open("/proc/sys/kernel/pty/nr") as f:
            used = int(f.read())
    except OSError:
        return
    want = used + n + 256
    if cur < want:
        try:
            with open("/proc/sys/kernel/pty/max", "w") as f:
                f.write(str(want))
        except OSError as exc:
            raise ResourceError(
                f"{n} nodes need {n} ptys but kernel.pty.max is {cur} with "
                f"{used} in use, and raising it failed: {exc}"
            ) from None


def mem_available_bytes() -> int:
    """``MemAvailable`` from ``/proc/meminfo``."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise EmulationError("no MemAvailable in /proc/meminfo")

"""Network namespaces: enter them from threads, identify them, write their sysctls.

The emulator has one network namespace per node (1,600 for a Starlink shell). Rather than a
process per namespace (``ip netns exec``, ``nsenter``), :func:`in_namespaces` runs a function
for each namespace in a thread that ``setns(2)``-es into it in turn (a thread's network
namespace is its own, ``man 2 setns``), so sysctls (``/proc/sys/net`` shows the calling
thread's namespace), ``if_nametoindex``, ioctls and new sockets act there. A netlink socket
stays bound to the namespace it was created in (:class:`meshemu.linux.netlink.Netlink`).

What else speaks to the kernel lives beside this module: :mod:`meshemu.linux.netlink` (the
rtnetlink codec and socket), :mod:`meshemu.linux.procs` (``/proc`` scans, killing),
:mod:`meshemu.linux.ifaces` (interface ioctls, link state), :mod:`meshemu.linux.commands`
(``ip``/``tc``) and :mod:`meshemu.linux.limits`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from meshemu.errors import CommandError, EmulationError
from meshemu.linux.limits import FD_FLOOR

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``setns(2)``'s namespace type for network namespaces (``linux/sched.h``).
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def high_fd(fd: int) -> int:
    """Move descriptor ``fd`` to the lowest free number >= :data:`FD_FLOOR` (close-on-exec);
    return the new number.

    Long-lived per-node descriptors (ptys, netlink sockets) go there, so that code still
    using ``select()`` (limited to descriptors < FD_SETSIZE = 1024) keeps working in a
    process that holds thousands of them.
    """
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    os.close(fd)
    return new


def setns(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open as ``fd``.

    Parameters
    ----------
    fd : int
        An open ``/proc/PID/ns/net`` (or ``/run/netns/NAME``).
    what : str
        What it is, for the error message.

    Raises
    ------
    CommandError
        ``setns(2)`` failed (``cmd`` is ``setns(WHAT)``).
    """
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise CommandError(f"setns({what})", e, os.strerror(e))


def setns_pid(pid: int) -> None:
    """Move the calling thread into the network namespace of process ``pid``.

    Raises
    ------
    EmulationError
        The process (and so its namespace) is gone.
    CommandError
        ``setns(2)`` failed.
    """
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except OSError as exc:
        raise EmulationError(f"namespace of process {pid} is gone ({exc.strerror})") from None
    try:
        setns(fd, f"/proc/{pid}/ns/net")
    finally:
        os.close(fd)


def netns_inode(pid: int) -> int:
    """Inode number of the network namespace of process ``pid`` (identifies the namespace)."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def in_namespaces(pids: Sequence[int], fn: Callable[[int, int], T], threads: int = 1) -> list[T]:
    """Call ``fn(i, pids[i])`` inside the network namespace of each ``pids[i]``.

    Each worker thread ``setns``-es into one namespace after another (its own namespace is
    restored at the end, and the thread ends), so ``fn`` can write ``/proc/sys/net/...``,
    call :func:`socket.if_nametoindex` or create sockets there.

    Parameters
    ----------
    pids : sequence of int
        A process in each namespace (e.g. a node's shell).
    fn : callable(i, pid) -> T
    threads : int
        Worker threads; namespaces are dealt out round-robin.

    Returns
    -------
    list
        ``fn``'s results in the order of ``pids``.

    Raises
    ------
    Exception
        The first exception any call raised (the others still ran to their end or failed).
    """
    results: list[Any] = [None] * len(pids)
    errors: list[BaseException] = []
    threads = max(1, min(threads, len(pids)))

    def work(start: int) -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            for i in range(start, len(pids), threads):
                if errors:
                    return
                setns_pid(pids[i])
                results[i] = fn(i, pids[i])
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
        finally:
            try:
                setns(own, "own namespace")
            finally:
                os.close(own)

    workers = [
        threading.Thread(target=work, args=(k,), name=f"meshemu-netns-{k}") for k in range(threads)
    ]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    if errors:
        raise errors[0]
    return results


#: ``fsopen(2)``, ``fsconfig(2)``, ``fsmount(2)`` (Linux 5.2; the same numbers on every
#: architecture but alpha, ``include/uapi/asm-generic/unistd.h``).
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC, _FSCONFIG_CMD_CREATE, _FSMOUNT_CLOEXEC = 1, 6, 1


def _detached_proc() -> int:
    """A new procfs instance mounted nowhere (``fsopen``/``fsmount``): its root's fd.

    The mount lives as long as a descriptor refers into it and is in no mount namespace,
    so nothing needs unmounting, even after a crash.

    Raises
    ------
    OSError
        The kernel has no new mount API (before 5.2) or refuses the mount.
    """
    # (syscall(2) reads its arguments as longs: pass them as such, not as C ints)
    arg, null = ctypes.c_long, ctypes.c_void_p()
    fs = _libc.syscall(arg(_SYS_FSOPEN), ctypes.c_char_p(b"proc"), arg(_FSOPEN_CLOEXEC))
    if fs < 0:
        raise OSError(ctypes.get_errno(), "fsopen(proc)")
    try:
        cmd = arg(_FSCONFIG_CMD_CREATE)
        if _libc.syscall(arg(_SYS_FSCONFIG), arg(fs), cmd, null, null, arg(0)) < 0:
            raise OSError(ctypes.get_errno(), "fsconfig(proc)")
        mnt = _libc.syscall(arg(_SYS_FSMOUNT), arg(fs), arg(_FSMOUNT_CLOEXEC), arg(0))
        if mnt < 0:
            raise OSError(ctypes.get_errno(), "fsmount(proc)")
        return int(mnt)
    finally:
        os.close(fs)


class ProcSys:
    """Writes sysctls in many network namespaces without the cost growing with their number.

    Each namespace has its own dentries for ``/proc/sys/net/...``, with the same names under
    the same parents as every other namespace's, so they share dcache hash chains, and each
    lookup walks the entries of every namespace touched so far in that procfs (twice: the
    RCU walk fails, ``proc_sys_revalidate``, and the reference walk repeats it;
    ``fs/proc/proc_sysctl.c``: ``proc_sys_compare`` rejects another namespace's entry only
    after taking a spinlock). Through ``/proc``, writing 8 sysctls in each of 4,400
    namespaces took 33 s here (7.6 ms per namespace, quadratic in their number). A fresh
    procfs instance has dentries of its own, so this writer looks up through a detached
    procfs mount (:func:`_detached_proc`) and replaces it by a new one every
    ``per_mount`` namespaces: 1.1 s for the same 4,400 (0.25 ms each, flat). Where the
    kernel has no new mount API, or refuses it, ``/proc`` serves (as before, just slower).

    What it writes follows the calling thread's network namespace, as ``/proc/sys/net``
    does. Safe to share between threads; use it as a context manager (or :meth:`close`).

    Parameters
    ----------
    per_mount : int
        Namespaces written through one procfs instance before it is replaced.
    detached : bool
        Look up through detached procfs instances (False: through ``/proc``). It turns False
        by itself where the kernel refuses them.
    """

    def __init__(self, per_mount: int = 64, detached: bool = True) -> None:
        if per_mount < 1:
            raise ValueError(f"per_mount must be at least 1, got {per_mount}")
        self.per_mount = per_mount
        self._lock = threading.Lock()
        self._root: int | None = None
        self._uses = 0
        self.detached = detached

    def _take_root(self) -> int:
        """A descriptor of the procfs root for one namespace's writes (the caller closes it)."""
        with self._lock:
            if self._root is None or self._uses >= self.per_mount:
                if self._root is not None:
                    os.close(self._root)
                    self._root = None
                if self.detached:
                    try:
                        self._root = _detached_proc()
                    except OSError as exc:
                        log.debug("no detached procfs (%s); writing sysctls via /proc", exc)
                        self.detached = False
                if self._root is None:
                    self._root = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._uses = 0
            self._uses += 1
            return os.dup(self._root)

    def write(self, values: dict[str, str | int]) -> None:
        """Write sysctls (keys like ``net.ipv4.ip_forward``) of the calling thread's
        network namespace.

        Every directory on the way is looked up once, one component at a time from its
        parent (``openat``), and each file is opened relative to its directory.

        Raises
        ------
        CommandError
            A write failed (``cmd`` is the equivalent ``sysctl -w``).
        """
        root = self._take_root()
        dirs: dict[tuple[str, ...], int] = {}

        def dir_fd(parts: tuple[str, ...]) -> int:
            fd = dirs.get(parts)
            if fd is None:
                if len(parts) > 1:
                    parent, name = dir_fd(parts[:-1]), parts[-1]
                else:
                    parent, name = root, "sys/" + parts[0]
                fd = dirs[parts] = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
            return fd

        try:
            for key, value in values.items():
                parts = tuple(key.split("."))
                try:
                    if len(parts) < 2 or not all(parts):
                        raise OSError(errno.EINVAL, "not a sysctl name like net.ipv4.ip_forward")
                    fd = os.open(parts[-1], os.O_WRONLY, dir_fd=dir_fd(parts[:-1]))
                    try:
                        os.write(fd, f"{value}\n".encode())
                    finally:
                        os.close(fd)
                except OSError as exc:
                    raise CommandError(
                        f"sysctl -w {key}={value}", exc.errno or 1, exc.strerror or str(exc)
                    ) from None
        finally:
            for fd in dirs.values():
                os.close(fd)
            os.close(root)

    def close(self) -> None:
        """Drop the current procfs instance (it is unmounted with its last descriptor)."""
        with self._lock:
            if self._root is not None:
                os.close(self._root)
                self._root = None

    def __enter__(self) -> ProcSys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_sysctls(values: dict[str, str | int]) -> None:
    """Write sysctls of the calling thread's network namespace (keys like
    ``net.ipv4.ip_forward``), through ``/proc``; for many namespaces use :class:`ProcSys`.

    Raises
    ------
    CommandError
        A write failed (``cmd`` is the equivalent ``sysctl -w``).
    """
    with ProcSys(detached=False) as writer:
        writer.write(values)

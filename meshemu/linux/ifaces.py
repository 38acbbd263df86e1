"""Network interfaces: bring them up, switch offloads off, read MACs and link state.

ioctls on a socket opened inside the interface's namespace (``SIOCGIFFLAGS``/
``SIOCSIFFLAGS``, the legacy ``SIOCETHTOOL`` set-feature commands, ``SIOCGIFHWADDR``) and an
``RTM_GETLINK`` dump (:func:`links_not_running`): no ``ip``/``ethtool`` process per
interface. :func:`configure_interfaces` does a whole batch of namespaces from one thread.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import threading

from meshemu.errors import CommandError
from meshemu.linux import netlink
from meshemu.linux.netns import setns_pid

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFHWADDR = 0x8927
SIOCETHTOOL = 0x8946
IFF_UP = 0x1
#: Legacy ethtool "set one feature" commands: tx checksumming, TSO, GSO
#: (``linux/ethtool.h``; ``ethtool -K IF tx off tso off gso off``).
ETHTOOL_STXCSUM = 0x17
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24
_OFFLOADS = {
    "ETHTOOL_STXCSUM": ETHTOOL_STXCSUM,
    "ETHTOOL_STSO": ETHTOOL_STSO,
    "ETHTOOL_SGSO": ETHTOOL_SGSO,
}


def ethtool_set(sock: socket.socket, ifname: str, cmd: int, value: int) -> None:
    """One legacy ethtool set command (``struct ethtool_value``) on ``ifname``."""
    buf = ctypes.create_string_buffer(struct.pack("<II", cmd, value))
    ifr = struct.pack("16sQ16x", ifname.encode(), ctypes.addressof(buf))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)


def offload_off(sock: socket.socket, ifname: str) -> None:
    """Switch tx checksum, TSO and GSO offload off on ``ifname``.

    Raises
    ------
    CommandError
        An ioctl failed (``cmd`` names it and the interface).
    """
    for what, cmd in _OFFLOADS.items():
        try:
            ethtool_set(sock, ifname, cmd, 0)
        except OSError as exc:
            raise CommandError(
                f"ioctl {what} {ifname}", exc.errno or 1, exc.strerror or str(exc)
            ) from None


def set_up(sock: socket.socket, ifname: str) -> None:
    """Set ``IFF_UP`` on ``ifname`` (``ip link set IF up``); OSError if that fails."""
    ifr = struct.pack("16sh22x", ifname.encode(), 0)
    flags = struct.unpack_from("16sh", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifr))[1]
    fcntl.ioctl(
        sock.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", ifname.encode(), flags | IFF_UP)
    )


def if_hwaddr(sock: socket.socket, name: str) -> bytes:
    """MAC address of interface ``name`` in ``sock``'s namespace (``SIOCGIFHWADDR``)."""
    res = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", name.encode()))
    return res[18:24]


def configure_interfaces(jobs: dict[int, list[tuple[str, bool, bool]]]) -> None:
    """Bring interfaces up and/or switch their checksum and segmentation offload off.

    Works with ioctls on a socket opened inside each namespace, from one short-lived thread
    that ``setns``-es into each namespace in turn (a thread's network namespace is its own),
    so no process is spawned per namespace or per interface.

    Parameters
    ----------
    jobs : dict pid -> list of (ifname, bring_up, offload_off)
        pid: any process in the namespace.

    Raises
    ------
    CommandError
        An interface is missing or an ioctl failed (cmd names the ioctl and interface).
    """
    result: list[BaseException] = []

    def work() -> None:
        try:
            for pid, items in jobs.items():
                setns_pid(pid)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    for ifname, up, off in items:
                        try:
                            if off:
                                offload_off(s, ifname)
                            if up:
                                set_up(s, ifname)
                        except CommandError as exc:
                            raise CommandError(
                                f"{exc.cmd} (netns of pid {pid})", exc.returncode, exc.stderr
                            ) from None
                        except OSError as exc:
                            raise CommandError(
                                f"ioctl SIOCGIFFLAGS/SIOCSIFFLAGS {ifname} (netns of pid {pid})",
                                exc.errno or 1,
                                exc.strerror or str(exc),
                            ) from None
        except BaseException as exc:  # re-raised in the calling thread
            result.append(exc)

    th = threading.Thread(target=work, name="meshemu-netns-config")
    th.start()
    th.join()
    if result:
        raise result[0]


def links_not_running() -> list[str]:
    """Names of the interfaces in the calling thread's namespace that are administratively
    up but not operationally up (``lo`` aside).

    A veth comes up at once, but the kernel attaches its queueing discipline (and sets the
    operational state) from the deferred link-watch work, up to a second or more later;
    until then it drops every packet sent through it.
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_ROUTE) as s:
        links = netlink.dump(s, netlink.link_dump_request(), netlink.parse_link_dump)
    return [
        name
        for _, flags, name, oper in links
        if flags & netlink.IFF_UP
        and not flags & netlink.IFF_LOOPBACK
        and oper != netlink.IF_OPER_UP
    ]


def softnet_dropped(text: str | None = None) -> int:
    """Packets the kernel dropped because a CPU's input backlog was full (the second column
    of ``/proc/net/softnet_stat``, hex, summed over CPUs; netdev_max_backlog overflow): veth
    traffic arriving faster than the host processes it. Host-wide, cumulative since boot."""
    if text is None:
        try:
            with open("/proc/net/softnet_stat") as f:
                text = f.read()
        except OSError:
            return 0
    return sum(
        int(cols[1], 16) for cols in (ln.split() for ln in text.splitlines()) if len(cols) > 1
    )

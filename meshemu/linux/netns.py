"""Configure many network namespaces fast: rtnetlink in bulk, from threads, no subprocesses.

The emulator has one network namespace per node (1,600 for a Starlink shell) and installs
``N x N`` routes (2.5 million). Doing that with ``ip`` commands (a process per namespace) or
Mininet's ``node.cmd`` (a shell round trip per command) costs minutes; here it costs seconds:

* :func:`in_namespaces` runs a function for each namespace in a thread that ``setns(2)``-es
  into it in turn (a thread's network namespace is its own, ``man 2 setns``), so sysctls
  (``/proc/sys/net`` shows the calling thread's namespace) and ``if_nametoindex`` act there.
* :class:`Netlink` is a raw ``NETLINK_ROUTE`` socket created inside a node's namespace and
  kept open for the whole run. A netlink socket stays bound to the namespace it was created
  in, so later messages need no ``setns``.
* Route messages are built for all ``(node, destination)`` pairs at once as a numpy record
  array (:data:`ROUTE_DTYPE`, one 60-byte ``RTM_NEWROUTE`` per record, laid out as in
  ``linux/netlink.h`` and ``linux/rtnetlink.h``) and sent many per ``sendmsg``, without
  ``NLM_F_ACK``: the kernel answers only failures, and a final ``NLMSG_NOOP`` with
  ``NLM_F_ACK`` marks the end of a batch (:meth:`Netlink.send_batch`).

pyroute2 encodes each message in Python (tens of microseconds per route); that is fine for a
handful of messages but not for millions, so it is not used on this path.

Every route meshemu installs carries ``proto`` :data:`RTPROT_MESHEMU`
(``ip route show proto static`` inside a node lists them).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from meshemu.errors import CommandError, EmulationError

log = logging.getLogger(__name__)

T = TypeVar("T")

# ---- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h) ----------------------
NETLINK_ROUTE = 0
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
NLMSGERR_ATTR_MSG = 1
NLM_F_ACK_TLVS = 0x200
NLM_F_CAPPED = 0x100

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWNEIGH = 28
RTM_NEWROUTE = 24
RTM_DELROUTE = 25

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15

IFA_ADDRESS = 1
IFA_LOCAL = 2

NDA_DST = 1
NDA_LLADDR = 2
NUD_PERMANENT = 0x80

RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
IFF_UP = 0x1

#: ``rtm_protocol`` of every route meshemu installs: RTPROT_STATIC (``proto static``).
RTPROT_MESHEMU = 4

#: Bytes per ``sendmsg``: below the default ``net.core.wmem_default`` (212,992) that bounds a
#: netlink message buffer (``netlink_sendmsg``: len > sk_sndbuf - 32 -> EMSGSIZE).
SEND_CHUNK_BYTES = 160_000

_HDR = struct.Struct("=IHHII")       # nlmsghdr: len, type, flags, seq, pid
_RTA = struct.Struct("=HH")          # rtattr: len, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_IFADDR = struct.Struct("=BBBBi")    # family prefixlen flags scope index
_IFINFO = struct.Struct("=BxHiII")   # family type index flags change
_RTNH = struct.Struct("=HBBi")       # rtnexthop: len flags hops ifindex
_NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family ifindex state flags type


def _rta_hdr(rta_type: int, payload_len: int) -> int:
    """An rtattr header (len, type) read as one native uint32."""
    return (4 + payload_len) | (rta_type << 16)


#: One ``RTM_NEWROUTE`` for ``dst/32 via gw dev oif src prefsrc`` (60 bytes, native order
#: except the IPv4 addresses, which are big-endian as on the wire).
ROUTE_DTYPE = np.dtype([
    ("len", "=u4"), ("type", "=u2"), ("flags", "=u2"), ("seq", "=u4"), ("pid", "=u4"),
    ("family", "u1"), ("dst_len", "u1"), ("src_len", "u1"), ("tos", "u1"),
    ("table", "u1"), ("protocol", "u1"), ("scope", "u1"), ("rtype", "u1"), ("rflags", "=u4"),
    ("dst_rta", "=u4"), ("dst", ">u4"),
    ("gw_rta", "=u4"), ("gw", ">u4"),
    ("oif_rta", "=u4"), ("oif", "=i4"),
    ("src_rta", "=u4"), ("src", ">u4"),
])
assert ROUTE_DTYPE.itemsize == 60

#: One ``RTM_DELROUTE`` for ``dst/32`` in the main table, meshemu's protocol (36 bytes).
DELROUTE_DTYPE = np.dtype([
    ("len", "=u4"), ("type", "=u2"), ("flags", "=u2"), ("seq", "=u4"), ("pid", "=u4"),
    ("family", "u1"), ("dst_len", "u1"), ("src_len", "u1"), ("tos", "u1"),
    ("table", "u1"), ("protocol", "u1"), ("scope", "u1"), ("rtype", "u1"), ("rflags", "=u4"),
    ("dst_rta", "=u4"), ("dst", ">u4"),
])
assert DELROUTE_DTYPE.itemsize == 36


# ---- message builders (pure) --------------------------------------------------------------
def route_records(dst: np.ndarray, gw: np.ndarray, oif: np.ndarray, src: np.ndarray,
                  seq: np.ndarray) -> np.ndarray:
    """``RTM_NEWROUTE`` (create or replace) messages, one per element, as records.

    Parameters
    ----------
    dst, gw, src : ndarray of uint32
        Destination (a /32), gateway and preferred source, as host-order integers.
    oif : ndarray of int
        Outgoing interface index.
    seq : ndarray of uint32
        Sequence numbers (errors come back with the failed message's sequence number).

    Returns
    -------
    ndarray of :data:`ROUTE_DTYPE`
        ``rec.tobytes()`` is ready for ``sendmsg``.
    """
    r = _route_msgs(ROUTE_DTYPE, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
                    dst, seq)
    r["rflags"] = RTNH_F_ONLINK
    r["gw_rta"] = _rta_hdr(RTA_GATEWAY, 4)
    r["gw"] = gw
    r["oif_rta"] = _rta_hdr(RTA_OIF, 4)
    r["oif"] = oif
    r["src_rta"] = _rta_hdr(RTA_PREFSRC, 4)
    r["src"] = src
    return r


def delroute_records(dst: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """``RTM_DELROUTE`` messages for ``dst/32`` (meshemu's routes in the main table)."""
    return _route_msgs(DELROUTE_DTYPE, RTM_DELROUTE, NLM_F_REQUEST, dst, seq)


def _route_msgs(dtype: np.dtype, msg_type: int, flags: int, dst: np.ndarray,
                seq: np.ndarray) -> np.ndarray:
    """Route messages of ``dtype`` with the header and ``RTA_DST`` filled in: one per
    ``dst/32``, meshemu's protocol, the main table."""
    r = np.zeros(len(dst), dtype=dtype)
    r["len"] = dtype.itemsize
    r["type"] = msg_type
    r["flags"] = flags
    r["seq"] = seq
    r["family"] = socket.AF_INET
    r["dst_len"] = 32
    r["table"] = RT_TABLE_MAIN
    r["protocol"] = RTPROT_MESHEMU
    r["scope"] = RT_SCOPE_UNIVERSE
    r["rtype"] = RTN_UNICAST
    r["dst_rta"] = _rta_hdr(RTA_DST, 4)
    r["dst"] = dst
    return r


def _ip4(addr: int) -> bytes:
    return int(addr).to_bytes(4, "big")


def _rta(rta_type: int, payload: bytes) -> bytes:
    pad = (-len(payload)) % 4
    return _RTA.pack(4 + len(payload), rta_type) + payload + b"\0" * pad


def _msg(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), msg_type, flags, seq, 0) + body


def multipath_route_msg(dst: int, hops: Sequence[tuple[int, int]], src: int, seq: int) -> bytes:
    """One ``RTM_NEWROUTE`` (create or replace) for ``dst/32`` with several next hops.

    Parameters
    ----------
    dst, src : int
        Destination and preferred source (host-order IPv4 integers).
    hops : sequence of (gateway, ifindex)
        Equal-weight next hops (``RTA_MULTIPATH`` of ``rtnexthop`` + ``RTA_GATEWAY``).
    seq : int
    """
    nh = b""
    for gw, oif in hops:
        gw_attr = _rta(RTA_GATEWAY, _ip4(gw))
        nh += _RTNH.pack(_RTNH.size + len(gw_attr), RTNH_F_ONLINK, 0, int(oif)) + gw_attr
    body = (_RTMSG.pack(socket.AF_INET, 32, 0, 0, RT_TABLE_MAIN, RTPROT_MESHEMU,
                        RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + _rta(RTA_DST, _ip4(dst)) + _rta(RTA_PREFSRC, _ip4(src))
            + _rta(RTA_MULTIPATH, nh))
    return _msg(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def addr_msg(ifindex: int, addr: int, prefixlen: int, seq: int,
             peer: int | None = None) -> bytes:
    """``RTM_NEWADDR`` (create or replace) putting ``addr/prefixlen`` on ``ifindex``."""
    body = (_IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, ifindex)
            + _rta(IFA_LOCAL, _ip4(addr)) + _rta(IFA_ADDRESS, _ip4(addr if peer is None
                                                                      else peer)))
    return _msg(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def neigh_msg(ifindex: int, addr: int, lladdr: bytes, seq: int) -> bytes:
    """``RTM_NEWNEIGH`` (create or replace) for a permanent neighbour entry: ``addr`` is at
    MAC ``lladdr`` on ``ifindex`` (``ip neigh replace ADDR lladdr MAC dev IF nud permanent``)."""
    body = (_NDMSG.pack(socket.AF_INET, ifindex, NUD_PERMANENT, 0, 0)
            + _rta(NDA_DST, _ip4(addr)) + _rta(NDA_LLADDR, bytes(lladdr)))
    return _msg(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def if_hwaddr(sock: socket.socket, name: str) -> bytes:
    """MAC address of interface ``name`` in ``sock``'s namespace (``SIOCGIFHWADDR``)."""
    import fcntl
    res = fcntl.ioctl(sock.fileno(), 0x8927, struct.pack("16s16x", name.encode()))
    return res[18:24]


def link_up_msg(ifindex: int, seq: int) -> bytes:
    """``RTM_NEWLINK`` setting ``IFF_UP`` on ``ifindex`` (``ip link set IF up``)."""
    return _msg(RTM_NEWLINK, NLM_F_REQUEST, seq,
                _IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, IFF_UP, IFF_UP))


def parse_errors(data: bytes) -> list[tuple[int, int, str]]:
    """``(seq, errno, extack message)`` of every ``NLMSG_ERROR`` with a non-zero error in
    ``data`` (acks, error 0, come back as errno 0)."""
    out = []
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, flags, seq, _ = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            break
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, off + _HDR.size)[0]
            text = ""
            if flags & NLM_F_ACK_TLVS:
                # the echoed request: its header only when capped, else all of it
                inner_len = _HDR.unpack_from(data, off + _HDR.size + 4)[0]
                a = off + _HDR.size + 4 + (_HDR.size if flags & NLM_F_CAPPED else inner_len)
                a = (a + 3) & ~3
                end = off + length
                while a + 4 <= end:
                    alen, atype = _RTA.unpack_from(data, a)
                    if alen < 4:
                        break
                    if atype == NLMSGERR_ATTR_MSG:
                        text = data[a + 4:a + alen].rstrip(b"\0").decode(errors="replace")
                    a += (alen + 3) & ~3
            out.append((seq, err, text))
        off += (length + 3) & ~3
    return out


# ---- namespaces ---------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


#: Long-lived per-node descriptors (ptys, netlink sockets) are moved to this number or above,
#: so that code still using ``select()`` (limited to descriptors < FD_SETSIZE = 1024) keeps
#: working in a process that holds thousands of them.
from meshemu.linux.limits import FD_FLOOR  # noqa: E402


def high_fd(fd: int) -> int:
    """Move descriptor ``fd`` to the lowest free number >= :data:`FD_FLOOR` (close-on-exec);
    return the new number."""
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    os.close(fd)
    return new


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise CommandError(f"setns({what})", e, os.strerror(e))


def netns_inode(pid: int) -> int:
    """Inode number of the network namespace of process ``pid`` (identifies the namespace)."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def in_namespaces(pids: Sequence[int], fn: Callable[[int, int], T],
                  threads: int = 1) -> list[T]:
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
    results: list = [None] * len(pids)
    errors: list[BaseException] = []
    threads = max(1, min(threads, len(pids)))

    def work(start: int) -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            for i in range(start, len(pids), threads):
                if errors:
                    return
                pid = pids[i]
                try:
                    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
                except OSError as exc:
                    raise EmulationError(f"namespace of process {pid} is gone "
                                         f"({exc.strerror})") from None
                try:
                    _setns(fd, f"/proc/{pid}/ns/net")
                finally:
                    os.close(fd)
                results[i] = fn(i, pid)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
        finally:
            try:
                _setns(own, "own namespace")
            finally:
                os.close(own)

    workers = [threading.Thread(target=work, args=(k,), name=f"meshemu-netns-{k}")
               for k in range(threads)]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    if errors:
        raise errors[0]
    return results


def write_sysctls(values: dict[str, str | int]) -> None:
    """Write sysctls of the calling thread's network namespace (keys like
    ``net.ipv4.ip_forward``)."""
    for key, value in values.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        except OSError as exc:
            raise CommandError(f"sysctl -w {key}={value}", exc.errno or 1,
                               exc.strerror or str(exc)) from None


class Netlink:
    """A ``NETLINK_ROUTE`` socket of the calling thread's network namespace.

    Create it inside :func:`in_namespaces`; it keeps acting on that namespace from any thread.

    Parameters
    ----------
    name : str
        What the namespace is (for error messages), e.g. the node's name.
    """

    def __init__(self, name: str):
        self.name = name
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE,
                                  fileno=high_fd(s.detach()))
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            try:   # root may exceed net.core.wmem_max: room for SEND_CHUNK_BYTES everywhere
                self.sock.setsockopt(socket.SOL_SOCKET, 32, 1 << 20)   # SO_SNDBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self._seq = 0
        self.lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _drain(self, errors: list[tuple[int, int, str]], until_seq: int | None) -> None:
        """Read answers; stop at the ack of ``until_seq`` (blocking) or when none is pending."""
        while True:
            try:
                data = self.sock.recv(1 << 20, 0 if until_seq is not None
                                      else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise EmulationError(f"netlink answers to {self.name} overflowed (too many "
                                         f"errors at once)") from None
                raise
            for seq, err, text in parse_errors(data):
                if until_seq is not None and seq == until_seq and err == 0:
                    return
                if err:
                    errors.append((seq, err, text))

    def send_batch(self, chunks: Iterable[bytes], ignore: Iterable[int] = ()
                   ) -> list[tuple[int, int, str]]:
        """Send requests (no acks asked) and wait until the kernel has handled them all.

        Parameters
        ----------
        chunks : iterable of bytes
            Concatenated netlink messages, each chunk at most :data:`SEND_CHUNK_BYTES`.
        ignore : iterable of int
            errno values that are not failures (e.g. ``ESRCH`` when deleting).

        Returns
        -------
        list of (seq, errno, message)
            The requests that failed, by their sequence number.
        """
        ign = set(ignore)
        errors: list[tuple[int, int, str]] = []
        with self.lock:
            for chunk in chunks:
                if chunk:
                    self.sock.send(chunk)
                    self._drain(errors, None)
            self._seq = (self._seq + 1) & 0x7FFFFFFF
            barrier = 0x80000000 | self._seq
            self.sock.send(_msg(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, barrier, b""))
            self._drain(errors, barrier)
        return [e for e in errors if e[1] not in ign]


RTM_GETLINK = 18
NLM_F_DUMP = 0x300
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IF_OPER_UP = 6


def rtattrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Walk the route attributes in ``data[start:end]``: ``(type, payload offset, payload
    length)`` of each."""
    a = start
    while a + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, a)
        if alen < 4:
            return
        yield atype, a + 4, alen - 4
        a += (alen + 3) & ~3


def links_not_running() -> list[str]:
    """Names of the interfaces in the calling thread's namespace that are administratively
    up but not operationally up (``lo`` aside).

    A veth comes up at once, but the kernel attaches its queueing discipline (and sets the
    operational state) from the deferred link-watch work, up to a second or more later;
    until then it drops every packet sent through it.
    """
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        s.send(_msg(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, bytes(16)))
        bad: list[str] = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                if mtype == NLMSG_DONE:
                    return bad
                if mtype == NLMSG_ERROR:
                    raise EmulationError("netlink link dump failed")
                if mtype == RTM_NEWLINK:
                    flags = struct.unpack_from("=I", data, off + 24)[0]
                    name, oper = "", 0
                    for atype, p, n in rtattrs(data, off + 32, off + length):
                        if atype == IFLA_IFNAME:
                            name = data[p:p + n].split(b"\0", 1)[0].decode()
                        elif atype == IFLA_OPERSTATE:
                            oper = data[p]
                    if flags & IFF_UP and not flags & IFF_LOOPBACK and oper != IF_OPER_UP:
                        bad.append(name)
                off += (length + 3) & ~3
    finally:
        s.close()


def chunked(buf: bytes | memoryview, record_size: int | None = None,
            limit: int = SEND_CHUNK_BYTES) -> list[memoryview]:
    """Split concatenated messages of one fixed size into send-sized chunks."""
    mv = memoryview(buf)
    if record_size:
        limit = max(record_size, limit // record_size * record_size)
    return [mv[i:i + limit] for i in range(0, len(mv), limit)]


def pack_messages(msgs: Iterable[bytes], limit: int = SEND_CHUNK_BYTES) -> list[bytes]:
    """Concatenate variable-size messages into chunks of at most ``limit`` bytes."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for m in msgs:
        if size + len(m) > limit and cur:
            out.append(b"".join(cur))
            cur, size = [], 0
        cur.append(m)
        size += len(m)
    if cur:
        out.append(b"".join(cur))
    return out


# ---- processes ----------------------------------------------------------------------------
def scan_processes() -> dict[int, tuple[int, list[str]]]:
    """Every process: pid -> (network namespace inode, argv). Unreadable ones are skipped."""
    out: dict[int, tuple[int, list[str]]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{d}/ns/net").st_ino
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        out[int(d)] = (ino, [a.decode(errors="replace") for a in argv if a])
    return out


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of ``inodes`` (this process excluded)."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            if os.stat(f"/proc/{d}/ns/net").st_ino in inodes:
                out.append(int(d))
        except OSError:
            continue
    return out


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot, ``/proc/PID/stat`` field 22), or None
    if there is no such process or it is a zombie. Tells a pid from a recycled one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def kill_and_wait(pids: Iterable[int], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL ``pids`` and wait (up to ``timeout_s``) until they are gone; return those
    that were killed."""
    import signal
    import time
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    for pid in killed:
        while process_start_ticks(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.005)
    return killed


def pids_with_env(name: str) -> dict[int, str]:
    """Processes whose environment holds variable ``name``: pid -> its value."""
    key = name.encode() + b"="
    me = os.getpid()
    out: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        i = env.find(b"\0" + key) + 1 if not env.startswith(key) else 0
        if i > 0 or env.startswith(key):
            end = env.find(b"\0", i + len(key))
            out[int(d)] = env[i + len(key):end if end >= 0 else None].decode(errors="replace")
    return out

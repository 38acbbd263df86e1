"""Link shapers: give each emulated link its delay, capacity, queue, loss and up/down state.

One narrow interface, :class:`LinkShaper`, three implementations in :data:`SHAPERS`:

``netem``
    A veth pair straight between the two nodes and a ``netem`` root qdisc on each end
    (``ip`` commands built by :func:`veth_cmd`; qdiscs set over rtnetlink by
    :func:`netem_qdisc_msg`, the equivalent of the ``tc`` command :func:`netem_qdisc_cmd`).
    Needs a kernel with ``sch_netem``; see :func:`netem_available`.
``userspace``
    Each link goes through a delay-line process (:mod:`meshemu.live.delayline`) in a namespace of
    the shaper's own, ``meshemu-<run_id>-dl``. Works on any kernel.
``fake``
    :class:`FakeShaper`, a test double that records calls and needs no root.

:func:`make_shaper` picks one by name (``auto``: netem when available, else userspace) and
:func:`cleanup_leftovers` removes what a crashed run left behind.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from meshemu.live import delayline as dl
from meshemu.linux import netns as nl
from meshemu.linux.limits import require_root, room_for_fds
from meshemu.errors import (CommandError, EmulationError, LinkParamsError, ShaperError,
                            choices_message)

log = logging.getLogger(__name__)

#: Prefix of everything meshemu's shapers create in the root namespace (named netns).
NS_PREFIX = "meshemu-"
#: Suffix of the userspace shaper's namespace, ``meshemu-<run_id>-dl``.
DL_SUFFIX = "-dl"
#: Longest interface name Linux accepts (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: Seconds to wait for a delay-line worker to answer a control message.
CONTROL_TIMEOUT_S = 60.0
#: netem: packet size (bytes) used to turn a link's bandwidth-delay product into packets.
NETEM_BDP_PACKET_BYTES = 1500
#: netem: packet rate (pps) assumed for links without a rate limit, to size the qdisc for the
#: packets that are in propagation delay.
NETEM_UNLIMITED_PPS = 100_000

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


# ---- value types --------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkParams:
    """How one link behaves (both directions alike).

    Attributes
    ----------
    delay_s : float
        One-way propagation delay, seconds (>= 0).
    rate_bps : float
        Capacity in bit/s; 0 or ``math.inf`` means unlimited.
    queue_packets : int
        Drop-tail limit of the transmit queue, packets (>= 1).
    loss : float
        Random loss probability, 0..1.
    up : bool
        False: the link drops everything (its interfaces stay up).
    """

    delay_s: float
    rate_bps: float
    queue_packets: int = 1000
    loss: float = 0.0
    up: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.delay_s, (int, float)) and math.isfinite(self.delay_s)
                and 0 <= self.delay_s <= 3600):
            raise LinkParamsError(f"delay_s must be a finite number of seconds in 0..3600; "
                                  f"got {self.delay_s!r}")
        if not (isinstance(self.rate_bps, (int, float)) and not math.isnan(self.rate_bps)
                and self.rate_bps >= 0):
            raise LinkParamsError(f"rate_bps must be >= 0 bit/s (0 or inf = unlimited); "
                                  f"got {self.rate_bps!r}")
        if not self.unlimited and self.rate_bps < 8:
            raise LinkParamsError(f"rate_bps must be at least 8 bit/s (or 0/inf = unlimited); "
                                  f"got {self.rate_bps!r}")
        if (isinstance(self.queue_packets, bool) or not isinstance(self.queue_packets, int)
                or not 1 <= self.queue_packets <= 2**31 - 1):
            raise LinkParamsError(f"queue_packets must be an integer in 1..{2**31 - 1}; got "
                                  f"{self.queue_packets!r}")
        if not (isinstance(self.loss, (int, float)) and 0.0 <= self.loss <= 1.0):
            raise LinkParamsError(f"loss must be a probability in 0..1; got {self.loss!r}")
        if not isinstance(self.up, bool):
            raise LinkParamsError(f"up must be True or False; got {self.up!r}")

    @property
    def unlimited(self) -> bool:
        """True when the link has no rate limit."""
        return self.rate_bps == 0 or math.isinf(self.rate_bps)


@dataclass(frozen=True)
class LinkEnds:
    """Where one link goes: an interface in each of two namespaces.

    Attributes
    ----------
    link_id : int
        Unique per link within one emulation (>= 0).
    pid_a, pid_b : int
        A process in each namespace (e.g. a Mininet node's shell pid).
    if_a, if_b : str
        Interface names to create there (at most 15 characters, no blanks, '/' or ':').
    """

    link_id: int
    pid_a: int
    if_a: str
    pid_b: int
    if_b: str

    def __post_init__(self) -> None:
        if isinstance(self.link_id, bool) or not isinstance(self.link_id, int) or not (
                0 <= self.link_id < 2**32):
            raise LinkParamsError(f"link_id must be an integer in 0..{2**32 - 1}; got "
                                  f"{self.link_id!r}")
        for attr in ("pid_a", "pid_b"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise LinkParamsError(f"{attr} must be a process id (> 0); got {v!r}")
        for attr in ("if_a", "if_b"):
            v = getattr(self, attr)
            if not isinstance(v, str) or not _IFNAME_RE.match(v):
                raise LinkParamsError(f"{attr} must be an interface name of 1..{IFNAME_MAX} "
                                      f"characters without blanks, '/' or ':'; got {v!r}")
        if self.pid_a == self.pid_b and self.if_a == self.if_b:
            raise LinkParamsError(f"link {self.link_id}: both ends are {self.if_a!r} in "
                                  f"process {self.pid_a}'s namespace")


# ---- pure command builders (unit-tested) --------------------------------------------------
def _fmt_us(seconds: float) -> str:
    """Seconds as tc's microsecond syntax with ns resolution ("12345.678us")."""
    return f"{seconds * 1e6:.3f}us"


def netem_limit(params: LinkParams) -> int:
    """netem ``limit`` (packets) for a link.

    netem's limit counts every packet inside the qdisc, including those only waiting out the
    propagation delay, whereas :attr:`LinkParams.queue_packets` is the transmit queue. So the
    limit is the queue plus the packets one bandwidth-delay product holds
    (:data:`NETEM_BDP_PACKET_BYTES`-byte packets; :data:`NETEM_UNLIMITED_PPS` when unlimited).
    """
    if params.unlimited:
        in_flight = params.delay_s * NETEM_UNLIMITED_PPS
    else:
        in_flight = params.rate_bps * params.delay_s / (8 * NETEM_BDP_PACKET_BYTES)
    return int(min(params.queue_packets + math.ceil(in_flight), 2**32 - 1))


def netem_args(params: LinkParams) -> list[str]:
    """The ``netem ...`` part of a tc qdisc command for ``params``.

    Every option is always given so that ``tc qdisc change`` sets all of them (netem keeps an
    omitted ``rate`` from before). ``up=False`` becomes ``loss 100%``.

    The rate goes into netem's own ``rate`` rather than an htb child because one qdisc then
    holds delay, rate and loss, so a single ``tc qdisc change`` updates them together, in
    place, without a traffic blip; netem computes each packet's departure as
    ``max(now, last departure) + len/rate + delay``, which is exactly the link model of the
    userspace delay line; it halves the qdisc count for 13,000 interfaces; and htb would
    need a per-class quantum tuned to the rate. ``rate 0bit`` means unlimited to netem.
    """
    rate = 0 if params.unlimited else int(round(params.rate_bps))
    loss = 100.0 if not params.up else params.loss * 100.0
    return ["netem", "delay", _fmt_us(params.delay_s), "rate", f"{rate}bit",
            "limit", str(netem_limit(params)), "loss", "random", f"{loss:.6g}%"]


def netem_qdisc_cmd(dev: str, params: LinkParams, action: str = "add") -> list[str]:
    """A ``tc`` command (without the leading ``tc``) setting the netem root qdisc of ``dev``.

    Parameters
    ----------
    dev : str
        Interface name.
    params : LinkParams
    action : {"add", "change"}
        ``add`` when creating the link, ``change`` for live updates (never delete + add).

    Returns
    -------
    list of str
        e.g. ``["qdisc", "change", "dev", "isl3", "root", "handle", "1:", "netem", ...]``;
        ``" ".join(...)`` is a ``tc -batch`` line.
    """
    if action not in ("add", "change"):
        raise ShaperError(choices_message("tc qdisc action", action, ["add", "change"]))
    return ["qdisc", action, "dev", dev, "root", "handle", "1:", *netem_args(params)]


def veth_cmd(name_a: str, ns_a: int | str, name_b: str, ns_b: int | str) -> list[str]:
    """An ``ip`` command (without the leading ``ip``) creating a veth pair across namespaces.

    ``name_a`` is created admin-up (``ip link add`` can only bring up the first device of a
    pair; the peer must be set up afterwards). ``ns_a``/``ns_b`` are a pid or a netns name.
    """
    return ["link", "add", name_a, "netns", str(ns_a), "up", "type", "veth",
            "peer", "name", name_b, "netns", str(ns_b)]


def netem_create_cmds(links: Iterable[tuple[LinkEnds, LinkParams]]
                      ) -> tuple[list[list[str]], dict[int, list[list[str]]]]:
    """Commands creating netem links: ``ip`` commands for the root namespace and ``tc``
    commands per node namespace (keyed by pid)."""
    ip_cmds = []
    tc_cmds: dict[int, list[list[str]]] = defaultdict(list)
    for ends, params in links:
        ip_cmds.append(veth_cmd(ends.if_a, ends.pid_a, ends.if_b, ends.pid_b))
        tc_cmds[ends.pid_a].append(netem_qdisc_cmd(ends.if_a, params, "add"))
        tc_cmds[ends.pid_b].append(netem_qdisc_cmd(ends.if_b, params, "add"))
    return ip_cmds, dict(tc_cmds)


def netem_change_cmds(changes: Iterable[tuple[LinkEnds, LinkParams]]
                      ) -> dict[int, list[list[str]]]:
    """``tc qdisc change`` commands per node namespace (pid) for live updates."""
    out: dict[int, list[list[str]]] = defaultdict(list)
    for ends, params in changes:
        out[ends.pid_a].append(netem_qdisc_cmd(ends.if_a, params, "change"))
        out[ends.pid_b].append(netem_qdisc_cmd(ends.if_b, params, "change"))
    return dict(out)


# rtnetlink encoding of the same qdisc (linux/rtnetlink.h, linux/pkt_sched.h; the kernel
# side is net/sched/sch_netem.c, netem_change()). The shaper sends these rather than running
# ``tc``: a process per namespace per step costs ~5 ms each on hardware (4.5 s per step for
# 68 nodes under qemu TCG), a netlink message some microseconds.
RTM_NEWQDISC = 36
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_NETEM_RATE = 6
TCA_NETEM_RATE64 = 8
TCA_NETEM_LATENCY64 = 10
TC_H_ROOT = 0xFFFFFFFF
#: The netem root qdisc's handle, ``1:``.
NETEM_HANDLE = 0x10000
#: ``tc qdisc add`` / ``tc qdisc change`` netlink flags (iproute2 tc/tc_qdisc.c).
_QDISC_FLAGS = {"add": 0x400 | 0x200, "change": 0}   # NLM_F_CREATE | NLM_F_EXCL ; none
_TCMSG = struct.Struct("=BxxxiIII")       # family, ifindex, handle, parent, info
_NETEM_QOPT = struct.Struct("=IIIIII")    # latency (ticks), limit, loss, gap, duplicate, jitter
_NETEM_RATE = struct.Struct("=IiIi")      # rate (bytes/s), packet/cell overhead, cell size
_U32_MAX = 0xFFFFFFFF


def _nla(nla_type: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), nla_type) + payload + b"\0" * (-len(payload) % 4)


def netem_qdisc_msg(ifindex: int, params: LinkParams, action: str = "add", seq: int = 0
                    ) -> bytes:
    """The ``RTM_NEWQDISC`` netlink message equivalent to :func:`netem_qdisc_cmd`.

    Same options as ``tc qdisc {add|change} dev IF root handle 1: netem delay D rate R limit L
    loss random P`` (iproute2's tc/q_netem.c): ``TCA_OPTIONS`` holds ``struct tc_netem_qopt``
    followed by ``TCA_NETEM_LATENCY64`` (ns), ``TCA_NETEM_RATE`` (bytes/s; 0 = unlimited) and,
    from 2^32 bytes/s, ``TCA_NETEM_RATE64``. Loss is ``P * (2^32 - 1)``. ``change`` carries
    no create flag, so the kernel changes the existing qdisc in place (``netem_change``).

    Parameters
    ----------
    ifindex : int
        Interface index in the namespace the message is sent to.
    params : LinkParams
    action : {"add", "change"}
    seq : int
        Netlink sequence number (failures are reported by it).
    """
    if action not in _QDISC_FLAGS:
        raise ShaperError(choices_message("tc qdisc action", action, list(_QDISC_FLAGS)))
    latency_ns = int(round(params.delay_s * 1e9))
    rate = 0 if params.unlimited else int(round(params.rate_bps)) // 8
    loss = 1.0 if not params.up else params.loss
    qopt = _NETEM_QOPT.pack(min(latency_ns >> 6, _U32_MAX), min(netem_limit(params), _U32_MAX),
                            min(int(round(loss * _U32_MAX)), _U32_MAX), 0, 0, 0)
    nested = (_nla(TCA_NETEM_LATENCY64, struct.pack("=q", latency_ns))
              + _nla(TCA_NETEM_RATE, _NETEM_RATE.pack(min(rate, _U32_MAX), 0, 0, 0)))
    if rate > _U32_MAX:
        nested += _nla(TCA_NETEM_RATE64, struct.pack("=Q", rate))
    body = (_TCMSG.pack(socket.AF_UNSPEC, ifindex, NETEM_HANDLE, TC_H_ROOT, 0)
            + _nla(TCA_KIND, b"netem\0") + _nla(TCA_OPTIONS, qopt + nested))
    flags = 0x1 | _QDISC_FLAGS[action]      # NLM_F_REQUEST
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWQDISC, flags, seq, 0) + body


RTM_GETQDISC = 38
TCA_STATS = 3
_NLMSG = struct.Struct("=IHHII")


def parse_netem_stats(data: bytes) -> tuple[dict[int, tuple[int, int, int]], bool]:
    """Root netem qdiscs in ``RTM_NEWQDISC`` messages (a ``RTM_GETQDISC`` dump):
    ifindex -> (packets, bytes, drops) from ``TCA_STATS`` (``struct tc_stats``); and
    whether ``NLMSG_DONE`` was among them. ShaperError on ``NLMSG_ERROR``."""
    out: dict[int, tuple[int, int, int]] = {}
    off, done = 0, False
    while off + _NLMSG.size <= len(data):
        length, mtype = _NLMSG.unpack_from(data, off)[:2]
        if length < _NLMSG.size:
            break
        if mtype == 3:                                    # NLMSG_DONE
            done = True
        elif mtype == 2:                                  # NLMSG_ERROR
            err = -struct.unpack_from("=i", data, off + 16)[0]
            raise ShaperError(f"tc -s qdisc show (RTM_GETQDISC dump) failed: "
                              f"{os.strerror(err)}")
        elif mtype == RTM_NEWQDISC and length >= 36:
            _, ifindex, _, parent, _ = _TCMSG.unpack_from(data, off + 16)
            kind, stats = b"", None
            for atype, p, n in nl.rtattrs(data, off + 36, off + length):
                if atype == TCA_KIND:
                    kind = data[p:p + n].rstrip(b"\0")
                elif atype == TCA_STATS and n >= 16:
                    nbytes, packets, drops = struct.unpack_from("=QII", data, p)
                    stats = (packets, nbytes, drops)
            if parent == TC_H_ROOT and kind == b"netem" and stats is not None:
                out[ifindex] = stats
        off += (length + 3) & ~3
    return out, done


def qdisc_stats(sock: nl.Netlink) -> dict[int, tuple[int, int, int]]:
    """ifindex -> (packets, bytes, drops) of every root netem qdisc in ``sock``'s namespace."""
    req = (_NLMSG.pack(_NLMSG.size + _TCMSG.size, RTM_GETQDISC, 0x1 | 0x300, 1, 0)
           + _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))   # NLM_F_REQUEST | NLM_F_DUMP
    out: dict[int, tuple[int, int, int]] = {}
    with sock.lock:
        sock.sock.send(req)
        done = False
        while not done:
            got, done = parse_netem_stats(sock.sock.recv(1 << 20))
            out.update(got)
    return out


def userspace_create_cmds(links: Iterable[LinkEnds], dl_ns: int | str) -> list[list[str]]:
    """``ip`` commands creating the two veth pairs of each userspace-shaped link."""
    out = []
    for e in links:
        out.append(veth_cmd(e.if_a, e.pid_a, dl.dl_ifname(e.link_id, "a"), dl_ns))
        out.append(veth_cmd(e.if_b, e.pid_b, dl.dl_ifname(e.link_id, "b"), dl_ns))
    return out


def batch_text(cmds: Iterable[Sequence[str]]) -> str:
    """Join commands into ``ip -batch`` / ``tc -batch`` input."""
    return "".join(" ".join(c) + "\n" for c in cmds)


# ---- execution helpers --------------------------------------------------------------------
def _run(cmd: Sequence[str], stdin: str | None = None, check: bool = True
         ) -> subprocess.CompletedProcess:
    """Run a command; raise :class:`CommandError` (with its stderr) when it fails."""
    try:
        p = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise CommandError(cmd, 127, str(exc)) from None
    if check and p.returncode != 0:
        shown = list(cmd) + ([f"<<< {stdin.splitlines()[0]} ... ({stdin.count(chr(10))} lines)"]
                             if stdin else [])
        raise CommandError(shown, p.returncode, p.stderr)
    return p


def _batch(tool: str, cmds: Sequence[Sequence[str]], pid: int | None = None,
           netns: str | None = None) -> None:
    """Run ``ip``/``tc`` commands as one ``-batch`` in the root namespace, a pid's or a named
    namespace."""
    if not cmds:
        return
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid is not None else []
    opts = ["-n", netns] if netns is not None else []
    _run(prefix + [tool, *opts, "-batch", "-"], stdin=batch_text(cmds))


def _parallel(fn: Callable, args: Iterable) -> list:
    """``fn(*a)`` for each ``a``, a few at a time (each mostly waits on a subprocess)."""
    args = list(args)
    if len(args) <= 1:
        return [fn(*a) for a in args]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(args))) as ex:
        return list(ex.map(lambda a: fn(*a), args))


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCETHTOOL = 0x8946
IFF_UP = 0x1
#: Legacy ethtool "set one feature" commands: tx checksumming, TSO, GSO.
ETHTOOL_STXCSUM = 0x17
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24


def _ioctl_ethtool(sock: socket.socket, ifname: str, cmd: int, value: int) -> None:
    import fcntl
    buf = ctypes.create_string_buffer(struct.pack("<II", cmd, value))
    ifr = struct.pack("16sQ16x", ifname.encode(), ctypes.addressof(buf))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)


def _ioctl_up(sock: socket.socket, ifname: str) -> None:
    import fcntl
    ifr = struct.pack("16sh22x", ifname.encode(), 0)
    flags = struct.unpack_from("16sh", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifr))[1]
    fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", ifname.encode(),
                                                         flags | IFF_UP))


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
                fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        e = ctypes.get_errno()
                        raise CommandError(f"setns(/proc/{pid}/ns/net)", e, os.strerror(e))
                finally:
                    os.close(fd)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    for ifname, up, offload_off in items:
                        what = "SIOCGIFFLAGS/SIOCSIFFLAGS"
                        try:
                            if offload_off:
                                for what in ("ETHTOOL_STXCSUM", "ETHTOOL_STSO", "ETHTOOL_SGSO"):
                                    _ioctl_ethtool(s, ifname, globals()[what], 0)
                                what = "SIOCGIFFLAGS/SIOCSIFFLAGS"
                            if up:
                                _ioctl_up(s, ifname)
                        except OSError as exc:
                            raise CommandError(f"ioctl {what} {ifname} (netns of pid {pid})",
                                               exc.errno or 1, exc.strerror or str(exc)) from None
        except BaseException as exc:  # re-raised in the calling thread
            result.append(exc)

    th = threading.Thread(target=work, name="meshemu-netns-config")
    th.start()
    th.join()
    if result:
        raise result[0]


# ---- the interface ------------------------------------------------------------------------
class LinkShaper(ABC):
    """Creates, shapes, updates and removes the emulation's links.

    A shaper is made by :func:`make_shaper`; ``close()`` removes all it created and may be
    called any number of times, also after a failed ``create_links``. It is a context manager.
    """

    name: ClassVar[str]

    def __init__(self, run_id: str):
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
            raise ShaperError(f"run_id must be 1..40 letters, digits, '_' or '-'; got "
                              f"{run_id!r}")
        self.run_id = run_id
        self._links: dict[int, tuple[LinkEnds, LinkParams]] = {}

    @abstractmethod
    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        """Create the links: interfaces in the given namespaces, admin up, shaped."""

    @abstractmethod
    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        """Change links' parameters in place, live (packets in flight are kept)."""

    @abstractmethod
    def remove_links(self, link_ids: Sequence[int]) -> None:
        """Remove links (and their interfaces)."""

    @abstractmethod
    def counters(self) -> dict[int, tuple[int, int, int]]:
        """Per link, both directions summed: (packets forwarded, bytes forwarded, dropped)."""

    @abstractmethod
    def close(self) -> None:
        """Remove everything this shaper created. Idempotent."""

    @property
    def link_ids(self) -> list[int]:
        """Ids of the links that exist now."""
        return list(self._links)

    def params(self, link_id: int) -> LinkParams:
        """Current parameters of a link."""
        return self._links[self._known([link_id])[0]][1]

    def _check_new(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        seen = set()
        for item in links:
            if (not isinstance(item, tuple) or len(item) != 2
                    or not isinstance(item[0], LinkEnds) or not isinstance(item[1], LinkParams)):
                raise LinkParamsError(f"create_links takes (LinkEnds, LinkParams) pairs; got "
                                      f"{item!r}")
            lid = item[0].link_id
            if lid in self._links or lid in seen:
                raise LinkParamsError(f"link id {lid} already exists; link ids must be unique")
            seen.add(lid)

    def _known(self, link_ids: Iterable[int]) -> list[int]:
        ids = list(link_ids)
        bad = [i for i in ids if i not in self._links]
        if bad:
            raise LinkParamsError(f"unknown link id(s) {bad[:10]}; existing ids: "
                                  f"{_id_summary(self._links)}")
        return ids

    def _check_changes(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        self._known(c[0] for c in changes)
        for c in changes:
            if not isinstance(c[1], LinkParams):
                raise LinkParamsError(f"update takes (link_id, LinkParams) pairs; got {c!r}")

    def __enter__(self) -> LinkShaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id_summary(links: dict) -> str:
    if not links:
        return "none"
    ids = sorted(links)
    return f"{len(ids)} ids in {ids[0]}..{ids[-1]}"


# ---- netem --------------------------------------------------------------------------------
class NetemShaper(LinkShaper):
    """Kernel shaping: a veth pair between the two nodes, a netem root qdisc on each end.

    The veth pairs are created by one ``ip -batch`` in the root namespace
    (``ip link add ... netns PID``). Everything after that goes over rtnetlink, without a
    process per namespace: for each node namespace the shaper opens one ``NETLINK_ROUTE``
    socket there (from a thread that ``setns``-es in, :func:`meshemu.linux.netns.in_namespaces`)
    and keeps it for its lifetime, and sends :func:`netem_qdisc_msg` messages on it, a
    whole step's worth per ``sendmsg``. Updates are ``RTM_NEWQDISC`` without a create flag
    (``tc qdisc change``): the qdisc, its handle, counters and queued packets stay.
    """

    name = "netem"

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self._nl: dict[int, nl.Netlink] = {}          # pid -> socket in its namespace
        self._ifindex: dict[tuple[int, str], int] = {}  # (pid, ifname) -> ifindex
        self._seq = 0

    def _open_namespaces(self, ends: Sequence[LinkEnds]) -> None:
        """Open a netlink socket in each new namespace, look up the interfaces' indexes
        and bring the ``b`` ends up (``ip link add`` brought the ``a`` ends up)."""
        wanted: dict[int, list[tuple[str, bool]]] = defaultdict(list)
        for e in ends:
            wanted[e.pid_a].append((e.if_a, False))
            wanted[e.pid_b].append((e.if_b, True))
        pids = list(wanted)
        new = [p for p in pids if p not in self._nl]
        room_for_fds(len(new), "the netem shaper")

        def work(i: int, pid: int) -> tuple[nl.Netlink | None, list[int]]:
            sock = nl.Netlink(f"netns of pid {pid}") if pid not in self._nl else None
            idx = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for ifname, up in wanted[pid]:
                    try:
                        idx.append(socket.if_nametoindex(ifname))
                        if up:
                            _ioctl_up(s, ifname)
                    except OSError as exc:
                        if sock is not None:
                            sock.close()
                        raise CommandError(f"{'ip link set up' if up else 'if_nametoindex'} "
                                           f"{ifname} (netns of pid {pid})", exc.errno or 1,
                                           exc.strerror or str(exc)) from None
            return sock, idx

        results = nl.in_namespaces(pids, work)
        for pid, (sock, idx) in zip(pids, results):
            if sock is not None:
                self._nl[pid] = sock
            for (ifname, _), k in zip(wanted[pid], idx):
                self._ifindex[(pid, ifname)] = k

    def _send_qdiscs(self, items: Iterable[tuple[int, str, LinkParams]], action: str) -> None:
        """Add or change the netem qdisc of each ``(pid, ifname, params)``, one netlink batch
        per namespace. CommandError (quoting the equivalent ``tc`` command) on failure."""
        per_pid: dict[int, list[bytes]] = defaultdict(list)
        what: dict[int, tuple[int, str, LinkParams]] = {}
        for pid, ifname, params in items:
            self._seq = (self._seq + 1) & 0x7FFFFFFF
            what[self._seq] = (pid, ifname, params)
            per_pid[pid].append(netem_qdisc_msg(self._ifindex[(pid, ifname)], params, action,
                                                self._seq))
        errors = []
        for pid, msgs in per_pid.items():
            errors += self._nl[pid].send_batch(nl.pack_messages(msgs))
        if errors:
            seq, err, text = errors[0]
            pid, ifname, params = what[seq]
            raise CommandError(["nsenter", "-t", str(pid), "-n", "tc",
                                *netem_qdisc_cmd(ifname, params, action)], err,
                               f"{os.strerror(err)}{': ' + text if text else ''}"
                               f"{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}")

    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        require_root("the netem shaper")
        links = list(links)
        self._check_new(links)
        if not links:
            return
        ip_cmds, _ = netem_create_cmds(links)
        _batch("ip", ip_cmds)
        for ends, params in links:
            self._links[ends.link_id] = (ends, params)
        self._open_namespaces([e for e, _ in links])
        self._send_qdiscs(((pid, ifn, p) for e, p in links
                           for pid, ifn in ((e.pid_a, e.if_a), (e.pid_b, e.if_b))), "add")

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        changes = list(changes)
        self._check_changes(changes)
        if not changes:
            return
        items = []
        for i, p in changes:
            e = self._links[i][0]
            items += [(e.pid_a, e.if_a, p), (e.pid_b, e.if_b, p)]
        self._send_qdiscs(items, "change")
        for i, p in changes:
            self._links[i] = (self._links[i][0], p)

    def remove_links(self, link_ids: Sequence[int]) -> None:
        ids = self._known(link_ids)
        by_pid: dict[int, list] = defaultdict(list)
        for i in ids:
            e = self._links[i][0]
            by_pid[e.pid_a].append(["link", "del", e.if_a])
        _parallel(lambda pid, c: _batch("ip", c, pid=pid), by_pid.items())
        for i in ids:
            e = self._links[i][0]
            self._ifindex.pop((e.pid_a, e.if_a), None)
            self._ifindex.pop((e.pid_b, e.if_b), None)
            del self._links[i]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        """Per link, both ends' netem qdisc statistics summed, read with one
        ``RTM_GETQDISC`` dump per node namespace (``tc -s qdisc show``, without the
        process): called every step by the traffic runtime."""
        by_pid: dict[int, dict[int, int]] = defaultdict(dict)    # pid -> ifindex -> link
        for lid, (e, _) in self._links.items():
            for pid, ifn in ((e.pid_a, e.if_a), (e.pid_b, e.if_b)):
                k = self._ifindex.get((pid, ifn))
                if k is not None:
                    by_pid[pid][k] = lid
        out: dict[int, list[int]] = {lid: [0, 0, 0] for lid in self._links}
        for pid, links in by_pid.items():
            for ifindex, stats in qdisc_stats(self._nl[pid]).items():
                lid = links.get(ifindex)
                if lid is not None:
                    c = out[lid]
                    c[0] += stats[0]
                    c[1] += stats[1]
                    c[2] += stats[2]
        return {k: tuple(v) for k, v in out.items()}

    def close(self) -> None:
        socks, self._nl = list(self._nl.values()), {}
        self._ifindex.clear()
        for sock in socks:
            sock.close()
        if not self._links:
            return
        by_pid: dict[int, list] = defaultdict(list)
        for e, _ in self._links.values():
            # a veth dies with either namespace; delete it from whichever side still exists
            for pid, ifn in ((e.pid_a, e.if_a), (e.pid_b, e.if_b)):
                if os.path.exists(f"/proc/{pid}/ns/net"):
                    by_pid[pid].append(["link", "del", ifn])
                    break
        self._links.clear()
        errors = []

        def delete(pid: int, cmds: list) -> None:
            p = _run(["nsenter", "-t", str(pid), "-n", "ip", "-force", "-batch", "-"],
                     stdin=batch_text(cmds), check=False)
            real = [ln for ln in p.stderr.splitlines()
                    if ln.strip() and "Cannot find device" not in ln
                    and not ln.startswith("Command failed")]
            if p.returncode != 0 and real:
                errors.append(CommandError(["nsenter", "-t", str(pid), "-n", "ip", "-batch"],
                                           p.returncode, "\n".join(real)))

        _parallel(delete, by_pid.items())
        if errors:
            raise errors[0]


# ---- userspace ----------------------------------------------------------------------------
class UserspaceShaper(LinkShaper):
    """Links through delay-line processes (:mod:`meshemu.live.delayline`) in ``meshemu-<run_id>-dl``.

    Parameters
    ----------
    run_id : str
    workers : int
        Delay-line processes sharing the links (by ingress interface). 1 is best on a small
        machine; see ``benchmarks/bench_delayline.py`` before raising it.
    """

    name = "userspace"

    def __init__(self, run_id: str, workers: int = 1):
        super().__init__(run_id)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ShaperError(f"workers must be an integer in 1..64; got {workers!r}")
        self.workers = workers
        self.netns = f"{NS_PREFIX}{run_id}{DL_SUFFIX}"
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._lock = threading.Lock()

    # -- delay-line processes ----------------------------------------------------------------
    def _start(self) -> None:
        if self._procs:
            return
        if self._closed:
            raise ShaperError(f"shaper {self.run_id!r} is closed; make a new one")
        require_root("the userspace shaper")
        _run(["ip", "netns", "add", self.netns])
        try:
            for i in range(self.workers):
                cmd = ["ip", "netns", "exec", self.netns, sys.executable, "-m",
                       "meshemu.live.delayline", "--run-id", self.run_id,
                       "--workers", str(self.workers), "--worker", str(i)]
                self._procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, bufsize=0))
            for p in self._procs:
                self._read_reply(p)
        except BaseException:
            self.close()
            raise
        log.info("userspace shaper: %d delay-line worker(s) in netns %s (pids %s)",
                 self.workers, self.netns, [p.pid for p in self._procs])

    @property
    def pids(self) -> list[int]:
        """Process ids of the delay-line workers."""
        return [p.pid for p in self._procs]

    def _read_exact(self, p: subprocess.Popen, n: int) -> bytes:
        fd = p.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while len(buf) < n:
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, n - len(buf)) if r else None
            if not chunk:
                rc = p.poll()
                why = (f"exited with status {rc}" if rc is not None
                       else f"did not answer within {CONTROL_TIMEOUT_S:.0f} s")
                raise EmulationError(f"delay-line worker (pid {p.pid}, netns {self.netns}) "
                                     f"{why}; see its messages on stderr")
            buf += chunk
        return buf

    def _read_reply(self, p: subprocess.Popen) -> bytes:
        status, n = dl.HDR.unpack(self._read_exact(p, dl.HDR.size))
        payload = self._read_exact(p, n) if n else b""
        if status != dl.ST_OK:
            raise ShaperError(f"delay line (pid {p.pid}): {payload.decode(errors='replace')}")
        return payload

    def _call(self, msg: bytes) -> list[bytes]:
        with self._lock:
            for p in self._procs:
                try:
                    p.stdin.write(msg)
                except BrokenPipeError:
                    raise EmulationError(f"delay-line worker (pid {p.pid}) is gone (exit "
                                         f"status {p.poll()})") from None
            return [self._read_reply(p) for p in self._procs]

    # -- LinkShaper --------------------------------------------------------------------------
    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        links = list(links)
        self._check_new(links)
        if not links:
            return
        self._start()
        dl_pid = self._procs[0].pid
        _batch("ip", userspace_create_cmds((e for e, _ in links), dl_pid))
        for ends, params in links:
            self._links[ends.link_id] = (ends, params)
        jobs: dict[int, list] = defaultdict(list)
        for e, _ in links:
            # the nodes' ends send into the delay line: no checksum/segmentation offload, or
            # the frames arrive with partial checksums / as 64 KiB super-frames. The delay
            # line's own ends only send what packet sockets give them (complete frames).
            jobs[e.pid_a].append((e.if_a, False, True))
            jobs[e.pid_b].append((e.if_b, False, True))
            jobs[dl_pid].append((dl.dl_ifname(e.link_id, "a"), True, False))
            jobs[dl_pid].append((dl.dl_ifname(e.link_id, "b"), True, False))
        configure_interfaces(jobs)
        self._call(dl.encode_links(dl.OP_ADD, _recs(links)))

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        if not changes:
            return
        self._check_changes(changes)
        self._call(dl.encode_links(dl.OP_UPDATE, ((i, p.delay_s, p.rate_bps, p.queue_packets,
                                                   p.loss, p.up) for i, p in changes)))
        links = self._links
        for i, p in changes:
            links[i] = (links[i][0], p)

    def remove_links(self, link_ids: Sequence[int]) -> None:
        ids = self._known(link_ids)
        if not ids:
            return
        self._call(dl.encode_ids(dl.OP_REMOVE, ids))
        # deleting the delay line's end of a veth pair deletes the node's end too
        _batch("ip", [["link", "del", dl.dl_ifname(i, s)] for i in ids for s in "ab"],
               netns=self.netns)
        for i in ids:
            del self._links[i]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        if not self._procs:
            return {}
        out: dict[int, list[int]] = {}
        for payload in self._call(dl.HDR.pack(dl.OP_COUNTERS, 0)):
            for lid, pk, by, dr in dl.CNT_REC.iter_unpack(payload):
                c = out.setdefault(lid, [0, 0, 0])
                c[0] += pk
                c[1] += by
                c[2] += dr
        return {k: tuple(v) for k, v in out.items()}

    def close(self) -> None:
        self._closed = True
        for p in self._procs:
            try:
                p.stdin.write(dl.HDR.pack(dl.OP_QUIT, 0))
                p.stdin.close()
            except OSError:
                pass
        for p in self._procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
        self._procs = []
        self._links.clear()
        if os.path.exists(f"/run/netns/{self.netns}"):
            # the namespace goes with its last process; its veths take the nodes' ends along
            _run(["ip", "netns", "del", self.netns])


def _recs(links: Iterable[tuple[LinkEnds, LinkParams]]) -> Iterable[tuple]:
    for e, p in links:
        yield (e.link_id, p.delay_s, p.rate_bps, p.queue_packets, p.loss, p.up)


# ---- fake ---------------------------------------------------------------------------------
class FakeShaper(LinkShaper):
    """Test double: validates and records every call, touches nothing, needs no root.

    Attributes
    ----------
    calls : list of (method name, argument)
        Every call in order, e.g. ``("update", [(3, LinkParams(...))])``.
    closed : bool
    """

    name = "fake"

    def __init__(self, run_id: str = "fake"):
        super().__init__(run_id)
        self.calls: list[tuple[str, object]] = []
        self.closed = False

    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        links = list(links)
        self._check_new(links)
        self.calls.append(("create_links", links))
        for e, p in links:
            self._links[e.link_id] = (e, p)

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        changes = list(changes)
        self._check_changes(changes)
        self.calls.append(("update", changes))
        for i, p in changes:
            self._links[i] = (self._links[i][0], p)

    def remove_links(self, link_ids: Sequence[int]) -> None:
        ids = self._known(link_ids)
        self.calls.append(("remove_links", ids))
        for i in ids:
            del self._links[i]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        self.calls.append(("counters", None))
        return {i: (0, 0, 0) for i in self._links}

    def close(self) -> None:
        self.calls.append(("close", None))
        self._links.clear()
        self.closed = True


# ---- registry -----------------------------------------------------------------------------
SHAPERS: dict[str, type[LinkShaper]] = {
    "netem": NetemShaper,
    "userspace": UserspaceShaper,
    "fake": FakeShaper,
}


def netem_available() -> bool:
    """True when this kernel can run ``tc qdisc add ... netem``.

    Probes in a throw-away network namespace (``unshare -n``) that vanishes with the probe
    process, so nothing can leak even if the probe is killed. False without root.
    """
    if os.geteuid() != 0:
        return False
    script = ("ip link add mxprobe0 type veth peer name mxprobe1 && "
              "tc qdisc add dev mxprobe0 root handle 1: netem delay 1ms")
    try:
        p = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True,
                           text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    if p.returncode != 0:
        log.debug("netem probe failed: %s", p.stderr.strip())
    return p.returncode == 0


def make_shaper(name: str, run_id: str, **options: object) -> LinkShaper:
    """Make a link shaper by name.

    Parameters
    ----------
    name : str
        ``auto`` (netem if the kernel has it, else userspace), or a key of :data:`SHAPERS`.
    run_id : str
        Names what the shaper creates (``meshemu-<run_id>-dl``).
    **options
        Passed to the shaper class (e.g. ``workers=2`` for userspace).

    Raises
    ------
    ShaperError
        Unknown name, or ``netem`` on a kernel without netem.
    """
    if name == "auto":
        name = "netem" if netem_available() else "userspace"
        log.info("shaper auto: using %s (kernel netem %s)", name,
                 "available" if name == "netem" else "not available")
    elif name not in SHAPERS:
        raise ShaperError(choices_message("shaper", name, ["auto", *SHAPERS]))
    elif name == "netem" and not netem_available():
        raise ShaperError("shaper 'netem' needs the kernel's sch_netem qdisc, which this kernel "
                          "does not have (tc: 'Specified qdisc kind is unknown'); use "
                          "--shaper userspace (or auto)")
    return SHAPERS[name](run_id, **options)


# ---- leftovers ----------------------------------------------------------------------------
def _delayline_procs() -> list[tuple[int, int, str]]:
    """(pid, ppid, run_id) of every delay-line process on the machine."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"meshemu.live.delayline" not in argv:
            continue
        run = ""
        if b"--run-id" in argv:
            i = argv.index(b"--run-id")
            run = argv[i + 1].decode(errors="replace") if i + 1 < len(argv) else ""
        out.append((int(d), ppid, run))
    return out


def cleanup_leftovers(run_id: str | None = None) -> list[str]:
    """Remove delay-line processes and shaper namespaces left behind by crashed runs.

    Parameters
    ----------
    run_id : str, optional
        Only this run's leftovers, live or not. Without it: every orphaned delay line
        (its parent is gone) and every ``meshemu-*-dl`` namespace with no live delay line,
        so runs in progress are not disturbed.

    Returns
    -------
    list of str
        What was removed, e.g. ``["process 4242 (delay line of run ab12cd)",
        "netns meshemu-ab12cd-dl"]``.
    """
    removed = []
    procs = _delayline_procs()
    victims = [(pid, run) for pid, ppid, run in procs
               if ((run == run_id) if run_id is not None else ppid == 1)]
    for pid, run in victims:
        try:
            os.kill(pid, signal.SIGKILL)
            removed.append(f"process {pid} (delay line of run {run})")
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid, _ in victims:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
    live_runs = {run for pid, _, run in _delayline_procs()}
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        names = []
    for ns in sorted(names):
        if not (ns.startswith(NS_PREFIX) and ns.endswith(DL_SUFFIX)):
            continue
        run = ns[len(NS_PREFIX):-len(DL_SUFFIX)]
        if (run_id is not None and run != run_id) or (run_id is None and run in live_runs):
            continue
        p = _run(["ip", "netns", "del", ns], check=False)
        if p.returncode == 0:
            removed.append(f"netns {ns}")
        elif os.path.exists(f"/run/netns/{ns}"):
            raise CommandError(["ip", "netns", "del", ns], p.returncode, p.stderr)
    for item in removed:
        log.info("removed leftover %s", item)
    return removed

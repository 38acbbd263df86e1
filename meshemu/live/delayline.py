"""The userspace delay line: a process that delays, rate-limits and drops Ethernet frames.

A link A<->B shaped in userspace is two veth pairs, ``IF_A <-> a'`` and ``b' <-> IF_B``, with
``a'`` and ``b'`` in the shaper's own namespace (``meshemu-<run_id>-dl``). This process runs in
that namespace (``python -m meshemu.live.delayline --run-id RUN``, started by
:class:`meshemu.live.shapers.UserspaceShaper`), receives every frame that arrives on any
``a'``/``b'`` and writes it to the other end at::

    start     = max(arrival, link_free)            # drop-tail: dropped if queue_packets wait
    link_free = start + size_bytes * 8 / rate_bps  # serialisation
    departure = max(link_free + delay_s, previous departure)  # propagation; a link is FIFO

How it keeps the error small (measured in ``benchmarks/bench_delayline.py``):

- frames are read from one ``PACKET_RX_RING`` (TPACKET_V2, memory-mapped, no syscall per frame)
  and the arrival time is the *kernel's* receive timestamp in the ring, not the time Python
  got round to the frame, so a busy process does not add its lag to the delay;
- ``PACKET_IGNORE_OUTGOING`` keeps the frames it sends itself out of the ring;
- it waits in ``select`` (microsecond timeout, timer slack set to 1 ns) until
  :data:`SPIN_NS` before the next departure and spins for the rest;
- all frames leave through one unbound packet socket (``sendto`` names the egress
  interface). A socket per interface would save a name lookup per frame, but closing a
  packet socket waits for an RCU grace period, which made closing 13,000 of them take
  minutes.

With ``--workers W`` (W > 1) W such processes share the links: worker ``i`` attaches a classic
BPF filter that only accepts frames whose ingress ifindex is ``i`` mod W. Direction state only
depends on the ingress interface, so no state is shared.

Control protocol (parent -> worker on stdin, replies on stdout), little-endian binary:
a header :data:`HDR` ``(op, count)`` followed by ``count`` records: :data:`LINK_REC` for
:data:`OP_ADD` / :data:`OP_UPDATE`, :data:`ACCESS_REC` for :data:`OP_ACCESS`,
:data:`ID_REC` for :data:`OP_REMOVE`, nothing for
:data:`OP_COUNTERS` / :data:`OP_GUARD` / :data:`OP_QUIT`. Every message is answered with
:data:`HDR` ``(status, nbytes)`` and ``nbytes`` of payload: an error text when ``status`` is
:data:`ST_ERROR`, :data:`CNT_REC` records for :data:`OP_COUNTERS`, :data:`GUARD_REC` records
for :data:`OP_GUARD`. The process exits when its stdin reaches EOF, so it never outlives the
shaper that started it (even after SIGKILL).

The access model (:data:`OP_ACCESS`, :mod:`meshemu.spec.linkmodel`): per link direction, an
extra delay and Gilbert-Elliott loss. A frame of such a direction is first put through the
Gilbert-Elliott chain (lost with ``loss_bad`` in the bad state and ``loss_good`` in the good
one; then the state moves: bad -> good with ``r``, good -> bad with ``p``; netem's
``loss_gilb_ell``), then the uniform loss, and its departure becomes::

    ready     = link_free (or arrival, unlimited) + grant, grant uniform in [grant_min, grant_max]
    ready     = the next multiple of frame_ns at or after ready (CLOCK_REALTIME; no frame: as is)
    departure = max(ready + constant + delay_s, previous departure)

``OP_ADD`` gives a direction no access model; ``OP_UPDATE`` keeps it; a record of zeros
(``p`` 0) turns it off. A direction without one takes no extra branch per frame.

The fidelity guard (:data:`OP_GUARD`): since the previous ``OP_GUARD``, one
:data:`GUARD_REC` per link direction this worker owns that sent at least one frame
(direction 0: frames that arrived on the a-side end ``dl<k>a``, 1: the b-side end): frames
sent, the p99 and maximum of their *lateness*, ``actual send time - scheduled departure``,
in ns, and the frames in its drop-tail queue at that moment (a direction with a queue but no
frame sent has a record too); the p99 comes from a log-spaced histogram
(:func:`lateness_bucket`, buckets at most 1/16 of their lower edge wide) and is the upper
edge of the bucket holding it, at most the maximum. Then one record with link id
:data:`WORKER_LINK_ID` for the worker itself: direction = the worker's index, frames = the
kernel's ring drops (``PACKET_STATISTICS`` ``tp_drops``: frames lost because the worker
could not keep up, as opposed to queue overflow, which is the model and shows in
:data:`CNT_REC` drops), and the lateness p99 / max over all its links. :func:`decode_guard`
reads a reply.

Two implementations speak this protocol with the same command line: this module (the
reference) and the compiled worker ``meshemu/live/dlc/meshemu-delayline`` (C, built by
``install.sh``; sources in ``meshemu/live/dlc/``), which the shaper prefers.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import logging
import math
import mmap
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshemu.errors import CommandError
from meshemu.linux.netns import write_sysctls
from meshemu.linux.pmqos import CpuLatencyRequest

log = logging.getLogger(__name__)

# ---- control protocol ---------------------------------------------------------------------
#: Message header: operation (or reply status) and record count (or payload bytes).
HDR = struct.Struct("<BI")
#: One link's parameters: link_id, delay_ns, rate_bps (0 = unlimited), queue_packets,
#: loss probability, up (0/1).
LINK_REC = struct.Struct("<IqdIdB")
#: One direction's access model: link_id, direction (0: frames from the a side, 1: from b),
#: constant_ns, frame_ns (0: no alignment), grant_min_ns, grant_max_ns, Gilbert-Elliott p,
#: r, loss in the bad state, loss in the good state (p 0: no Gilbert-Elliott loss).
ACCESS_REC = struct.Struct("<IBqqqqdddd")
#: A link id (for removal).
ID_REC = struct.Struct("<I")
#: Counters of one link (both directions summed): link_id, packets, bytes, dropped.
CNT_REC = struct.Struct("<IQQQ")
#: The guard of one link direction since the previous :data:`OP_GUARD`: link_id, direction
#: (0: arrived on the a-side end, 1: b-side), frames sent, lateness p99 ns, lateness max ns,
#: queue frames (the direction's drop-tail queue when the guard was read: frames waiting
#: for or in serialisation, as ``queue_packets`` counts them).
#: A worker's own record has link_id :data:`WORKER_LINK_ID`, its index as direction, its
#: kernel ring drops as frames and queue 0.
GUARD_REC = struct.Struct("<IBQqqI")
#: The link id of a worker's own :data:`GUARD_REC`.
WORKER_LINK_ID = 0xFFFFFFFF

OP_ADD = 1
OP_UPDATE = 2
OP_REMOVE = 3
OP_COUNTERS = 4
OP_QUIT = 5
OP_GUARD = 6
OP_ACCESS = 7
ST_OK = 0
ST_ERROR = 1

#: Spin (instead of sleeping in select) for the last this-many ns before a departure;
#: select() wakes 40 us late at p50 and ~110 us at p99 on the reference machine.
SPIN_NS = 120_000
#: Spinning may take at most this share of each :data:`SPIN_WINDOW_NS` (then timed waits
#: only): under real-time scheduling a process that uses up the kernel's RT budget (95 % of
#: each second) is throttled for the rest of the second, tens of ms of delay error.
SPIN_BUDGET = 0.3
SPIN_WINDOW_NS = 100_000_000
#: Frames taken from the ring at most between two looks at the departures: without a bound
#: an overloaded worker never got to send anything (the ring refills as fast as it drains).
RX_BATCH = 256

# ---- kernel constants (linux/if_packet.h, linux/filter.h, linux/ethtool.h) ----------------
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
PACKET_STATISTICS = 6
SKF_AD_OFF = -0x1000
SKF_AD_IFINDEX = 8
PR_SET_TIMERSLACK = 29

#: tpacket2_hdr (32 bytes) then the sockaddr_ll family, protocol and ifindex.
_TP2 = struct.Struct("<IIIHHII8xHHi")
_FRAME_SIZE = 2048  # fits a 1500-byte MTU frame plus the ring headers
_BLOCK_SIZE = 1 << 20
_BLOCK_NR = 32  # 16,384 frames, 32 MiB


#: Buckets of the lateness histogram (:func:`lateness_bucket`); 2**36 ns (68 s) and more
#: share the last one.
LATENESS_BUCKETS = 528
_LAT_CLAMP = (1 << 36) - 1


def lateness_bucket(ns: int) -> int:
    """Histogram bucket of a lateness of ``ns`` nanoseconds (negative counts as 0).

    ``ns`` itself below 32, else ``(s << 4) + (ns >> s)`` with ``s = bit_length(ns) - 5``:
    16 buckets per power of two, so a bucket is at most 1/16 (6.25 %) of its lower edge
    wide (the scheme of HdrHistogram with 4 significant bits). Both workers use it.
    """
    if ns < 32:
        return ns if ns > 0 else 0
    if ns > _LAT_CLAMP:
        ns = _LAT_CLAMP
    s = ns.bit_length() - 5
    return (s << 4) + (ns >> s)


def lateness_bucket_bounds(b: int) -> tuple[int, int]:
    """Smallest and largest lateness (ns, inclusive) of bucket ``b``."""
    if b < 32:
        return b, b
    s = (b >> 4) - 1
    m = b - (s << 4)
    return m << s, ((m + 1) << s) - 1


def lateness_p99(hist: dict[int, int], n: int, max_ns: int) -> int:
    """The p99 of ``n`` latenesses in ``hist`` (bucket -> count): the upper edge of the
    bucket that holds the ``ceil(0.99 n)``-th smallest, at most ``max_ns``; 0 if ``n`` is 0."""
    if not n:
        return 0
    rank = (99 * n + 99) // 100
    cum = 0
    for b in sorted(hist):
        cum += hist[b]
        if cum >= rank:
            return min(lateness_bucket_bounds(b)[1], max_ns)
    return max_ns


@dataclass(frozen=True)
class GuardRecord:
    """One :data:`GUARD_REC` of a delay-line worker (see the module docstring).

    Attributes
    ----------
    link_id : int
        The link, or :data:`WORKER_LINK_ID` for the worker's own record.
    direction : int
        0: frames that arrived on the link's a-side end, 1: the b-side end; the worker's
        index in its own record.
    frames : int
        Frames sent since the previous query; in the worker's own record, the frames the
        kernel dropped because the worker's receive ring was full.
    lateness_p99_ns, lateness_max_ns : int
        Lateness (actual send time - scheduled departure) p99 and maximum, ns.
    worker : int
        The worker that answered.
    queue_frames : int
        Frames in the direction's drop-tail queue when the guard was read (0 in the
        worker's own record).
    """

    link_id: int
    direction: int
    frames: int
    lateness_p99_ns: int
    lateness_max_ns: int
    worker: int = 0
    queue_frames: int = 0

    @property
    def is_worker(self) -> bool:
        """True for a worker's own record (its ring drops), False for a link direction."""
        return self.link_id == WORKER_LINK_ID


def decode_guard(payload: bytes, worker: int = 0) -> list[GuardRecord]:
    """The :class:`GuardRecord` list of one worker's :data:`OP_GUARD` reply."""
    if len(payload) % GUARD_REC.size:
        raise ValueError(
            f"guard reply of {len(payload)} bytes is not a whole number of "
            f"{GUARD_REC.size}-byte records"
        )
    return [
        GuardRecord(lid, direction, frames, p99, mx, worker, queue)
        for lid, direction, frames, p99, mx, queue in GUARD_REC.iter_unpack(payload)
    ]


def queue_backlog(ends: Iterable[int], now_ns: int) -> int:
    """Frames of a drop-tail queue still there at ``now_ns``: its serialisation ends
    (ascending, as ``_Direction.txq`` holds them) later than ``now_ns``."""
    return sum(1 for e in ends if e > now_ns)


def dl_ifname(link_id: int, side: str) -> str:
    """Name of the delay-line end of link ``link_id`` on ``side`` ``'a'`` or ``'b'``."""
    return f"dl{link_id}{side}"


def encode_links(op: int, recs: Iterable[tuple[int, float, float, int, float, bool]]) -> bytes:
    """Encode an :data:`OP_ADD` / :data:`OP_UPDATE` message.

    Parameters
    ----------
    op : int
        :data:`OP_ADD` or :data:`OP_UPDATE`.
    recs : iterable of (link_id, delay_s, rate_bps, queue_packets, loss, up)
        ``rate_bps`` 0 or inf means unlimited.
    """
    pack = LINK_REC.pack
    body = [
        pack(lid, round(d * 1e9), 0.0 if math.isinf(r) else r, q, loss, 1 if up else 0)
        for lid, d, r, q, loss, up in recs
    ]
    return HDR.pack(op, len(body)) + b"".join(body)


def encode_access(
    recs: Iterable[tuple[int, int, int, int, int, int, float, float, float, float]],
) -> bytes:
    """Encode an :data:`OP_ACCESS` message: records of (link_id, direction, constant_ns,
    frame_ns, grant_min_ns, grant_max_ns, p, r, loss_bad, loss_good)."""
    body = [ACCESS_REC.pack(*r) for r in recs]
    return HDR.pack(OP_ACCESS, len(body)) + b"".join(body)


def encode_ids(op: int, ids: Sequence[int]) -> bytes:
    """Encode an :data:`OP_REMOVE` message (or any op with id records)."""
    return HDR.pack(op, len(ids)) + struct.pack(f"<{len(ids)}I", *ids)


# ---- the data path ------------------------------------------------------------------------
class _Direction:
    """One direction of a link: frames arriving on ``ifindex`` leave through ``send``."""

    __slots__ = (
        "link_id",
        "side",
        "addr",
        "delay_ns",
        "ns_per_byte",
        "limit",
        "loss",
        "up",
        "free_ns",
        "last_dep",
        "txq",
        "pkts",
        "bytes",
        "drops",
        "alive",
        "g_frames",
        "g_max",
        "g_hist",
        "acc",
        "a_const",
        "a_frame",
        "a_gmin",
        "a_gspan",
        "ge",
        "ge_p",
        "ge_r",
        "ge_lb",
        "ge_lg",
        "ge_bad",
    )

    def __init__(self, link_id: int, side: int, out_ifname: str):
        self.link_id = link_id
        self.side = side
        self.addr = (out_ifname, 0)
        self.g_frames = self.g_max = 0  # the guard since the last OP_GUARD
        self.g_hist: dict[int, int] = {}
        self.free_ns = 0
        self.last_dep = 0
        self.txq: deque[int] = deque()
        self.pkts = self.bytes = self.drops = 0
        self.alive = True
        self.set_access(0, 0, 0, 0, 0.0, 1.0, 1.0, 0.0)

    def set_access(
        self,
        const_ns: int,
        frame_ns: int,
        gmin_ns: int,
        gmax_ns: int,
        p: float,
        r: float,
        loss_bad: float,
        loss_good: float,
    ) -> None:
        """Set the access model (zeros and ``p`` 0: none; see the module docstring)."""
        self.a_const, self.a_frame, self.a_gmin = const_ns, frame_ns, gmin_ns
        self.a_gspan = max(0, gmax_ns - gmin_ns)
        self.acc = bool(const_ns or frame_ns or gmin_ns or self.a_gspan)
        self.ge = p > 0
        self.ge_p, self.ge_r, self.ge_lb, self.ge_lg = p, r, loss_bad, loss_good
        self.ge_bad = False

    def ge_lost(self, rnd: Callable[[], float]) -> bool:
        """One step of the Gilbert-Elliott chain: whether this frame is lost (by the state
        it finds), then the state's move."""
        if self.ge_bad:
            lost = rnd() < self.ge_lb
            if rnd() < self.ge_r:
                self.ge_bad = False
        else:
            lost = rnd() < self.ge_lg
            if rnd() < self.ge_p:
                self.ge_bad = True
        return lost

    def access_ready(self, t: int, rnd: Callable[[], float]) -> int:
        """When a frame ready at ``t`` (ns) may take the propagation: after its grant, at
        the next frame boundary, plus the constant."""
        t += self.a_gmin
        if self.a_gspan:
            t += int(rnd() * self.a_gspan)
        f = self.a_frame
        if f:
            t = -(-t // f) * f
        return t + self.a_const

    def configure(self, delay_ns: int, rate_bps: float, limit: int, loss: float, up: int) -> None:
        self.delay_ns = delay_ns
        self.ns_per_byte = 8e9 / rate_bps if rate_bps > 0 else 0.0
        self.limit = limit
        self.loss = loss
        self.up = bool(up)


def _bpf_ifindex_filter(workers: int, wid: int) -> tuple[bytes, ctypes.Array]:
    """A classic BPF program accepting frames whose ingress ifindex % workers == wid."""
    ld_w_abs, alu_mod_k, jmp_jeq_k, ret_k = 0x20, 0x94, 0x15, 0x06
    prog = [
        (ld_w_abs, 0, 0, (SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF),
        (alu_mod_k, 0, 0, workers),
        (jmp_jeq_k, 0, 1, wid),
        (ret_k, 0, 0, 0x40000),
        (ret_k, 0, 0, 0),
    ]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in prog))
    fprog = struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(buf))
    return fprog, buf


class DelayLine:
    """The forwarding loop of one worker (runs in the delay-line namespace).

    Parameters
    ----------
    workers, wid : int
        Number of workers sharing the namespace, and this worker's index.
    ctrl_in, ctrl_out : int
        File descriptors of the control channel.
    """

    def __init__(self, workers: int = 1, wid: int = 0, ctrl_in: int = 0, ctrl_out: int = 1):
        self.workers = workers
        self.wid = wid
        self.ctrl_in = ctrl_in
        self.ctrl_out = ctrl_out
        self.dirs: dict[int, _Direction] = {}  # ingress ifindex -> direction
        self.links: dict[int, list[_Direction]] = {}  # link id -> its directions (owned)
        self.ifidx: dict[int, tuple[int, int]] = {}  # link id -> (ifindex a', ifindex b')
        self.heap: list = []
        self.seq = itertools.count()
        self.unknown = 0
        self.truncated = 0
        self.rnd = random.random
        self.spin_ns = SPIN_NS
        self.spin_budget_ns = int(SPIN_BUDGET * SPIN_WINDOW_NS)
        self._buf = b""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # stamp skbs at netif_rx
        if workers > 1:
            fprog, self._bpf = _bpf_ifindex_filter(workers, wid)
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        frames = _BLOCK_SIZE // _FRAME_SIZE * _BLOCK_NR
        s.setsockopt(
            SOL_PACKET,
            PACKET_RX_RING,
            struct.pack("<IIII", _BLOCK_SIZE, _BLOCK_NR, _FRAME_SIZE, frames),
        )
        self.ring = mmap.mmap(
            s.fileno(), _BLOCK_SIZE * _BLOCK_NR, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self.nframes = frames
        self.head = 0
        self.rx = s
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        os.set_blocking(ctrl_in, False)

    # -- control ---------------------------------------------------------------------------
    def _reply(self, status: int, payload: bytes = b"") -> None:
        data = HDR.pack(status, len(payload)) + payload
        while data:
            n = os.write(self.ctrl_out, data)
            data = data[n:]

    def _add(self, recs: list[tuple]) -> None:
        missing = []
        for lid, delay_ns, rate, limit, loss, up in recs:
            names = (dl_ifname(lid, "a"), dl_ifname(lid, "b"))
            try:
                idx = (socket.if_nametoindex(names[0]), socket.if_nametoindex(names[1]))
            except OSError:
                missing.append(lid)
                continue
            if lid in self.links:
                self._remove([lid])
            owned = []
            for k in (0, 1):
                if idx[k] % self.workers != self.wid:
                    continue
                d = _Direction(lid, k, names[1 - k])
                d.configure(delay_ns, rate, limit, loss, up)
                self.dirs[idx[k]] = d
                owned.append(d)
            self.links[lid] = owned
            self.ifidx[lid] = idx
        if missing:
            raise LookupError(
                f"no delay-line interfaces for link ids {missing[:10]} "
                f"({len(missing)} in all); create them before adding the links"
            )

    def _update(self, recs: list[tuple]) -> None:
        unknown = []
        for lid, delay_ns, rate, limit, loss, up in recs:
            ds = self.links.get(lid)
            if ds is None:
                unknown.append(lid)
                continue
            for d in ds:
                d.configure(delay_ns, rate, limit, loss, up)
        if unknown:
            raise LookupError(f"update of unknown link ids {unknown[:10]} ({len(unknown)} in all)")

    def _access(self, recs: list[tuple]) -> None:
        unknown = []
        for lid, side, const, frame, gmin, gmax, p, r, lb, lg in recs:
            ds = self.links.get(lid)
            if ds is None:
                unknown.append(lid)
                continue
            for d in ds:
                if d.side == side:
                    d.set_access(const, frame, gmin, gmax, p, r, lb, lg)
        if unknown:
            raise LookupError(
                f"access model of unknown link ids {unknown[:10]} ({len(unknown)} in all)"
            )

    def _remove(self, ids: Iterable[int]) -> None:
        for lid in ids:
            for d in self.links.pop(lid, ()):
                d.alive = False
            for i in self.ifidx.pop(lid, ()):
                self.dirs.pop(i, None)

    def _counters(self) -> bytes:
        pack = CNT_REC.pack
        out = []
        for lid, ds in self.links.items():
            out.append(
                pack(
                    lid, sum(d.pkts for d in ds), sum(d.bytes for d in ds), sum(d.drops for d in ds)
                )
            )
        return b"".join(out)

    def _guard(self) -> bytes:
        pack = GUARD_REC.pack
        out = []
        merged: dict[int, int] = {}
        n_all = max_all = 0
        now = time.time_ns()  # CLOCK_REALTIME: the clock of the ring's timestamps
        for lid, ds in self.links.items():
            for d in ds:
                queue = queue_backlog(d.txq, now) if d.txq else 0
                if not d.g_frames and not queue:
                    continue
                out.append(
                    pack(
                        lid,
                        d.side,
                        d.g_frames,
                        lateness_p99(d.g_hist, d.g_frames, d.g_max),
                        d.g_max,
                        queue,
                    )
                )
                for b, c in d.g_hist.items():
                    merged[b] = merged.get(b, 0) + c
                n_all += d.g_frames
                max_all = max(max_all, d.g_max)
                d.g_frames = d.g_max = 0
                d.g_hist = {}
        _, ring_drops = struct.unpack("<II", self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        out.append(
            pack(
                WORKER_LINK_ID,
                self.wid,
                ring_drops,
                lateness_p99(merged, n_all, max_all),
                max_all,
                0,
            )
        )
        return b"".join(out)

    def _control(self) -> bool:
        """Read and run pending control messages; return False on EOF or QUIT."""
        try:
            chunk = os.read(self.ctrl_in, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        buf = self._buf + chunk
        while len(buf) >= HDR.size:
            op, n = HDR.unpack_from(buf)
            size = {
                OP_ADD: LINK_REC.size,
                OP_UPDATE: LINK_REC.size,
                OP_REMOVE: ID_REC.size,
                OP_ACCESS: ACCESS_REC.size,
            }.get(op, 0) * n
            if len(buf) < HDR.size + size:
                break
            body = memoryview(buf)[HDR.size : HDR.size + size]
            buf = buf[HDR.size + size :]
            if op == OP_QUIT:
                self._reply(ST_OK)
                return False
            try:
                if op == OP_ADD:
                    self._add(list(LINK_REC.iter_unpack(body)))
                    payload = b""
                elif op == OP_UPDATE:
                    self._update(list(LINK_REC.iter_unpack(body)))
                    payload = b""
                elif op == OP_REMOVE:
                    self._remove([i for (i,) in ID_REC.iter_unpack(body)])
                    payload = b""
                elif op == OP_ACCESS:
                    self._access(list(ACCESS_REC.iter_unpack(body)))
                    payload = b""
                elif op == OP_COUNTERS:
                    payload = self._counters()
                elif op == OP_GUARD:
                    payload = self._guard()
                else:
                    raise ValueError(
                        f"unknown control operation {op!r}; valid: "
                        f"{OP_ADD, OP_UPDATE, OP_REMOVE, OP_COUNTERS, OP_QUIT, OP_GUARD, OP_ACCESS}"
                    )
            except Exception as exc:  # reported to the parent, which raises it
                self._reply(ST_ERROR, str(exc).encode())
                continue
            self._reply(ST_OK, payload)
        self._buf = buf
        return True

    # -- data path -------------------------------------------------------------------------
    def _drain(self, max_frames: int = RX_BATCH) -> None:
        """Take the frames the kernel has put in the ring (at most ``max_frames``, so that
        departures are not starved when frames come faster than this process can take them)
        and schedule them."""
        ring = self.ring
        head = self.head
        nframes = self.nframes
        dirs = self.dirs
        heap = self.heap
        push = heapq.heappush
        seq = self.seq
        rnd = self.rnd
        unpack = _TP2.unpack_from
        for _ in range(max_frames):
            off = head * _FRAME_SIZE
            if not ring[off] & TP_STATUS_USER:
                break
            _, length, snap, mac, _, sec, nsec, _, _, ifindex = unpack(ring, off)
            d = dirs.get(ifindex)
            if d is None:
                self.unknown += 1
            elif snap < length:
                self.truncated += 1
                d.drops += 1
            elif not d.up or (d.ge and d.ge_lost(rnd)) or (d.loss and rnd() < d.loss):
                d.drops += 1
            else:
                t = sec * 1_000_000_000 + nsec
                npb = d.ns_per_byte
                if npb:
                    txq = d.txq
                    while txq and txq[0] <= t:
                        txq.popleft()
                    if len(txq) >= d.limit:
                        d.drops += 1
                        ring[off : off + 4] = b"\0\0\0\0"
                        head = head + 1 if head + 1 < nframes else 0
                        continue
                    free = d.free_ns
                    end = (t if t > free else free) + int(length * npb)
                    d.free_ns = end
                    txq.append(end)
                    dep = (d.access_ready(end, rnd) if d.acc else end) + d.delay_ns
                else:
                    dep = (d.access_ready(t, rnd) if d.acc else t) + d.delay_ns
                if dep < d.last_dep:
                    dep = d.last_dep
                d.last_dep = dep
                push(heap, (dep, next(seq), d, ring[off + mac : off + mac + snap]))
            ring[off : off + 4] = b"\0\0\0\0"
            head = head + 1 if head + 1 < nframes else 0
        self.head = head

    def run(self) -> None:
        """Forward frames until the control channel closes."""
        heap = self.heap
        pop = heapq.heappop
        clock = time.time_ns
        rxfd = self.rx.fileno()
        ctrl = self.ctrl_in
        drain = self._drain
        rlist = [rxfd, ctrl]
        ring = self.ring
        sendto = self.tx.sendto
        self._reply(ST_OK, b"ready")
        budget = self.spin_budget_ns
        window_start = clock()
        spun = 0  # ns spent spinning in the current window
        spin_from = 0  # when the current spin began (0: not spinning)
        while True:
            drain()
            now = clock()
            while heap and heap[0][0] <= now:
                dep, _, d, data = pop(heap)
                if d.alive:
                    # the guard: lateness = actual send time - scheduled departure, the
                    # send time taken as the call begins (a veth runs the receiver's stack
                    # inside the call: the time after it overstates the departure)
                    late = clock() - dep
                    try:
                        sendto(data, d.addr)
                    except OSError:
                        d.drops += 1
                        continue
                    d.pkts += 1
                    d.bytes += len(data)
                    if late < 32:
                        b = late = late if late > 0 else 0
                    else:
                        s = late.bit_length() - 5
                        b = (s << 4) + (late >> s) if s < 32 else LATENESS_BUCKETS - 1
                    d.g_frames += 1
                    if late > d.g_max:
                        d.g_max = late
                    h = d.g_hist
                    h[b] = h.get(b, 0) + 1
            if spin_from:
                spun += now - spin_from
                spin_from = 0
            if now - window_start >= SPIN_WINDOW_NS:
                window_start, spun = now, 0
            if heap:
                wait = heap[0][0] - now
                if wait <= self.spin_ns and spun < budget:
                    # spin: next departure is close; keep picking up frames meanwhile
                    spin_from = now
                    if not ring[self.head * _FRAME_SIZE] & TP_STATUS_USER:
                        r, _, _ = select.select([ctrl], [], [], 0)
                        if r and not self._control():
                            return
                    continue
                timeout = max(0, wait - self.spin_ns) / 1e9 if spun < budget else wait / 1e9
            else:
                timeout = None
            r, _, _ = select.select(rlist, [], [], timeout)
            if ctrl in r and not self._control():
                return


#: Real-time priority of the delay line (SCHED_FIFO). netem runs in the kernel's softirq,
#: ahead of every process; under CFS a busy machine (traffic agents, the routing process)
#: delayed the delay line's wake-ups by up to ~1 ms per hop. The kernel's RT throttling
#: (``kernel.sched_rt_runtime_us``, 95 % by default) keeps it from starving the machine.
RT_PRIORITY = 10


#: The CPU latency QoS request this worker holds while it runs (:mod:`meshemu.linux.pmqos`).
_CPU_LATENCY = CpuLatencyRequest(0)


def _prepare_process() -> bool:
    """Per-process tuning: real-time scheduling, fine timer slack, no IPv6 in this
    namespace, the CPU latency request. Returns whether real-time scheduling is on."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    _CPU_LATENCY.hold()
    realtime = True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except OSError as exc:
        realtime = False  # e.g. a container without CAP_SYS_NICE: still correct, less exact
        log.warning("cannot use real-time scheduling (%s); delays may be late under load", exc)
        try:
            os.nice(-10)
        except OSError:
            pass
    # a' and b' carry no addresses: keep the kernel from sending IPv6 DAD/RS/MLD on them
    for key in ("default", "all"):
        try:
            write_sysctls({f"net.ipv6.conf.{key}.disable_ipv6": 1})
        except CommandError:
            pass
    return realtime


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m meshemu.live.delayline``."""
    p = argparse.ArgumentParser(
        prog="python -m meshemu.live.delayline",
        description="meshemu userspace delay line (started by the "
        "userspace shaper; not meant to be run by hand)",
    )
    p.add_argument("--run-id", required=True, help="run this delay line belongs to")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--worker", type=int, default=0)
    args = p.parse_args(argv)
    # Ctrl-C and a closed terminal reach the whole process group; the shaper that started this
    # process tears it down (QUIT, or EOF on stdin), so those signals are not for it.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if not 0 <= args.worker < args.workers:
        p.error(f"--worker {args.worker} not in 0..{args.workers - 1}")
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"delayline[{args.run_id}/{args.worker}] %(levelname)s %(message)s",
    )
    realtime = _prepare_process()
    dl = DelayLine(args.workers, args.worker, 0, 1)
    if not realtime:  # no RT throttling to fear, and no budget needed
        dl.spin_budget_ns = SPIN_WINDOW_NS
    dl.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

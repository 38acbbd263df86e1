"""The agents' transport: one UDP socket, reliable paced messages, and the measurement files.

One UDP socket on port :data:`~meshemu.traffic.header.PORT` carries everything, each packet
starting with :class:`~meshemu.traffic.header.MeshemuHeader` (built once per message with
Scapy, patched per packet with ``struct.pack_into``); receive times are the kernel's
(``SO_TIMESTAMPNS``).

Reliable messages (collective transfers, inference requests and responses): the sender
paces the message's fragments at the transfer's rate and flags the last packet of each
sending round (``F_LAST``); a receiver that sees ``F_LAST`` while fragments are missing
answers with a NACK listing them (sent again by the sender at once); a complete message is
ACKed. If neither ACK nor NACK arrives within the retransmission timeout (:data:`RTO_NS`,
doubling up to :data:`RTO_MAX_NS`, at least twice the smoothed RTT plus
:data:`RTO_MARGIN_NS`), the sender re-sends the last fragment as a probe. UDP rather than
TCP so that a transfer's duration is ``delay + bytes / rate`` from the first packet (no
slow start, no idle restart), which is what the alpha-beta prediction
(:mod:`meshemu.traffic.schedule`) models, and so that every packet has its own send
timestamp for one-way delays. Unreliable packets (bulk, replay) go out through
:meth:`Transport.send_datagram`.

Measurement files, ``<out>/<node>.*.csv`` without header lines (the runtime merges them,
:mod:`meshemu.traffic.collection`), kept by :class:`AgentFiles`:

- ``packets``: ``flow_id,msg_id,seq,src,dst,size_bytes,send_unix_ns,recv_unix_ns,owd_ms``,
  one row per received data packet (every n-th for the flows the config samples);
- ``iterations``: ``job,iteration,rank,start_unix_ns,end_unix_ns``;
- ``rtt``: ``flow_id,msg_id,src,dst,send_unix_ns,rtt_ms``, one row per acknowledged
  reliable message: from the send of its last fragment to the arrival of the ACK;
- ``inference``: ``request_id,user,server,send_unix,done_unix,latency_ms,deadline_ms,
  missed``.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TextIO

from meshemu.traffic import header as H
from meshemu.traffic.config import COUNTERS

#: Linux SO_TIMESTAMPNS (x86_64, arm64 generic ABI); SCM_TIMESTAMPNS has the same value.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
#: First retransmission timeout and its ceiling (ns).
RTO_NS = 300_000_000
RTO_MAX_NS = 2_000_000_000
#: The RTO is at least twice the smoothed RTT to the peer (from ACKs) plus this (ns).
RTO_MARGIN_NS = 50_000_000
#: A paced sender that fell behind (the agent did not get the CPU in time) catches up at
#: most this much lost time in one burst (ns); beyond it the lost time is not made up.
MAX_BURST_NS = 50_000_000
#: NACK payload: fragment numbers as big-endian u16.
NACK_MAX = H.MAX_PAYLOAD // 2
_U16 = struct.Struct("!H")
#: Errors of ``sendto`` that mean "no route right now": counted, not raised.
_UNREACHABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL)

#: A scheduler: ``at(t_ns, fn)`` calls ``fn()`` at unix time ``t_ns``.
Scheduler = Callable[[int, Callable[[], None]], None]
#: What happens when a reliable message has arrived completely: ``fn(src_name, msg_id)``.
Handler = Callable[[str, int], None]


class OutMsg:
    """A message being sent: paced fragments, retransmissions, ACK."""

    __slots__ = (
        "flow_id",
        "msg_id",
        "dst",
        "n_frags",
        "msg_bytes",
        "interval_ns",
        "buf",
        "last_len",
        "pending",
        "queued",
        "next_ns",
        "reliable",
        "done",
        "rto_ns",
        "rto_gen",
        "first_send_ns",
        "sent",
        "sent_once",
        "last_send_ns",
        "ns_per_byte",
    )

    def __init__(
        self,
        flow_id: int,
        msg_id: int,
        dst: tuple[str, int],
        msg_bytes: int,
        rate_bps: float,
        reliable: bool,
    ):
        self.flow_id = flow_id
        self.msg_id = msg_id
        self.dst = dst
        self.msg_bytes = msg_bytes
        self.n_frags = max(1, -(-msg_bytes // H.MAX_PAYLOAD))
        full = min(msg_bytes, H.MAX_PAYLOAD)
        self.buf = H.template(
            flow_id,
            msg_id & 0xFFFFFFFF,
            self.n_frags,
            msg_bytes,
            full,
            flags=H.F_RELIABLE if reliable else 0,
        )
        self.last_len = H.HEADER_BYTES + (msg_bytes - (self.n_frags - 1) * H.MAX_PAYLOAD)
        # pacing counts Ethernet frames, as the shaper does: after sending n bytes of
        # packet body the next packet waits (n + IP/UDP + Ethernet headers) * 8 / rate
        self.ns_per_byte = 8e9 / rate_bps
        self.interval_ns = int((H.MAX_IP_BYTES + H.ETH_BYTES) * self.ns_per_byte)
        self.pending: deque[int] = deque(range(self.n_frags))
        self.queued = bytearray(b"\x01") * self.n_frags
        self.next_ns = 0
        self.reliable = reliable
        self.done = False
        self.rto_ns = RTO_NS
        self.rto_gen = 0
        self.first_send_ns = 0
        self.sent = 0
        self.sent_once = bytearray(self.n_frags)
        self.last_send_ns = 0


class InMsg:
    """A reliable message being received: which fragments have arrived."""

    __slots__ = ("got", "count", "n_frags", "complete")

    def __init__(self, n_frags: int):
        self.got: bytes | bytearray = bytearray(n_frags)
        self.count = 0
        self.n_frags = n_frags
        self.complete = False


class AgentFiles:
    """The agent's measurement files ``<prefix>.{packets,iterations,inference,rtt}.csv``."""

    def __init__(self, prefix: Path | str):
        self.iterations: TextIO = open(f"{prefix}.iterations.csv", "a")
        self.inference: TextIO = open(f"{prefix}.inference.csv", "a")
        self.rtt: TextIO = open(f"{prefix}.rtt.csv", "a")
        self.packets: TextIO = open(f"{prefix}.packets.csv", "a", buffering=1 << 20)

    def _all(self) -> tuple[TextIO, ...]:
        return (self.packets, self.iterations, self.inference, self.rtt)

    def flush(self) -> None:
        """Flush every file."""
        for f in self._all():
            f.flush()

    def close(self) -> None:
        """Flush and close every file."""
        for f in self._all():
            f.close()


class Transport:
    """The node's socket: reliable messages (paced, NACK/RTO), datagrams, receiving.

    Parameters
    ----------
    node : str
        The node's name (the ``src``/``dst`` of its rows).
    addrs : mapping of str to str
        Node names to addresses (received packets are named by their source's name).
    bind : str
        Address to bind to.
    files : AgentFiles
        Where received packets and round trips are recorded.
    at : Scheduler
        Timers (retransmission timeouts).
    sample : mapping of int to int
        Flows whose received packets are recorded every n-th only.
    drop_every : int
        Test hook: drop every n-th received data packet (0: none).
    """

    def __init__(
        self,
        node: str,
        addrs: Mapping[str, str],
        bind: str,
        files: AgentFiles,
        at: Scheduler,
        sample: Mapping[int, int] | None = None,
        drop_every: int = 0,
    ):
        self.node = node
        self.addrs = dict(addrs)
        self.names_by_addr = {a: n for n, a in self.addrs.items()}
        self.files = files
        self.at = at
        self.sample = dict(sample or {})
        self.sample_count: dict[int, int] = {}
        self.drop_every = drop_every
        self.rx_seen = 0
        self.stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.active: list[OutMsg] = []
        self.out_msgs: dict[tuple[int, int], OutMsg] = {}
        self.in_msgs: dict[tuple[str, int, int], InMsg] = {}
        #: Per flow: what to do with a complete reliable message addressed to this node.
        self.handlers: dict[int, Handler] = {}
        self.flow_seq: dict[int, int] = {}
        self.srtt: dict[str, float] = {}
        self._buf = bytearray(2048)
        self.sock = self._open(bind)

    def _open(self, bind: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # big buffers: a busy agent must not drop what arrives meanwhile (the *FORCE options
        # ignore net.core.rmem_max/wmem_max; they need CAP_NET_ADMIN, which agents have)
        for force, opt in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
            for o in (force, opt):
                try:
                    s.setsockopt(socket.SOL_SOCKET, o, 8 << 20)
                    break
                except OSError:
                    continue
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_ts = True
        except OSError:
            self.kernel_ts = False
        s.bind((bind, H.PORT))
        s.setblocking(False)
        return s

    def fileno(self) -> int:
        """The socket's file descriptor (for ``select``)."""
        return self.sock.fileno()

    def name_of(self, addr: str) -> str:
        """The node name of address ``addr`` (the address itself when unknown)."""
        return self.names_by_addr.get(addr, addr)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    # -- sending -----------------------------------------------------------------------------
    def send_message(
        self, flow_id: int, msg_id: int, dst: str, nbytes: int, rate_bps: float, reliable: bool
    ) -> OutMsg:
        """Queue a message of ``nbytes`` to node (or address) ``dst``, paced at ``rate_bps``;
        its fragments go out from :meth:`send_due`."""
        addr = self.addrs.get(dst, dst)
        m = OutMsg(flow_id, msg_id, (addr, H.PORT), nbytes, rate_bps, reliable)
        m.next_ns = time.time_ns()
        self.out_msgs[(flow_id, msg_id & 0xFFFFFFFF)] = m
        self.active.append(m)
        return m

    def send_datagram(self, data: memoryview, addr: tuple[str, int]) -> bool:
        """Send one unreliable packet; False when the socket buffer is full (try later).
        A missing route counts in ``send_errors`` (and as sent)."""
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            return False
        except OSError as exc:  # no route right now: count and go on
            self.stats["send_errors"] += 1
            if exc.errno not in _UNREACHABLE:
                raise
        self.stats["sent_packets"] += 1
        return True

    def next_due(self) -> int:
        """The earliest due time of a queued fragment (0: none)."""
        return min((m.next_ns for m in self.active), default=0)

    def send_due(self, now: int) -> int:
        """Send every due fragment; return the earliest next due time (0: nothing)."""
        nxt = 0
        keep = []
        for m in self.active:
            if m.done:
                continue
            self._send_msg(m, now)
            if m.pending:
                keep.append(m)
                nxt = m.next_ns if not nxt else min(nxt, m.next_ns)
        self.active = keep
        return nxt

    def _send_msg(self, m: OutMsg, now: int) -> None:
        """The due fragments of ``m``."""
        sock = self.sock
        stats = self.stats
        buf = m.buf
        mv = memoryview(buf)
        while m.pending and m.next_ns <= now:
            frag = m.pending[0]
            last = len(m.pending) == 1
            flags = (H.F_RELIABLE if m.reliable else 0) | (H.F_LAST if last else 0)
            t = time.time_ns()
            seq = self.flow_seq.get(m.flow_id, 0)
            H.patch_fast(buf, seq, frag, m.n_frags, t, flags)
            n = m.last_len if frag == m.n_frags - 1 else len(buf)
            try:
                sock.sendto(mv[:n], m.dst)
            except BlockingIOError:
                break
            except OSError as exc:
                stats["send_errors"] += 1
                if exc.errno not in _UNREACHABLE:
                    raise
            m.pending.popleft()
            m.queued[frag] = 0
            self.flow_seq[m.flow_id] = (seq + 1) & 0xFFFFFFFF
            if m.sent_once[frag]:
                stats["retransmissions"] += 1
            m.sent_once[frag] = 1
            if not m.first_send_ns:
                m.first_send_ns = t
            m.last_send_ns = t
            m.sent += 1
            stats["sent_packets"] += 1
            gap = (
                m.interval_ns
                if n == len(buf)
                else int((n + H.IP_UDP_BYTES + H.ETH_BYTES) * m.ns_per_byte)
            )
            m.next_ns = max(m.next_ns + gap, now - MAX_BURST_NS)
            if last:
                if m.reliable:
                    self._arm_rto(m, now)
                else:
                    m.done = True

    def _arm_rto(self, m: OutMsg, now: int) -> None:
        m.rto_gen += 1
        gen = m.rto_gen
        srtt = self.srtt.get(m.dst[0])
        rto = m.rto_ns if srtt is None else max(m.rto_ns, int(2 * srtt) + RTO_MARGIN_NS)
        self.at(now + rto, lambda: self._rto(m, gen))

    def _rto(self, m: OutMsg, gen: int) -> None:
        if m.done or gen != m.rto_gen or m.pending:
            return
        # probe: the last fragment again (F_LAST makes the receiver NACK or ACK)
        self.stats["probes"] += 1
        m.rto_ns = min(2 * m.rto_ns, RTO_MAX_NS)
        self._requeue(m, [m.n_frags - 1])

    def _requeue(self, m: OutMsg, frags: Iterable[int]) -> None:
        was_idle = not m.pending
        for f in frags:
            if 0 <= f < m.n_frags and not m.queued[f]:
                m.queued[f] = 1
                m.pending.append(f)
        if was_idle and m.pending:
            m.next_ns = max(m.next_ns, time.time_ns())
            self.active.append(m)

    def _control(
        self, kind: int, flow_id: int, msg_id: int, dst: str, payload: bytes = b""
    ) -> None:
        pkt = (
            bytearray(
                H.HEADER.pack(
                    H.MAGIC, H.VERSION, kind, flow_id, msg_id, 0, 0, 1, time.time_ns(), 0, 0, 0
                )
            )
            + payload
        )
        try:
            self.sock.sendto(pkt, (dst, H.PORT))
        except OSError:
            self.stats["send_errors"] += 1

    # -- receiving ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Receive what has arrived (at most 2000 packets): record data packets, reassemble
        reliable messages (calling their handler when complete), take ACKs and NACKs."""
        sock = self.sock
        buf = self._buf
        mv = memoryview(buf)
        anc = socket.CMSG_SPACE(_TIMESPEC.size)
        rows: list[str] = []
        for _ in range(2000):
            try:
                n, ancdata, _, addr = sock.recvmsg_into([mv], anc)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if n < H.HEADER_BYTES:
                continue
            rx = 0
            for lvl, typ, data in ancdata:
                if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    rx = sec * 1_000_000_000 + nsec
            if not rx:
                rx = time.time_ns()
            (magic, _v, kind, flow, mid, seq, frag, nfr, sent, _mbytes, flags, _r) = (
                H.HEADER.unpack_from(buf, 0)
            )
            if magic != H.MAGIC:
                continue
            src = addr[0]
            if kind == H.DATA:
                if self.drop_every:
                    self.rx_seen += 1
                    if self.rx_seen % self.drop_every == 0:  # simulated loss (tests)
                        continue
                self._on_data(rows, src, n, flow, mid, seq, frag, nfr, sent, rx, flags)
            elif kind == H.ACK:
                self._on_ack(src, flow, mid, rx)
            elif kind == H.NACK:
                self._on_nack(flow, mid, bytes(buf[H.HEADER_BYTES : n]))
        if rows:
            self.files.packets.write("".join(rows))

    def _on_data(
        self,
        rows: list[str],
        src: str,
        n: int,
        flow: int,
        mid: int,
        seq: int,
        frag: int,
        nfr: int,
        sent: int,
        rx: int,
        flags: int,
    ) -> None:
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += n + H.IP_UDP_BYTES
        every = self.sample.get(flow)
        if every:
            c = self.sample_count.get(flow, 0)
            self.sample_count[flow] = c + 1
            record = c % every == 0
        else:
            record = True
        if record:
            rows.append(
                f"{flow},{mid},{seq},{self.name_of(src)},{self.node},"
                f"{n + H.IP_UDP_BYTES},{sent},{rx},{(rx - sent) / 1e6:.4f}\n"
            )
        if flags & H.F_RELIABLE:
            self._on_reliable(src, flow, mid, frag, nfr, flags)

    def _on_ack(self, src: str, flow: int, mid: int, rx: int) -> None:
        m = self.out_msgs.pop((flow, mid), None)
        if m is None or m.done:
            return
        m.done = True
        m.pending.clear()
        self.stats["messages_acked"] += 1
        # smoothed RTT per peer (RFC 6298's alpha = 1/8), for the RTO
        sample = rx - m.last_send_ns
        self.files.rtt.write(
            f"{flow},{mid},{self.node},{self.name_of(src)},{m.last_send_ns},{sample / 1e6:.4f}\n"
        )
        old = self.srtt.get(src)
        self.srtt[src] = sample if old is None else 0.875 * old + 0.125 * sample

    def _on_nack(self, flow: int, mid: int, payload: bytes) -> None:
        m = self.out_msgs.get((flow, mid))
        self.stats["nacks_received"] += 1
        if m is not None and not m.done:
            missing = [x[0] for x in _U16.iter_unpack(payload)]
            m.rto_ns = RTO_NS
            m.rto_gen += 1
            self._requeue(m, missing)

    def _on_reliable(self, src: str, flow: int, mid: int, frag: int, nfr: int, flags: int) -> None:
        key = (src, flow, mid)
        im = self.in_msgs.get(key)
        if im is None:
            im = self.in_msgs[key] = InMsg(nfr)
        if im.complete:
            if flags & H.F_LAST:
                self._control(H.ACK, flow, mid, src)
                self.stats["acks_sent"] += 1
            return
        if frag < im.n_frags and not im.got[frag]:
            im.got[frag] = 1  # type: ignore[index]
            im.count += 1
        if im.count == im.n_frags:
            im.complete = True
            im.got = b""
            self._control(H.ACK, flow, mid, src)
            self.stats["acks_sent"] += 1
            self.stats["messages_received"] += 1
            h = self.handlers.get(flow)
            if h is not None:
                h(self.name_of(src), mid)
        elif flags & H.F_LAST:
            missing = [i for i in range(im.n_frags) if not im.got[i]]
            for k in range(0, len(missing), NACK_MAX):
                part = missing[k : k + NACK_MAX]
                self._control(H.NACK, flow, mid, src, struct.pack(f"!{len(part)}H", *part))
                self.stats["nacks_sent"] += 1

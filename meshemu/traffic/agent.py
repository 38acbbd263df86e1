"""The traffic agent: one process per node, sending and receiving that node's traffic.

Run inside a node's namespace by :mod:`meshemu.traffic.runtime`::

    python -m meshemu.traffic.agent CONFIG.json

One UDP socket on port :data:`~meshemu.traffic.header.PORT` carries everything, each packet
starting with :class:`~meshemu.traffic.header.MeshemuHeader` (built once per message with
Scapy, patched per packet with ``struct.pack_into``). One thread, one event loop: paced
senders, timers, and a receive loop using kernel receive timestamps (``SO_TIMESTAMPNS``).

Transport. Collective transfers, inference requests and responses are *reliable messages*
over UDP: the sender paces the message's fragments at the transfer's rate and flags the
last packet of each sending round (``F_LAST``); a receiver that sees ``F_LAST`` while
fragments are missing answers with a NACK listing them (sent again by the sender at once);
a complete message is ACKed. If neither ACK nor NACK arrives within the retransmission
timeout (:data:`RTO_NS`, doubling up to :data:`RTO_MAX_NS`), the sender re-sends the last
fragment as a probe. UDP rather than TCP so that a transfer's duration is
``delay + bytes / rate`` from the first packet (no slow start, no idle restart), which is
what the alpha-beta prediction (:mod:`meshemu.traffic.schedule`) models, and so that every
packet has its own send timestamp for one-way delays. Bulk and replay flows are plain
paced UDP (no retransmission; losses show as gaps in ``seq``).

Collectives follow their plan (:func:`meshemu.traffic.schedule.collective_plan`): a node
sends transfer ``t`` of iteration ``i`` once it has started iteration ``i`` (its compute
time after finishing iteration ``i-1``) and has received every transfer in ``t.deps``;
it finishes an iteration when it has received every transfer addressed to it.

Measurements go to ``<out>/<node>.*.csv`` (no header lines; the runtime merges them),
flushed at least once a second:

- ``packets``: ``flow_id,msg_id,seq,src,dst,size_bytes,send_unix_ns,recv_unix_ns,owd_ms``,
  one row per received data packet (every ``sample`` th packet for flows the config
  samples);
- ``iterations``: ``job,iteration,rank,start_unix_ns,end_unix_ns``;
- ``rtt``: ``flow_id,msg_id,src,dst,send_unix_ns,rtt_ms``, one row per acknowledged
  reliable message: from the send of its last fragment to the arrival of the ACK (the
  transport's round trip, both paths and the receiver's turnaround);
- ``inference``: ``request_id,user,server,send_unix,done_unix,latency_ms,deadline_ms,
  missed`` (written when the response arrives, or at exit for requests without one);
- ``status.json`` at exit, and an empty ``done`` file once the node's own sending work
  (collective iterations, requests, bulk, replay) is over.

Start. The agent binds its socket, opens its files (the packets file appearing tells the
runtime it is up) and, when the config names a ``go_file``, waits for it: the runtime
writes it once every agent is up, with the traffic's time zero and end, so that slow
start-ups (tens of agents importing on two cores) do not eat into the schedule.

SIGTERM (or SIGINT) ends the agent cleanly: files are flushed and closed, exit status 0.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from meshemu.traffic import header as H

log = logging.getLogger("meshemu.traffic.agent")

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
#: Flush measurement files at least this often (ns).
FLUSH_NS = 1_000_000_000
#: The agent exits by itself this long after the end of the traffic (ns).
HARD_GRACE_NS = 30_000_000_000
#: Seconds an agent waits for the runtime's go file before giving up.
GO_TIMEOUT_S = 120.0
#: Niceness of the agents (negative: more CPU than ordinary processes; needs root).
NICE = -10
#: NACK payload: fragment numbers as big-endian u16.
NACK_MAX = H.MAX_PAYLOAD // 2
_U16 = struct.Struct("!H")


class OutMsg:
    """A message being sent: paced fragments, retransmissions, ACK."""

    __slots__ = ("flow_id", "msg_id", "dst", "n_frags", "msg_bytes", "interval_ns", "buf",
                 "last_len", "pending", "queued", "next_ns", "reliable", "on_acked", "done",
                 "rto_ns", "rto_gen", "first_send_ns", "sent", "sent_once", "last_send_ns",
                 "ns_per_byte")

    def __init__(self, flow_id: int, msg_id: int, dst: tuple[str, int], msg_bytes: int,
                 rate_bps: float, reliable: bool, on_acked: Callable | None = None):
        self.flow_id = flow_id
        self.msg_id = msg_id
        self.dst = dst
        self.msg_bytes = msg_bytes
        self.n_frags = max(1, -(-msg_bytes // H.MAX_PAYLOAD))
        full = min(msg_bytes, H.MAX_PAYLOAD)
        self.buf = H.template(flow_id, msg_id & 0xFFFFFFFF, self.n_frags, msg_bytes, full,
                              flags=H.F_RELIABLE if reliable else 0)
        self.last_len = H.HEADER_BYTES + (msg_bytes - (self.n_frags - 1) * H.MAX_PAYLOAD)
        # pacing counts Ethernet frames, as the shaper does: after sending n bytes of
        # packet body the next packet waits (n + IP/UDP + Ethernet headers) * 8 / rate
        self.ns_per_byte = 8e9 / rate_bps
        self.interval_ns = int((H.MAX_IP_BYTES + H.ETH_BYTES) * self.ns_per_byte)
        self.pending: deque[int] = deque(range(self.n_frags))
        self.queued = bytearray(b"\x01") * self.n_frags
        self.next_ns = 0
        self.reliable = reliable
        self.on_acked = on_acked
        self.done = False
        self.rto_ns = RTO_NS
        self.rto_gen = 0
        self.first_send_ns = 0
        self.sent = 0
        self.sent_once = bytearray(self.n_frags)
        self.last_send_ns = 0


class InMsg:
    __slots__ = ("got", "count", "n_frags", "complete")

    def __init__(self, n_frags: int):
        self.got = bytearray(n_frags)
        self.count = 0
        self.n_frags = n_frags
        self.complete = False


class Collective:
    """This node's part of one collective job."""

    def __init__(self, agent: Agent, c: dict):
        self.agent = agent
        self.job = c["job"]
        self.rank = int(c["rank"])
        self.nodes = c["nodes"]
        self.iterations = int(c["iterations"])
        self.compute_ns = int(c["compute_ms"] * 1e6)
        self.start_s = float(c.get("start_s", 0.0))
        self.plan = [tuple(t) for t in c["plan"]]          # (index, src, dst, nbytes, deps)
        self.flow_ids = c["flow_ids"]                       # per transfer
        self.pace = c["pace_bps"]                           # per transfer
        self.n = len(self.plan)
        self.mine_out = [t for t in self.plan if t[1] == self.rank]
        self.mine_in = {t[0] for t in self.plan if t[2] == self.rank}
        self.received: set[tuple[int, int]] = set()
        self.started_sends: set[tuple[int, int]] = set()
        self.it = -1            # iteration this node has started (-1: none yet)
        self.it_start_ns = 0
        self.finished = False
        self.flow_index = {f: i for i, f in enumerate(self.flow_ids)}

    def start(self, at_ns: int) -> None:
        self.agent.at(at_ns, lambda: self._begin(0))

    def _begin(self, it: int) -> None:
        ag = self.agent
        if it >= self.iterations or (it > 0 and time.time_ns() >= ag.end_ns):
            self.finished = True
            ag.check_done()
            return
        self.it = it
        self.it_start_ns = time.time_ns()
        self._try_send()
        self._check_iteration()

    def _try_send(self) -> None:
        it = self.it
        if it < 0:
            return
        for idx, src, dst, nbytes, deps in self.mine_out:
            key = (it, idx)
            if key in self.started_sends:
                continue
            if all((it, d) in self.received for d in deps):
                self.started_sends.add(key)
                self.agent.send_message(self.flow_ids[idx], it * self.n + idx,
                                        self.nodes[dst], nbytes, self.pace[idx], True)

    def on_message(self, msg_id: int) -> None:
        it, idx = divmod(msg_id, self.n)
        self.received.add((it, idx))
        if it == self.it:
            self._try_send()
            self._check_iteration()

    def _check_iteration(self) -> None:
        it = self.it
        if it < 0 or self.finished or not all((it, i) in self.received for i in self.mine_in):
            return
        if not all((it, t[0]) in self.started_sends for t in self.mine_out):
            return
        now = time.time_ns()
        self.agent.write_iteration(f"{self.job},{it},{self.rank},{self.it_start_ns},{now}\n")
        self.received = {k for k in self.received if k[0] > it}
        self.started_sends = {k for k in self.started_sends if k[0] > it}
        self.it = -1  # waiting for compute
        nxt = it + 1
        self.agent.at(now + self.compute_ns, lambda: self._begin(nxt))


class InferenceClient:
    def __init__(self, agent: Agent, c: dict):
        self.agent = agent
        self.user = agent.node
        self.servers = c["servers"]
        self.times_ns = [agent.start_ns + int(t * 1e9) for t in c["times_s"]]
        self.req_bytes = int(c["request_bytes"])
        self.resp_bytes = int(c["response_bytes"])
        self.deadline_ms = float(c["deadline_ms"])
        self.target = c["target"]
        self.pace = float(c["pace_bps"])
        self.flow_req = c["flow_req"]          # server -> flow id
        self.id_base = int(c["id_base"])
        self.targets_file = c.get("targets_file")
        self.order = list(self.servers)        # nearest first
        self.targets_mtime = 0.0
        self.outstanding: dict[str, int] = {s: 0 for s in self.servers}
        self.pending: dict[int, tuple[str, int]] = {}   # request id -> (server, send_ns)
        self.issued = 0
        self.finished = False

    def start(self) -> None:
        self._refresh_targets()
        self._schedule_next()

    def _schedule_next(self) -> None:
        if self.issued >= len(self.times_ns) or self.times_ns[self.issued] >= self.agent.end_ns:
            self.finished = True
            self.agent.check_done()
            return
        self.agent.at(self.times_ns[self.issued], self._issue)

    def _refresh_targets(self) -> None:
        if not self.targets_file:
            return
        try:
            m = os.stat(self.targets_file).st_mtime
            if m == self.targets_mtime:
                return
            with open(self.targets_file) as f:
                order = json.load(f).get(self.user)
            self.targets_mtime = m
        except (OSError, ValueError):
            return
        if order:
            self.order = [s for s in order if s in self.outstanding] or self.order

    def _issue(self) -> None:
        self._refresh_targets()
        if self.target == "least_loaded":
            rank = {s: i for i, s in enumerate(self.order)}
            server = min(self.order, key=lambda s: (self.outstanding[s], rank[s]))
        else:
            server = self.order[0]
        rid = self.id_base + self.issued
        self.issued += 1
        now = time.time_ns()
        self.pending[rid] = (server, now)
        self.outstanding[server] += 1
        self.agent.send_message(self.flow_req[server], rid, server, self.req_bytes, self.pace,
                                True)
        self._schedule_next()

    def on_response(self, rid: int) -> None:
        item = self.pending.pop(rid, None)
        if item is None:
            return
        server, sent = item
        self.outstanding[server] -= 1
        now = time.time_ns()
        lat = (now - sent) / 1e6
        self.agent.write_inference(
            f"{rid},{self.user},{server},{sent / 1e9:.6f},{now / 1e9:.6f},{lat:.3f},"
            f"{self.deadline_ms:g},{int(lat > self.deadline_ms)}\n")
        self.agent.check_done()

    def close(self) -> None:
        for rid, (server, sent) in sorted(self.pending.items()):
            self.agent.write_inference(f"{rid},{self.user},{server},{sent / 1e9:.6f},,,"
                                       f"{self.deadline_ms:g},1\n")
        self.pending.clear()

    @property
    def done(self) -> bool:
        return self.finished and not self.pending


class StreamSender:
    """Paced unreliable packets: constant rate (bulk) or a capture's timing (replay)."""

    def __init__(self, agent: Agent, c: dict):
        self.agent = agent
        self.flow_id = int(c["flow_id"])
        self.dst = (agent.addrs[c["dst"]], H.PORT)
        t0 = agent.start_ns + int(c["start_s"] * 1e9)
        dur = c.get("duration_s")
        self.until_ns = min(agent.end_ns, t0 + int(dur * 1e9)) if dur else agent.end_ns
        if "rate_bps" in c:
            interval = int((H.MAX_IP_BYTES + H.ETH_BYTES) * 8e9 / c["rate_bps"])
            self.offsets_ns = None
            self.interval_ns = interval
            self.sizes = None
        else:
            self.offsets_ns = [t0 + int(t * 1e9) for t in c["times_s"]]
            self.sizes = c["ip_bytes"]
            self.interval_ns = 0
        self.buf = H.template(self.flow_id, 0, 1, H.MAX_PAYLOAD, H.MAX_PAYLOAD)
        self.next_ns = t0
        self.i = 0
        self.seq = 0
        self.finished = False

    def due(self, now: int) -> int:
        """Send what is due; return the next due time (0: finished)."""
        ag = self.agent
        sock = ag.sock
        buf = self.buf
        mv = memoryview(buf)
        while not self.finished and self.next_ns <= now:
            if self.next_ns >= self.until_ns:
                self.finished = True
                ag.check_done()
                return 0
            if self.sizes is None:
                n = H.HEADER_BYTES + H.MAX_PAYLOAD
            else:
                n = int(self.sizes[self.i]) - H.IP_UDP_BYTES
            H.patch_fast(buf, self.seq, self.seq & 0xFFFF, 1, time.time_ns(), 0)
            try:
                sock.sendto(mv[:n], self.dst)
            except BlockingIOError:
                return now + 100_000
            except OSError as exc:  # no route right now: count and go on
                ag.stats["send_errors"] += 1
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                    raise
            ag.stats["sent_packets"] += 1
            self.seq += 1
            if self.sizes is None:
                self.next_ns = max(self.next_ns + self.interval_ns, now - MAX_BURST_NS)
            else:
                self.i += 1
                if self.i >= len(self.offsets_ns):
                    self.finished = True
                    ag.check_done()
                    return 0
                self.next_ns = self.offsets_ns[self.i]
        return 0 if self.finished else self.next_ns


class Agent:
    """The event loop of one node."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.node = cfg["node"]
        self.addrs: dict[str, str] = cfg["addrs"]
        self.names_by_addr = {a: n for n, a in self.addrs.items()}
        # the traffic's time zero and end (replaced by the go file's, if there is one)
        self.start_ns = int(cfg.get("start_unix_ns", 0))
        self.end_ns = int(cfg.get("end_unix_ns", 0))
        out = Path(cfg["out_dir"])
        self.prefix = out / self.node
        self.sample = {int(k): int(v) for k, v in cfg.get("sample", {}).items()}
        self.sample_count: dict[int, int] = {}
        self.stats = {"sent_packets": 0, "retransmissions": 0, "nacks_sent": 0,
                      "nacks_received": 0, "acks_sent": 0, "probes": 0, "send_errors": 0,
                      "rx_packets": 0, "rx_bytes": 0, "messages_received": 0,
                      "messages_acked": 0}
        self.stop = False
        self.timers: list = []
        self._tseq = 0
        self.active: list[OutMsg] = []
        self.out_msgs: dict[tuple[int, int], OutMsg] = {}
        self.in_msgs: dict[tuple[str, int, int], InMsg] = {}
        self.streams: list[StreamSender] = []
        self.collectives: list[Collective] = []
        self.clients: list[InferenceClient] = []
        self.handlers: dict[int, Callable[[str, int], None]] = {}
        self.done_written = False
        self.flow_seq: dict[int, int] = {}
        self.srtt: dict[str, float] = {}
        #: Test hook: drop every n-th data packet received (0: none), to exercise recovery.
        self.drop_every = int(cfg.get("drop_every", 0))
        self.rx_seen = 0

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
        s.bind((cfg.get("bind", "0.0.0.0"), H.PORT))
        s.setblocking(False)
        self.sock = s
        # the packets file appearing tells the runtime that the socket is bound
        self.f_iter = open(f"{self.prefix}.iterations.csv", "a")
        self.f_inf = open(f"{self.prefix}.inference.csv", "a")
        self.f_rtt = open(f"{self.prefix}.rtt.csv", "a")
        self.f_packets = open(f"{self.prefix}.packets.csv", "a", buffering=1 << 20)

    def _setup_roles(self) -> None:
        """Make this node's senders and message handlers (needs the final start time)."""
        cfg = self.cfg
        for c in cfg.get("collectives", []):
            col = Collective(self, c)
            self.collectives.append(col)
            for f in col.flow_ids:
                # messages to this node on the job's flows
                self.handlers[f] = (lambda src, mid, col=col: col.on_message(mid))
        for c in cfg.get("inference_clients", []):
            cl = InferenceClient(self, c)
            self.clients.append(cl)
            for f in c["flow_resp"].values():
                self.handlers[f] = (lambda src, mid, cl=cl: cl.on_response(mid))
        for f, (resp_flow, resp_bytes, pace) in cfg.get("inference_server", {}).items():
            self.handlers[int(f)] = (
                lambda src, mid, rf=resp_flow, rb=resp_bytes, pc=pace:
                self.send_message(rf, mid, self.names_by_addr.get(src, src), rb, pc, True))
        for c in cfg.get("streams", []):
            self.streams.append(StreamSender(self, c))

    # -- timers ------------------------------------------------------------------------------
    def at(self, t_ns: int, fn: Callable[[], None]) -> None:
        self._tseq += 1
        heapq.heappush(self.timers, (t_ns, self._tseq, fn))

    # -- sending -----------------------------------------------------------------------------
    def send_message(self, flow_id: int, msg_id: int, dst: str, nbytes: int, rate_bps: float,
                     reliable: bool) -> OutMsg:
        addr = self.addrs.get(dst, dst)
        m = OutMsg(flow_id, msg_id, (addr, H.PORT), nbytes, rate_bps, reliable)
        m.next_ns = time.time_ns()
        self.out_msgs[(flow_id, msg_id & 0xFFFFFFFF)] = m
        self.active.append(m)
        return m

    def _send_due(self, now: int) -> int:
        """Send every due fragment; return the earliest next due time (0: nothing)."""
        nxt = 0
        sock = self.sock
        keep = []
        for m in self.active:
            if m.done:
                continue
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
                    self.stats["send_errors"] += 1
                    if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                        raise
                m.pending.popleft()
                m.queued[frag] = 0
                self.flow_seq[m.flow_id] = (seq + 1) & 0xFFFFFFFF
                if m.sent_once[frag]:
                    self.stats["retransmissions"] += 1
                m.sent_once[frag] = 1
                if not m.first_send_ns:
                    m.first_send_ns = t
                m.last_send_ns = t
                m.sent += 1
                self.stats["sent_packets"] += 1
                gap = m.interval_ns if n == len(buf) else int(
                    (n + H.IP_UDP_BYTES + H.ETH_BYTES) * m.ns_per_byte)
                m.next_ns = max(m.next_ns + gap, now - MAX_BURST_NS)
                if last:
                    if m.reliable:
                        self._arm_rto(m, now)
                    else:
                        m.done = True
            if m.pending:
                keep.append(m)
                nxt = m.next_ns if not nxt else min(nxt, m.next_ns)
        self.active = keep
        return nxt

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

    def _requeue(self, m: OutMsg, frags) -> None:
        was_idle = not m.pending
        for f in frags:
            if 0 <= f < m.n_frags and not m.queued[f]:
                m.queued[f] = 1
                m.pending.append(f)
        if was_idle and m.pending:
            m.next_ns = max(m.next_ns, time.time_ns())
            self.active.append(m)

    def _control(self, kind: int, flow_id: int, msg_id: int, dst: str, payload: bytes = b""
                 ) -> None:
        pkt = bytearray(H.HEADER.pack(H.MAGIC, H.VERSION, kind, flow_id, msg_id, 0, 0, 1,
                                      time.time_ns(), 0, 0, 0)) + payload
        try:
            self.sock.sendto(pkt, (dst, H.PORT))
        except OSError:
            self.stats["send_errors"] += 1

    # -- receiving ---------------------------------------------------------------------------
    def _drain(self) -> None:
        sock = self.sock
        buf = bytearray(2048)
        mv = memoryview(buf)
        anc = socket.CMSG_SPACE(_TIMESPEC.size)
        rows = []
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
            (magic, _v, kind, flow, mid, seq, frag, nfr, sent, mbytes, flags,
             _r) = H.HEADER.unpack_from(buf, 0)
            if magic != H.MAGIC:
                continue
            src = addr[0]
            if kind == H.DATA and self.drop_every:
                self.rx_seen += 1
                if self.rx_seen % self.drop_every == 0:   # simulated loss (tests)
                    continue
            if kind == H.DATA:
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
                    rows.append(f"{flow},{mid},{seq},{self.names_by_addr.get(src, src)},"
                                f"{self.node},{n + H.IP_UDP_BYTES},{sent},{rx},"
                                f"{(rx - sent) / 1e6:.4f}\n")
                if flags & H.F_RELIABLE:
                    self._on_reliable(src, flow, mid, frag, nfr, flags)
            elif kind == H.ACK:
                m = self.out_msgs.pop((flow, mid), None)
                if m is not None and not m.done:
                    m.done = True
                    m.pending.clear()
                    self.stats["messages_acked"] += 1
                    # smoothed RTT per peer (RFC 6298's alpha = 1/8), for the RTO
                    sample = rx - m.last_send_ns
                    self.f_rtt.write(f"{flow},{mid},{self.node},"
                                     f"{self.names_by_addr.get(src, src)},{m.last_send_ns},"
                                     f"{sample / 1e6:.4f}\n")
                    old = self.srtt.get(src)
                    self.srtt[src] = sample if old is None else 0.875 * old + 0.125 * sample
            elif kind == H.NACK:
                m = self.out_msgs.get((flow, mid))
                self.stats["nacks_received"] += 1
                if m is not None and not m.done:
                    missing = [x[0] for x in _U16.iter_unpack(bytes(buf[H.HEADER_BYTES:n]))]
                    m.rto_ns = RTO_NS
                    m.rto_gen += 1
                    self._requeue(m, missing)
        if rows:
            self.f_packets.write("".join(rows))

    def _on_reliable(self, src: str, flow: int, mid: int, frag: int, nfr: int,
                     flags: int) -> None:
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
            im.got[frag] = 1
            im.count += 1
        if im.count == im.n_frags:
            im.complete = True
            im.got = b""
            self._control(H.ACK, flow, mid, src)
            self.stats["acks_sent"] += 1
            self.stats["messages_received"] += 1
            h = self.handlers.get(flow)
            if h is not None:
                h(src, mid)
        elif flags & H.F_LAST:
            missing = [i for i in range(im.n_frags) if not im.got[i]]
            for k in range(0, len(missing), NACK_MAX):
                part = missing[k:k + NACK_MAX]
                self._control(H.NACK, flow, mid, src,
                              struct.pack(f"!{len(part)}H", *part))
                self.stats["nacks_sent"] += 1

    # -- measurements ------------------------------------------------------------------------
    def write_iteration(self, row: str) -> None:
        self.f_iter.write(row)

    def write_inference(self, row: str) -> None:
        self.f_inf.write(row)

    def flush(self) -> None:
        for f in (self.f_packets, self.f_iter, self.f_inf, self.f_rtt):
            f.flush()

    def check_done(self) -> None:
        if self.done_written:
            return
        if all(c.finished for c in self.collectives) and all(
                c.done for c in self.clients) and all(s.finished for s in self.streams):
            self.done_written = True
            self.flush()
            Path(f"{self.prefix}.done").write_text(f"{time.time_ns()}\n")

    # -- main loop ---------------------------------------------------------------------------
    def _wait_for_go(self) -> bool:
        """With ``go_file`` in the config: wait until the runtime writes it (JSON with
        ``start_unix_ns`` and ``end_unix_ns``, once every agent is up). False: stopped."""
        go = self.cfg.get("go_file")
        if not go:
            return True
        deadline = time.monotonic() + GO_TIMEOUT_S
        while not self.stop:
            try:
                with open(go) as f:
                    d = json.load(f)
                self.start_ns = int(d["start_unix_ns"])
                self.end_ns = int(d["end_unix_ns"])
                return True
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                log.error("%s: no go file %s after %.0f s; exiting", self.node, go,
                          GO_TIMEOUT_S)
                return False
            time.sleep(0.005)
        return False

    def run(self) -> int:
        if not self._wait_for_go():
            self.close()
            return 0
        self._setup_roles()
        for c in self.collectives:
            c.start(self.start_ns + int(c.start_s * 1e9))
        for cl in self.clients:
            cl.start()
        self.check_done()
        sock_fd = self.sock.fileno()
        _set_timer_slack_ns(1000)
        last_flush = time.time_ns()
        hard_end = self.end_ns + HARD_GRACE_NS
        try:
            while not self.stop:
                now = time.time_ns()
                nxt = self._send_due(now)
                for s in self.streams:
                    if not s.finished:
                        d = s.due(now)
                        if d:
                            nxt = d if not nxt else min(nxt, d)
                while self.timers and self.timers[0][0] <= now:
                    _, _, fn = heapq.heappop(self.timers)
                    fn()
                if self.timers:
                    nxt = self.timers[0][0] if not nxt else min(nxt, self.timers[0][0])
                if self.active:
                    a = min(m.next_ns for m in self.active)
                    nxt = a if not nxt else min(nxt, a)
                now = time.time_ns()
                wait = 0.05 if not nxt else max(0.0, min(0.05, (nxt - now) / 1e9))
                if wait > 0:
                    select.select([sock_fd], [], [], wait)  # microsecond timeout
                self._drain()
                now = time.time_ns()
                if now - last_flush >= FLUSH_NS:
                    self.flush()
                    last_flush = now
                    if now > hard_end:
                        log.warning("%s: traffic ended long ago and nobody stopped the agent; "
                                    "exiting", self.node)
                        break
        finally:
            self.close()
        return 0

    def close(self) -> None:
        for cl in self.clients:
            cl.close()
        self.flush()
        for f in (self.f_packets, self.f_iter, self.f_inf, self.f_rtt):
            f.close()
        import resource
        ru = resource.getrusage(resource.RUSAGE_SELF)
        hwm = 0
        try:  # ru_maxrss survives execve (it would show the parent's), VmHWM does not
            with open("/proc/self/status") as f:
                hwm = next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)
        except OSError:
            pass
        status = {"node": self.node, **self.stats, "done": self.done_written,
                  "exit_unix_ns": time.time_ns(), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                  "max_rss_kib": hwm}
        Path(f"{self.prefix}.status.json").write_text(json.dumps(status))
        self.sock.close()


def _set_timer_slack_ns(ns: int) -> None:
    """Make sleeps wake within ``ns`` of their deadline (default slack is 50 us)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(29, ns, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m meshemu.traffic.agent CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = json.loads(Path(argv[0]).read_text())
    try:
        # pacing and the moment a message is noticed are timing: on a busy machine the
        # agents get a larger CPU share than ordinary processes (the delay line runs
        # SCHED_FIFO above them)
        os.nice(int(cfg.get("nice", NICE)))
    except (OSError, ValueError):
        pass
    agent = Agent(cfg)

    def on_signal(signum, frame):
        agent.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())

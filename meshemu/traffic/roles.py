"""The workload roles an agent plays: what it sends, when, and what it does with what arrives.

- :class:`Collective`: this node's part of a collective job. Collectives follow their plan
  (:func:`meshemu.traffic.schedule.collective_plan`): a node sends transfer ``t`` of
  iteration ``i`` once it has started iteration ``i`` (its compute time after finishing
  iteration ``i-1``) and has received every transfer in ``t.deps``; it finishes an
  iteration when it has received every transfer addressed to it.
- :class:`InferenceClient`: requests at Poisson times to the nearest (or least loaded)
  server; the server ranking follows the runtime's :class:`~meshemu.traffic.config.Targets`.
- :class:`InferenceServer`: answers each complete request with a response.
- :class:`StreamSender`: paced unreliable packets, at a constant rate (bulk) or at a
  capture's timing (replay); losses show as gaps in ``seq``.

Roles talk to their agent through :class:`Host` (timers, the traffic's time window, the
transport, the files, "my work may be over"), so they can be driven by a test double.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from meshemu.traffic import header as H
from meshemu.traffic.config import (
    CollectiveConfig,
    InferenceClientConfig,
    InferenceServerConfig,
    StreamConfig,
)
from meshemu.traffic.transport import MAX_BURST_NS, AgentFiles, Transport


class Host(Protocol):
    """What a role needs from its agent."""

    node: str
    start_ns: int
    end_ns: int
    transport: Transport
    files: AgentFiles

    def at(self, t_ns: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at unix time ``t_ns``."""

    def check_done(self) -> None:
        """A role may have finished: see whether the node's sending work is over."""


class Collective:
    """This node's part of one collective job."""

    def __init__(self, host: Host, c: CollectiveConfig):
        self.host = host
        self.job = c.job
        self.rank = c.rank
        self.nodes = c.nodes
        self.iterations = c.iterations
        self.compute_ns = int(c.compute_ms * 1e6)
        self.start_s = c.start_s
        self.plan = c.plan
        self.flow_ids = c.flow_ids
        self.pace = c.pace_bps
        self.n = len(self.plan)
        self.mine_out = [t for t in self.plan if t.src == self.rank]
        self.mine_in = {t.index for t in self.plan if t.dst == self.rank}
        self.received: set[tuple[int, int]] = set()
        self.started_sends: set[tuple[int, int]] = set()
        self.it = -1  # iteration this node has started (-1: none yet)
        self.it_start_ns = 0
        self.finished = False
        for f in set(self.flow_ids):
            # messages to this node on the job's flows
            host.transport.handlers[f] = self.on_message

    def start(self) -> None:
        """Begin iteration 0 at ``start_s`` after the traffic's time zero."""
        self.host.at(self.host.start_ns + int(self.start_s * 1e9), lambda: self._begin(0))

    def _begin(self, it: int) -> None:
        host = self.host
        if it >= self.iterations or (it > 0 and time.time_ns() >= host.end_ns):
            self.finished = True
            host.check_done()
            return
        self.it = it
        self.it_start_ns = time.time_ns()
        self._try_send()
        self._check_iteration()

    def _try_send(self) -> None:
        it = self.it
        if it < 0:
            return
        for t in self.mine_out:
            key = (it, t.index)
            if key in self.started_sends:
                continue
            if all((it, d) in self.received for d in t.deps):
                self.started_sends.add(key)
                self.host.transport.send_message(
                    self.flow_ids[t.index],
                    it * self.n + t.index,
                    self.nodes[t.dst],
                    t.nbytes,
                    self.pace[t.index],
                    True,
                )

    def on_message(self, src: str, msg_id: int) -> None:
        """A transfer addressed to this node has arrived completely."""
        it, idx = divmod(msg_id, self.n)
        self.received.add((it, idx))
        if it == self.it:
            self._try_send()
            self._check_iteration()

    def _check_iteration(self) -> None:
        it = self.it
        if it < 0 or self.finished or not all((it, i) in self.received for i in self.mine_in):
            return
        if not all((it, t.index) in self.started_sends for t in self.mine_out):
            return
        now = time.time_ns()
        self.host.files.iterations.write(f"{self.job},{it},{self.rank},{self.it_start_ns},{now}\n")
        self.received = {k for k in self.received if k[0] > it}
        self.started_sends = {k for k in self.started_sends if k[0] > it}
        self.it = -1  # waiting for compute
        nxt = it + 1
        self.host.at(now + self.compute_ns, lambda: self._begin(nxt))


class InferenceClient:
    """A user's inference requests and their latencies."""

    def __init__(self, host: Host, c: InferenceClientConfig):
        self.host = host
        self.job = c.job
        self.user = host.node
        self.cfg = c
        self.times_ns = [host.start_ns + int(t * 1e9) for t in c.times_s]
        self.order = list(c.servers)  # nearest first
        self.outstanding: dict[str, int] = dict.fromkeys(c.servers, 0)
        self.pending: dict[int, tuple[str, int]] = {}  # request id -> (server, send_ns)
        self.issued = 0
        self.finished = False
        for f in c.flow_resp.values():
            host.transport.handlers[f] = self.on_response

    def set_targets(self, servers: tuple[str, ...]) -> None:
        """The servers, nearest first (unknown ones ignored; none known: unchanged)."""
        self.order = [s for s in servers if s in self.outstanding] or self.order

    def start(self) -> None:
        """Schedule the first request."""
        self._schedule_next()

    def _schedule_next(self) -> None:
        if self.issued >= len(self.times_ns) or self.times_ns[self.issued] >= self.host.end_ns:
            self.finished = True
            self.host.check_done()
            return
        self.host.at(self.times_ns[self.issued], self._issue)

    def _issue(self) -> None:
        c = self.cfg
        if c.target == "least_loaded":
            rank = {s: i for i, s in enumerate(self.order)}
            server = min(self.order, key=lambda s: (self.outstanding[s], rank[s]))
        else:
            server = self.order[0]
        rid = c.id_base + self.issued
        self.issued += 1
        self.pending[rid] = (server, time.time_ns())
        self.outstanding[server] += 1
        self.host.transport.send_message(
            c.flow_req[server], rid, server, c.request_bytes, c.pace_bps, True
        )
        self._schedule_next()

    def on_response(self, src: str, rid: int) -> None:
        """The response to request ``rid`` has arrived completely."""
        item = self.pending.pop(rid, None)
        if item is None:
            return
        server, sent = item
        self.outstanding[server] -= 1
        now = time.time_ns()
        lat = (now - sent) / 1e6
        dl = self.cfg.deadline_ms
        self.host.files.inference.write(
            f"{rid},{self.user},{server},{sent / 1e9:.6f},{now / 1e9:.6f},{lat:.3f},"
            f"{dl:g},{int(lat > dl)}\n"
        )
        self.host.check_done()

    def close(self) -> None:
        """Record the requests without a response (as misses)."""
        dl = self.cfg.deadline_ms
        for rid, (server, sent) in sorted(self.pending.items()):
            self.host.files.inference.write(
                f"{rid},{self.user},{server},{sent / 1e9:.6f},,,{dl:g},1\n"
            )
        self.pending.clear()

    @property
    def done(self) -> bool:
        """Every request issued and answered."""
        return self.finished and not self.pending


class InferenceServer:
    """Answers every complete request of one flow with a response."""

    def __init__(self, host: Host, c: InferenceServerConfig):
        self.host = host
        self.cfg = c
        host.transport.handlers[c.request_flow] = self.on_request

    def on_request(self, src: str, rid: int) -> None:
        """Request ``rid`` from node ``src`` has arrived: send the response."""
        c = self.cfg
        self.host.transport.send_message(
            c.response_flow, rid, src, c.response_bytes, c.pace_bps, True
        )


class StreamSender:
    """Paced unreliable packets: constant rate (bulk) or a capture's timing (replay)."""

    def __init__(self, host: Host, c: StreamConfig):
        self.host = host
        self.flow_id = c.flow_id
        self.dst = (host.transport.addrs[c.dst], H.PORT)
        t0 = host.start_ns + int(c.start_s * 1e9)
        dur = c.duration_s
        self.until_ns = min(host.end_ns, t0 + int(dur * 1e9)) if dur else host.end_ns
        self.sizes: tuple[int, ...] | None
        if c.rate_bps is not None:
            self.interval_ns = int((H.MAX_IP_BYTES + H.ETH_BYTES) * 8e9 / c.rate_bps)
            self.offsets_ns: list[int] = []
            self.sizes = None
        else:
            self.offsets_ns = [t0 + int(t * 1e9) for t in c.times_s]
            self.sizes = c.ip_bytes
            self.interval_ns = 0
        self.buf = H.template(self.flow_id, 0, 1, H.MAX_PAYLOAD, H.MAX_PAYLOAD)
        self.next_ns = t0
        self.finished = self.sizes is not None and not self.sizes
        self.i = 0
        self.seq = 0

    def due(self, now: int) -> int:
        """Send what is due; return the next due time (0: finished)."""
        tr = self.host.transport
        buf = self.buf
        mv = memoryview(buf)
        while not self.finished and self.next_ns <= now:
            if self.next_ns >= self.until_ns:
                self._finish()
                return 0
            if self.sizes is None:
                n = H.HEADER_BYTES + H.MAX_PAYLOAD
            else:
                n = int(self.sizes[self.i]) - H.IP_UDP_BYTES
            H.patch_fast(buf, self.seq, self.seq & 0xFFFF, 1, time.time_ns(), 0)
            if not tr.send_datagram(mv[:n], self.dst):
                return now + 100_000
            self.seq += 1
            if self.sizes is None:
                self.next_ns = max(self.next_ns + self.interval_ns, now - MAX_BURST_NS)
            else:
                self.i += 1
                if self.i >= len(self.offsets_ns):
                    self._finish()
                    return 0
                self.next_ns = self.offsets_ns[self.i]
        return 0 if self.finished else self.next_ns

    def _finish(self) -> None:
        self.finished = True
        self.host.check_done()

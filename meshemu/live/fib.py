"""The nodes' kernel FIBs toward the endpoints, as routes over time (issue 11).

With a daemon routing scheme, the routes are the daemons' and meshemu must *observe* them.
:class:`FibWatcher` dumps every node's IPv4 routes once, then follows each change as the
kernel announces it (a ``NETLINK_ROUTE`` socket per node, subscribed to
``RTMGRP_IPV4_ROUTE``; one thread polls all of them), so a change is timed to within a
millisecond, not a step. Routes to endpoints only are kept.

``fib.csv`` (:data:`meshemu.report.files.FIB`): one row per change of a node's next hops
toward an endpoint: ``t_s`` (emulated time: ``start_s + wall seconds since the clock started
x time scale``; changes before the clock started count at ``start_s``), ``node``, ``dest``,
``next_hops`` (``|``-separated node names; empty: no route). The first rows (one per node
and endpoint that has a route) are the state when the clock starts.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import select
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshemu.linux import netlink
from meshemu.linux import netns as nl
from meshemu.live import addressing as adr
from meshemu.report.files import FIB

log = logging.getLogger(__name__)


class FibWatcher:
    """Follows the kernel FIB of every node toward ``dests``.

    Parameters
    ----------
    emu : meshemu.live.emulation.Emulation
        Built.
    dests : ndarray of int
        Endpoint node ids.
    """

    def __init__(self, emu: Any, dests: Sequence[int]):
        self.emu = emu
        self.names = list(emu.names)
        self.plan = emu.plan
        self.dest_of = {adr.node_address_int(int(d)): int(d) for d in dests}
        self.state: dict[tuple[int, int], tuple[int, ...]] = {}
        #: (monotonic time, node, dest, next hops) of every change, in order.
        self.changes: list[tuple[float, int, int, tuple[int, ...]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = nl.in_namespaces(
            emu.pids, lambda i, pid: netlink.route_monitor_socket(), threads=4
        )
        self._node_of_fd = {s.fileno(): i for i, s in enumerate(self._socks)}
        now = time.monotonic()
        for i, sock in enumerate(emu._netlink):
            for dst, dlen, _, hops in sock.dump(
                netlink.route_dump_request(), netlink.parse_route_dump
            ):
                self._set(now, i, dst, dlen, hops)
        self._thread = threading.Thread(target=self._loop, name="meshemu-fib", daemon=True)
        self._thread.start()

    def _peer(self, gateway: int) -> int:
        """The node whose link address is ``gateway`` (-1 if none)."""
        off = gateway - int(adr.LINK_NET.network_address)
        if off < 0 or off // 2 >= self.plan.n_links:
            return -1
        k, side = divmod(off, 2)
        return int(self.plan.a[k] if side == 0 else self.plan.b[k])

    def _set(self, t: float, node: int, dst: int, dlen: int, hops: list[tuple[int, int]]) -> None:
        d = self.dest_of.get(dst)
        if d is None or dlen != 32 or d == node:
            return
        nh = tuple(sorted({p for p in (self._peer(g) for g, _ in hops if g) if p >= 0}))
        with self._lock:
            if self.state.get((node, d), ()) != nh:
                self.state[(node, d)] = nh
                self.changes.append((t, node, d, nh))

    def _loop(self) -> None:
        poller = select.poll()
        for s in self._socks:
            poller.register(s.fileno(), select.POLLIN)
        while not self._stop.is_set():
            for fd, _ in poller.poll(100):
                node = self._node_of_fd[fd]
                sock = self._socks[node]
                while True:
                    try:
                        data = sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # ENOBUFS: changes were lost; say so once
                        log.warning("FIB monitor of %s: %s", self.names[node], exc)
                        break
                    now = time.monotonic()
                    for off, length, mtype, _, _ in netlink.messages(data):
                        if mtype not in (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE):
                            continue
                        r = netlink.route_message(data, off, length)
                        if r is None:
                            continue
                        dst, dlen, _, hops = r
                        self._set(
                            now, node, dst, dlen, [] if mtype == netlink.RTM_DELROUTE else hops
                        )

    def wait_until_routed(
        self, expect: set[tuple[int, int]], timeout_s: float, quiet_s: float = 1.0
    ) -> float | None:
        """Wait until every (node, dest) in ``expect`` has a route and nothing changed for
        ``quiet_s``; the seconds that took, or None on timeout."""
        t0 = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                missing = sum(1 for k in expect if not self.state.get(k))
                last = self.changes[-1][0] if self.changes else t0
            if not missing and now - last >= quiet_s:
                return last - t0 if last > t0 else 0.0
            if now - t0 > timeout_s:
                return None
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop following and close the sockets. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        self._socks = []

    def write(self, out: Path, clock_start: float, start_s: float, time_scale: float) -> Path:
        """``fib.csv`` (see the module docstring)."""
        path = out / FIB.name
        with self._lock:
            changes = list(self.changes)
        # before the clock started: only the state it started with
        first: dict[tuple[int, int], tuple[float, int, int, tuple[int, ...]]] = {}
        i = 0
        while i < len(changes) and changes[i][0] <= clock_start:
            first[(changes[i][1], changes[i][2])] = changes[i]
            i += 1
        changes = [c for c in first.values() if c[3]] + changes[i:]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(FIB.columns)
            for t, node, d, nh in changes:
                te = start_s + max(0.0, t - clock_start) * time_scale
                w.writerow(
                    (
                        f"{te:.6f}",
                        self.names[node],
                        self.names[d],
                        "|".join(self.names[h] for h in nh),
                    )
                )
        return path

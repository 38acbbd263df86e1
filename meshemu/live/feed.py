"""Forwarding tables for every step of a run, computed ahead of the clock by a child process.

Routing to every destination costs up to ~0.7 s per step on a Starlink shell (ECMP), more
than a step may take; a forked child computes the tables in step order into a bounded queue
(``lookahead`` steps ahead) and the clock takes them as it goes.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from meshemu.errors import EmulationError, RoutingError
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing import ComputedScheme, ForwardingTables


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (even by SIGKILL)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _routes_worker(
    snapshots: Sequence[Snapshot],
    scheme: ComputedScheme,
    dests: np.ndarray,
    q: mp.Queue,
    cost: Any,
) -> None:
    """Child process: forwarding tables for every step, in order, into ``q``; the seconds
    each took into ``cost`` (shared memory, read by the parent at any time)."""
    _die_with_parent()
    # the parent tears the run down on these (a Ctrl-C reaches the whole process group);
    # the child ends when the parent terminates it or dies
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for k, snap in enumerate(snapshots):
            t0 = time.perf_counter()
            t = scheme.forwarding_tables(snap, dests)
            cost[k] = time.perf_counter() - t0
            q.put((k, t.destinations, t.next_hop, t.scheme))
        q.put(None)
    except Exception as exc:  # report to the parent, which raises it
        q.put(("error", f"{type(exc).__name__}: {exc}"))


class RouteFeed:
    """Forwarding tables per step, computed ahead of time by child processes.

    With ``workers`` > 1 the destinations are split among that many children (routing cost
    grows with the destinations: each child routes toward its share), and :meth:`get` joins
    their columns.

    Parameters
    ----------
    snapshots : sequence of Snapshot
        Every step of the run.
    scheme : ComputedScheme
    dests : ndarray of int
        Destinations (every node, for the emulator).
    lookahead : int
        Steps the children may run ahead.
    workers : int
        Route processes.
    """

    def __init__(
        self,
        snapshots: Sequence[Snapshot],
        scheme: ComputedScheme,
        dests: np.ndarray,
        lookahead: int = 8,
        workers: int = 1,
    ):
        ctx = mp.get_context("fork")
        self.lookahead = lookahead
        n = max(len(snapshots), 1)
        parts = [c for c in np.array_split(np.asarray(dests), max(1, workers)) if c.size]
        self.qs: list[mp.Queue] = []
        #: Seconds each child took to route each step (-1: not yet).
        self.costs: list[Any] = []
        self.procs: list[Any] = []
        for i, part in enumerate(parts or [np.asarray(dests)]):
            q: mp.Queue = ctx.Queue(maxsize=lookahead)
            cost = ctx.Array("d", [-1.0] * n, lock=False)
            proc = ctx.Process(
                target=_routes_worker,
                args=(snapshots, scheme, part, q, cost),
                name=f"meshemu-routes-{i}",
                daemon=True,
            )
            self.qs.append(q)
            self.costs.append(cost)
            self.procs.append(proc)
        for proc in self.procs:
            proc.start()

    @property
    def proc(self) -> Any:
        """The first route process (the only one with one worker)."""
        return self.procs[0]

    def get(self, k: int, timeout_s: float = 600.0) -> ForwardingTables:
        """The tables of step ``k`` (steps must be taken in order).

        Raises
        ------
        RoutingError
            The scheme failed in a child (its error in one line).
        """
        parts = []
        for q in self.qs:
            item = q.get(timeout=timeout_s)
            if item is None or item[0] == "error":
                raise RoutingError(
                    f"routing scheme failed at step {k}: {item[1] if item else 'no more steps'}"
                )
            kk, dests, nh, name = item
            if kk != k:
                raise EmulationError(f"route feed out of order: wanted step {k}, got {kk}")
            parts.append((np.asarray(dests), np.asarray(nh), name))
        if len(parts) == 1:
            d, nh, name = parts[0]
            return ForwardingTables(destinations=d, next_hop=nh, scheme=name)
        nhs = [p[1] if p[1].ndim == 3 else p[1][:, :, None] for p in parts]
        width = max(a.shape[2] for a in nhs)
        nhs = [
            a
            if a.shape[2] == width
            else np.pad(a, ((0, 0), (0, 0), (0, width - a.shape[2])), constant_values=-1)
            for a in nhs
        ]
        return ForwardingTables(
            destinations=np.concatenate([p[0] for p in parts]),
            next_hop=np.concatenate(nhs, axis=1),
            scheme=parts[0][2],
        )

    def routing_cost_s(self, k: int) -> float:
        """Seconds step ``k`` took the slowest route process (NaN until all have routed it)."""
        if not 0 <= k < len(self.costs[0]):
            return float("nan")
        c = [float(cost[k]) for cost in self.costs]
        return max(c) if min(c) >= 0 else float("nan")

    def estimate_s(self, steps: int = 3, timeout_s: float = 120.0) -> float:
        """Median seconds per step over the first ``steps`` steps (waits until the children
        have routed them, or ``timeout_s``; NaN when none is done)."""
        n = min(steps, len(self.costs[0]))
        deadline = time.monotonic() + timeout_s
        while (
            any(math.isnan(self.routing_cost_s(i)) for i in range(n))
            and time.monotonic() < deadline
            and all(p.is_alive() for p in self.procs)
        ):
            time.sleep(0.01)
        done = [c for c in (self.routing_cost_s(i) for i in range(n)) if not math.isnan(c)]
        return float(np.median(done)) if done else float("nan")

    def close(self) -> None:
        """End the children and release the queues."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=5)
        for q in self.qs:
            q.close()
            q.cancel_join_thread()

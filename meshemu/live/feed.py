"""Forwarding tables for every step of a run, computed ahead of the clock by a child process.

Routing to every destination costs up to ~0.7 s per step on a Starlink shell (ECMP), more
than a step may take; a forked child computes the tables in step order into a bounded queue
(``lookahead`` steps ahead) and the clock takes them as it goes.
"""

from __future__ import annotations

import ctypes
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
    """Forwarding tables per step, computed ahead of time by a child process.

    Parameters
    ----------
    snapshots : sequence of Snapshot
        Every step of the run.
    scheme : ComputedScheme
    dests : ndarray of int
        Destinations (every node, for the emulator).
    lookahead : int
        Steps the child may run ahead.
    """

    def __init__(
        self,
        snapshots: Sequence[Snapshot],
        scheme: ComputedScheme,
        dests: np.ndarray,
        lookahead: int = 8,
    ):
        ctx = mp.get_context("fork")
        self.q: mp.Queue = ctx.Queue(maxsize=lookahead)
        self.lookahead = lookahead
        #: Seconds the child took to route each step (-1: not yet).
        self.cost = ctx.Array("d", [-1.0] * max(len(snapshots), 1), lock=False)
        self.proc = ctx.Process(
            target=_routes_worker,
            args=(snapshots, scheme, dests, self.q, self.cost),
            name="meshemu-routes",
            daemon=True,
        )
        self.proc.start()

    def get(self, k: int, timeout_s: float = 600.0) -> ForwardingTables:
        """The tables of step ``k`` (steps must be taken in order).

        Raises
        ------
        RoutingError
            The scheme failed in the child (its error in one line).
        """
        item = self.q.get(timeout=timeout_s)
        if item is None or item[0] == "error":
            raise RoutingError(
                f"routing scheme failed at step {k}: {item[1] if item else 'no more steps'}"
            )
        kk, dests, nh, name = item
        if kk != k:
            raise EmulationError(f"route feed out of order: wanted step {k}, got {kk}")
        return ForwardingTables(destinations=dests, next_hop=nh, scheme=name)

    def routing_cost_s(self, k: int) -> float:
        """Seconds the child took to route step ``k`` (NaN when it has not yet)."""
        c = float(self.cost[k]) if 0 <= k < len(self.cost) else -1.0
        return c if c >= 0 else float("nan")

    def estimate_s(self, steps: int = 3, timeout_s: float = 120.0) -> float:
        """Median seconds per step over the first ``steps`` steps (waits until the child has
        routed them, or ``timeout_s``; NaN when none is done)."""
        n = min(steps, len(self.cost))
        deadline = time.monotonic() + timeout_s
        while (
            any(self.cost[i] < 0 for i in range(n))
            and time.monotonic() < deadline
            and self.proc.is_alive()
        ):
            time.sleep(0.01)
        done = [self.cost[i] for i in range(n) if self.cost[i] >= 0]
        return float(np.median(done)) if done else float("nan")

    def close(self) -> None:
        """End the child and release the queue."""
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=5)
        self.q.close()
        self.q.cancel_join_thread()

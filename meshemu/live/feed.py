"""Forwarding tables for every step of a run, computed ahead of the clock by child processes.

Routing to every destination costs up to ~0.7 s per step on a Starlink shell (ECMP) and
0.7 s (shortest-delay) to over 1 s on Starlink Gen1 (4,418 nodes), most of a step or more;
forked children compute the tables in step order and the clock takes them as it goes.

Only step 0 crosses the pipe whole (4,418 x 4,418 next hops are 78 MB). From step 1 on, each
child diffs its tables against its previous step's (:func:`~meshemu.routing.route_diff`, off
the clock) and sends only the :class:`~meshemu.routing.RouteDiff`, a few thousand entries;
the parent applies it to its copy of the tables. A diff is small, so the children may run
far ahead (``lookahead`` steps, by default :data:`LOOKAHEAD_STEPS`): they start while the
network is being built and bank the build's minutes as steps routed ahead of the clock.

While the network is built they only take what the build leaves: :meth:`RouteFeed.yield_cpu`
puts them under ``SCHED_IDLE`` (``man 7 sched``: run only when a CPU has nothing else to
run), so on a small machine they no longer take a core from the build, whose ``ip``,
kernel work and delay line run at normal priority; once :data:`BUILD_LEAD_STEPS` steps
are banked they wait for the build's end; and while the node shells spawn they are stopped
(:meth:`RouteFeed.paused`). Even idle, routing took what the spawn loop leaves between a
spawn and its child's ``exec``: Starlink Gen1's shells started in 13.8-16.4 s with the route
processes idle all along and in 7.2-9.1 s with them stopped there, and the build took 27.5-37.4
s against 23.6-24.3 s (``benchmarks/bench_build.py --feed idle-all|idle``). After the
build a child stays under ``SCHED_IDLE`` while it is more than :data:`IDLE_LEAD_STEPS` steps
ahead of the clock, and runs under ``SCHED_OTHER`` at nice :data:`ROUTES_NICE` only when its
lead is shorter: on Starlink Gen1 the two children route 0.7-1 CPU-second a step between
them, and at nice 5 they took a share of the CPU from every step's route changes while
dozens of steps ahead.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from meshemu.errors import EmulationError, RoutingError
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing import ComputedScheme, ForwardingTables, RouteDiff, route_diff

log = logging.getLogger(__name__)

#: Steps a route process may run ahead of the clock (diffs are small: about 0.4 MB a step
#: on Starlink Gen1 with shortest-delay routing).
LOOKAHEAD_STEPS = 512
#: Niceness of the route processes.
ROUTES_NICE = 5
#: A route process more steps than this ahead of the clock runs under ``SCHED_IDLE``.
IDLE_LEAD_STEPS = 8
#: While the network is built, a route process routes this many steps ahead and then waits.
BUILD_LEAD_STEPS = 16


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
    cpu: Any,
    ctl: Any,
) -> None:
    """Child process: forwarding tables for every step, in order, into ``q``; the seconds
    each took into ``cost`` and the CPU seconds into ``cpu`` (shared memory, read by the
    parent at any time). ``ctl``, shared with the parent: the steps the clock has taken,
    and 1 while the parent wants every child idle (the build); after each step the child
    picks its policy from them (:func:`_pick_policy`), and during the build it waits once
    it is :data:`BUILD_LEAD_STEPS` ahead."""
    _die_with_parent()
    # the parent tears the run down on these (a Ctrl-C reaches the whole process group);
    # the child ends when the parent terminates it or dies
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # behind the step loop, the build and the traffic agents: those keep time; routing ahead
    # only needs what they leave (and gets all of it while the clock waits for it)
    os.nice(ROUTES_NICE)
    try:
        prev: ForwardingTables | None = None
        for k, snap in enumerate(snapshots):
            t0, c0 = time.perf_counter(), time.process_time()
            t = scheme.forwarding_tables(snap, dests)
            if prev is None:
                item: tuple = (k, t.destinations, np.asarray(t.next_hop), t.scheme)
            else:
                d = route_diff(prev, t)
                item = (
                    k,
                    d.nodes.astype(np.int32),
                    d.dest_index.astype(np.int32),
                    d.old,
                    d.new,
                    np.asarray(t.next_hop).shape[2],
                )
            prev = t
            cpu[k] = time.process_time() - c0
            cost[k] = time.perf_counter() - t0
            q.put(item)
            _pick_policy(k + 1 - int(ctl[0]), bool(ctl[1]))
            while ctl[1] and k + 1 - int(ctl[0]) >= BUILD_LEAD_STEPS:
                time.sleep(0.05)  # banked enough during the build: leave it the memory
        q.put(None)
    except Exception as exc:  # report to the parent, which raises it
        q.put(("error", f"{type(exc).__name__}: {exc}"))


def _pick_policy(lead: int, force_idle: bool) -> None:
    """Set this process's scheduling policy for a lead of ``lead`` steps over the clock:
    ``SCHED_IDLE`` when ``force_idle`` or ``lead > IDLE_LEAD_STEPS``, else ``SCHED_OTHER``
    (its niceness is kept). The parent may have set it meanwhile (:meth:`RouteFeed.yield_cpu`),
    so it is read, not remembered."""
    want = os.SCHED_IDLE if force_idle or lead > IDLE_LEAD_STEPS else os.SCHED_OTHER
    if os.sched_getscheduler(0) != want:
        # (not root: leaving SCHED_IDLE needs RLIMIT_NICE room)
        with contextlib.suppress(PermissionError):
            os.sched_setscheduler(0, want, os.sched_param(0))


class RouteFeed:
    """Forwarding tables per step, computed ahead of time by child processes.

    With ``workers`` > 1 the destinations are split among that many children (routing cost
    grows with the destinations: each child routes toward its share), and :meth:`get` joins
    their columns.

    The tables :meth:`get` returns for step ``k`` stay valid until step ``k + 2`` is taken
    (two buffers, each brought forward by the children's diffs); step 0's tables are a
    copy of their own and stay valid for good.

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
        lookahead: int = LOOKAHEAD_STEPS,
        workers: int = 1,
    ):
        ctx = mp.get_context("fork")
        self.lookahead = lookahead
        n = max(len(snapshots), 1)
        parts = [c for c in np.array_split(np.asarray(dests), max(1, workers)) if c.size]
        parts = parts or [np.asarray(dests)]
        #: Column of each child's first destination in the joined tables.
        self.offsets = np.cumsum([0] + [p.size for p in parts[:-1]]).tolist()
        self.qs: list[mp.Queue] = []
        #: Seconds each child took to route (and diff) each step (-1: not yet).
        self.costs: list[Any] = []
        #: CPU seconds each child spent on each step (-1: not yet).
        self.cpu_costs: list[Any] = []
        self.procs: list[Any] = []
        self._next = 0
        self._bufs: list[np.ndarray] = []  # next hops of steps k % 2
        self._diffs: list[RouteDiff | None] = [None, None]  # the diff that made each
        self._dests: np.ndarray = np.asarray(dests)
        self._name = getattr(scheme, "name", "")
        #: Shared with the children: [steps taken by the clock, 1 while all must idle].
        self._ctl = ctx.Array("q", [0, 0], lock=False)
        for i, part in enumerate(parts):
            q: mp.Queue = ctx.Queue(maxsize=lookahead)
            cost = ctx.Array("d", [-1.0] * n, lock=False)
            cpu = ctx.Array("d", [-1.0] * n, lock=False)
            proc = ctx.Process(
                target=_routes_worker,
                args=(snapshots, scheme, part, q, cost, cpu, self._ctl),
                name=f"meshemu-routes-{i}",
                daemon=True,
            )
            self.qs.append(q)
            self.costs.append(cost)
            self.cpu_costs.append(cpu)
            self.procs.append(proc)
        for proc in self.procs:
            proc.start()

    def yield_cpu(self, idle: bool) -> None:
        """Put the route processes under ``SCHED_IDLE`` (``idle``: they run only on CPU
        time nothing else wants, e.g. while the network is built) until told otherwise, or
        back under ``SCHED_OTHER`` at their nice :data:`ROUTES_NICE`, from where each goes
        idle again after a step that leaves it more than :data:`IDLE_LEAD_STEPS` ahead of
        the clock. A process that has already ended is skipped."""
        self._ctl[1] = int(idle)
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        for proc in self.procs:
            if proc.pid is None or not proc.is_alive():
                continue
            try:  # (the niceness is kept across SCHED_IDLE and back: sched_setscheduler(2))
                os.sched_setscheduler(proc.pid, policy, os.sched_param(0))
            except ProcessLookupError:  # ended meanwhile
                continue
            except PermissionError:  # (not root: leaving SCHED_IDLE needs RLIMIT_NICE room)
                log.debug("route process %d: cannot change its scheduling policy", proc.pid)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the route processes (``SIGSTOP``) for the ``with`` block, then let them go
        on (``SIGCONT``), even when the block raises.

        Even under ``SCHED_IDLE`` they take what a CPU leaves between the steps of another
        task, and the node spawn loop leaves a lot: each spawn waits for its child's
        ``exec``. On Starlink Gen1 the shells took 13.8-16.4 s to start with the route
        processes idle, 7.2-9.1 s with them stopped and 7.1 s without them
        (``benchmarks/bench_build.py --feed idle-all|idle|off``).
        """
        self._signal_all(signal.SIGSTOP)
        try:
            yield
        finally:
            self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    @property
    def proc(self) -> Any:
        """The first route process (the only one with one worker)."""
        return self.procs[0]

    def _take(self, k: int, timeout_s: float) -> list[tuple]:
        items = []
        for q in self.qs:
            item = q.get(timeout=timeout_s)
            if item is None or item[0] == "error":
                raise RoutingError(
                    f"routing scheme failed at step {k}: {item[1] if item else 'no more steps'}"
                )
            if item[0] != k:
                raise EmulationError(f"route feed out of order: wanted step {k}, got {item[0]}")
            items.append(item)
        return items

    def get(self, k: int, timeout_s: float = 600.0) -> ForwardingTables:
        """The tables of step ``k`` (steps must be taken in order, each once).

        Raises
        ------
        RoutingError
            The scheme failed in a child (its error in one line).
        """
        return self.get_step(k, timeout_s)[0]

    def get_step(
        self, k: int, timeout_s: float = 600.0
    ) -> tuple[ForwardingTables, RouteDiff | None]:
        """The tables of step ``k`` and how they differ from step ``k - 1``'s (None at
        step 0), as the children computed it (steps in order, each once)."""
        if k != self._next:
            raise EmulationError(f"route feed out of order: wanted step {self._next}, got {k}")
        items = self._take(k, timeout_s)
        self._next += 1
        self._ctl[0] = self._next
        if k == 0:
            nhs = [np.asarray(it[2]) for it in items]
            nhs = [a if a.ndim == 3 else a[:, :, None] for a in nhs]
            nh0 = _join(nhs)
            self._name = items[0][3]
            first = ForwardingTables(self._dests, nh0, self._name)
            self._bufs = [nh0.copy(), nh0.copy()]
            return first, None
        diff = self._join_diffs(items)
        width = max(it[5] for it in items)
        b = k % 2
        if width > self._bufs[0].shape[2] or diff.new.shape[1] > self._bufs[0].shape[2]:
            w = max(width, diff.new.shape[1])
            self._bufs = [_widen(x, w) for x in self._bufs]
        # buffer b holds step k - 2: bring it to k - 1 (the other buffer's diff), then to k
        for d in (self._diffs[1 - b], diff):
            if d is not None and len(d):
                buf = self._bufs[b]
                new = d.new
                if new.shape[1] < buf.shape[2]:
                    new = np.pad(
                        new, ((0, 0), (0, buf.shape[2] - new.shape[1])), constant_values=-1
                    )
                buf[d.nodes, d.dest_index] = new[:, : buf.shape[2]]
        self._diffs[b] = diff
        return ForwardingTables(self._dests, self._bufs[b], self._name), diff

    def _join_diffs(self, items: list[tuple]) -> RouteDiff:
        if len(items) == 1:
            _, u, j, old, new, _ = items[0]
            return RouteDiff(u.astype(np.int64), j.astype(np.int64), old, new)
        w = max(max(it[3].shape[1], it[4].shape[1]) for it in items)

        def pad(a: np.ndarray) -> np.ndarray:
            return (
                a
                if a.shape[1] == w
                else np.pad(a, ((0, 0), (0, w - a.shape[1])), constant_values=-1)
            )

        return RouteDiff(
            np.concatenate([it[1] for it in items]).astype(np.int64),
            np.concatenate([it[2].astype(np.int64) + off for it, off in zip(items, self.offsets)]),
            np.concatenate([pad(it[3]) for it in items]),
            np.concatenate([pad(it[4]) for it in items]),
        )

    def routing_cost_s(self, k: int) -> float:
        """Seconds step ``k`` took the slowest route process (NaN until all have routed it)."""
        return _slowest(self.costs, k)

    def steps_ready(self) -> int:
        """Steps every child has routed so far (taken or not)."""
        done = 0
        for k in range(len(self.costs[0])):
            if any(cost[k] < 0 for cost in self.costs):
                break
            done = k + 1
        return done

    def routing_cpu_s(self, k: int) -> float:
        """CPU seconds step ``k`` took the slowest route process (NaN until all have routed
        it)."""
        return _slowest(self.cpu_costs, k)

    def estimate_s(self, steps: int = 3, timeout_s: float = 120.0) -> float:
        """Seconds a step will take the route processes: the median over the first
        ``steps`` steps of the slowest child's CPU seconds, times children per CPU where
        there are more children than CPUs (waits until the children have routed them, or
        ``timeout_s``; NaN when none is done).

        CPU seconds, not wall: the first steps are routed during the build under
        ``SCHED_IDLE``, so their wall time says how busy the build kept the machine
        (Starlink Gen1: 0.89 s a step, where the run then kept up with 1 s steps to its
        end), not what routing will cost once the clock runs."""
        n = min(steps, len(self.costs[0]))
        deadline = time.monotonic() + timeout_s
        while (
            any(math.isnan(self.routing_cost_s(i)) for i in range(n))
            and time.monotonic() < deadline
            and all(p.is_alive() for p in self.procs)
        ):
            time.sleep(0.01)
        done = [c for c in (self.routing_cpu_s(i) for i in range(n)) if not math.isnan(c)]
        share = max(1.0, len(self.procs) / (os.cpu_count() or 1))
        return float(np.median(done)) * share if done else float("nan")

    def close(self) -> None:
        """End the children and release the queues."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        self._signal_all(signal.SIGCONT)  # (a stopped process takes its SIGTERM only then)
        for proc in self.procs:
            proc.join(timeout=5)
        for q in self.qs:
            q.close()
            q.cancel_join_thread()


def _slowest(per_child: list[Any], k: int) -> float:
    """The largest of the children's figures for step ``k`` (NaN until every child has one,
    or outside the run's steps)."""
    if not 0 <= k < len(per_child[0]):
        return float("nan")
    c = [float(a[k]) for a in per_child]
    return max(c) if min(c) >= 0 else float("nan")


def _join(nhs: list[np.ndarray]) -> np.ndarray:
    """The children's next-hop columns side by side, padded to one width."""
    if len(nhs) == 1:
        return nhs[0]
    width = max(a.shape[2] for a in nhs)
    return np.concatenate([_widen(a, width) for a in nhs], axis=1)


def _widen(nh: np.ndarray, width: int) -> np.ndarray:
    if nh.shape[2] >= width:
        return nh
    return np.pad(nh, ((0, 0), (0, 0), (0, width - nh.shape[2])), constant_values=-1)

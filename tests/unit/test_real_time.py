"""Honest timing (issue 12): the route process's cost per step is measured, and a run whose
routing cannot keep up with its steps says so before the clock starts, with a step and a
time scale that would."""

from __future__ import annotations

import logging
import math
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

from meshemu.live.feed import RouteFeed
from meshemu.live.run import check_real_time
from meshemu.routing import ForwardingTables


class SlowScheme:
    """A stand-in scheme that takes ``cost_s`` per step."""

    name = "slow"

    def __init__(self, cost_s: float):
        self.cost_s = cost_s

    def forwarding_tables(self, snap, dests):
        c_end = time.process_time() + self.cost_s
        while time.process_time() < c_end:  # busy, as routing is: cost_s of CPU time
            pass
        return ForwardingTables(dests, np.zeros((2, len(dests), 1), np.int32), self.name)


def test_the_route_process_reports_what_each_step_cost():
    feed = RouteFeed([object()] * 4, SlowScheme(0.05), np.arange(2, dtype=np.int32))
    try:
        est = feed.estimate_s(steps=3, timeout_s=30)
        assert 0.045 <= est < 1.0
        for k in range(4):
            feed.get(k)
        costs = [feed.routing_cost_s(k) for k in range(4)]
        assert all(0.045 <= c < 1.0 for c in costs), costs
        assert math.isnan(feed.routing_cost_s(99))
    finally:
        feed.close()


def net_with(
    est_s: float, step_s: float = 1.0, time_scale: float = 1.0, ahead: int = 8, n_steps: int = 601
):
    feed = SimpleNamespace(estimate_s=lambda: est_s, lookahead=512, steps_ready=lambda: ahead)
    inputs = SimpleNamespace(
        options=SimpleNamespace(time_scale=time_scale),
        span=SimpleNamespace(step_s=step_s, n_steps=n_steps),
        scheme=SimpleNamespace(name="shortest-delay"),
    )
    return SimpleNamespace(feed=feed, inputs=inputs)


def test_a_run_whose_routing_cannot_keep_up_says_so_and_what_would(caplog):
    with caplog.at_level(logging.WARNING, logger="meshemu.live.run"):
        assert check_real_time(net_with(1.2), 1.0) == 1.2
    (rec,) = caplog.records
    msg = rec.getMessage()
    assert "takes 1.20 CPU-s per step, more than the 1.00 s" in msg
    # 8 steps ahead, 1.2 s per step against 0.8 s of budget: behind after 8 x 1.2 / 0.4 = 24
    assert "with 8 steps routed ahead" in msg and "from about step 25 of 601" in msg
    # 1.2 s / 0.8 = 1.5 s of wall time per step: --step 1.5, or time scale 1 / 1.5
    assert "--step 1.5 " in msg and "--time-scale 0.66 " in msg


def test_a_run_that_keeps_up_says_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="meshemu.live.run"):
        check_real_time(net_with(0.5), 1.0)
        check_real_time(net_with(float("nan")), 1.0)
        # slow routing, but the steps routed during the build outlast the run:
        # 200 ahead x 1.2 / 0.4 = step 600 of 600
        check_real_time(net_with(1.2, ahead=200, n_steps=600), 1.0)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="meshemu.live.run"):
        check_real_time(net_with(1.2, ahead=200, n_steps=602), 1.0)
    assert "from about step 601 of 602" in caplog.records[0].getMessage()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal next hops, whatever the padding of either."""
    w = max(a.shape[2], b.shape[2])
    pa, pb = (np.pad(x, ((0, 0), (0, 0), (0, w - x.shape[2])), constant_values=-1) for x in (a, b))
    return bool(np.array_equal(pa, pb))


def test_diffs_from_the_route_process_rebuild_every_steps_tables():
    """From step 1 on the children send diffs; the tables the feed rebuilds from them equal
    the scheme's own, with one and two children, and step k's tables stay valid while step
    k + 1 is taken (the emulator keeps the previous step's)."""
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.routing import get_scheme, route_diff
    from meshemu.spec.scenario import load_scenario

    sched = LinkSchedule(load_scenario("default"), 1.0)
    snaps = list(sched.snapshots(30))
    dests = np.arange(len(sched.nodes), dtype=np.int32)
    for name in ("shortest-delay", "ecmp"):
        scheme = get_scheme(name)
        want = [scheme.forwarding_tables(s, dests) for s in snaps]
        assert sum(len(route_diff(a, b)) for a, b in zip(want, want[1:])) > 0  # it moves
        for workers in (1, 2):
            feed = RouteFeed(snaps, scheme, dests, workers=workers)
            try:
                prev = None
                for k in range(len(snaps)):
                    got, diff = feed.get_step(k)
                    assert (diff is None) == (k == 0)
                    assert _same(got.next_hop, want[k].next_hop), (name, workers, k)
                    if diff is not None:
                        assert len(diff) == len(route_diff(want[k - 1], want[k]))
                    if prev is not None:  # the previous step's tables are still step k-1's
                        assert _same(prev.next_hop, want[k - 1].next_hop), (name, workers, k)
                    prev = got
            finally:
                feed.close()


def test_route_processes_split_the_destinations_and_agree_with_one():
    """Two route processes, each toward half the destinations, give the tables one gives
    (ECMP too, whose parts may differ in width)."""
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.routing import get_scheme
    from meshemu.spec.scenario import load_scenario

    sched = LinkSchedule(load_scenario("default"), 1.0)
    snaps = list(sched.snapshots(4))
    dests = np.arange(len(sched.nodes), dtype=np.int32)
    for name in ("shortest-delay", "ecmp"):
        one = RouteFeed(snaps, get_scheme(name), dests, workers=1)
        two = RouteFeed(snaps, get_scheme(name), dests, workers=2)
        try:
            assert len(two.procs) == 2
            for k in range(len(snaps)):
                a, b = one.get(k), two.get(k)
                assert np.array_equal(a.destinations, b.destinations)
                w = max(a.next_hop.shape[2], b.next_hop.shape[2])
                pa, pb = (
                    np.pad(x, ((0, 0), (0, 0), (0, w - x.shape[2])), constant_values=-1)
                    for x in (a.next_hop, b.next_hop)
                )
                assert np.array_equal(pa, pb), (name, k)
                assert not math.isnan(two.routing_cost_s(k))
        finally:
            one.close()
            two.close()


class SettableScheme(SlowScheme):
    """A stand-in whose cost per step the test changes while the children run (the value
    is in shared memory, so the forked children see it)."""

    def __init__(self, cost_s: float):
        import multiprocessing as mp

        self.shared = mp.get_context("fork").Value("d", cost_s, lock=False)

    @property
    def cost_s(self) -> float:
        return self.shared.value

    @cost_s.setter
    def cost_s(self, value: float) -> None:
        self.shared.value = value


def policies(feed) -> list[int]:
    return [os.sched_getscheduler(p.pid) for p in feed.procs]


def wait_for(cond, what: str, timeout_s: float = 20.0, between=lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        between()
        time.sleep(0.005)


def test_route_processes_idle_during_the_build_and_while_far_ahead_of_the_clock():
    from meshemu.live.feed import BUILD_LEAD_STEPS, ROUTES_NICE

    scheme = SettableScheme(0.002)
    lookahead = BUILD_LEAD_STEPS + 12
    feed = RouteFeed(
        [object()] * 400, scheme, np.arange(2, dtype=np.int32), lookahead=lookahead, workers=2
    )
    try:
        assert len(feed.procs) == 2
        feed.get(0)  # (both have started: they took their niceness first)
        feed.yield_cpu(True)  # the build: idle, however far ahead or behind
        assert policies(feed) == [os.SCHED_IDLE] * 2
        # ... and no further ahead than BUILD_LEAD_STEPS (step 0 is taken)
        banked = BUILD_LEAD_STEPS + 1
        wait_for(lambda: feed.steps_ready() >= banked, "no steps routed during the build")
        t_end = time.monotonic() + 0.3  # time for 150 more steps at 2 ms each: none may come
        while time.monotonic() < t_end:
            assert feed.steps_ready() == banked
            time.sleep(0.01)
        taken = [1]

        def take() -> None:  # the clock takes a step (the children then route one more)
            feed.get(taken[0])
            taken[0] += 1

        # after the build, children that run far ahead of the clock go idle by themselves
        feed.yield_cpu(False)
        assert policies(feed) == [os.SCHED_OTHER] * 2
        wait_for(
            lambda: taken[0] > 3 and policies(feed) == [os.SCHED_IDLE] * 2,
            "route processes far ahead of the clock did not go idle",
            between=take,
        )
        assert [os.getpriority(os.PRIO_PROCESS, p.pid) for p in feed.procs] == [ROUTES_NICE] * 2
        # routing gets slower than the clock: once the lead is gone they compete again
        scheme.cost_s = 0.03
        wait_for(
            lambda: taken[0] > lookahead + 8 and policies(feed) == [os.SCHED_OTHER] * 2,
            "route processes that the clock caught up with stayed idle",
            between=take,
        )
        assert [os.getpriority(os.PRIO_PROCESS, p.pid) for p in feed.procs] == [ROUTES_NICE] * 2
    finally:
        feed.close()
    feed.yield_cpu(True)  # ended processes are skipped


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_route_processes_stop_while_paused_and_go_on_after_even_on_an_error():
    feed = RouteFeed([object()] * 400, SettableScheme(0.002), np.arange(2, dtype=np.int32))
    try:
        feed.get(0)
        with pytest.raises(KeyError), feed.paused():
            wait_for(
                lambda: [proc_state(p.pid) for p in feed.procs] == ["T"],
                "the route process was not stopped",
            )
            ready = feed.steps_ready()
            t_end = time.monotonic() + 0.2  # 100 steps' time at 2 ms each: none may come
            while time.monotonic() < t_end:
                assert feed.steps_ready() == ready
                time.sleep(0.01)
            raise KeyError("the spawn failed")
        assert [proc_state(p.pid) for p in feed.procs] != ["T"]
        wait_for(lambda: feed.steps_ready() > ready, "the route process did not go on")
        with feed.paused():  # closing a stopped feed ends its processes
            feed.close()
        assert not any(p.is_alive() for p in feed.procs)
    finally:
        feed.close()

"""Honest timing (issue 12): the route process's cost per step is measured, and a run whose
routing cannot keep up with its steps says so before the clock starts, with a step and a
time scale that would."""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace

import numpy as np

from meshemu.live.feed import RouteFeed
from meshemu.live.run import check_real_time
from meshemu.routing import ForwardingTables


class SlowScheme:
    """A stand-in scheme that takes ``cost_s`` per step."""

    name = "slow"

    def __init__(self, cost_s: float):
        self.cost_s = cost_s

    def forwarding_tables(self, snap, dests):
        t_end = time.perf_counter() + self.cost_s
        while time.perf_counter() < t_end:  # busy, as routing is
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


def net_with(est_s: float, step_s: float = 1.0, time_scale: float = 1.0):
    feed = SimpleNamespace(estimate_s=lambda: est_s, lookahead=8)
    inputs = SimpleNamespace(
        options=SimpleNamespace(time_scale=time_scale),
        span=SimpleNamespace(step_s=step_s),
        scheme=SimpleNamespace(name="shortest-delay"),
    )
    return SimpleNamespace(feed=feed, inputs=inputs)


def test_a_run_whose_routing_cannot_keep_up_says_so_and_what_would(caplog):
    with caplog.at_level(logging.WARNING, logger="meshemu.live.run"):
        assert check_real_time(net_with(1.2), 1.0) == 1.2
    (rec,) = caplog.records
    msg = rec.getMessage()
    assert "takes 1.20 s per step, more than the 1.00 s" in msg
    # 1.2 s / 0.8 = 1.5 s of wall time per step: --step 1.5, or time scale 1 / 1.5
    assert "--step 1.5 " in msg and "--time-scale 0.66 " in msg


def test_a_run_that_keeps_up_says_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="meshemu.live.run"):
        check_real_time(net_with(0.5), 1.0)
        check_real_time(net_with(float("nan")), 1.0)
    assert not caplog.records


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

"""Send schedules and the alpha-beta prediction, against numbers worked out by hand."""

import math

import numpy as np
import pytest

from meshemu.errors import ProfileError
from meshemu.traffic import schedule as sch


def test_ring_plan_structure():
    plan = sch.ring_plan(4, 1_000_000)
    assert len(plan) == 2 * 3 * 4
    assert {t.nbytes for t in plan} == {250_000}
    assert {t.phase for t in plan} == set(range(6))
    # step 2, rank 1 sends to 2 after rank 0's step-1 chunk
    t = plan[2 * 4 + 1]
    assert (t.src, t.dst, t.deps) == (1, 2, (1 * 4 + 0,))
    assert plan[1 * 4 + 0].dst == 1
    assert all(t.deps == () for t in plan[:4])
    assert sch.ring_plan(3, 1000)[0].nbytes == 334  # rounded up


def test_tree_plan_structure():
    plan = sch.tree_plan(4, 100)  # 0 <- 1 <- 3, 0 <- 2
    up = [t for t in plan if t.dst < t.src]
    down = [t for t in plan if t.dst > t.src]
    assert len(up) == len(down) == 3
    first = plan[0]
    assert (first.src, first.dst, first.deps, first.phase) == (3, 1, (), 0)
    r1 = next(t for t in up if t.src == 1)
    assert r1.deps == (first.index,) and r1.phase == 1
    b1 = next(t for t in down if t.dst == 1)
    assert set(b1.deps) == {t.index for t in up if t.dst == 0} and b1.phase == 2
    b3 = next(t for t in down if t.dst == 3)
    assert b3.deps == (b1.index,) and b3.phase == 3


def test_parameter_server_plan():
    plan = sch.parameter_server_plan(3, 500)
    assert [(t.src, t.dst, t.phase) for t in plan] == [(1, 0, 0), (2, 0, 0), (0, 1, 1), (0, 2, 1)]
    assert plan[2].deps == plan[3].deps == (0, 1)


def test_unknown_algorithm():
    with pytest.raises(ProfileError, match="please specify one of: parameter_server, ring, tree"):
        sch.collective_plan("butterfly", 4, 1)
    with pytest.raises(ValueError):
        sch.ring_plan(1, 10)


def test_fragments_and_wire_bytes():
    assert sch.n_fragments(0) == 1
    assert sch.n_fragments(1364) == 1 and sch.n_fragments(1365) == 2
    assert sch.wire_bytes(250_000) == 250_000 + 184 * 78


def test_transfer_time_by_hand():
    # 10,000 bytes: 8 packets -> 10,624 wire bytes; 10 Mbit/s: 8.4992 ms; delay 20 ms;
    # two hops at 100 Mbit/s, full frame 1442 B: 2 * 0.11536 ms; alpha 0.5 ms
    t = sch.transfer_time_s(0.020, 10_000, 10e6, [100e6, 100e6])
    assert t == pytest.approx(0.0005 + 0.020 + 0.0084992 + 2 * 0.00011536)
    assert sch.transfer_time_s(0.0, 10_000, 10e6, [], overhead_s=0) == pytest.approx(0.0084992)


def test_ring_prediction_by_hand():
    # p = 2, 2 steps of 500 kB chunks; paths 10 ms and 30 ms; 20 Mbit/s pacing
    plan = sch.ring_plan(2, 1_000_000)
    delays = [0.010, 0.030] * 2
    rates = [20e6] * 4
    per_step = 0.0005 + 0.030 + sch.wire_bytes(500_000) * 8 / 20e6
    assert sch.predict_iteration_s(plan, delays, rates) == pytest.approx(2 * per_step)
    assert sch.wire_bytes(500_000) == 500_000 + 367 * 78
    assert 2 * per_step == pytest.approx(2 * (0.0305 + 528_626 * 8 / 20e6))
    rates[1] = 0.0
    assert math.isnan(sch.predict_iteration_s(plan, delays, rates))


def test_fair_share():
    plan = sch.parameter_server_plan(3, 1000)  # two pushes into the server, then pulls
    paths = [[7, 1], [8, 1], [1, 7], [1, 8]]  # both pushes share link 1
    r = sch.fair_share_rates(plan, paths, {1: 30e6, 7: 100e6, 8: 100e6}, [20e6] * 4)
    assert r.tolist() == [15e6, 15e6, 15e6, 15e6]
    r = sch.fair_share_rates(plan, paths, {1: 100e6}, [20e6] * 4)
    assert r.tolist() == [20e6] * 4
    r = sch.fair_share_rates(plan, [None, [1], [1], [1]], {1: 100e6}, [20e6] * 4)
    assert r[0] == 0


def test_poisson_arrivals_seeded():
    a = sch.poisson_arrivals(5.0, 100.0, 42)
    b = sch.poisson_arrivals(5.0, 100.0, 42)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert a.min() >= 0 and a.max() < 100
    assert abs(a.size - 500) < 4 * math.sqrt(500)
    assert not np.array_equal(a, sch.poisson_arrivals(5.0, 100.0, 43))
    assert sch.poisson_arrivals(0, 10, 1).size == 0
    gaps = np.diff(sch.poisson_arrivals(50.0, 1000.0, 1))
    assert np.mean(gaps) == pytest.approx(0.02, rel=0.03)


def test_replay_schedule():
    t, s = sch.replay_schedule([5.0, 4.0, 6.5, 9.0], [100, 2000, 10, 500], duration_s=4.0)
    assert t.tolist() == [0.0, 1.0, 2.5]
    assert s.tolist() == [1428, 100, 64]
    assert sch.bulk_interval_s(10.0) == pytest.approx(1442 * 8 / 10e6)


def test_critical_path_by_hand():
    # p = 2, delays 10 ms (0 -> 1) and 30 ms (1 -> 0): each step-1 transfer waits for the
    # other direction's step-0 transfer, so both chains are a + 10 + B + a + 30 + B,
    # while the phase-by-phase sum takes the 30 ms path twice
    plan = sch.ring_plan(2, 1_000_000)
    delays = [0.010, 0.030, 0.010, 0.030]
    rates = [20e6] * 4
    b = sch.wire_bytes(500_000) * 8 / 20e6
    a = sch.OVERHEAD_S
    assert sch.critical_path_s(plan, delays, rates) == pytest.approx(2 * a + 0.040 + 2 * b)
    assert sch.predict_iteration_s(plan, delays, rates) == pytest.approx(2 * a + 0.060 + 2 * b)
    # a tree: reduce 3 -> 1 -> 0 and 2 -> 0, then broadcast; all 10 ms, one rate
    tree = sch.tree_plan(4, 1000)
    t1 = sch.transfer_time_s(0.010, 1000, 20e6)
    cp = sch.critical_path_s(tree, [0.010] * 6, [20e6] * 6)
    assert cp == pytest.approx(4 * t1)
    assert sch.predict_iteration_s(tree, [0.010] * 6, [20e6] * 6) == pytest.approx(4 * t1)

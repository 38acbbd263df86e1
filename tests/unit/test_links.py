"""The emulator's link table: every parameter from the snapshots, one record per link."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from meshemu.errors import EmulationError
from meshemu.geometry.linkstate import DEFAULT_QUEUE_PACKETS, GSL, ISL
from meshemu.live import addressing as adr
from meshemu.live.links import DELAY_TOLERANCE_S, LinkTable, RunLinks
from meshemu.live.shapers import LinkParams
from meshemu.routing import snapshot_from_edges

NAMES = ["s0", "s1", "s2", "g0"]
EDGES = [(0, 1), (0, 3), (1, 2), (2, 3)]  # in key order: link id = index
KINDS = [ISL, GSL, ISL, GSL]


def snap(up=None, delays=None, t_s=0.0, edges=EDGES, kinds=KINDS, **extra):
    s = snapshot_from_edges(
        4,
        edges,
        delays if delays is not None else [0.005] * len(edges),
        up=up,
        t_s=t_s,
        kinds=kinds,
    )
    return dataclasses.replace(s, **extra) if extra else s


def test_run_links_take_kind_from_the_snapshots():
    s0 = snap(edges=EDGES[:3], kinds=KINDS[:3])
    s1 = snap(edges=EDGES[1:], kinds=KINDS[1:], t_s=1.0)
    links = RunLinks.from_snapshots([s0, s1])
    assert links.key.tolist() == sorted(a * 4 + b for a, b in EDGES)
    assert links.kind.tolist() == KINDS
    # the snapshot's kind, even where node kinds would say otherwise
    odd = RunLinks.from_snapshot(snap(kinds=[GSL, ISL, GSL, GSL]))
    assert odd.isl.tolist() == [False, True, False, False]
    plan = adr.AddressPlan.from_links(NAMES, ["sat"] * 3 + ["station"], odd.key, isl=odd.isl)
    assert plan.ifnames() == ["gsl0", "isl1", "gsl2", "gsl3"]
    with pytest.raises(EmulationError, match="changes kind"):
        RunLinks.from_snapshots([s0, snap(kinds=[GSL] * 4)])
    with pytest.raises(EmulationError, match="at least one"):
        RunLinks.from_snapshots([])


def test_table_holds_the_snapshot_parameters_as_one_value_per_link():
    queue = np.array([7, 7, 9, 9], np.int32)
    loss = np.array([0.0, 0.01, 0.0, 0.5])
    s = snap(up=[True, True, False, True], queue_packets=queue, loss=loss)
    s = dataclasses.replace(s, rate_bps=np.array([1e9, 2e9, 3e9, np.inf]))
    table = LinkTable(RunLinks.from_snapshot(s), NAMES)
    # before load: down, with the parameters the link first appears with
    assert table.params(0) == LinkParams(0.005, 1e9, 7, 0.0, False)
    assert LinkTable(RunLinks(4, s.key, s.kind), NAMES).params(0) == LinkParams(
        0.0, 0.0, DEFAULT_QUEUE_PACKETS, 0.0, False
    )
    table.load(s)
    got = table.params_of(np.arange(4))
    assert got == [
        LinkParams(0.005, 1e9, 7, 0.0, True),
        LinkParams(0.005, 2e9, 7, 0.01, True),
        LinkParams(0.005, 3e9, 9, 0.0, False),
        LinkParams(0.005, np.inf, 9, 0.5, True),
    ]


def test_advance_returns_only_what_the_shaper_must_change():
    s0 = snap()
    table = LinkTable(RunLinks.from_snapshot(s0), NAMES)
    table.load(s0)
    ch = table.advance(snap(t_s=1.0))
    assert ch.ids.size == 0 and (ch.n_went_up, ch.n_went_down) == (0, 0)
    # a tiny delay change is not pushed; a real one is; a queue or loss change alone is
    d = np.full(4, 0.005)
    d[0] += DELAY_TOLERANCE_S / 2
    d[1] += 1e-4
    q = np.full(4, DEFAULT_QUEUE_PACKETS, np.int32)
    q[2] = 5
    ls = np.zeros(4)
    ls[3] = 0.1
    ch = table.advance(snap(delays=d, queue_packets=q, loss=ls))
    assert ch.ids.tolist() == [1, 2, 3]
    assert table.params(1).delay_s == d[1] and table.params(0).delay_s == 0.005
    assert table.params(2).queue_packets == 5 and table.params(3).loss == 0.1
    # down: pushed once; while down, no delay updates; up again: pushed with the new delay
    ch = table.advance(snap(up=[False, True, True, True], delays=d, queue_packets=q, loss=ls))
    assert ch.ids.tolist() == [0] and (ch.n_went_up, ch.n_went_down) == (0, 1)
    d2 = d.copy()
    d2[0] = 0.009
    ch = table.advance(snap(up=[False, True, True, True], delays=d2, queue_packets=q, loss=ls))
    assert ch.ids.size == 0
    ch = table.advance(snap(delays=d2, queue_packets=q, loss=ls))
    assert ch.ids.tolist() == [0] and ch.n_went_up == 1 and table.params(0).delay_s == 0.009


def test_a_wider_delay_tolerance_keeps_the_shaper_within_it_of_the_plan():
    """A delay drifting by 4 us a step with a 10 us tolerance is pushed every third step,
    and what the shaper holds is never more than 10 us from the plan."""
    s0 = snap()
    table = LinkTable(RunLinks.from_snapshot(s0), NAMES, delay_tolerance_s=10e-6)
    table.load(s0)
    pushed = []
    for k in range(1, 31):
        d = np.full(4, 0.005)
        d[0] += 4e-6 * k
        ch = table.advance(snap(delays=d, t_s=float(k)))
        if ch.ids.size:
            assert ch.ids.tolist() == [0]
            pushed.append(k)
        assert abs(table.params(0).delay_s - d[0]) <= 10e-6 + 1e-12
    assert pushed == list(range(3, 31, 3))
    with pytest.raises(EmulationError, match="delay tolerance"):
        LinkTable(RunLinks.from_snapshot(s0), NAMES, delay_tolerance_s=-1.0)


def test_a_link_absent_from_a_snapshot_is_down_and_keeps_its_parameters():
    full = snap()
    table = LinkTable(RunLinks.from_snapshot(full), NAMES)
    table.load(full)
    part = snap(edges=EDGES[:3], kinds=KINDS[:3], t_s=1.0)
    ch = table.advance(part)
    k = int(np.searchsorted(table.links.key, 2 * 4 + 3))
    assert ch.ids.tolist() == [k] and ch.n_went_down == 1
    assert table.params(k) == LinkParams(0.005, 1e9, DEFAULT_QUEUE_PACKETS, 0.0, False)


def test_a_link_down_at_the_start_is_made_with_the_parameters_it_comes_up_with():
    """A link that first appears later (a ground link after a handover) is built down, with
    its later rate, queue and loss (the shaper sizes per-link settings from them)."""
    first = snap(edges=EDGES[:3], kinds=KINDS[:3])
    later = dataclasses.replace(
        snap(edges=EDGES, t_s=5.0),
        rate_bps=np.array([1e9, 2e9, 3e9, 1e8]),
        queue_packets=np.array([7, 7, 9, 40], np.int32),
        loss=np.array([0.0, 0.0, 0.0, 0.02]),
    )
    table = LinkTable(RunLinks.from_snapshots([first, later]), NAMES)
    table.load(first)
    k = int(np.searchsorted(table.links.key, 2 * 4 + 3))
    assert table.params(k) == LinkParams(0.005, 1e8, 40, 0.02, False)
    ch = table.advance(later)
    assert k in ch.ids.tolist() and ch.n_went_up == 1
    assert table.params(k) == LinkParams(0.005, 1e8, 40, 0.02, True)


def test_table_refuses_what_does_not_fit():
    s = snap(edges=EDGES[:3], kinds=KINDS[:3])
    table = LinkTable(RunLinks.from_snapshot(s), NAMES)
    with pytest.raises(EmulationError, match="not built"):
        table.load(snap())
    with pytest.raises(EmulationError, match="queue_packets"):
        table.load(
            snap(edges=EDGES[:3], kinds=KINDS[:3], queue_packets=np.array([1, 0, 1], np.int32))
        )
    with pytest.raises(EmulationError, match="loss"):
        table.load(snap(edges=EDGES[:3], kinds=KINDS[:3], loss=np.array([0, 1.5, 0])))
    with pytest.raises(EmulationError, match="nodes"):
        table.load(snapshot_from_edges(5, EDGES[:3], [0.005] * 3))

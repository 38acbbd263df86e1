"""Loss, outage, reordering and delay spikes around topology events
(meshemu/report/disruption.py), on synthetic packet logs whose truth is known by
construction: which frames were dropped, which arrived late, what the delays were."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshemu.report import disruption as D


def log(
    n: int = 2000,
    pps: float = 100.0,
    drop: tuple[float, float] | None = None,
    owd_ms=lambda t: 20.0,
    swap_at: list[int] | None = None,
    every: int = 1,
    flow: str = "1",
):
    """A constant-rate flow: frame i sent at i / pps; frames sent in ``drop`` are lost;
    frames ``swap_at[j]`` and ``swap_at[j] + 1`` arrive in swapped order; the receiver logs
    every ``every``-th frame it receives."""
    t = np.arange(n) / pps
    seq = np.arange(n)
    keep = np.ones(n, bool)
    if drop:
        keep &= ~((t >= drop[0]) & (t < drop[1]))
    owd = np.array([owd_ms(x) for x in t])
    recv = t + owd / 1e3
    for i in swap_at or []:
        recv[i], recv[i + 1] = recv[i + 1], recv[i]
    t, seq, owd, recv = t[keep], seq[keep], owd[keep], recv[keep]
    # the receiver counts frames in arrival order and logs every `every`-th
    order = np.argsort(recv, kind="stable")
    logged = order[::every]
    logged.sort()
    rows = {
        "flow_id": np.full(logged.size, flow),
        "src": np.full(logged.size, "a"),
        "dst": np.full(logged.size, "b"),
        "seq": seq[logged].astype(float),
        "recv_unix_ns": recv[logged] * 1e9,
        "owd_ms": owd[logged],
    }
    return rows, t[logged]


def test_loss_and_outage_of_a_cut_flow_are_the_frames_dropped():
    pk, send = log(drop=(10.0, 10.3))
    ev = [D.EventWindow(10.0, "isl", convergence_s=0.25)]
    (e,) = D.analyse(ev, pk, send)
    assert e.lost == 30  # 10.00 .. 10.29 at 100 pps
    # the probe's outage: from the last frame before the cut to the first after
    assert e.outage_s == pytest.approx(0.31, abs=1e-9)
    assert e.sent == 125  # window [10, 11.25) at 100 pps
    assert e.reordered == 0
    assert e.owd_base_ms == pytest.approx(20.0)


def test_sampling_by_the_receiver_does_not_change_the_loss_count():
    pk, send = log(drop=(10.0, 10.3), every=4)
    (e,) = D.analyse([D.EventWindow(10.0, "isl", 0.25)], pk, send, every={"1": 4})
    assert e.lost == 30
    assert abs(e.sent - 125) <= 4  # logged frames x 4, plus the lost


def test_no_loss_and_no_outage_without_a_cut():
    pk, send = log()
    (e,) = D.analyse([D.EventWindow(10.0, "gsl", 0.1)], pk, send)
    assert (e.lost, e.outage_s, e.reordered) == (0, 0.0, 0)


def test_reordering_and_a_delay_spike_in_the_window():
    pk, send = log(owd_ms=lambda t: 45.0 if 10.0 <= t < 10.2 else 20.0, swap_at=[1005, 1050])
    (e,) = D.analyse([D.EventWindow(10.0, "isl", 0.5)], pk, send)
    # the two swapped pairs, and two more when the path shortens again at 10.2 s: frames
    # sent at 10.18 and 10.19 s (45 ms) arrive after the one sent at 10.20 s (20 ms)
    assert e.reordered == 2 + 2
    assert e.owd_base_ms == pytest.approx(20.0)
    assert e.owd_max_ms == pytest.approx(45.0)
    assert e.owd_p50_ms == pytest.approx(20.0)


def test_a_flow_far_from_the_event_is_not_counted_and_windows_stop_at_the_next_event():
    pk, send = log(n=300)  # 0 .. 3 s
    assert D.analyse([D.EventWindow(10.0, "isl", 0.0)], pk, send) == []
    pk, send = log(drop=(10.6, 10.7))
    evs = [D.EventWindow(10.0, "isl", 2.0), D.EventWindow(10.5, "gsl", 0.0)]
    first, second = D.analyse(evs, pk, send)
    assert first.lost == 0 and first.sent == 50  # [10, 10.5): cut by the next event
    assert second.lost == 10 and second.kind == "gsl"


def test_summary_per_kind():
    pk, send = log(drop=(10.0, 10.3))
    eff = D.analyse([D.EventWindow(5.0, "gsl", 0.0), D.EventWindow(10.0, "isl", 0.1)], pk, send)
    s = D.summarize(eff)
    assert s["isl"]["lost"] == 30 and s["isl"]["events_with_loss"] == 1
    assert s["gsl"]["lost"] == 0 and s["all"]["events"] == 2
    assert s["all"]["outage_s_max"] == pytest.approx(0.31)
    assert math.isfinite(s["all"]["owd_spike_ms_max"])


def test_events_from_links_are_the_changes_of_the_links_up():
    links = {
        "t_s": np.array([0, 0, 1, 1, 2, 2, 3, 3], float),
        "a": np.array(["x", "y"] * 4),
        "b": np.array(["y", "z"] * 4),
        "kind": np.array(["isl", "gsl"] * 4),
        "up": np.array(["1", "1", "1", "1", "1", "0", "0", "1"]),
    }
    ev = D.events_from_links(links)
    assert [(e.t_s, e.kind) for e in ev] == [(2.0, "gsl"), (3.0, "mixed")]

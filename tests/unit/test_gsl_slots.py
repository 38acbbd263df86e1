"""GSL scheduling: UTC-aligned slots, break-before-make outages, hysteresis."""

import copy
import csv
import datetime as dt

import numpy as np
import pytest

from meshemu.errors import ScenarioError
from meshemu.geometry.linkstate import GSL
from meshemu.geometry.schedule import LinkSchedule
from meshemu.geometry.slots import SlotClock
from meshemu.plan import run_plan
from meshemu.spec.scenario import Scenario

# a 550 km, 53 deg shell dense enough that the nearest satellite changes every few slots
SHELL = {
    "type": "walker-delta",
    "planes": 24,
    "sats_per_plane": 22,
    "phasing": 1,
    "altitude_km": 550,
    "inclination_deg": 53,
}
BASE = {
    "epoch": "2026-01-01T00:00:07Z",  # not on a minute: boundaries at t = 5, 20, 35, ...
    "constellation": {"shells": [SHELL]},
    "ground": [
        {"name": "paris", "lat_deg": 48.86, "lon_deg": 2.35, "kind": "user"},
        {"name": "chicago", "lat_deg": 41.88, "lon_deg": -87.63, "kind": "user"},
        {"name": "gw", "lat_deg": 50.1, "lon_deg": 8.7},
    ],
    "isl": {"max_range_km": 5000},
    "gsl": {"min_elevation_deg": 25},
}


def scenario(**gsl):
    d = copy.deepcopy(BASE)
    d["gsl"].update(gsl)
    return Scenario.from_dict(d)


def gsl_sets(snaps, up_only=False):
    """Per step: t and the set of (sat, ground) GSLs (optionally only the up ones)."""
    out = []
    for s in snaps:
        m = s.kind == GSL
        if up_only:
            m &= s.up
        out.append((s.t_s, set(zip(s.a[m].tolist(), s.b[m].tolist(), strict=True))))
    return out


def test_slot_clock_is_utc_aligned():
    c = SlotClock(dt.datetime(2026, 1, 1, 0, 0, 7, tzinfo=dt.UTC), 15.0, 12.0)
    assert c.phase_s == pytest.approx(5.0)
    np.testing.assert_allclose(c.boundaries(0, 60), [5, 20, 35, 50])
    for b in c.boundaries(0, 600):
        assert c.utc_second(b) % 15 == pytest.approx(12.0)
    assert c.slot_index(5.0) == c.slot_index(19.999) != c.slot_index(20.0)
    assert c.on_boundary([5.0, 20.0, 21.0]).tolist() == [True, True, False]
    assert c.steps_align(0.0, 1.0) and not c.steps_align(0.5, 1.0)
    assert not c.steps_align(0.0, 2.0)


def test_slotted_gsl_changes_only_on_boundaries_in_links_csv(tmp_path):
    sc = scenario(schedule="slotted")
    res = run_plan(sc, 240, out_dir=tmp_path / "plan", plots=False, table_format="csv")
    per_t: dict[float, set[tuple[str, str]]] = {}
    with open(res.out_dir / "links.csv") as f:
        for row in csv.DictReader(f):
            per_t.setdefault(float(row["t_s"]), set())
            if row["kind"] == "gsl":
                per_t[float(row["t_s"])].add((row["a"], row["b"]))
    times = sorted(per_t)
    changed = [t for t0, t in zip(times, times[1:], strict=False) if per_t[t0] != per_t[t]]
    assert len(changed) >= 3, "the test needs handovers to check"
    clock = SlotClock(sc.epoch, 15.0, 12.0)
    for t in changed:
        assert clock.on_boundary(t), f"GSL change at t = {t} s, not on a boundary"
        assert (sc.epoch.second + t) % 15 == 12  # seconds 12, 27, 42, 57 of the minute


def test_continuous_changes_off_boundary():
    """The same scenario without slots changes satellites between boundaries (so the
    slotted test above is not trivially true)."""
    sc = scenario()
    sets = gsl_sets(LinkSchedule(sc).snapshots(240))
    clock = SlotClock(sc.epoch, 15.0, 12.0)
    changed = [t for (t, a), (_, b) in zip(sets[1:], sets[:-1], strict=True) if a != b]
    assert any(not clock.on_boundary(t) for t in changed)


def test_slotted_assignment_holds_while_visible():
    s = LinkSchedule(scenario(schedule="slotted", links_per_station=1), 1.0)
    prev = None
    for snap in s.snapshots(240):
        m = snap.kind == GSL
        cur = dict(zip(snap.b[m].tolist(), snap.a[m].tolist(), strict=True))
        if prev is not None and not s.slots.on_boundary(snap.t_s):
            assert cur == prev  # every station keeps its satellite mid-slot
        prev = cur


def test_break_before_make_outage_length():
    step, outage = 0.1, 0.7
    sc = scenario(schedule="slotted", handover_mode="break-before-make", outage_s=outage)
    snaps = list(LinkSchedule(sc, step).snapshots(120))
    listed, up = gsl_sets(snaps), gsl_sets(snaps, up_only=True)
    n_sats = 24 * 22
    switches = 0
    for g in range(n_sats, n_sats + 3):
        for k in range(1, len(snaps)):
            now = {e for e in listed[k][1] if e[1] == g}
            before = {e for e in listed[k - 1][1] if e[1] == g}
            if not before or now == before:
                continue
            switches += 1
            new = now - before
            assert new and not (before - now) & now  # the old GSL is gone at the switch
            # the new GSL is listed but down for exactly outage_s, then up
            down_steps = 0
            while not any(e in up[k + down_steps][1] for e in new):
                down_steps += 1
            assert down_steps * step == pytest.approx(outage)
            assert not any(e[1] == g for j in range(k, k + down_steps) for e in up[j][1])
    assert switches >= 3


def test_make_before_break_keeps_an_up_gsl():
    sc = scenario(schedule="slotted", acquisition_s=2.0)
    for t, edges in gsl_sets(LinkSchedule(sc).snapshots(240), up_only=True):
        assert {g for _, g in edges} == {528, 529, 530}, f"a station lost its GSL at t = {t}"


def test_hysteresis_suppresses_flapping():
    def switches(sc):
        sets = gsl_sets(LinkSchedule(sc).snapshots(900))
        return sum(a != b for (_, a), (_, b) in zip(sets[1:], sets[:-1], strict=True))

    plain = switches(scenario(links_per_station=2))
    damped = switches(scenario(links_per_station=2, hysteresis_km=100.0))
    assert damped < plain
    # with the margin, a switch never returns to the satellite it just left within a slot
    s = LinkSchedule(scenario(links_per_station=1, hysteresis_km=100.0))
    hist: dict[int, list[tuple[float, int]]] = {}
    for snap in s.snapshots(900):
        m = snap.kind == GSL
        for a, b in zip(snap.a[m].tolist(), snap.b[m].tolist(), strict=True):
            h = hist.setdefault(b, [])
            if not h or h[-1][1] != a:
                h.append((snap.t_s, a))
    for h in hist.values():
        for (t0, a0), (_, _), (t2, a2) in zip(h, h[1:], h[2:], strict=False):
            assert not (a0 == a2 and t2 - t0 < 15), "flapping between two satellites"


@pytest.mark.parametrize(
    ("gsl", "field"),
    [
        ({"schedule": "sloted"}, "gsl.schedule"),
        ({"schedule": "slotted", "slot_offset_s": 15}, "gsl.slot_offset_s"),
        ({"slot_s": 10}, "gsl.slot_s"),
        ({"outage_s": 1.0}, "gsl.outage_s"),
        ({"schedule": "slotted", "hysteresis_km": 5}, "gsl.hysteresis_km"),
        ({"handover_mode": "make-after-break"}, "gsl.handover_mode"),
    ],
)
def test_bad_gsl_schedule_fields_are_named(gsl, field):
    with pytest.raises(ScenarioError) as e:
        scenario(**gsl)
    assert field in str(e.value)

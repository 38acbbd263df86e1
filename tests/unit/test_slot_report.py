"""The probe's figures (slot jump, loss near boundaries), the ping parser of ``meshemu
validate`` and the report of a probed slotted run."""

import copy
import csv
import json

import numpy as np
import pytest
from test_access import BASE

from meshemu.live.fidelity import PUBLISHED_2023, format_figures, parse_ping
from meshemu.plan import run_plan
from meshemu.report import report
from meshemu.report.files import PROBE
from meshemu.report.slots import probe_figures
from meshemu.spec.scenario import Scenario


def synthetic_probe(offset_s=12.0, slot_s=15.0, n_slots=16, seed=1):
    """RTTs every 0.1 s whose floor steps at every boundary (utc = k * 15 + 12), with the
    probes within 0.5 s after a boundary lost, and 10 lost more than 1.5 s from one."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)  # a UTC minute
    utc = t0 + np.arange(0, n_slots * slot_s, 0.1)
    k = np.floor((utc - offset_s) / slot_s)
    floor = 20 + 10 * (k % 3)  # 20, 30, 40, 20, ...
    rtt = floor + rng.uniform(0, 25, utc.size)
    phase = np.mod(utc - offset_s, slot_s)
    after = phase < 0.5
    rtt[after] = np.nan
    far = np.flatnonzero(np.minimum(phase, slot_s - phase) > 1.5)
    rtt[rng.choice(far, 10, replace=False)] = np.nan
    return utc, rtt, after


def test_probe_figures_find_the_offset_and_the_loss_near_boundaries():
    utc, rtt, after = synthetic_probe()
    f = probe_figures(utc, rtt, 15.0, 12.0, 1.0)
    assert f["slot_jump_peak_offset_s"] == 12.0
    jumps = np.array([np.nan if x is None else x for x in f["slot_jump_ms"]])
    # the peak: floors step by 10 or 20 ms (mean 13.3); elsewhere the slot minima mix
    # two floors and step less
    assert jumps[12] == pytest.approx(40 / 3, abs=1.0)
    assert f["slot_jump_peak_ratio"] > 1.5
    ok = np.isfinite(rtt)
    assert f["rtt_min_ms"] == pytest.approx(np.nanmin(rtt), abs=1e-3)
    assert f["rtt_median_ms"] == pytest.approx(np.median(rtt[ok]), abs=1e-3)
    assert f["loss"] == pytest.approx(1 - ok.mean(), abs=1e-4)
    n_lost = int((~ok).sum())
    assert f["loss_share_near_boundaries"] == pytest.approx((n_lost - 10) / n_lost, abs=1e-3)
    assert f["loss_near_boundaries"] > 10 * f["loss_elsewhere"] > 0


def test_parse_ping_takes_replies_and_leaves_unanswered_as_nan():
    lines = [
        "PING 10.0.0.7 (10.0.0.7) 56(84) bytes of data.",
        "[1700000000.125000] 64 bytes from 10.0.0.7: icmp_seq=1 ttl=60 time=25.0 ms",
        "[1700000000.300000] no answer yet for icmp_seq=2",
        "[1700000000.241000] 64 bytes from 10.0.0.7: icmp_seq=3 ttl=60 time=41.0 ms",
    ]
    seq, rtt, sent = parse_ping(lines, 4)
    assert seq.tolist() == [1, 2, 3, 4]
    assert rtt[0] == 25.0 and rtt[2] == 41.0 and np.isnan(rtt[1]) and np.isnan(rtt[3])
    # answered: print time - RTT; unanswered: between its neighbours, or one spacing on
    assert sent == pytest.approx([1700000000.1, 1700000000.15, 1700000000.2, 1700000000.25])


def test_report_of_a_probed_slotted_run_writes_slot_figures(tmp_path):
    d = copy.deepcopy(BASE)
    d["gsl"] = {**d["gsl"], "schedule": "slotted"}
    run_plan(Scenario.from_dict(d), 30, 5.0, "shortest-delay", tmp_path, plots=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gsl"] == {"schedule": "slotted", "slot_s": 15.0, "slot_offset_s": 12.0}
    utc, rtt, _ = synthetic_probe()
    with open(tmp_path / PROBE.name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PROBE.columns)
        for i, (u, r) in enumerate(zip(utc.tolist(), rtt.tolist())):
            w.writerow([i + 1, f"{u:.6f}", f"{u - utc[0]:.6f}", "" if np.isnan(r) else r])
    res = report(tmp_path)
    names = {p.name for p in res.files}
    assert {"slots.json", "slot_jump.csv", "rtt_slots.png", "slot_jump.png"} <= names
    figs = json.loads((tmp_path / "report" / "slots.json").read_text())
    assert figs["slot_jump_peak_offset_s"] == 12.0
    with open(tmp_path / "report" / "slot_jump.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["offset_s"]) for r in rows] == list(range(15))
    assert max(rows, key=lambda r: float(r["mean_jump_ms"] or 0))["offset_s"] == "12"
    # a continuous run has no slot report
    cont = tmp_path / "cont"
    run_plan(Scenario.from_dict(BASE), 10, 5.0, "shortest-delay", cont, plots=False)
    assert not {"slots.json", "slot_jump.csv"} & {p.name for p in report(cont).files}


def test_format_figures_sets_measured_beside_published():
    utc, rtt, _ = synthetic_probe()
    measured = probe_figures(utc, rtt)
    checks = {
        k: {"measured": measured.get(k), **v, "inside": None} for k, v in PUBLISHED_2023.items()
    }
    res = {
        "scenario": "s",
        "user": "u",
        "pop": "p",
        "interval_s": 0.1,
        "run_dir": "/x",
        "measured": measured,
        "checks": checks,
    }
    text = format_figures(res)
    assert "rtt_median_ms" in text and "36-48 (about 40)" in text
    assert "slot_jump_peak_offset_s" in text and "12" in text


def test_slot_jump_leaves_out_the_partly_probed_first_and_last_slots():
    from meshemu.report.slots import slot_jump

    # a floor of 20 ms every 5 s, 40 ms otherwise: every whole 15 s slot has minimum 20, a
    # slot the probe covers for less than 5 s may not (its minimum of 40 is no network jump)
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)
    utc = t0 + 0.05 + np.arange(0, 62, 0.1)
    rtt = np.where(np.arange(utc.size) % 50 == 0, 20.0, 40.0)
    j = slot_jump(utc, rtt).mean_jump_ms
    assert np.isfinite(j).sum() >= 10 and np.all(j[np.isfinite(j)] == 0), j

"""Delay and loss beyond propagation on access links (``gsl.access_model``): the scenario
section, its way through the snapshots and the link table to the shapers' parameters, the
plan's files, the netem rendering and the Python worker's per-frame model."""

import copy
import csv
import random
import struct

import numpy as np
import pytest
from test_access import BASE

from meshemu.errors import ScenarioError
from meshemu.geometry.linkstate import GSL
from meshemu.geometry.schedule import LinkSchedule
from meshemu.linux import netlink
from meshemu.live import delayline as dl
from meshemu.live.links import LinkTable, RunLinks
from meshemu.live.shapers import LinkParams
from meshemu.live.shapers.netem import netem_qdisc_cmd, netem_qdisc_msg
from meshemu.plan import run_plan
from meshemu.spec.linkmodel import STARLINK_FRAME_S, DirectionModel
from meshemu.spec.scenario import Scenario

MODEL = {
    "frame_ms": 1.5,
    "downlink": {"constant_ms": 3, "gilbert_elliott": {"p": 0.01, "r": 0.5}},
    "uplink": {"constant_ms": 2, "grant_min_ms": 1, "grant_max_ms": 4},
}


def scenario(model=MODEL, **gsl):
    d = copy.deepcopy(BASE)
    d["gsl"] = {**d["gsl"], **gsl}
    if model is not None:
        d["gsl"]["access_model"] = copy.deepcopy(model)
    return Scenario.from_dict(d)


def test_access_model_is_parsed_with_starlink_frame_by_default():
    m = scenario(MODEL).gsl.access_model
    assert m is not None
    assert m.downlink == DirectionModel(0.003, 0.0015, 0, 0, 0.01, 0.5, 1.0, 0.0)
    assert m.uplink == DirectionModel(0.002, 0.0015, 0.001, 0.004)
    assert m.uplink.mean_s == pytest.approx(0.002 + 0.0025 + 0.00075)
    assert (m.uplink.min_s, m.uplink.max_s) == pytest.approx((0.003, 0.0075))
    assert m.downlink.ge_loss_rate == pytest.approx(0.01 / 0.51)
    d = scenario({}).gsl.access_model
    assert d is not None and d.downlink.frame_s == pytest.approx(STARLINK_FRAME_S)
    assert d.downlink.mean_s == pytest.approx(1 / 1500)
    assert scenario(None).gsl.access_model is None


@pytest.mark.parametrize(
    "model, field",
    [
        ({"downlink": {"grant_min_ms": 1}}, "downlink.grant_min_ms"),
        ({"uplink": {"grant_min_ms": 3, "grant_max_ms": 1}}, "uplink.grant_max_ms"),
        ({"uplink": {"gilbert_elliott": {"p": 0.1}}}, "uplink.gilbert_elliott.r"),
        ({"uplink": {"gilbert_elliott": {"p": 0, "r": 1}}}, "uplink.gilbert_elliott.p"),
        ({"frame_ms": -1}, "frame_ms"),
        ({"sideways": {}}, "sideways"),
    ],
)
def test_bad_access_model_fields_are_named(model, field):
    with pytest.raises(ScenarioError) as e:
        scenario(model)
    assert e.value.field == f"gsl.access_model.{field}"


def test_snapshot_marks_user_gsls_not_gateway_ones_and_the_link_table_gives_directions():
    s = LinkSchedule(scenario())
    snap = s.snapshot_at(0.0)
    kinds = s.nodes.kind
    gsl = snap.kind == GSL
    user_end = np.array([kinds[b] == "user" for b in snap.b.tolist()])
    assert gsl.any() and (gsl & ~user_end).any()  # both users' and gateways' GSLs
    assert np.array_equal(snap.access, gsl & user_end)
    assert np.all(snap.a[gsl] < s.n_sats)  # a is the satellite: a -> b is the downlink
    ab, ba = snap.access_delays_s()
    m = snap.access_model
    assert np.allclose(ab[snap.access], m.downlink.mean_s)
    assert np.allclose(ba[snap.access], m.uplink.mean_s)
    assert not ab[~snap.access].any() and not ba[~snap.access].any()

    links = RunLinks.from_snapshot(snap)
    table = LinkTable(links, s.nodes.names)
    table.load(snap)
    ids = table.ids(snap)
    params = table.params_of(ids)
    for p, acc, delay in zip(params, snap.access.tolist(), snap.delay_s.tolist(), strict=True):
        assert p.delay_s == delay  # propagation only: the model travels beside it
        assert (p.ab, p.ba) == ((m.downlink, m.uplink) if acc else (None, None))
    # without the model, no link has one
    plain = LinkSchedule(scenario(None)).snapshot_at(0.0)
    assert not plain.access.any() and plain.access_model is None


def test_plan_files_split_propagation_and_access(tmp_path):
    run_plan(scenario(), 20, 10.0, "shortest-delay", tmp_path)
    with open(tmp_path / "links.csv") as f:
        links = list(csv.DictReader(f))
    m = scenario().gsl.access_model
    by = {}
    for r in links:
        by[(r["t_s"], r["a"], r["b"])] = (r, "down")
        by[(r["t_s"], r["b"], r["a"])] = (r, "up")
        if r["b"] in ("paris", "lyon"):
            assert float(r["access_down_ms"]) == pytest.approx(m.downlink.mean_s * 1e3)
            assert float(r["access_up_ms"]) == pytest.approx(m.uplink.mean_s * 1e3)
        else:
            assert float(r["access_down_ms"]) == 0 and float(r["access_up_ms"]) == 0
    with open(tmp_path / "paths.csv") as f:
        paths = [p for p in csv.DictReader(f) if p["path"]]
    seen = set()
    for p in paths:
        hops = p["path"].split()
        prop = acc = 0.0
        for u, v in zip(hops, hops[1:]):
            r, way = by[(p["t_s"], u, v)]
            prop += float(r["delay_ms"])
            acc += float(r[f"access_{way}_ms"])
        assert float(p["propagation_ms"]) == pytest.approx(prop, abs=1e-5)
        assert float(p["access_ms"]) == pytest.approx(acc, abs=1e-5)
        assert float(p["delay_ms"]) == pytest.approx(prop + acc, abs=1e-5)
        if hops[0] == "paris" and hops[-1] == "srv_FRA":
            seen.add("up")  # paris's uplink only
            assert acc == pytest.approx(m.uplink.mean_s * 1e3)
        if hops[0] == "srv_FRA" and hops[-1] == "paris":
            seen.add("down")
            assert acc == pytest.approx(m.downlink.mean_s * 1e3)
    assert seen == {"up", "down"}


# ---- netem ---------------------------------------------------------------------------------
DOWN = DirectionModel(0.003, 0.0015, ge_p=0.01, ge_r=0.4, ge_loss_bad=0.9, ge_loss_good=0.001)
UP = DirectionModel(0.002, 0.0015, 0.001, 0.004)


def test_netem_renders_delay_slots_and_gemodel_per_direction():
    p = LinkParams(0.002, 100e6, 100, 0.0, True, DOWN, UP)
    a = netem_qdisc_cmd("gsl0", p, "change", p.ab)
    assert a[:7] == ["qdisc", "change", "dev", "gsl0", "root", "handle", "1:"]
    assert a[7:] == [
        "netem",
        "delay",
        "5000.000us",  # propagation + the constant
        "rate",
        "100000000bit",
        "limit",
        str(100 + int(np.ceil(100e6 * (0.002 + DOWN.max_s) / 12000))),
        "slot",
        "0.000us",
        "1500.000us",  # the frame
        "loss",
        "gemodel",
        "1%",
        "40%",
        "10%",  # iproute2's h: the bad state's delivery probability
        "0.1%",
    ]
    b = netem_qdisc_cmd("gsl1", p, "add", p.ba)
    # the grant as netem's uniform jitter: 2 + 2 + 1..4 ms = 6.5 +- 1.5 ms, then the frame
    assert b[b.index("delay") + 1 : b.index("delay") + 3] == ["6500.000us", "1500.000us"]
    assert b[b.index("slot") + 1 : b.index("slot") + 3] == ["0.000us", "1500.000us"]
    assert b[-3:] == ["loss", "random", "0%"]
    # no model: the command as before; down: loss 100% even with Gilbert-Elliott
    plain = netem_qdisc_cmd("isl0", LinkParams(0.002, 0), "add")
    assert "slot" not in plain and plain[-3:] == ["loss", "random", "0%"]
    down = netem_qdisc_cmd("gsl0", LinkParams(0.002, 0, up=False, ab=DOWN), "add", DOWN)
    assert down[-3:] == ["loss", "random", "100%"]


def _attrs(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(data):
        n, t = struct.unpack_from("=HH", data, i)
        out[t] = data[i + 4 : i + n]
        i += (n + 3) & ~3
    return out


def test_netem_message_carries_slot_and_gemodel_with_uniform_loss_folded_in():
    p = LinkParams(0.002, 0, 1000, 0.1, True, DOWN, None)
    m = netem_qdisc_msg(7, p, "change", 1, p.ab)
    top = _attrs(m[16 + 20 :])
    opts = top[netlink.TCA_OPTIONS]
    nested = _attrs(opts[24:])
    assert struct.unpack("=q", nested[netlink.TCA_NETEM_LATENCY64])[0] == 5_000_000
    assert struct.unpack("=qqiiqq", nested[netlink.TCA_NETEM_SLOT]) == (0, 1_500_000, 0, 0, 0, 0)
    ge = _attrs(nested[netlink.TCA_NETEM_LOSS])[netlink.NETEM_LOSS_GE]
    gp, gr, h, k1 = struct.unpack("=IIII", ge)
    u32 = 0xFFFFFFFF
    bad = 1 - (1 - 0.9) * (1 - 0.1)
    good = 1 - (1 - 0.001) * (1 - 0.1)
    assert (gp / u32, gr / u32) == pytest.approx((0.01, 0.4))
    assert 1 - h / u32 == pytest.approx(bad) and k1 / u32 == pytest.approx(good)
    assert struct.unpack_from("=IIIIII", opts)[2] == 0  # random loss off: one model at a time
    assert netlink.TCA_NETEM_JITTER64 not in nested  # no grant on this direction
    plain = _attrs(_attrs(netem_qdisc_msg(7, p, "change", 1)[36:])[netlink.TCA_OPTIONS][24:])
    assert netlink.TCA_NETEM_SLOT not in plain and netlink.TCA_NETEM_LOSS not in plain
    up = LinkParams(0.002, 0, 1000, 0.0, True, None, UP)
    uo = _attrs(netem_qdisc_msg(7, up, "change", 1, up.ba)[36:])[netlink.TCA_OPTIONS]
    un = _attrs(uo[24:])
    assert struct.unpack("=q", un[netlink.TCA_NETEM_LATENCY64])[0] == 6_500_000
    assert struct.unpack("=q", un[netlink.TCA_NETEM_JITTER64])[0] == 1_500_000
    assert struct.unpack_from("=IIIIII", uo)[5] == 1_500_000 >> 6


# ---- the Python worker's per-frame model -----------------------------------------------------
def _direction(model: DirectionModel) -> dl._Direction:
    d = dl._Direction(0, 0, "x")
    d.configure(0, 0.0, 1000, 0.0, 1)
    d.set_access(
        round(model.constant_s * 1e9),
        round(model.frame_s * 1e9),
        round(model.grant_min_s * 1e9),
        round(model.grant_max_s * 1e9),
        model.ge_p,
        model.ge_r,
        model.ge_loss_bad,
        model.ge_loss_good,
    )
    return d


def loss_runs(lost: list[bool]) -> list[int]:
    """Lengths of the runs of consecutive losses."""
    runs, n = [], 0
    for x in lost:
        if x:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


def test_gilbert_elliott_chain_has_its_loss_rate_and_burst_length():
    m = DirectionModel(ge_p=0.02, ge_r=0.25)
    d = _direction(m)
    rnd = random.Random(7).random
    lost = [d.ge_lost(rnd) for _ in range(200_000)]
    runs = loss_runs(lost)
    # pi_bad = p / (p + r) = 0.074, bursts geometric with mean 1 / r = 4
    assert np.mean(lost) == pytest.approx(m.ge_loss_rate, rel=0.05)
    assert np.mean(runs) == pytest.approx(1 / m.ge_r, rel=0.05)


def test_access_ready_aligns_to_frames_after_grant_and_constant():
    d = _direction(UP)
    rnd = random.Random(3).random
    frame = 1_500_000
    base = 10**18 + 123_457
    waits = []
    for k in range(20_000):
        t = base + k * 977_777
        r = d.access_ready(t, rnd)
        assert (r - 2_000_000) % frame == 0  # a frame boundary, then the constant
        waits.append(r - t)
    w = np.array(waits) / 1e9
    assert w.min() >= UP.min_s and w.max() < UP.max_s
    assert w.mean() == pytest.approx(UP.mean_s, abs=5e-5)
    none = _direction(DirectionModel())
    assert not none.acc and not none.ge


def test_each_assignment_draws_its_own_fixed_share_of_the_delay():
    model = {"uplink": {"constant_ms": 2, "per_assignment_ms": 30}}
    s = LinkSchedule(scenario(model))
    m = s.scenario.gsl.access_model
    assert m.uplink.per_assignment_s == pytest.approx(0.03) and m.downlink.per_assignment_s == 0
    draws = {}
    for snap in list(s.snapshots(60, start_s=0))[::10]:
        acc = np.flatnonzero(snap.access)
        for i in acc.tolist():
            k = int(snap.key[i])
            draws.setdefault(k, set()).add(float(snap.access_draw[i]))
        assert not snap.access_draw[~snap.access].any()
        ab, ba = snap.access_delays_s()
        assert np.allclose(ba[acc], m.uplink.mean_s + 0.03 * snap.access_draw[acc])
        assert np.allclose(ab[acc], m.downlink.mean_s)
        table = LinkTable(RunLinks.from_snapshot(snap), s.nodes.names)
        table.load(snap)
        for p, x in zip(table.params_of(table.ids(snap)[acc]), snap.access_draw[acc].tolist()):
            assert p.ba.constant_s == pytest.approx(0.002 + 0.03 * x) and p.ba.per_assignment_s == 0
            assert p.ab.constant_s == 0
    assert all(len(v) == 1 for v in draws.values())  # fixed per link over the snapshots
    vals = [next(iter(v)) for v in draws.values()]
    assert len(set(vals)) == len(vals) and all(0 <= x < 1 for x in vals)


def test_link_draw_is_uniform_and_fixed_per_key():
    from meshemu.geometry.linkstate import link_draw

    keys = np.arange(0, 200_000, 7, dtype=np.int64) * 1_601 + 3
    d = link_draw(keys)
    assert np.array_equal(d, link_draw(keys.copy()))
    assert d.min() >= 0 and d.max() < 1
    assert np.histogram(d, bins=10, range=(0, 1))[0] == pytest.approx(
        np.full(10, keys.size / 10), rel=0.05
    )

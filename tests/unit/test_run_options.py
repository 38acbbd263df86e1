"""Run options, the time span shared with `plan`, the output-path check, the clock and the
shared spec validator: everything that is checked before a run builds anything."""

from __future__ import annotations

import math
import threading

import pytest

from meshemu.errors import OptionsError, ProfileError, ScenarioError
from meshemu.live.clock import Clock
from meshemu.live.options import MAX_RUN_STEPS, RunOptions
from meshemu.spec.options import MAX_STEPS, MIN_STEP_S, TimeSpan, check_out_dir
from meshemu.spec.validate import GROUND_KINDS, NODE_KINDS, SATELLITE_KINDS, Validator


@pytest.mark.parametrize(
    "kw,option,words",
    [
        ({"duration_s": math.inf}, "--duration", "finite"),
        ({"duration_s": math.nan}, "--duration", "finite"),
        ({"duration_s": -1}, "--duration", ">= 0"),
        ({"duration_s": "10"}, "--duration", "number"),
        ({"step_s": 0}, "--step", "at least"),
        ({"step_s": MIN_STEP_S / 10}, "--step", "at least"),
        ({"step_s": math.inf}, "--step", "finite"),
        ({"start_s": -5}, "--start", ">= 0"),
        ({"start_s": math.nan}, "--start", "finite"),
        ({"start_s": 1e12}, "--start", "10 years"),
        ({"duration_s": 2e6, "step_s": 1}, "--duration", "at most 1,000,000"),
    ],
)
def test_time_span_refuses(kw, option, words):
    args = {"duration_s": 60.0, "step_s": 1.0, "start_s": 0.0, **kw}
    with pytest.raises(OptionsError) as ei:
        TimeSpan.checked(**args)
    assert ei.value.field == option and str(ei.value).startswith(f"{option}: ")
    assert words in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_time_span_counts_steps_like_the_schedule():
    assert TimeSpan.checked(60, 1).n_steps == 61
    assert TimeSpan.checked(0, 1).n_steps == 1
    assert TimeSpan.checked(0.3, 0.1).n_steps == 4  # 0.3 / 0.1 = 2.9999999999999996
    assert TimeSpan.checked(MAX_STEPS - 1, 1).n_steps == MAX_STEPS


@pytest.mark.parametrize(
    "kw,option",
    [
        ({"time_scale": 0}, "--time-scale"),
        ({"time_scale": math.inf}, "--time-scale"),
        ({"time_scale": math.nan}, "--time-scale"),
        ({"time_scale": 1e4, "step_s": 1}, "--time-scale"),  # 0.1 ms of wall time per step
        ({"duration_s": MAX_RUN_STEPS, "step_s": 1}, "--duration"),
        ({"shaper": ""}, "--shaper"),
        ({"shaper_workers": 0}, "--shaper-workers"),
        ({"shaper_workers": 2.0}, "--shaper-workers"),
        ({"shaper_workers": 65}, "--shaper-workers"),
        ({"delay_tolerance_us": -1}, "--delay-tolerance-us"),
        ({"delay_tolerance_us": float("nan")}, "--delay-tolerance-us"),
        ({"delay_tolerance_us": 1e6}, "--delay-tolerance-us"),
        ({"capture": "s0_0_0"}, "--capture"),  # a string, not a list of them
        ({"on_step": 5}, "on_step"),
    ],
)
def test_run_options_refuse(kw, option):
    with pytest.raises(OptionsError) as ei:
        RunOptions(**kw)
    assert ei.value.field == option


def test_run_options_from_keywords():
    base = RunOptions(duration_s=30, shaper="userspace")
    o = RunOptions.from_keywords(base, traffic=None, capture=None)
    assert (o.duration_s, o.shaper, o.traffic, o.capture) == (30, "userspace", None, ())
    assert not o.wants_traffic and RunOptions(traffic="none").wants_traffic is False
    assert RunOptions.from_keywords(None, capture=["a", "b:c"]).capture == ("a", "b:c")
    with pytest.raises(OptionsError, match="unknown run option.*durration_s.*duration_s"):
        RunOptions.from_keywords(None, durration_s=5)
    with pytest.raises(AttributeError):
        o.duration_s = 5  # frozen


def test_check_out_dir(tmp_path):
    assert check_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # creates nothing
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OptionsError, match="exists and is not a directory"):
        check_out_dir(f)
    with pytest.raises(OptionsError, match="is not a directory"):
        check_out_dir(f / "sub")


class FakeTime:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_clock_lag_and_stop():
    now = FakeTime()
    clock = Clock(0.5, monotonic=now)
    clock.start()
    assert clock.due(4) == 102.0
    now.t = 100.7  # step 1 was due at 100.5
    tick = clock.wait_for(1)
    assert tick is not None and tick.k == 1
    assert tick.lag_s == pytest.approx(0.2) and tick.wall_s == pytest.approx(0.7)
    assert not clock.is_late(tick)
    now.t = 101.3  # step 2 was due at 101.0
    assert clock.is_late(clock.wait_for(2))
    clock.stop()
    assert clock.stopped and clock.wait_for(3) is None


def test_clock_stop_wakes_a_waiting_step():
    clock = Clock(3600.0)
    clock.start()
    got = []
    th = threading.Thread(target=lambda: got.append(clock.wait_for(1)))
    th.start()
    clock.stop()
    th.join(timeout=10)
    assert not th.is_alive() and got == [None]


def test_node_kinds_are_defined_once():
    from meshemu.live import addressing
    from meshemu.spec import scenario

    assert NODE_KINDS == SATELLITE_KINDS + GROUND_KINDS
    for mod in (addressing, scenario):
        assert (mod.NODE_KINDS, mod.GROUND_KINDS) == (NODE_KINDS, GROUND_KINDS)


@pytest.mark.parametrize("error", [ScenarioError, ProfileError])
def test_one_validator_for_every_spec(error):
    v = Validator(error, source="x.yaml")
    with pytest.raises(error) as ei:
        v.number({"n": 0}, "n", "a.b", lo=1, hi=10, integer=True)
    assert str(ei.value) == "x.yaml: a.b.n: must be an integer in [1, 10] (>= 1 and <= 10); got 0"
    assert ei.value.field == "a.b.n" and ei.value.source == "x.yaml"
    with pytest.raises(error, match="a.z: unknown key 'z'; allowed keys: p, q"):
        v.mapping({"z": 1}, "a", ("p", "q"))
    with pytest.raises(error, match="a.k: unknown k 'w'; please specify one of: u, v"):
        v.choice({"k": "w"}, "k", "a", ("u", "v"))
    with pytest.raises(error, match="is required"):
        v.number({}, "n", "a")
    assert v.number({"n": None}, "n", "a", null=True) is None
    assert v.number({"n": None}, "n", "a", default=3.0) == 3.0
    assert v.number({"n": 2.0}, "n", "a", integer=True) == 2


def test_shaper_workers_reach_the_userspace_shaper_and_not_netem():
    from meshemu.cli import build_parser
    from meshemu.live.runner import options_from_args
    from meshemu.live.shapers import NetemShaper, UserspaceShaper, make_shaper

    args = build_parser().parse_args(["run", "default", "--shaper-workers", "2"])
    assert options_from_args(args).shaper_workers == 2
    sh = make_shaper("userspace", "test00", workers=2)
    try:
        assert isinstance(sh, UserspaceShaper) and sh.workers == 2
    finally:
        sh.close()
    assert "workers" not in __import__("inspect").signature(NetemShaper).parameters


def test_delay_tolerance_and_no_plots_come_from_the_command_line():
    from meshemu.cli import build_parser
    from meshemu.live.runner import options_from_args

    args = build_parser().parse_args(["run", "default", "--delay-tolerance-us", "20", "--no-plots"])
    opts = options_from_args(args)
    assert opts.delay_tolerance_us == 20.0 and opts.plots is False
    opts = options_from_args(build_parser().parse_args(["run", "default"]))
    assert opts.delay_tolerance_us == 1.0 and opts.plots is True

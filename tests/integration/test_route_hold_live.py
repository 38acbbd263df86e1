"""Route hold in a live run (root): the run installs and records the held routes, the same
paths as ``meshemu plan`` with the same hold, and fewer route changes than without it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from meshemu.live.runner import run_emulation
from meshemu.plan import run_plan

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOLD_US = 3000.0  # large for the 64-satellite default shell, so that the hold acts often
DURATION_S = 60.0


def _paths(run_dir: Path) -> dict[tuple[str, str, str], str]:
    with open(run_dir / "paths.csv") as f:
        return {(r["t_s"], r["src"], r["dst"]): r["path"] for r in csv.DictReader(f)}


def _changes(run_dir: Path) -> int:
    with open(run_dir / "steps.csv") as f:
        return sum(int(r["route_changes"]) for r in csv.DictReader(f))


def test_a_live_run_with_route_hold_follows_the_held_plan(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (a live run); run as root")
    kw = dict(
        duration_s=DURATION_S,
        step_s=1.0,
        time_scale=4.0,
        traffic=None,
        plots=False,
        shaper="userspace",
    )
    held = run_emulation("default", out_dir=tmp_path / "held", route_hold_us=HOLD_US, **kw)
    run_emulation("default", out_dir=tmp_path / "raw", **kw)
    assert held.summary["route_hold_us"] == HOLD_US
    plan_held = run_plan(
        "default", DURATION_S, out_dir=tmp_path / "p", plots=False, route_hold_us=HOLD_US
    )
    plan_raw = run_plan("default", DURATION_S, out_dir=tmp_path / "q", plots=False)
    live, planned = _paths(tmp_path / "held"), _paths(plan_held.out_dir)
    # the run's paths (traced through the tables it installed) are the held plan's
    assert live == planned
    # and the hold changed something: paths differ from the raw plan's at some steps
    unheld = _paths(plan_raw.out_dir)
    assert _paths(tmp_path / "raw") == unheld
    differ = [k for k in planned if planned[k] != unheld[k]]
    assert differ, "the hold kept no path other than the scheme's"
    # fewer routes moved in the kernel
    assert _changes(tmp_path / "held") < _changes(tmp_path / "raw")

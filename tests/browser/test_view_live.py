"""``meshemu run --view`` (root): headless Chromium follows a running default emulation step
by step for at least 10 steps, drawing at each step the links the run itself wrote to its
``links.csv``; while the run goes the flows' throughput and one-way delay charts fill in
(from the agents' own files, before the run merges them), after it they hold the run's
files, and nothing of the run is left once the command is stopped."""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from chromium import Browser
from conftest import REPO, ViewProcess

DURATION_S = 30


def run_processes(run_id: str) -> list[int]:
    """Processes that carry the run's id (every process of a run does)."""
    tag = f"meshemu-run={run_id}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if tag in (d / "cmdline").read_bytes() or tag in (d / "environ").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


@pytest.mark.root
@pytest.mark.slow
def test_page_follows_a_running_default_emulation(
    browser: Browser, tmp_path: Path, keep_screenshot
) -> None:
    if os.geteuid() != 0:
        pytest.fail("meshemu run --view needs root (network namespaces); run as root, as CI does")
    out = tmp_path / "run"
    argv = ["run", "default", "--duration", str(DURATION_S), "--out", str(out)]
    vp = ViewProcess([*argv, "--view", "--view-port", "0"], cwd=REPO, timeout_s=300)
    run_id = None
    try:
        browser.driver.get(vp.url)
        browser.wait("window.meshemuState && meshemuState.ready", 120, "the globe")
        assert browser.js("return meshemu.meta.live") is True
        # follow: sample what the page draws as the run's steps arrive
        drawn: dict[int, int] = {}
        lag: list[int] = []
        deadline = time.monotonic() + 240
        while len([k for k in drawn if k > 0]) < 10:
            live, step, links = browser.js(
                "return [meshemuState.live.step, meshemuState.step, meshemuState.drawnLinks]"
            )
            if step is not None and step >= 0 and live >= 0:
                drawn[step] = links
                lag.append(live - step)
            assert time.monotonic() < deadline, f"the page followed only steps {sorted(drawn)}"
            time.sleep(0.2)
        keep_screenshot(browser, "view-live")
        assert max(drawn) >= 10
        # the charts have points before the run ends
        charted = (
            "meshemuState.chartPoints.tp > 0 && meshemuState.chartPoints.lat > 0 && "
            "meshemu.flows.flows.some(f => f.throughput.mbps.some(x => x > 0))"
        )
        browser.wait(f"meshemuState.live.done || ({charted})", 120, "points on the charts")
        done, stats, points = browser.js(
            "return [meshemuState.live.done, meshemuState.flowStats, meshemuState.chartPoints]"
        )
        assert not done, "the charts got their first points only when the run was over"
        assert stats == "agents" and points["tp"] > 0 and points["lat"] > 0, (stats, points)
        assert browser.js(f"return {charted}")
        assert browser.js("return meshemuState.live.step") < DURATION_S
        keep_screenshot(browser, "view-live-charts")
        assert sorted(lag)[len(lag) // 2] <= 1, f"the page trails the run: {lag}"
        run_id = vp.wait_line(r"^run (\S+) of ", 300).group(1)
        vp.wait_line(r"view: the run is over; still serving", 120)
        browser.wait("meshemuState.live.done", 60, "the page to see the end of the run")
        with open(out / "links.csv", newline="") as f:
            per = Counter(float(r["t_s"]) for r in csv.DictReader(f) if r["up"] == "1")
        steps = browser.js("return meshemu.meta.steps")
        for k, n in drawn.items():
            assert n == per[steps[k]], (
                f"step {k}: drew {n} links, the run's links.csv has {per[steps[k]]}"
            )
        # the run's own measurements, written at its end, are on the page now
        browser.wait(
            "meshemuState.flowStats === 'files' && "
            "meshemu.flows.flows.some(f => f.throughput.mbps.some(x => x > 0))",
            30,
            "the flows' throughput from the run's files",
        )
        keep_screenshot(browser, "view-live-end")
    finally:
        rc = vp.stop()
    assert rc == 0, "\n".join(vp.lines[-30:])
    assert run_id is not None
    assert not run_processes(run_id), f"processes of run {run_id} left"

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
        # a link's queue in its panel: shaper.csv's queue_frames (read here) per step
        with open(out / "shaper.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["link_id"] != "-1"]
        assert rows and "queue_frames" in rows[0], "shaper.csv has no queue_frames"
        busiest = max(rows, key=lambda r: (int(r["queue_frames"]), int(r["frames"])))
        a, b = busiest["a"], busiest["b"]
        lid = browser.js(
            f"const n = meshemu.meta.nodes.name, L = meshemu.meta.links;"
            f"return L.a.findIndex((x, i) => [n[x], n[L.b[i]]].sort().join() === "
            f"[{a!r}, {b!r}].sort().join())"
        )
        assert lid >= 0, (a, b)
        browser.js(f"return meshemu.selectLink({lid})")
        browser.wait(f"meshemuState.linkInfo && meshemuState.linkInfo.id === {lid}", 20, "link")
        queue = browser.js("return meshemuState.linkInfo.queue")
        want: dict[str, dict[float, int]] = {f"{a}>{b}": {}, f"{b}>{a}": {}}
        for r in rows:
            if (r["a"], r["b"]) == (a, b):
                key = f"{a}>{b}" if r["direction"] == "a>b" else f"{b}>{a}"
                want[key][float(r["t_s"])] = int(r["queue_frames"])
        assert set(queue) == set(want), (queue.keys(), want.keys())
        for key, per in want.items():
            for j, ts in enumerate(steps):
                if ts in per:
                    assert queue[key][j] == per[ts], (key, ts)
                elif queue[key][j] is not None:
                    assert queue[key][j] == 0, (key, ts)
        assert browser.driver.find_elements("css selector", "#lc-queue canvas")
        keep_screenshot(browser, "view-live-link-queue")
    finally:
        rc = vp.stop()
    assert rc == 0, "\n".join(vp.lines[-30:])
    assert run_id is not None
    assert not run_processes(run_id), f"processes of run {run_id} left"


def fib_at(run_dir: Path, t_s: float) -> dict[tuple[str, str], str]:
    """(node, dest) -> next hops (sorted, |-joined) at ``t_s``: the last change in fib.csv
    at or before it (read here, without meshemu)."""
    state: dict[tuple[str, str], str] = {}
    with open(run_dir / "fib.csv", newline="") as f:
        for r in csv.DictReader(f):
            if float(r["t_s"]) <= t_s + 1e-9:
                state[(r["node"], r["dest"])] = "|".join(
                    sorted(x for x in r["next_hops"].split("|") if x)
                )
    return state


@pytest.mark.root
@pytest.mark.slow
def test_fib_panel_of_a_live_ospf_run_is_its_fib_csv(
    browser: Browser, tmp_path: Path, keep_screenshot
) -> None:
    """A daemon (FRR OSPF) run with --view: a clicked node's FIB panel lists, at each step
    asked, the next hops fib.csv has for it (the last change at or before the step)."""
    if os.geteuid() != 0:
        pytest.fail("meshemu run --view needs root (network namespaces); run as root, as CI does")
    out = tmp_path / "run"
    argv = ["run", "default", "--duration", "12", "--routing", "ospf", "--traffic", "none"]
    vp = ViewProcess(
        [*argv, "--out", str(out), "--view", "--view-port", "0"], cwd=REPO, timeout_s=300
    )
    try:
        browser.driver.get(vp.url)
        browser.wait("window.meshemuState && meshemuState.ready", 120, "the globe")
        vp.wait_line(r"view: the run is over; still serving", 300)
        browser.wait("meshemuState.live.done", 60, "the page to see the end of the run")
        browser.wait("meshemu.flows.has_fib", 30, "fib.csv on the page")
        steps = browser.js("return meshemu.meta.steps")
        names = browser.js("return meshemu.meta.nodes.name")
        checked = 0
        for node in ("s0_0_0", "london", "s0_3_5"):
            for k in (0, len(steps) // 2, len(steps) - 1):
                assert browser.js(f"return meshemu.goto({k})") == k
                browser.js(f"return meshemu.selectNode({names.index(node)})")
                browser.wait(
                    f"meshemuState.nodeInfo && meshemuState.nodeInfo.name === {node!r} && "
                    f"meshemuState.nodeInfo.k === {k} && "
                    f"document.querySelector('#node-fib') !== null",
                    20,
                    f"{node}'s FIB at step {k}",
                )
                rows = browser.driver.find_elements("css selector", "#node-fib tr[data-dest]")
                got = {
                    r.get_attribute("data-dest"): "|".join(
                        sorted(x for x in r.get_attribute("data-next").split("|") if x)
                    )
                    for r in rows
                }
                want = {d: nh for (n, d), nh in fib_at(out, steps[k]).items() if n == node}
                assert want, f"fib.csv has no entry for {node} at t = {steps[k]}"
                assert got == want, (node, k)
                checked += len(want)
        assert checked > 10
        keep_screenshot(browser, "view-live-ospf-fib")
    finally:
        rc = vp.stop()
    assert rc == 0, "\n".join(vp.lines[-30:])

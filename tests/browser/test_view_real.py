"""``meshemu view`` of a plan of the real Starlink catalogue (the shared snapshot: 8,817
satellites on shells, about 15,000 links per step) in headless Chromium: the page loads,
draws every node, and as the slider moves and the page plays it draws at each step the
number of links ``links.csv`` has (read here with :mod:`csv`). Skipped when the shared data
(``../shared/data``) is not beside the project. Load time and frames per second are
measured by ``benchmarks/bench_view.py --real``, not asserted here."""

from __future__ import annotations

import csv
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import Browser
from conftest import MESHEMU, REPO, ViewProcess
from realcat import REAL_TLE, write_scenario

DURATION_S = 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_TLE.is_file(), reason=f"{REAL_TLE} is not present"),
]


@pytest.fixture(scope="module")
def real_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("view-real")
    scenario = write_scenario(tmp)
    out = tmp / "plan"
    subprocess.run(
        [*MESHEMU, "plan", str(scenario), "--duration", str(DURATION_S), "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def real_view(real_plan: Path) -> Iterator[ViewProcess]:
    vp = ViewProcess(["view", str(real_plan), "--port", "0"], cwd=REPO, timeout_s=300)
    try:
        yield vp
    finally:
        assert vp.stop() == 0, "\n".join(vp.lines)


def test_real_catalogue_loads_and_plays(
    browser: Browser, real_view: ViewProcess, real_plan: Path, keep_screenshot
) -> None:
    from selenium.webdriver.common.keys import Keys

    with open(real_plan / "links.csv", newline="") as f:
        oracle = Counter(float(r["t_s"]) for r in csv.DictReader(f) if r["up"] == "1")
    with open(real_plan / "nodes.csv", newline="") as f:
        n_nodes = sum(1 for _ in csv.DictReader(f))
    assert n_nodes > 8000 and min(oracle.values()) > 10_000, (n_nodes, oracle)

    browser.driver.get(real_view.url)
    browser.wait("window.meshemuState && meshemuState.ready", 300, "the globe")
    steps = browser.js("return meshemu.meta.steps")
    assert len(steps) == DURATION_S + 1
    assert browser.js("return meshemuState.drawnNodes") == n_nodes
    assert browser.js("return meshemuState.drawnLinks") == oracle[steps[0]]

    slider = browser.driver.find_element("id", "slider")
    slider.click()
    for keys, k in ((Keys.END, DURATION_S), (Keys.LEFT * 3, DURATION_S - 3), (Keys.HOME, 0)):
        slider.send_keys(keys)
        browser.wait(f"meshemuState.step === {k}", 60, f"step {k} after the slider moved")
        assert browser.js("return meshemuState.drawnLinks") == oracle[steps[k]], f"step {k}"
        assert browser.js("return Number(document.getElementById('slider').value)") == k

    # play: the page advances by itself; every step it shows draws links.csv's count
    seen: dict[int, int] = {}
    browser.driver.find_element("id", "play").click()
    browser.wait("meshemuState.step >= 1", 60, "playing to step 1")
    deadline = time.monotonic() + 120
    while len(seen) < 4:
        assert time.monotonic() < deadline, f"playing showed only steps {sorted(seen)}"
        k, n = browser.js("return [meshemuState.step, meshemuState.drawnLinks]")
        seen[k] = n
        time.sleep(0.05)
    browser.driver.find_element("id", "play").click()
    for k, n in seen.items():
        assert n == oracle[steps[k]], f"step {k} while playing: drew {n}"
    keep_screenshot(browser, "view-real-catalogue")
    assert browser.js("return meshemuState.errors") == []

"""``meshemu view`` of a recorded plan in headless Chromium: the globe draws what the run's
files say (links per step against ``links.csv`` read here independently, a clicked node's
routes against ``paths.csv``, a link's delay against ``links.csv``), the time slider moves it,
the 2D map draws the same links, and the page asks nothing of any other host."""

from __future__ import annotations

import csv
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from chromium import Browser
from conftest import MESHEMU, REPO, ViewProcess

DURATION_S = 30


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("view") / "plan"
    subprocess.run(
        [*MESHEMU, "plan", "default", "--duration", str(DURATION_S), "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def view(plan_dir: Path) -> Iterator[ViewProcess]:
    vp = ViewProcess(["view", str(plan_dir), "--port", "0"], cwd=REPO)
    try:
        yield vp
    finally:
        assert vp.stop() == 0, "\n".join(vp.lines)


def links_per_step(run_dir: Path) -> dict[float, int]:
    """Links up per step, from links.csv (the oracle: read without meshemu)."""
    with open(run_dir / "links.csv", newline="") as f:
        return dict(Counter(float(r["t_s"]) for r in csv.DictReader(f) if r["up"] == "1"))


def paths_at(run_dir: Path, t_s: float) -> list[list[str]]:
    with open(run_dir / "paths.csv", newline="") as f:
        return [
            r["path"].split() for r in csv.DictReader(f) if float(r["t_s"]) == t_s and r["path"]
        ]


def expected_routes(run_dir: Path, t_s: float, node: str) -> dict[str, str]:
    """Next hop of ``node`` toward each endpoint it forwards to, per paths.csv."""
    out: dict[str, str] = {}
    for p in paths_at(run_dir, t_s):
        if node in p[:-1]:
            out.setdefault(p[-1], p[p.index(node) + 1])
    return out


def opened(browser: Browser, view: ViewProcess) -> Browser:
    browser.driver.get(view.url)
    browser.wait("window.meshemuState && meshemuState.ready", 90, "the globe")
    return browser


def slider_to(browser: Browser, keys: str, step: int) -> None:
    slider = browser.driver.find_element("id", "slider")
    slider.send_keys(keys)
    browser.wait(f"meshemuState.step === {step}", 30, f"step {step} after the slider moved")


def test_slider_moves_the_links_drawn_as_links_csv_says(
    browser: Browser, view: ViewProcess, plan_dir: Path, keep_screenshot
) -> None:
    from selenium.webdriver.common.keys import Keys

    opened(browser, view)
    oracle = links_per_step(plan_dir)
    steps = browser.js("return meshemu.meta.steps")
    assert len(steps) == DURATION_S + 1
    assert browser.js("return meshemuState.step") == 0
    assert browser.js("return meshemuState.drawnLinks") == oracle[steps[0]]
    assert browser.js("return meshemuState.drawnNodes") == 68
    # the slider, by keyboard as a user would: one step, then the end, then back
    browser.driver.find_element("id", "slider").click()  # the middle: a step near 15
    browser.wait("meshemuState.step > 0", 30, "the step of the slider's middle")
    moves = (
        (Keys.HOME, 0),
        (Keys.RIGHT, 1),
        (Keys.END, DURATION_S),
        (Keys.LEFT * 5, DURATION_S - 5),
    )
    for keys, step in moves:
        slider_to(browser, keys, step)
        k = browser.js("return meshemuState.step")
        assert browser.js("return meshemuState.drawnLinks") == oracle[steps[k]], f"step {k}"
        assert browser.js("return meshemuState.drawnSegments") == oracle[steps[k]]
    # every step through the page's own control
    for k in range(0, DURATION_S + 1, 3):
        assert browser.js(f"return meshemu.goto({k})") == k
        assert browser.js("return meshemuState.drawnLinks") == oracle[steps[k]], f"step {k}"
    # play: the step advances by itself
    browser.js("meshemu.goto(0)")
    browser.driver.find_element("id", "play").click()
    browser.wait("meshemuState.step >= 3", 30, "playing to step 3")
    browser.driver.find_element("id", "play").click()
    browser.js("return meshemu.goto(12)")
    keep_screenshot(browser, "view-globe")
    # the 2D map draws the same links (a link across the antimeridian is two segments)
    browser.driver.find_element("id", "mode").click()
    browser.wait("meshemuState.mode === '2d'", 10, "the 2D map")
    assert browser.js("return meshemuState.drawnLinks") == oracle[steps[12]]
    assert browser.js("return meshemuState.drawnSegments") >= oracle[steps[12]]
    keep_screenshot(browser, "view-map2d")
    browser.driver.find_element("id", "mode").click()
    browser.wait("meshemuState.mode === '3d'", 10, "the globe again")


def click_node(browser: Browser, name: str) -> None:
    """Turn the globe to the node and click on it where it is drawn."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    i = browser.js(f"return meshemu.meta.nodes.name.indexOf({name!r})")
    browser.js(f"meshemu.lookAt({i})")
    pos = browser.wait(
        f"(p => p.visible && p.onScreen && p)(meshemu.screenPos({i}))", 10, f"{name} on screen"
    )
    act = ActionBuilder(browser.driver)
    act.pointer_action.move_to_location(int(pos["x"]), int(pos["y"]))
    act.pointer_action.click()
    act.perform()
    browser.wait(
        f"meshemuState.nodeInfo && meshemuState.nodeInfo.name === {name!r}", 20, f"{name}'s panel"
    )


def shown_routes(browser: Browser) -> dict[str, str]:
    rows = browser.driver.find_elements("css selector", "#node-routes tr[data-dest]")
    return {r.get_attribute("data-dest"): r.get_attribute("data-next") for r in rows}


def test_clicked_nodes_routes_match_paths_csv(
    browser: Browser, view: ViewProcess, plan_dir: Path, keep_screenshot
) -> None:
    opened(browser, view)
    k = 10
    assert browser.js(f"return meshemu.goto({k})") == k
    t = browser.js(f"return meshemu.meta.steps[{k}]")
    click_node(browser, "london")
    got = shown_routes(browser)
    want = expected_routes(plan_dir, t, "london")
    assert want, "london forwards toward no endpoint in paths.csv"
    assert {d: n for d, n in got.items() if n} == want
    ends = set(browser.js("return meshemu.meta.endpoints.map(i => meshemu.meta.nodes.name[i])"))
    assert set(got) == ends - {"london"}
    # a satellite in the middle of a recorded path
    mid = next(p[len(p) // 2] for p in paths_at(plan_dir, t) if len(p) >= 5)
    click_node(browser, mid)
    got = shown_routes(browser)
    assert {d: n for d, n in got.items() if n} == expected_routes(plan_dir, t, mid)
    # its links: peers and delays as links.csv has them at that step
    with open(plan_dir / "links.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["t_s"]) == t and mid in (r["a"], r["b"])]
    want_links = {(r["b"] if r["a"] == mid else r["a"]): float(r["delay_ms"]) for r in rows}
    info = browser.js("return meshemuState.nodeInfo")
    names = browser.js("return meshemu.meta.nodes.name")
    got_links = {names[lk["peer"]]: lk["delay_ms"] for lk in info["links"]}
    assert got_links.keys() == want_links.keys()
    for peer, d in want_links.items():
        assert abs(got_links[peer] - d) < 1e-3
    # click one of its links in the panel: the link's delay over time, as links.csv says
    peer = sorted(want_links)[0]
    browser.driver.find_element("css selector", "#node-links a[data-link]").click()
    browser.wait("meshemuState.linkInfo !== null", 20, "the link's panel")
    lk = browser.js("return meshemuState.linkInfo")
    ends_ = {names[lk["a"]], names[lk["b"]]}
    assert mid in ends_
    other = (ends_ - {mid}).pop()
    assert abs(lk["delay_ms"][k] - want_links[other]) < 1e-3
    assert peer in want_links
    series: dict[float, float] = defaultdict(float)
    with open(plan_dir / "links.csv", newline="") as f:
        for r in csv.DictReader(f):
            if {r["a"], r["b"]} == ends_:
                series[float(r["t_s"])] = float(r["delay_ms"])
    steps = browser.js("return meshemu.meta.steps")
    for j, ts in enumerate(steps):
        if ts in series:
            assert abs(lk["delay_ms"][j] - series[ts]) < 1e-3
        else:
            assert lk["delay_ms"][j] is None
    assert "delay" in browser.driver.find_element("id", "link-now").text
    keep_screenshot(browser, "view-link")


def test_page_asks_no_other_host(browser: Browser, view: ViewProcess) -> None:
    opened(browser, view)
    browser.js("return meshemu.goto(5)")
    origin = urlsplit(view.url).netloc
    urls = browser.requested_urls()
    assert any("/lib/three/" in u for u in urls) and any("/api/step/" in u for u in urls)
    # what goes over the network (chrome://, data: and blob: URLs are the browser's own)
    net = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss", "ftp")]
    foreign = [u for u in net if urlsplit(u).netloc != origin]
    assert not foreign, f"the page asked other hosts: {foreign}"
    assert browser.js("return meshemuState.errors") == []

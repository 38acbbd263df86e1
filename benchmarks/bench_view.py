"""Benchmark: the browser view (``meshemu view``, ``meshemu run --view``).

1. **render** (no root): a plan of ``--render-scenario`` (default ``starlink-shell1``: 1,584
   satellites and 10 ground stations, about 3,200 links) served by ``meshemu view`` and
   opened in headless Chromium (Debian's, WebGL through SwiftShader, i.e. on the CPU;
   1400 x 900). The page plays the steps at 10 steps/s while the globe turns, rendering every
   animation frame, for ``--seconds``; printed: frames per second, render time per frame
   (mean, p99; the GPU work is waited for by reading one pixel back), step update time
   (positions and the link and path buffers rewritten), and the time from opening the page
   to the first globe. Then the same on the 2D map.
1b. **real** (no root, ``--real``): the same on a plan of the real Starlink catalogue of
   the shared test data (``../shared/data/starlink-2026-05-21.tle``, 8,817 satellites on
   shells and about 15,000 links per step; the scenario is written to a temporary directory,
   see ``tests/browser/realcat.py``), plus the time ``meshemu view`` takes to read the plan
   (to its URL) and the sizes of ``/api/meta`` and one ``/api/step``.
2. **live** (root): ``meshemu run --live-scenario --duration --live-duration`` three times:
   without ``--view``; with ``--view`` and no page open; with ``--view`` and headless
   Chromium following the run. Printed from each run's ``steps.csv``: the step apply time
   and the start lag (p50, p99, max). And the observer's own cost per call (what the step
   loop pays for ``--view``).

Usage (others run timing-sensitive benchmarks on this machine, hence the locks)::

    flock /tmp/meshemu-heavy.lock flock /tmp/meshemu-root.lock \\
        .venv/bin/python benchmarks/bench_view.py [--render-scenario starlink-shell1] \\
        [--seconds 10] [--real] [--live-scenario default] [--live-duration 60] [--skip-live]

Writes ``benchmarks/results/view-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))
from chromium import Browser  # noqa: E402
from realcat import REAL_TLE, write_scenario  # noqa: E402

MESHEMU = [sys.executable, "-m", "meshemu.cli"]


class Served:
    """A ``meshemu`` command that prints ``view: URL`` (stopped with SIGINT)."""

    def __init__(self, argv: list[str], timeout_s: float = 600):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*MESHEMU, *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait(r"view: (http://\S+)", timeout_s).group(1)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, pattern: str, timeout_s: float) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := rx.search(line):
                    return m
            if self.proc.poll() is not None:
                time.sleep(0.5)
                break
            time.sleep(0.1)
        raise RuntimeError(f"no {pattern!r} from meshemu:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def render(scenario: str, seconds: float, tmp: Path) -> dict[str, Any]:
    plan = tmp / "plan"
    t0 = time.perf_counter()
    subprocess.run(
        [*MESHEMU, "plan", scenario, "--duration", "60", "--out", str(plan)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    srv = Served(["view", str(plan), "--port", "0"])
    serve_s = time.perf_counter() - t0
    sizes = {
        f"{name}_bytes": len(urllib.request.urlopen(srv.url + f"api/{name}").read())
        for name in ("meta", "step/0")
    }
    b = Browser()
    try:
        t0 = time.perf_counter()
        b.driver.get(srv.url + "?bench=1")
        b.wait("window.meshemuState && meshemuState.ready", 300, "the globe")
        load_s = time.perf_counter() - t0
        b.driver.set_script_timeout(seconds * 10 + 120)
        out: dict[str, Any] = {
            "scenario": scenario,
            "plan_s": plan_s,
            "view_ready_s": serve_s,
            "page_load_s": load_s,
            **sizes,
        }
        for mode in ("3d", "2d"):
            b.js(f"meshemu.setMode('{mode}')")
            out[mode] = b.driver.execute_async_script(
                f"const done = arguments[arguments.length - 1]; "
                f"meshemu.bench({seconds}, 10).then(done)"
            )
            if mode == "3d":
                shot = REPO / "benchmarks" / "results" / f"view-render-{Path(scenario).stem}.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                b.driver.save_screenshot(str(shot))
                out["screenshot"] = str(shot.relative_to(REPO))
        out["errors"] = b.js("return meshemuState.errors")
        return out
    finally:
        b.close()
        srv.stop()


def step_stats(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "steps.csv") as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    lag = np.array([float(r[4]) for r in rows[1:]])
    apply = np.array([float(r[5]) for r in rows[1:]])
    q = lambda a, p: round(float(np.percentile(a, p)), 3)  # noqa: E731
    late = [i + 1 for i in range(len(lag)) if lag[i] > 10 or apply[i] > 50]
    return {
        # after the first 10 steps (a page opened at the start loads then)
        "apply_ms_p99_after10": q(apply[10:], 99),
        "lag_ms_p99_after10": q(lag[10:], 99),
        "steps_lag_over_10ms_or_apply_over_50ms": late,
        "steps": len(rows) - 1,
        "apply_ms_p50": q(apply, 50),
        "apply_ms_p99": q(apply, 99),
        "apply_ms_max": round(float(apply.max()), 3),
        "lag_ms_p50": q(lag, 50),
        "lag_ms_p99": q(lag, 99),
        "lag_ms_max": round(float(lag.max()), 3),
    }


def live(scenario: str, duration: float, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": scenario, "duration_s": duration}
    base = ["run", scenario, "--duration", str(duration)]
    d = tmp / "run-plain"
    subprocess.run([*MESHEMU, *base, "--out", str(d)], cwd=REPO, check=True, capture_output=True)
    out["without_view"] = step_stats(d)
    for name, with_browser in (("view_no_page", False), ("view_with_page", True)):
        d = tmp / f"run-{name}"
        srv = Served([*base, "--out", str(d), "--view", "--view-port", "0"])
        b = Browser() if with_browser else None
        try:
            if b is not None:
                b.driver.get(srv.url)
                b.wait("window.meshemuState && meshemuState.ready", 300, "the globe")
            srv.wait(r"view: the run is over", duration * 3 + 300)
            if b is not None:
                out[f"{name}_page_followed_to_step"] = b.js("return meshemuState.step")
                out[f"{name}_page_errors"] = b.js("return meshemuState.errors")
        finally:
            if b is not None:
                b.close()
            srv.stop()
        out[name] = step_stats(d)
    # what the step loop pays per step for --view: the observer's call
    from meshemu.view.live import LiveFeed

    feed = LiveFeed()
    n = 100_000
    t0 = time.perf_counter()
    for k in range(n):
        feed(k, None, None)
    out["observer_call_us"] = round((time.perf_counter() - t0) / n * 1e6, 3)
    feed.close()
    return out


def print_render(r: dict[str, Any]) -> None:
    print(
        f"render {Path(r['scenario']).stem}: view ready (plan read) in {r['view_ready_s']:.1f} s, "
        f"page to first globe {r['page_load_s']:.1f} s (plan {r['plan_s']:.1f} s); "
        f"/api/meta {r['meta_bytes'] / 1e3:.0f} kB, /api/step/0 {r['step/0_bytes'] / 1e3:.0f} kB"
    )
    for mode in ("3d", "2d"):
        m = {k: (v if v is not None else float("nan")) for k, v in r[mode].items()}
        print(
            f"  {mode}: {m['nodes']} nodes, up to {m['links_max']} links: "
            f"{m['fps']:.1f} frames/s over {m['seconds']:.0f} s; render "
            f"{m['render_ms_mean']:.1f} ms mean, {m['render_ms_p99']:.1f} ms p99; step "
            f"update {m['step_update_ms_mean']:.2f} ms mean, "
            f"{m['step_update_ms_p99']:.2f} ms p99 ({m['steps']} steps); frame gap "
            f"p50 {m['frame_gap_ms_p50']:.1f} ms, p99 {m['frame_gap_ms_p99']:.1f} ms"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--render-scenario", default="starlink-shell1")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--real", action="store_true", help=f"also render the real catalogue ({REAL_TLE})"
    )
    ap.add_argument("--live-scenario", default="default")
    ap.add_argument("--live-duration", type=float, default=60.0)
    ap.add_argument("--skip-render", action="store_true")
    ap.add_argument("--skip-live", action="store_true")
    args = ap.parse_args()
    if args.real and not REAL_TLE.is_file():
        ap.error(f"--real needs the shared catalogue {REAL_TLE} (../shared/data beside the repo)")
    res: dict[str, Any] = {"when": dt.datetime.now().isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="bench-view-") as tmp:
        if not args.skip_render:
            (Path(tmp) / "render").mkdir()
            res["render"] = render(args.render_scenario, args.seconds, Path(tmp) / "render")
            print_render(res["render"])
        if args.real:
            (Path(tmp) / "real").mkdir()
            scenario = write_scenario(Path(tmp) / "real")
            res["real"] = render(str(scenario), args.seconds, Path(tmp) / "real")
            print_render(res["real"])
        if not args.skip_live:
            lv = res["live"] = live(args.live_scenario, args.live_duration, Path(tmp))
            print(f"live {lv['scenario']}, {lv['duration_s']:g} s runs (steps.csv):")
            for name in ("without_view", "view_no_page", "view_with_page"):
                s = lv[name]
                print(
                    f"  {name:15s} apply p50 {s['apply_ms_p50']:.2f} ms, p99 "
                    f"{s['apply_ms_p99']:.2f}, max {s['apply_ms_max']:.2f}; lag p50 "
                    f"{s['lag_ms_p50']:.3f} ms, p99 {s['lag_ms_p99']:.3f}, max "
                    f"{s['lag_ms_max']:.3f} ({s['steps']} steps); after step 10: apply p99 "
                    f"{s['apply_ms_p99_after10']:.2f}, lag p99 {s['lag_ms_p99_after10']:.3f}; "
                    f"steps with lag > 10 ms or apply > 50 ms: "
                    f"{s['steps_lag_over_10ms_or_apply_over_50ms']}"
                )
            print(f"  observer call (the step loop's cost of --view): {lv['observer_call_us']} us")
    path = REPO / "benchmarks" / "results" / f"view-{dt.datetime.now():%Y-%m-%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

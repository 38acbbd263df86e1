"""Headless Chromium for the view's browser tests and benchmark: Debian's ``chromium`` and
``chromium-driver`` (``install.sh --test``), driven by Selenium, with background networking
off and every host name but the loopback unresolvable (the page must need no other host).

``open_browser()`` returns a :class:`Browser`; ``close()`` quits it and makes sure no
Chromium process it started is left (they are ended by pid if they linger).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",  # WebGL without a GPU
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-first-run",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    # any host name other than the loopback's fails to resolve
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)


class BrowserMissing(RuntimeError):
    """Chromium, its driver or Selenium is not installed (the message names the fix)."""


def check_installed() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        raise BrowserMissing(
            f"{' and '.join(missing)} not installed: the browser tests need Debian's chromium "
            f"and chromium-driver; run ./install.sh --test (or apt-get install chromium "
            f"chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserMissing(
            "selenium is not installed in this venv; run ./install.sh --test "
            "(or pip install 'selenium>=4.20')"
        ) from None


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` now (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Browser:
    """A headless Chromium window (``driver``: Selenium's WebDriver)."""

    def __init__(self, width: int = 1400, height: int = 900):
        check_installed()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="meshemu-chromium-"))
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for f in FLAGS:
            opts.add_argument(f)
        opts.add_argument(f"--window-size={width},{height}")
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.service = Service(CHROMEDRIVER)
        self.driver: Any = webdriver.Chrome(service=self.service, options=opts)
        self.pids = {self.service.process.pid} | _children(self.service.process.pid)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, timeout_s: float, what: str) -> Any:
        """Evaluate ``return <script>`` until it is truthy; AssertionError after timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.js(f"return {script}")
            if got:
                return got
            if time.monotonic() > deadline:
                errors = self.js("return window.meshemuState && window.meshemuState.errors")
                raise AssertionError(
                    f"timed out after {timeout_s:g} s waiting for {what} "
                    f"({script}); page errors: {errors}"
                )
            time.sleep(0.1)

    def requested_urls(self) -> list[str]:
        """Every URL the page requested, from the DevTools performance log (network events)
        and the page's resource timing."""
        import json

        urls = set()
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.add(msg["params"]["request"]["url"])
        urls.update(self.js("return performance.getEntriesByType('resource').map(e => e.name)"))
        urls.add(self.js("return location.href"))
        return sorted(urls)

    def close(self) -> None:
        """Quit Chromium and its driver; end any of their processes still there."""
        self.pids |= _children(self.service.process.pid)
        with contextlib.suppress(Exception):
            self.driver.quit()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in self.pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in self.pids:
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        shutil.rmtree(self.profile, ignore_errors=True)

    def leftovers(self) -> list[int]:
        return sorted(p for p in self.pids if _alive(p))

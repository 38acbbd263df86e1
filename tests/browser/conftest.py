"""Fixtures of the browser tests: headless Chromium (``tests/browser/chromium.py``), a
``meshemu`` command serving the view (:class:`ViewProcess`), and where screenshots go.

Everything started here is stopped when the test (or module) ends, pass or fail: Chromium
and its driver (checked by pid), the server process (SIGINT, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium import Browser, BrowserMissing  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MESHEMU = [sys.executable, "-m", "meshemu.cli"]
#: Screenshots kept after the tests (one per test that takes one); the path is printed.
ARTIFACTS = Path(os.environ.get("MESHEMU_TEST_ARTIFACTS", "/tmp/meshemu-test-artifacts"))


class ViewProcess:
    """A ``meshemu`` command that prints ``view: URL``; its output is collected in ``lines``."""

    def __init__(self, argv: Sequence[str], cwd: Path, timeout_s: float = 120):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*MESHEMU, *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self.wait_line(r"view: (http://\S+)", timeout_s).group(1)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first output line matching ``pattern`` (waits for it)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(
                    f"meshemu exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                    + "\n".join(self.lines[-40:])
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout_s:g} s:\n"
                    + "\n".join(self.lines[-40:])
                )
            time.sleep(0.1)

    def stop(self, timeout_s: float = 120) -> int:
        """SIGINT (as Ctrl-C), then SIGKILL to the process group if it does not exit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        b = Browser()
    except BrowserMissing as exc:
        pytest.fail(str(exc))
    try:
        yield b
    finally:
        b.close()
        assert not b.leftovers(), f"Chromium processes left: {b.leftovers()}"


@pytest.fixture
def keep_screenshot(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """``keep_screenshot(browser, name)``: a PNG in the test's tmp dir, copied into
    :data:`ARTIFACTS` (the path is printed)."""

    def keep(b: Browser, name: str) -> Path:
        shot = tmp_path / f"{name}.png"
        assert b.driver.save_screenshot(str(shot)), "screenshot failed"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        kept = ARTIFACTS / shot.name
        shutil.copy(shot, kept)
        with capsys.disabled():
            print(f"\n[{request.node.name}] screenshot: {kept}")
        return kept

    return keep

"""Shared fixtures for root tests: throw-away network namespaces.

``netns_factory()`` returns a :class:`Netns`: a network namespace held by a ``sleep``
process started with ``unshare -n`` (so it has no name, nothing in ``/run/netns`` to leak,
and it disappears with that process). Commands run inside with ``nsenter``. Every
namespace and every process started through it is killed when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest



def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (they create network namespaces); run "
                    "them as root, as CI does")


class Netns:
    """A network namespace held by a process; ``pid`` is what shapers take."""

    def __init__(self, tag: str):
        self.tag = tag
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
        self.pid = self.holder.pid
        self._procs: list[subprocess.Popen] = []
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{self.pid}/ns/net") == own:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                self.close()
                raise RuntimeError(f"unshare -n did not make a namespace for {tag}")
            time.sleep(0.005)

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this namespace."""
        return ["nsenter", "-t", str(self.pid), "-n", *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        """Run a command inside; return the completed process (text output)."""
        return subprocess.run(self.cmd(argv), capture_output=True, text=True, check=check,
                              timeout=timeout, **kw)

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a command inside; it is killed when the namespace is closed."""
        p = subprocess.Popen(self.cmd(argv), **kw)
        self._procs.append(p)
        return p

    def links(self) -> list[str]:
        """Interface names in this namespace."""
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()]

    def close(self) -> None:
        for p in [*self._procs, self.holder]:
            if p.poll() is None:
                p.kill()
            p.wait()
        self._procs.clear()


@pytest.fixture
def netns_factory() -> Iterator:
    """Make namespaces: ``ns = netns_factory()``; all are removed after the test."""
    _require_root()
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns(f"mxtest-{uuid.uuid4().hex[:6]}")
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def run_id() -> str:
    """A fresh run id for a shaper under test (``mxtest...``)."""
    return f"mxtest{uuid.uuid4().hex[:8]}"

"""Test doubles: stand-ins for meshemu's parts, for tests and benchmarks only.

:class:`FakeShaper`
    A :class:`~meshemu.live.shapers.LinkShaper` that validates and records every call and
    touches nothing (no root). Not in the shaper registry: construct it directly,
    ``FakeShaper("myrun")``.
:class:`GuardedFakeShaper`
    A FakeShaper whose ``guard()`` returns scripted fidelity records.
:class:`Netns`
    A stand-in for an emulated node: a network namespace held by a ``sleep`` process started
    with ``unshare -n`` (no name, nothing in ``/run/netns`` to leak; it goes with the
    process). Needs root. The integration tests' ``netns_factory`` fixture makes these.

Importable without pytest (``benchmarks/`` use it): put ``tests/`` on ``sys.path``
(``tests/conftest.py`` does so for the tests).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from meshemu.live.shapers import LinkEnds, LinkParams, LinkShaper
from meshemu.live.shapers.base import GuardRecord


class FakeShaper(LinkShaper):
    """Test double: validates and records every call, touches nothing, needs no root.

    Attributes
    ----------
    calls : list of (method name, argument)
        Every call in order, e.g. ``("update", [(3, LinkParams(...))])``.
    closed : bool
    """

    name = "fake"

    def __init__(self, run_id: str = "fake"):
        super().__init__(run_id)
        self.calls: list[tuple[str, object]] = []
        self.closed = False

    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        links = list(links)
        self._check_new(links)
        self.calls.append(("create_links", links))
        for e, p in links:
            self._links[e.link_id] = (e, p)

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        changes = list(changes)
        self._check_changes(changes)
        self.calls.append(("update", changes))
        for i, p in changes:
            self._links[i] = (self._links[i][0], p)

    def remove_links(self, link_ids: Sequence[int]) -> None:
        ids = self._known(link_ids)
        self.calls.append(("remove_links", ids))
        for i in ids:
            del self._links[i]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        self.calls.append(("counters", None))
        return {i: (0, 0, 0) for i in self._links}

    def close(self) -> None:
        self.calls.append(("close", None))
        self._links.clear()
        self.closed = True


class GuardedFakeShaper(FakeShaper):
    """A :class:`FakeShaper` whose :meth:`guard` returns scripted records, one list per call
    (then empty lists): the fidelity guard's test double."""

    name = "fake-guarded"
    has_guard = True

    def __init__(self, run_id: str = "fake", script: Sequence[list[GuardRecord]] = ()):
        super().__init__(run_id)
        self.script = list(script)

    def guard(self) -> list[GuardRecord]:
        self.calls.append(("guard", None))
        return self.script.pop(0) if self.script else []


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

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        """Run a command inside; return the completed process (text output)."""
        return subprocess.run(
            self.cmd(argv), capture_output=True, text=True, check=check, timeout=timeout, **kw
        )

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

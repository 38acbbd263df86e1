"""Fixtures for the tests that run inside the VM (root, a kernel with ``sch_netem``).

These tests are collected only with ``MESHEMU_IN_VM=1`` (the VM, or the host collecting their
ids). Each outcome goes to ``$MESHEMU_VM_RESULTS/results.json``, which the host's
``tests/vm/test_vm.py`` reads back.

``netns_factory()`` makes a :class:`vmhelpers.Netns`, a network namespace held by an
``unshare -n sleep infinity`` process (nothing in ``/run/netns`` to leak); every namespace is
killed when its test ends, pass or fail.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
from vmhelpers import Netns

if os.environ.get("MESHEMU_IN_VM") != "1":
    raise pytest.UsageError(
        "tests/vm/inside need a kernel with sch_netem and run only inside "
        "the test VM; run `pytest tests/vm` instead (it boots the VM)"
    )

# ---- results for the host -----------------------------------------------------------------
_results: dict[str, dict] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    r = _results.setdefault(report.nodeid, {"outcome": "passed", "longrepr": "", "duration": 0.0})
    r["duration"] += report.duration
    xfail = hasattr(report, "wasxfail")
    if report.failed:
        r["outcome"] = "failed" if report.when == "call" else "error"
        extra = "".join(f"\n--- {title} ---\n{text}" for title, text in report.sections)
        r["longrepr"] += f"[{report.when}] {report.longreprtext}{extra}\n"
    elif report.skipped and r["outcome"] == "passed":
        r["outcome"] = "xfailed" if xfail else "skipped"
        r["longrepr"] = report.wasxfail if xfail else str(report.longrepr[-1])
    elif report.passed and xfail and report.when == "call":
        r["outcome"] = "xpassed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("MESHEMU_VM_RESULTS")
    if out and os.path.isdir(out):
        tmp = os.path.join(out, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(_results, f, indent=1)
        os.replace(tmp, os.path.join(out, "results.json"))


# ---- fixtures ---------------------------------------------------------------------------
@pytest.fixture
def netns_factory() -> Iterator:
    """Make namespaces: ``ns = netns_factory()``; all are removed after the test."""
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def run_id() -> str:
    """A fresh run id for a shaper under test."""
    return f"vmtest{uuid.uuid4().hex[:8]}"

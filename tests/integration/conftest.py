"""Shared fixtures for root tests: throw-away network namespaces.

``netns_factory()`` returns a :class:`Netns` (``tests/doubles.py``): a network namespace
held by a ``sleep`` process started with ``unshare -n`` (so it has no name, nothing in
``/run/netns`` to leak, and it disappears with that process). Commands run inside with
``nsenter``. Every namespace and every process started through it is killed when the test
ends, pass or fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from doubles import Netns  # noqa: F401  (the namespace holder; tests/conftest.py finds it)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "integration tests need root (they create network namespaces); run "
            "them as root, as CI does"
        )


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

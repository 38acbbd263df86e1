"""Waiting on conditions, not for fixed times (importable without pytest)."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between two looks at a condition.
POLL_S = 0.02


def wait_for(cond: Callable[[], object], timeout_s: float = 5.0, poll_s: float = POLL_S) -> bool:
    """Look at ``cond()`` until it is true or ``timeout_s`` has passed; return whether it
    became true (the caller asserts, with its own message)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return bool(cond())
        time.sleep(poll_s)
    return True

"""The real-time (or scaled-time) clock of a live run.

Step ``k`` is due at wall time ``start + k * period_s`` with ``period_s = step_s /
time_scale``; the clock sleeps until then and reports how late the step began (its lag).
It never catches up by skipping steps: a step that starts late is applied late, and the
lag is logged. :meth:`Clock.stop` wakes a waiting :meth:`Clock.wait_for` at once (the CLI
mode stops the stepping thread that way).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    """When step ``k`` began: at monotonic time ``began``, ``lag_s`` after it was due,
    ``wall_s`` after the clock started, at Unix time ``unix_s``."""

    k: int
    began: float
    lag_s: float
    wall_s: float
    unix_s: float


class Clock:
    """Paces steps in wall-clock time.

    Parameters
    ----------
    period_s : float
        Wall-clock seconds per step (``step_s / time_scale``).
    monotonic : callable, optional
        The time source (seconds); :func:`time.monotonic` by default, a fake one in tests.
    """

    def __init__(self, period_s: float, monotonic: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._now = monotonic
        self._stop = threading.Event()
        self.started_at: float | None = None

    def start(self) -> None:
        """Step 0 is now; later steps are due ``k * period_s`` after this."""
        self.started_at = self._now()

    def due(self, k: int) -> float:
        """Monotonic time at which step ``k`` is due."""
        if self.started_at is None:
            raise RuntimeError("Clock.start() was not called")
        return self.started_at + k * self.period_s

    def wait_for(self, k: int) -> Tick | None:
        """Sleep until step ``k`` is due; its :class:`Tick`, or None if stopped meanwhile."""
        due = self.due(k)
        left = due - self._now()
        if left > 0 and self._stop.wait(left):
            return None
        if self._stop.is_set():
            return None
        began = self._now()
        return Tick(
            k,
            began,
            began - due,
            began - self.started_at,  # type: ignore[operator]
            time.time(),
        )

    def stop(self) -> None:
        """Make every present and future :meth:`wait_for` return None."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def is_late(self, tick: Tick) -> bool:
        """True when ``tick`` began more than half a period late."""
        return tick.lag_s > 0.5 * self.period_s

"""The step loop's side of ``meshemu run --view``: :class:`LiveFeed`.

The run calls the feed after each step (``RunOptions.on_step``, with the step index); the
call only puts the index on a queue (:class:`queue.SimpleQueue`, no I/O, no lock held
while anything else runs). A thread of the feed's own takes it from there and wakes the
page's event streams (server-sent events, :mod:`meshemu.view.server`), so serving never
runs in the step loop.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

#: Put on the queue when the run is over.
_END = -1
#: Put on the queue when the feed closes (its thread ends).
_CLOSE = -2


class LiveFeed:
    """How far a live run has got, for the view's event streams.

    Attributes
    ----------
    step : int
        The last step applied (-1 while the network is being built, 0 once built).
    done : bool
        The run is over (its last files are written).
    clients : int
        Event streams open now (a page following the run).
    """

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self.step = -1
        self.done = False
        self.closed = False
        self.clients = 0
        self._thread = threading.Thread(target=self._pump, name="meshemu-view-feed", daemon=True)
        self._thread.start()

    # -- the run's side: enqueue only ------------------------------------------------------
    def __call__(self, k: int, snapshot: Any = None, emu: Any = None) -> None:
        """``RunOptions.on_step``: step ``k`` was applied."""
        self._q.put(k)

    def built(self, emu: Any = None) -> None:
        """``RunOptions.on_built``: the network is up in the state of step 0."""
        self._q.put(0)

    def finish(self) -> None:
        """The run is over and its files are written."""
        self._q.put(_END)

    def close(self) -> None:
        """Wake every stream for the last time and end the feed's thread."""
        self._q.put(_CLOSE)
        self._thread.join(timeout=5)

    # -- the feed's thread -----------------------------------------------------------------
    def _pump(self) -> None:
        while True:
            k = self._q.get()
            with self._cond:
                if k == _CLOSE:
                    self.closed = True
                elif k == _END:
                    self.done = True
                else:
                    self.step = max(self.step, k)
                self._cond.notify_all()
            if k == _CLOSE:
                return

    # -- the streams' side -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """``{"step": k, "done": bool}``."""
        with self._cond:
            return {"step": self.step, "done": self.done}

    def wait_change(self, seen: tuple[int, bool], timeout_s: float) -> tuple[int, bool, bool]:
        """Wait until ``(step, done)`` differs from ``seen`` or ``timeout_s`` passes;
        returns ``(step, done, closed)``."""
        with self._cond:
            self._cond.wait_for(
                lambda: (self.step, self.done) != seen or self.closed, timeout=timeout_s
            )
            return self.step, self.done, self.closed

    def attach(self, delta: int) -> None:
        """Count an event stream opening (+1) or closing (-1)."""
        with self._cond:
            self.clients += delta

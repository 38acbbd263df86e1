"""Teardown signals: SIGINT, SIGTERM and SIGHUP (closing the terminal) raise
:class:`~meshemu.errors.Interrupted` in the main thread, so that ``finally`` blocks tear the
emulation down; teardown itself runs with them deferred. The command line exits with
128 + the signal's number after the teardown (130, 143, 129).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from meshemu.errors import Interrupted

TEARDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def handle_signals(signals: Sequence[int] = TEARDOWN_SIGNALS) -> Iterator[None]:
    """While active, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread.

    Use it around build and run so that ``finally: emu.stop()`` (or ``with emu:``) tears the
    network down on Ctrl-C or ``kill``; :meth:`Emulation.stop` itself is never interrupted
    (a signal arriving during it takes effect when it returns). Outside the main thread it
    does nothing. Previous handlers are restored on exit.

    Example
    -------
    >>> with handle_signals(), Emulation(names, kinds, shaper, run_dir, run_id) as emu:
    ...     emu.build(keys, snapshot, tables)
    ...     run(emu)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, then hand them to the old handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old: dict[int, Any] = {
        s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in TEARDOWN_SIGNALS
    }
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in got[:1]:
            h = old[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), s)

"""The traffic agent: one process per node, sending and receiving that node's traffic.

Run inside a node's namespace by :mod:`meshemu.traffic.supervision`::

    python -m meshemu.traffic.agent CONFIG.json

``CONFIG.json`` is an :class:`~meshemu.traffic.config.AgentConfig`
(:func:`~meshemu.traffic.config.write_agent_config`). The agent is three layers:
:mod:`meshemu.traffic.transport` (the socket, reliable paced messages, the measurement
files), :mod:`meshemu.traffic.roles` (collectives, inference clients and servers,
streams) and, here, the event loop: one thread, timers in a heap, paced senders, and
``select`` on the socket (and on stdin) with microsecond timeouts.

Control (with ``control`` in the config): the agent reports ``ready`` on stdout once its
socket is bound and its files are open, then waits for the runtime's ``go <start_unix_ns>
<end_unix_ns>`` on stdin (sent once every agent is up, so that slow start-ups, tens of
agents importing on two cores, do not eat into the schedule); ``targets`` lines re-rank an
inference client's servers; ``stop``, or stdin closing, ends it. It reports ``done`` when
its own sending work (collective iterations, requests, streams) is over and ``status
<json>`` (its counters) at exit. Without ``control`` it starts at the config's
``start_unix_ns`` and ends by itself after ``end_unix_ns`` plus :data:`HARD_GRACE_NS`.
See :mod:`meshemu.traffic.config` for the lines.

SIGTERM (or SIGINT) ends the agent cleanly too: files are flushed and closed, exit status 0.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TextIO

from meshemu.errors import EmulationError
from meshemu.traffic.config import (
    AgentConfig,
    AgentStatus,
    Command,
    Done,
    Go,
    Ready,
    Stop,
    Targets,
    parse_command,
    read_agent_config,
    send_line,
)
from meshemu.traffic.roles import Collective, InferenceClient, InferenceServer, StreamSender

# re-exported: the transport's constants and message classes were the agent's
from meshemu.traffic.transport import (  # noqa: F401
    MAX_BURST_NS,
    RTO_MAX_NS,
    RTO_NS,
    SO_TIMESTAMPNS,
    AgentFiles,
    InMsg,
    OutMsg,
    Transport,
)

log = logging.getLogger("meshemu.traffic.agent")

#: Flush measurement files at least this often (ns).
FLUSH_NS = 1_000_000_000
#: The agent exits by itself this long after the end of the traffic (ns).
HARD_GRACE_NS = 30_000_000_000
#: Seconds an agent waits for the runtime's go command before giving up.
GO_TIMEOUT_S = 120.0
#: Longest sleep of the event loop (s).
MAX_WAIT_S = 0.05


class Commands:
    """Lines from the runtime on a file descriptor (the agent's stdin), read without
    blocking."""

    def __init__(self, fd: int):
        self.fd = fd
        self.closed = False
        self._buf = b""
        os.set_blocking(fd, False)

    def read(self) -> list[Command]:
        """The complete commands that have arrived (``closed`` once the other end is gone).

        Raises
        ------
        EmulationError
            A malformed line.
        """
        while not self.closed:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not chunk:
                self.closed = True
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [parse_command(ln.decode()) for ln in lines if ln.strip()]


class Agent:
    """The event loop of one node (see the module docstring).

    Parameters
    ----------
    cfg : AgentConfig
    reports : text stream, optional
        Where ``ready``/``done``/``status`` go (None: nowhere).
    commands_fd : int, optional
        Where commands come from (with ``cfg.control``; default: stdin).
    """

    def __init__(
        self, cfg: AgentConfig, reports: TextIO | None = None, commands_fd: int | None = None
    ):
        self.cfg = cfg
        self.node = cfg.node
        # the traffic's time zero and end (replaced by the go command's, with control)
        self.start_ns = cfg.start_unix_ns
        self.end_ns = cfg.end_unix_ns
        self.stop = False
        self.timers: list[tuple[int, int, Callable[[], None]]] = []
        self._tseq = 0
        self.reports = reports
        self.commands = (
            Commands(sys.stdin.fileno() if commands_fd is None else commands_fd)
            if cfg.control
            else None
        )
        self.targets: dict[str, tuple[str, ...]] = {}
        self.collectives: list[Collective] = []
        self.clients: list[InferenceClient] = []
        self.servers: list[InferenceServer] = []
        self.streams: list[StreamSender] = []
        self.done_reported = False
        self.files = AgentFiles(Path(cfg.out_dir) / cfg.node)
        self.transport = Transport(
            cfg.node, cfg.addrs, cfg.bind, self.files, self.at, cfg.sample, cfg.drop_every
        )

    # -- what roles use ----------------------------------------------------------------------
    def at(self, t_ns: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at unix time ``t_ns``."""
        self._tseq += 1
        heapq.heappush(self.timers, (t_ns, self._tseq, fn))

    def check_done(self) -> None:
        """Report ``done`` once every role's sending work is over."""
        if self.done_reported:
            return
        if (
            all(c.finished for c in self.collectives)
            and all(c.done for c in self.clients)
            and all(s.finished for s in self.streams)
        ):
            self.done_reported = True
            self.files.flush()
            self._report(Done(time.time_ns()))

    def _report(self, msg: Ready | Done | AgentStatus) -> None:
        if self.reports is not None and not send_line(self.reports, msg):
            self.reports = None

    # -- control -----------------------------------------------------------------------------
    def _on_commands(self) -> None:
        assert self.commands is not None
        for cmd in self.commands.read():
            if isinstance(cmd, Targets):
                self.targets[cmd.job] = cmd.servers
                for cl in self.clients:
                    if cl.job == cmd.job:
                        cl.set_targets(cmd.servers)
            elif isinstance(cmd, Stop):
                self.stop = True
            elif isinstance(cmd, Go):
                log.warning("%s: a second go command, ignored", self.node)
        if self.commands.closed and not self.stop:
            log.info("%s: the runtime closed the control pipe; stopping", self.node)
            self.stop = True

    def _wait_for_go(self) -> bool:
        """With control: take commands until ``go`` (its times become the traffic's).
        False: stopped, the pipe closed, or no go within :data:`GO_TIMEOUT_S`."""
        cmds = self.commands
        if cmds is None:
            return True
        deadline = time.monotonic() + GO_TIMEOUT_S
        while not self.stop and not cmds.closed:
            select.select([cmds.fd], [], [], 0.1)
            for cmd in cmds.read():
                if isinstance(cmd, Go):
                    self.start_ns, self.end_ns = cmd.start_unix_ns, cmd.end_unix_ns
                    return True
                if isinstance(cmd, Targets):
                    self.targets[cmd.job] = cmd.servers
                elif isinstance(cmd, Stop):
                    self.stop = True
            if time.monotonic() > deadline:
                log.error("%s: no go command after %.0f s; exiting", self.node, GO_TIMEOUT_S)
                return False
        return False

    def _setup_roles(self) -> None:
        """Make this node's roles (needs the final start time)."""
        cfg = self.cfg
        self.collectives = [Collective(self, c) for c in cfg.collectives]
        self.clients = [InferenceClient(self, c) for c in cfg.inference_clients]
        for cl in self.clients:
            if cl.job in self.targets:
                cl.set_targets(self.targets[cl.job])
        self.servers = [InferenceServer(self, c) for c in cfg.inference_servers]
        self.streams = [StreamSender(self, c) for c in cfg.streams]

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Report ``ready``, wait for the go (with control), run until stopped; exit status."""
        self._report(Ready())
        try:
            if not self._wait_for_go():
                return 0
            self._setup_roles()
            for c in self.collectives:
                c.start()
            for cl in self.clients:
                cl.start()
            self.check_done()
            self._loop()
        finally:
            self.close()
        return 0

    def _next_due(self, now: int) -> int:
        """Send what is due and run due timers; return the next due time (0: none)."""
        nxt = self.transport.send_due(now)
        for s in self.streams:
            if not s.finished:
                d = s.due(now)
                if d:
                    nxt = d if not nxt else min(nxt, d)
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            fn()
        if timers:
            nxt = timers[0][0] if not nxt else min(nxt, timers[0][0])
        a = self.transport.next_due()
        if a:
            nxt = a if not nxt else min(nxt, a)
        return nxt

    def _loop(self) -> None:
        transport = self.transport
        fds = [transport.fileno()]
        if self.commands is not None:
            fds.append(self.commands.fd)
        _set_timer_slack_ns(1000)
        last_flush = time.time_ns()
        hard_end = self.end_ns + HARD_GRACE_NS
        while not self.stop:
            nxt = self._next_due(time.time_ns())
            now = time.time_ns()
            wait = MAX_WAIT_S if not nxt else max(0.0, min(MAX_WAIT_S, (nxt - now) / 1e9))
            if wait > 0:
                ready, _, _ = select.select(fds, [], [], wait)  # microsecond timeout
                if len(ready) > 1 or (ready and ready[0] != fds[0]):
                    self._on_commands()
            transport.drain()
            now = time.time_ns()
            if now - last_flush >= FLUSH_NS:
                self.files.flush()
                last_flush = now
                if now > hard_end:
                    log.warning(
                        "%s: traffic ended long ago and nobody stopped the agent; exiting",
                        self.node,
                    )
                    break
        transport.drain()  # what arrived before the stop (an ACK just sent on loopback)

    def status(self) -> AgentStatus:
        """The agent's counters now."""
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        hwm = 0
        try:  # ru_maxrss survives execve (it would show the parent's), VmHWM does not
            with open("/proc/self/status") as f:
                hwm = next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)
        except OSError:
            pass
        return AgentStatus(
            node=self.node,
            **self.transport.stats,
            done=self.done_reported,
            exit_unix_ns=time.time_ns(),
            cpu_s=round(ru.ru_utime + ru.ru_stime, 3),
            max_rss_kib=hwm,
        )

    def close(self) -> None:
        """Record unanswered requests, close the files and the socket, report the status."""
        for cl in self.clients:
            cl.close()
        self.files.close()
        self.transport.close()
        self._report(self.status())


def _set_timer_slack_ns(ns: int) -> None:
    """Make sleeps wake within ``ns`` of their deadline (default slack is 50 us)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, ns, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """``python -m meshemu.traffic.agent CONFIG.json``; exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m meshemu.traffic.agent CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = read_agent_config(argv[0])
    except EmulationError as exc:
        log.error("%s", exc)
        return 2
    # stdout carries reports only: keep it for them and send anything else printed to stderr
    reports = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        # pacing and the moment a message is noticed are timing: on a busy machine the
        # agents get a larger CPU share than ordinary processes (the delay line runs
        # SCHED_FIFO above them)
        os.nice(cfg.nice)
    except OSError:
        pass
    agent = Agent(cfg, reports)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())

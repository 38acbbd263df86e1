"""Supervising the traffic agents: start them, wait until they are up, give the go, pass
commands, wait until their work is done, stop them, keep their statuses and logs.

Each agent (:mod:`meshemu.traffic.agent`) is a child process with a pipe each way: its
stdin takes :mod:`meshemu.traffic.config` commands, its stdout gives reports (``ready``,
``done``, ``status``), its stderr goes to ``<dir>/<node>.log``. Reports are read with
``select`` on the stdout pipes, so waiting for readiness or completion is waiting on the
pipes, not polling files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from meshemu.errors import EmulationError
from meshemu.traffic.config import (
    AgentConfig,
    AgentStatus,
    Command,
    Done,
    Go,
    Ready,
    Stop,
    parse_report,
    send_line,
    write_agent_config,
)

log = logging.getLogger(__name__)

#: Seconds the agents get to exit after ``stop`` before SIGKILL.
TERM_WAIT_S = 3.0
#: Suffixes of an agent's files in the traffic directory (removed before it starts).
AGENT_FILES = (".packets.csv", ".iterations.csv", ".inference.csv", ".rtt.csv")

#: Starts a process for a node: ``spawn(node, argv, **popen_kwargs)``.
Spawn = Callable[..., "subprocess.Popen[bytes]"]


def local_spawn(node: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """:data:`Spawn` in this namespace (tests, benchmarks; agents on loopback)."""
    return subprocess.Popen(argv, **kwargs)


class AgentSupervisor:
    """The agents of one run.

    Parameters
    ----------
    directory : Path
        Where configurations and logs go (and the agents' own files).
    spawn : Spawn
        How to start a process in a node (for an emulation: the node's ``popen``).
    """

    def __init__(self, directory: Path, spawn: Spawn = local_spawn):
        self.dir = Path(directory)
        self.spawn = spawn
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.statuses: dict[str, AgentStatus] = {}
        self.ready: set[str] = set()
        self.done: dict[str, int] = {}
        self._fd_node: dict[int, str] = {}
        self._buf: dict[str, bytes] = {}
        self._stopped = False

    # -- start -------------------------------------------------------------------------------
    def start(self, configs: Mapping[str, AgentConfig], ready_timeout_s: float = 60.0) -> None:
        """Write each configuration, start its agent and wait until every one reports
        ``ready``.

        Raises
        ------
        EmulationError
            An agent exited, or not all were ready within ``ready_timeout_s``.
        """
        for node, cfg in configs.items():
            for suffix in AGENT_FILES:
                (self.dir / f"{node}{suffix}").unlink(missing_ok=True)
            path = write_agent_config(cfg, self.dir / f"{node}.json")
            with open(self.dir / f"{node}.log", "wb") as logf:
                p = self.spawn(
                    node,
                    [sys.executable, "-m", "meshemu.traffic.agent", str(path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=logf,
                    cwd=str(Path(__file__).resolve().parents[2]),
                )
            self.procs[node] = p
            assert p.stdout is not None
            fd = p.stdout.fileno()
            os.set_blocking(fd, False)
            self._fd_node[fd] = node
            self._buf[node] = b""
        deadline = time.monotonic() + ready_timeout_s
        while not self.ready >= set(configs):
            left = deadline - time.monotonic()
            if left <= 0:
                pending = sorted(set(configs) - self.ready)
                raise EmulationError(
                    f"traffic agents of {pending} did not start within "
                    f"{ready_timeout_s:.0f} s: {self.log_tail(pending[0])}"
                )
            self.read_reports(min(left, 1.0))
            for node in set(configs) - self.ready:
                p = self.procs[node]
                if p.poll() is not None:
                    self.read_reports(0)
                    if node not in self.ready:
                        raise EmulationError(
                            f"traffic agent of {node} exited with status "
                            f"{p.returncode}: {self.log_tail(node)}"
                        )

    def go(self, start_unix_ns: int, end_unix_ns: int) -> None:
        """Tell every agent the traffic's time zero and end."""
        self.broadcast(Go(start_unix_ns, end_unix_ns))

    # -- commands and reports ----------------------------------------------------------------
    def send(self, node: str, cmd: Command) -> bool:
        """Send ``cmd`` to the agent of ``node``; False when it is gone."""
        p = self.procs.get(node)
        if p is None or p.stdin is None or p.stdin.closed:
            return False
        return send_line(_Text(p.stdin), cmd)

    def broadcast(self, cmd: Command) -> None:
        """Send ``cmd`` to every agent."""
        for node in self.procs:
            self.send(node, cmd)

    def read_reports(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for reports and take what has arrived; the number of
        reports taken."""
        fds = list(self._fd_node)
        if not fds:
            if timeout_s > 0:
                time.sleep(timeout_s)
            return 0
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout_s))
        n = 0
        for fd in readable:
            node = self._fd_node[fd]
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:  # the agent closed stdout: exited
                del self._fd_node[fd]
                continue
            *lines, self._buf[node] = (self._buf[node] + chunk).split(b"\n")
            for ln in lines:
                if ln.strip():
                    n += self._take(node, ln.decode(errors="replace"))
        return n

    def _take(self, node: str, line: str) -> int:
        try:
            rep = parse_report(line)
        except EmulationError as exc:
            log.warning("agent of %s: %s", node, exc)
            return 0
        if isinstance(rep, Ready):
            self.ready.add(node)
        elif isinstance(rep, Done):
            self.done[node] = rep.unix_ns
        elif isinstance(rep, AgentStatus):
            self.statuses[node] = rep
        return 1

    def wait_done(self, nodes: Iterable[str], deadline_unix_s: float) -> bool:
        """Wait until every agent of ``nodes`` reported ``done`` or exited, or until
        ``deadline_unix_s``; True if they all did."""
        want = [n for n in nodes if n in self.procs]
        while True:
            if all(n in self.done or self.procs[n].poll() is not None for n in want):
                return True
            left = deadline_unix_s - time.time()
            if left <= 0:
                return False
            self.read_reports(min(left, 0.5))

    # -- stop --------------------------------------------------------------------------------
    def stop(self, wait_s: float = TERM_WAIT_S) -> dict[str, AgentStatus]:
        """Stop every agent (``stop`` and end of stdin; SIGKILL after ``wait_s``), take their
        statuses; idempotent."""
        if self._stopped:
            return self.statuses
        self._stopped = True
        for node, p in self.procs.items():
            if p.poll() is None:
                self.send(node, Stop())
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        deadline = time.monotonic() + wait_s
        while self._fd_node and time.monotonic() < deadline:
            self.read_reports(min(0.2, max(0.0, deadline - time.monotonic())))
        for node, p in self.procs.items():
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("traffic agent of %s did not stop; killing it", node)
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGKILL)
                p.wait()
        self.read_reports(0)
        for p in self.procs.values():
            if p.stdout is not None:
                with contextlib.suppress(OSError):
                    p.stdout.close()
        self._fd_node.clear()
        return self.statuses

    def log_tail(self, node: str) -> str:
        """The end of an agent's log."""
        try:
            return (self.dir / f"{node}.log").read_text()[-800:]
        except OSError:
            return "(no log)"


class _Text:
    """A binary pipe seen as a text stream by :func:`send_line`."""

    def __init__(self, raw: Any):
        self.raw = raw

    def write(self, s: str) -> None:
        self.raw.write(s.encode())

    def flush(self) -> None:
        self.raw.flush()

"""Mininet nodes of an emulation: meshemu's host class, its interfaces, fast shell start.

Vanilla Mininet starts each host's shell with ``mnexec -c`` (closing every descriptor) and
waits for each prompt in turn, and configures each interface with a shell command; at 1,584
nodes that is most of its 55 s build (``shared/PLATFORM.md``). Here:

* :meth:`MeshNode.startShell` only *spawns* the shell (``posix_spawn`` of ``unshare --net
  bash`` in a new session on a fresh pty, echo off, prompt and job control set through the
  environment; no mount namespace or sysfs per node, unlike ``mnexec -n``);
  :func:`await_prompts` then waits for all prompts in one ``poll`` loop;
* :class:`MeshIntf` is Mininet's view of an interface meshemu configured itself over
  netlink (it runs no command);
* every node shell carries ``mininet:<name> meshemu-run=<run_id>`` in its argv and
  ``MESHEMU_RUN=<run_id>`` in its environment (:mod:`meshemu.live.lock`), and so does
  everything started with ``node.popen``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import select
import shutil
import signal
import subprocess
import termios
import time
from collections.abc import Sequence
from typing import Any

from mininet.link import Intf
from mininet.node import Host, Node

# mininet.log makes every logger created after it a MininetLogger with its own handler at
# level OUTPUT (25): meshemu's info messages would vanish and its warnings print twice
logging.setLoggerClass(logging.Logger)

from meshemu.errors import EmulationError  # noqa: E402
from meshemu.linux import netns as nl  # noqa: E402
from meshemu.live.lock import ENV_MARKER, RUN_MARKER  # noqa: E402

log = logging.getLogger(__name__)

#: The prompt of every node shell (Mininet's sentinel).
PROMPT = chr(127)


class ShellHandle:
    """The ``Popen``-like handle Mininet expects in ``node.shell`` (pid, poll, wait).

    Parameters
    ----------
    pid : int
        The shell, a child of this process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code, or None while the shell runs (-1: reaped elsewhere)."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the shell exits (at most ``timeout`` s); the exit code or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        return self.returncode


_MNEXEC: list[str] = []
_ENV: dict[str, dict[str, str]] = {}


def _mnexec_path() -> str:
    if not _MNEXEC:
        path = shutil.which("mnexec")
        if path is None:
            raise EmulationError(
                "mnexec not found; install Debian's mininet package (apt-get install mininet)"
            )
        _MNEXEC.append(path)
    return _MNEXEC[0]


_TOOLS: dict[str, str] = {}


def _tool_path(name: str, package: str) -> str:
    path = _TOOLS.get(name) or shutil.which(name)
    if path is None:
        raise EmulationError(f"{name} not found; install Debian's {package} package")
    _TOOLS[name] = path
    return path


def _shell_env(extra: dict[str, str], run_id: str) -> dict[str, str]:
    """The node shells' environment (made once per run: 1,600 copies of os.environ cost)."""
    env = _ENV.get(run_id)
    if env is None:
        _ENV.clear()
        env = _ENV[run_id] = {**os.environ, **extra, ENV_MARKER: run_id}
    return env


class MeshNode(Host):
    """A Mininet host that is a meshemu node (a router with its address on ``lo``).

    Its shell is only *spawned* by the constructor; :class:`Emulation` waits for all shells'
    prompts at once. The shell's argv ends with ``mininet:<name> meshemu-run=<run_id>``.
    ``IP()`` is the node address (10.0.x.y), also what the CLI substitutes for node names.

    Parameters
    ----------
    name : str
    run_id : str
    **params
        As for :class:`mininet.node.Host`.
    """

    def __init__(self, name: str, run_id: str = "", **params: Any) -> None:
        self.run_id = run_id
        self.shell: ShellHandle | None = None
        super().__init__(name, **params)

    #: Environment of every node shell: the prompt is Mininet's sentinel; job control and
    #: history are switched off as Mininet's ``unset HISTFILE; set +m`` would, but by the
    #: shell itself before its first prompt, which saves a round trip per node.
    SHELL_ENV = {"PS1": PROMPT, "HISTFILE": "", "PROMPT_COMMAND": "set +m; unset PROMPT_COMMAND"}

    def startShell(self, mnopts: str | None = None) -> None:  # noqa: N802 (Mininet's name)
        """Spawn the shell (``unshare --net bash`` in a session of its own) without waiting
        for its prompt.

        Only the network namespace is new. ``mnexec -n`` (vanilla Mininet) also makes a
        mount namespace and mounts a sysfs in it, so that ``/sys/class/net`` shows the
        node's interfaces; every such mount compares itself with every sysfs superblock
        already mounted (``sget_fc``: one per node), and each mount namespace is a copy of
        the mount tree, which made starting 4,418 nodes quadratic. Nothing in meshemu reads
        a node's ``/sys`` (``ip``, ``tc``, ``ethtool`` and the routing daemons use netlink
        and ioctls; ``/proc/sys/net`` follows the reader's network namespace by itself).
        ``popen`` still attaches with ``mnexec -a``.
        """
        if self.shell:
            raise EmulationError(f"{self.name}: shell is already running")
        _mnexec_path()  # (node.popen needs it: say so before anything is built)
        shell = [
            "bash",
            "--norc",
            "--noediting",
            "-is",
            "mininet:" + self.name,
            RUN_MARKER + self.run_id,
        ]
        if self.inNamespace:
            exe, argv = _tool_path("unshare", "util-linux"), ["unshare", "--net", "--", *shell]
        else:
            exe, argv = _tool_path("bash", "bash"), shell
        master, slave = pty.openpty()
        try:
            # no echo (Mininet's `stty -echo`), set before the shell starts
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            env = _shell_env(self.SHELL_ENV, self.run_id)
            pid = os.posix_spawn(
                exe,
                argv,
                env,
                setsid=True,  # (as mnexec -d: no controlling terminal of ours)
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, slave, 0),
                    (os.POSIX_SPAWN_DUP2, slave, 1),
                    (os.POSIX_SPAWN_DUP2, slave, 2),
                ],
            )
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        master = nl.high_fd(master)
        self.master, self.slave = master, None
        self.shell = ShellHandle(pid)
        self.stdin = os.fdopen(master, "r")
        self.stdout = self.stdin
        self.pid = pid
        self.pollOut = select.poll()
        self.pollOut.register(self.stdout)
        self.outToNode[self.stdout.fileno()] = self
        self.inToNode[self.stdin.fileno()] = self
        self.execed = False
        self.lastCmd = None
        self.lastPid = None
        self.readbuf = ""
        self.waiting = True

    def _popen(self, cmd: list[str], **params: Any) -> subprocess.Popen:
        """``Popen`` for :meth:`popen` (``mnexec -da PID ...``), with :data:`ENV_MARKER` set."""
        env = dict(params.pop("env", None) or os.environ)
        env[ENV_MARKER] = self.run_id
        return subprocess.Popen(cmd, env=env, **params)

    def cleanup(self) -> None:
        """Close the pty (the shell is killed by :meth:`Emulation.stop`)."""
        if self.stdin is not None:
            self.outToNode.pop(self.stdin.fileno(), None)
            self.inToNode.pop(self.stdin.fileno(), None)
            with contextlib.suppress(OSError):
                self.stdin.close()
        self.shell = None

    def terminate(self) -> None:
        """Kill the shell and everything in its process group."""
        if self.shell is not None and self.shell.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.shell.wait(timeout=5)
        self.cleanup()


class MeshIntf(Intf):
    """Mininet's view of an interface meshemu configured itself (no commands are run)."""

    def __init__(
        self, name: str, node: Node, port: int, ip: str, prefix_len: int, link_id: int | None = None
    ) -> None:
        # Intf.__init__ would run ip/ifconfig in the node; meshemu already set everything.
        self.node = node
        self.name = name
        self.link = None
        self.mac = None
        self.ip = ip
        self.prefixLen = prefix_len
        self.params: dict[str, Any] = {}
        self.link_id = link_id
        node.addIntf(self, port=port, moveIntfFn=lambda *a, **k: None)

    def updateIP(self) -> str:  # noqa: N802 (Mininet's name)
        """The address meshemu gave the interface (no command is run)."""
        return self.ip

    def IP(self) -> str:  # noqa: N802 (Mininet's name)
        """The address meshemu gave the interface."""
        return self.ip


def await_prompts(nodes: Sequence[MeshNode], what: str, timeout_s: float) -> None:
    """Read every node's pty until its prompt (:data:`PROMPT`) shows, all at once.

    Parameters
    ----------
    nodes : sequence of MeshNode
        Nodes whose shells were spawned (:meth:`MeshNode.startShell`).
    what : str
        What the shells are to do, for the error message (``"start"``).
    timeout_s : float

    Raises
    ------
    EmulationError
        A shell exited first, or not all prompts showed within ``timeout_s``.
    """
    poller = select.poll()
    by_fd: dict[int, MeshNode] = {}
    for node in nodes:
        fd = node.stdout.fileno()
        by_fd[fd] = node
        poller.register(fd, select.POLLIN)
    tails = {fd: b"" for fd in by_fd}
    deadline = time.monotonic() + timeout_s
    while tails:
        left = deadline - time.monotonic()
        if left <= 0:
            sample = [by_fd[fd].name for fd in list(tails)[:5]]
            raise EmulationError(
                f"{len(tails)} node shell(s) did not {what} within "
                f"{timeout_s:.0f} s (e.g. {', '.join(sample)}); the machine "
                f"may be overloaded"
            )
        for fd, _ in poller.poll(min(left, 1.0) * 1000):
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                node = by_fd[fd]
                raise EmulationError(
                    f"shell of node {node.name} (pid {node.pid}) exited "
                    f"before it could {what}: {tails[fd][-300:]!r}"
                )
            tail = (tails[fd] + data)[-512:]
            if tail.endswith(PROMPT.encode()):
                del tails[fd]
                poller.unregister(fd)
            else:
                tails[fd] = tail


def mark_ready(nodes: Sequence[MeshNode]) -> None:
    """Tell Mininet the nodes' shells wait for commands (after :func:`await_prompts`)."""
    for node in nodes:
        node.waiting = False
        node.readbuf = ""

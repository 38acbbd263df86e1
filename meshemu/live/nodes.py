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
from pathlib import Path
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


#: The node holder (``meshemu/live/dlc/node.c``, built by ``install.sh``).
HOLDER_BINARY = Path(__file__).resolve().parent / "dlc" / "meshemu-node"
#: Program names (argv[0]) of meshemu's node processes: the holders (compiled, or ``sh``
#: when it is not built) and the shells started in them (``meshemu clean`` looks for these
#: with the run's marker in their argv).
NODE_PROGRAMS = ("meshemu-node", "sh", "bash")

_LIFELINE: list[int] = []


def _lifeline() -> int:
    """The read end of this process's lifeline pipe: every node holder reads it (its stdin)
    until end of file, which comes when this process exits, however it exits (the write end
    is never closed here, nor inherited: it is not inheritable)."""
    if not _LIFELINE:
        r, w = os.pipe()
        _LIFELINE[:] = [nl.high_fd(r), nl.high_fd(w)]
    return _LIFELINE[0]


def _holder_argv(name: str, run_id: str) -> tuple[str, list[str]]:
    """Executable and argv of a node's holder: the compiled one when it is built, else
    ``unshare --net sh -c 'read _'`` (the same, about 60 KiB more per node)."""
    markers = ["mininet:" + name, RUN_MARKER + run_id]
    if HOLDER_BINARY.is_file() and os.access(HOLDER_BINARY, os.X_OK):
        return str(HOLDER_BINARY), ["meshemu-node", *markers]
    unshare = _tool_path("unshare", "util-linux")
    return unshare, ["unshare", "--net", "--", "sh", "-c", "read _", *markers]


class MeshNode(Host):
    """A Mininet host that is a meshemu node (a router with its address on ``lo``).

    The node is its network namespace, held by a small process (``node.pid``, the
    *holder*: :data:`HOLDER_BINARY`) that the constructor only spawns;
    :func:`await_namespaces` waits for all of them at once. Its bash starts on first use:
    anything that talks to the shell (``cmd``, ``sendCmd``, the CLI, ``stdin``/``stdout``)
    starts it first, in the holder's namespace (``nsenter``), and :func:`start_shells`
    starts many at once. A shell costs about 220 KiB per node that most nodes of a large
    constellation never use (``benchmarks/bench_vs_mininet.py``). ``popen`` attaches to
    the holder (``mnexec -a``) and needs no shell. The holder's and the shell's argv end
    with ``mininet:<name> meshemu-run=<run_id>``.

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
        self._io: Any = None
        self._poll: Any = None
        self._bash: ShellHandle | None = None
        self._on_shell: list[str] = []
        super().__init__(name, **params)

    #: Environment of every node shell: the prompt is Mininet's sentinel; job control and
    #: history are switched off as Mininet's ``unset HISTFILE; set +m`` would, but by the
    #: shell itself before its first prompt, which saves a round trip per node.
    SHELL_ENV = {"PS1": PROMPT, "HISTFILE": "", "PROMPT_COMMAND": "set +m; unset PROMPT_COMMAND"}

    # Mininet's Node reads and writes its shell through these: reading one starts the shell
    @property
    def stdin(self) -> Any:
        """The shell's pty (started on first use)."""
        return self._shell_io()

    @stdin.setter
    def stdin(self, value: Any) -> None:
        self._io = value

    stdout = stdin  # (one pty both ways, as in Mininet)

    @property
    def pollOut(self) -> Any:  # noqa: N802 (Mininet's name)
        """A poll object on the shell's pty (started on first use)."""
        self._shell_io()
        return self._poll

    @pollOut.setter
    def pollOut(self, value: Any) -> None:  # noqa: N802
        self._poll = value

    @property
    def has_shell(self) -> bool:
        """Whether the node's bash has been started."""
        return self._io is not None

    def _shell_io(self) -> Any:
        if self._io is None and self.shell is not None and self.shell.poll() is None:
            start_shells([self])
        return self._io

    def on_shell_start(self, command: str) -> None:
        """Run ``command`` in the node's shell when it starts (now, if it runs)."""
        if self._io is not None:
            self.cmd(command)
        else:
            self._on_shell.append(command)

    def startShell(self, mnopts: str | None = None) -> None:  # noqa: N802 (Mininet's name)
        """Spawn the node's holder (a network namespace of its own, in a session of its own)
        without waiting for it; the shell starts on first use.

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
        if not self.inNamespace:
            raise EmulationError(f"{self.name}: meshemu nodes have a network namespace each")
        _mnexec_path()  # (node.popen needs it: say so before anything is built)
        exe, argv = _holder_argv(self.name, self.run_id)
        pid = os.posix_spawn(
            exe,
            argv,
            {ENV_MARKER: self.run_id, "PATH": os.environ.get("PATH", os.defpath)},
            setsid=True,  # (as mnexec -d: no controlling terminal of ours)
            file_actions=[
                (os.POSIX_SPAWN_DUP2, _lifeline(), 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
        )
        self.shell = ShellHandle(pid)
        self.pid = pid
        self.execed = False
        self.lastCmd = None
        self.lastPid = None
        self.readbuf = ""
        self.waiting = False

    def _spawn_bash(self) -> None:
        """Spawn the node's bash in the holder's namespace, without waiting for its prompt."""
        shell = [
            "bash",
            "--norc",
            "--noediting",
            "-is",
            "mininet:" + self.name,
            RUN_MARKER + self.run_id,
        ]
        nsenter = _tool_path("nsenter", "util-linux")
        argv = ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *shell]
        master, slave = pty.openpty()
        try:
            # no echo (Mininet's `stty -echo`), set before the shell starts
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            pid = os.posix_spawn(
                nsenter,
                argv,
                _shell_env(self.SHELL_ENV, self.run_id),
                setsid=True,
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
        self.master = master
        self._bash = ShellHandle(pid)
        self._io = os.fdopen(master, "r")
        self._poll = select.poll()
        self._poll.register(self._io)
        self.outToNode[master] = self
        self.inToNode[master] = self
        self.readbuf = ""
        self.waiting = True

    def _popen(self, cmd: list[str], **params: Any) -> subprocess.Popen:
        """``Popen`` for :meth:`popen` (``mnexec -da PID ...``), with :data:`ENV_MARKER` set."""
        env = dict(params.pop("env", None) or os.environ)
        env[ENV_MARKER] = self.run_id
        return subprocess.Popen(cmd, env=env, **params)

    def kill(self) -> None:
        """SIGKILL the holder and the shell, each with its process group."""
        for h in (self.shell, self._bash):
            if h is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(h.pid, signal.SIGKILL)

    def wait_gone(self, timeout_s: float = 5.0) -> bool:
        """Wait until the holder and the shell have exited; whether they have."""
        return all(
            h is None or h.wait(timeout=timeout_s) is not None for h in (self.shell, self._bash)
        )

    def cleanup(self) -> None:
        """Close the pty (the processes are killed by :meth:`Emulation.stop`)."""
        if self._io is not None:
            self.outToNode.pop(self._io.fileno(), None)
            self.inToNode.pop(self._io.fileno(), None)
            with contextlib.suppress(OSError):
                self._io.close()
        self._io = self._poll = None
        self.shell = self._bash = None

    def terminate(self) -> None:
        """Kill the holder and the shell, and everything in their process groups."""
        self.kill()
        self.wait_gone()
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


#: Seconds to wait for node shells to show their prompts.
SHELL_TIMEOUT_S = 120.0


def start_shells(nodes: Sequence[MeshNode], timeout_s: float = SHELL_TIMEOUT_S) -> None:
    """Start the bash of every node in ``nodes`` that has none yet, all at once (one
    :func:`await_prompts`), and run what :meth:`MeshNode.on_shell_start` queued.

    Raises
    ------
    EmulationError
        A node's holder is gone, or a shell did not start.
    """
    todo = [n for n in nodes if not n.has_shell]
    for n in todo:
        if n.shell is None or n.shell.poll() is not None:
            raise EmulationError(f"node {n.name} is stopped (its namespace holder is gone)")
        n._spawn_bash()
    if not todo:
        return
    await_prompts(todo, "start", timeout_s)
    mark_ready(todo)
    for n in todo:
        queued, n._on_shell = n._on_shell, []
        for command in queued:
            n.cmd(command)


def await_namespaces(nodes: Sequence[MeshNode], timeout_s: float) -> None:
    """Wait until every node's holder is in a network namespace of its own.

    Raises
    ------
    EmulationError
        A holder exited first, or not all were in their namespaces within ``timeout_s``.
    """
    own = os.stat("/proc/self/ns/net").st_ino
    todo = list(nodes)
    deadline = time.monotonic() + timeout_s
    pause = 0.0005
    while todo:
        left = []
        for node in todo:
            try:
                if os.stat(f"/proc/{node.pid}/ns/net").st_ino != own:
                    continue
            except FileNotFoundError:
                pass
            if node.shell is not None and node.shell.poll() is not None:
                raise EmulationError(
                    f"the namespace holder of node {node.name} (pid {node.pid}) exited "
                    f"with status {node.shell.returncode} before its namespace was made"
                )
            left.append(node)
        todo = left
        if not todo:
            return
        if time.monotonic() > deadline:
            sample = ", ".join(n.name for n in todo[:5])
            raise EmulationError(
                f"{len(todo)} node(s) had no network namespace within {timeout_s:.0f} s "
                f"(e.g. {sample}); the machine may be overloaded"
            )
        time.sleep(pause)  # (a short wait between checks of the condition)
        pause = min(pause * 2, 0.05)

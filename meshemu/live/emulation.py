"""The live network: one Mininet node per scenario node, shaped links, kernel routes.

:class:`Emulation` turns snapshots (:class:`meshemu.geometry.linkstate.Snapshot`) and forwarding
tables (:class:`meshemu.routing.ForwardingTables`) into a running network::

    emu = Emulation(names, kinds, shaper, run_dir, run_id)
    emu.build(link_keys, first_snapshot, first_tables)   # nodes, links, addresses, routes
    stats = emu.apply(snapshot, tables)                   # each step: only what changed
    CLI(emu.mininet)                                      # `sat0 ping gs1` works
    emu.stop()                                            # fast, complete, idempotent

Nodes are real Mininet hosts (:class:`MeshNode`, a :class:`mininet.node.Host`) inside a
:class:`mininet.net.Mininet` built with ``topo=None``, so Mininet's CLI and ``node.cmd`` work;
but they are built differently, because vanilla Mininet needs 55 s to build and 94 s to stop
1,584 nodes (``shared/PLATFORM.md``):

* every node shell is spawned first (``posix_spawn`` of ``mnexec -dn bash``, no
  ``mnexec -c`` loop closing 20,000 descriptors) and all prompts are then awaited in one
  ``poll`` loop;
* nodes are configured (sysctls, ``lo``, addresses) from threads that ``setns`` into each
  namespace, and over one persistent rtnetlink socket per node (:mod:`meshemu.linux.netns`),
  never with a shell round trip per command;
* the ``N x N`` routes are built as numpy records and sent thousands per ``sendmsg``;
* ``stop()`` closes the shaper and SIGKILLs every process in the nodes' namespaces
  (the kernel then frees the namespaces and their interfaces by itself).

Addresses and interface names follow :mod:`meshemu.live.addressing`. Every node shell carries
``meshemu-run=<run_id>`` in its argv and each run holds a lock file in :data:`LOCK_DIR`, so
:func:`meshemu.live.clean.clean` can find what a crashed run left behind without touching other
Mininet sessions or live runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mininet.link import Intf
from mininet.net import Mininet
from mininet.node import Host, Node

# mininet.log makes every logger created after it a MininetLogger with its own handler at
# level OUTPUT (25): meshemu's info messages would vanish and its warnings print twice
logging.setLoggerClass(logging.Logger)

from meshemu.live import addressing as adr
from meshemu.linux import netns as nl
from meshemu.errors import EmulationError, ResourceError
from meshemu.geometry.linkstate import Snapshot
from meshemu.live.signals import handle_signals, signals_deferred  # noqa: F401 (re-export)
from meshemu.linux.limits import (FD_FLOOR, ensure_ptys, mem_available_bytes, raise_nofile_limit,
                                  require_root)

log = logging.getLogger(__name__)

#: Directory of the run lock files (``<run_id>.lock``, JSON with the owner's pid).
LOCK_DIR = Path("/run/meshemu")
#: argv element marking a node shell of run ``<run_id>``: ``meshemu-run=<run_id>``.
RUN_MARKER = "meshemu-run="
#: Environment variable (value: the run id) of node shells and of everything started in a
#: node with ``node.cmd`` or ``node.popen``; it survives the shell (``nohup``, daemons), so
#: ``meshemu clean`` finds such processes after a crash.
ENV_MARKER = "MESHEMU_RUN"
#: A link parameter change smaller than this is not pushed to the shaper (seconds).
DELAY_TOLERANCE_S = 1e-6
#: Seconds ``build`` waits at most for the kernel to activate every interface.
LINKS_RUNNING_TIMEOUT_S = 30.0
#: Relative rate change that is not pushed to the shaper.
RATE_TOLERANCE = 1e-9
#: Seconds to wait for all node shells to print their prompt.
SHELL_TIMEOUT_S = 120.0
#: Sysctls of every node's namespace (written before its links exist, so ``default`` values
#: apply to them): a router that answers traceroute at any rate and does not drop
#: asymmetrically routed packets.
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv4.icmp_ratelimit": 0,
    "net.ipv4.icmp_msgs_per_sec": 100000,
    "net.ipv4.icmp_msgs_burst": 10000,
}
#: Added when ``ipv6=False`` (default): no link-local addresses, DAD or router solicitations
#: on the thousands of link interfaces (less memory, no IPv6 chatter through the shapers).
NO_IPV6_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": 1,
    "net.ipv6.conf.default.disable_ipv6": 1,
}

# Memory model used to refuse scenarios that cannot fit (measured on Debian 12, kernel 6.x;
# see benchmarks/bench_emulator.py): a node = bash + pty + namespace + netlink socket;
# a link = its interfaces (4 veth ends for the userspace shaper) + shaper state;
# a route = a kernel fib entry.
NODE_BYTES = 900 * 1024
LINK_BYTES = 120 * 1024
ROUTE_BYTES = 300
#: Share of MemAvailable an emulation may plan to use.
MEMORY_HEADROOM = 0.85


@dataclass(frozen=True)
class StepStats:
    """What one :meth:`Emulation.apply` did.

    Attributes
    ----------
    t_s : float
        The snapshot's time.
    n_link_updates : int
        Links whose parameters (delay, rate, up/down) were pushed to the shaper.
    n_route_changes : int
        ``(node, destination)`` routes replaced, added or removed.
    apply_s : float
        Wall time of the whole apply.
    """

    t_s: float
    n_link_updates: int
    n_route_changes: int
    apply_s: float


def estimate_memory_bytes(n_nodes: int, n_links: int, n_routes: int) -> int:
    """Rough memory an emulation needs (see :data:`NODE_BYTES` and the others)."""
    return n_nodes * NODE_BYTES + n_links * LINK_BYTES + n_routes * ROUTE_BYTES


def check_memory(n_nodes: int, n_links: int, n_routes: int) -> None:
    """Raise :class:`ResourceError` when the scenario will not fit the available memory."""
    need = estimate_memory_bytes(n_nodes, n_links, n_routes)
    avail = mem_available_bytes()
    if need > MEMORY_HEADROOM * avail:
        raise ResourceError(
            f"{n_nodes} nodes, {n_links} links and {n_routes} routes need about "
            f"{need / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is available "
            f"(at most {MEMORY_HEADROOM:.0%} of it may be planned); use fewer satellites or "
            f"ground nodes, fewer destinations, or a machine with more memory")


# ---- run lock -----------------------------------------------------------------------------
def lock_path(run_id: str) -> Path:
    return LOCK_DIR / f"{run_id}.lock"


def write_lock(run_id: str, run_dir: Path, n_nodes: int) -> Path:
    """Record that run ``run_id`` is live, owned by this process."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    p = lock_path(run_id)
    info = {"run_id": run_id, "pid": os.getpid(), "start": nl.process_start_ticks(os.getpid()),
            "run_dir": str(run_dir), "nodes": n_nodes, "created": time.time()}
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        other = read_lock(p)
        if other and lock_is_live(other):
            raise EmulationError(f"run id {run_id!r} is already in use by process "
                                 f"{other.get('pid')}; use another run id") from None
        p.unlink(missing_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return p


def read_lock(path: Path) -> dict | None:
    """The lock file's content, or None when unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def lock_is_live(info: dict) -> bool:
    """True when the process that wrote the lock still runs (same pid and start time)."""
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    start = nl.process_start_ticks(pid)
    return start is not None and (info.get("start") is None or start == info.get("start"))


# ---- Mininet nodes ------------------------------------------------------------------------
class _Shell:
    """The ``Popen``-like handle Mininet expects in ``node.shell`` (pid, poll, wait)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
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
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        return self.returncode


_MNEXEC: list[str] = []
_ENV: dict[str, dict] = {}


def _mnexec_path() -> str:
    if not _MNEXEC:
        path = shutil.which("mnexec")
        if path is None:
            raise EmulationError("mnexec not found; install Debian's mininet package "
                                 "(apt-get install mininet)")
        _MNEXEC.append(path)
    return _MNEXEC[0]


def _shell_env(extra: dict, run_id: str) -> dict:
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

    def __init__(self, name: str, run_id: str = "", **params):
        self.run_id = run_id
        super().__init__(name, **params)

    #: Environment of every node shell: the prompt is Mininet's sentinel; job control and
    #: history are switched off as Mininet's ``unset HISTFILE; set +m`` would, but by the
    #: shell itself before its first prompt, which saves a round trip per node.
    SHELL_ENV = {"PS1": chr(127), "HISTFILE": "", "PROMPT_COMMAND": "set +m; unset PROMPT_COMMAND"}

    def startShell(self, mnopts: str | None = None) -> None:  # noqa: N802 (Mininet's name)
        """Spawn the shell (``mnexec -dn bash``) without waiting for its prompt."""
        if self.shell:
            raise EmulationError(f"{self.name}: shell is already running")
        mnexec = _mnexec_path()
        opts = (mnopts or "-d") + ("n" if self.inNamespace else "")
        argv = ["mnexec", opts, "bash", "--norc", "--noediting", "-is",
                "mininet:" + self.name, RUN_MARKER + self.run_id]
        master, slave = pty.openpty()
        try:
            # no echo (Mininet's `stty -echo`), set before the shell starts
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            pid = os.posix_spawn(mnexec, argv, _shell_env(self.SHELL_ENV, self.run_id), file_actions=[
                (os.POSIX_SPAWN_DUP2, slave, 0), (os.POSIX_SPAWN_DUP2, slave, 1),
                (os.POSIX_SPAWN_DUP2, slave, 2)])
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        master = nl.high_fd(master)
        self.master, self.slave = master, None
        self.shell = _Shell(pid)
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

    def _popen(self, cmd: list[str], **params):
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

    def __init__(self, name: str, node: Node, port: int, ip: str, prefix_len: int,
                 link_id: int | None = None):
        # Intf.__init__ would run ip/ifconfig in the node; meshemu already set everything.
        self.node = node
        self.name = name
        self.link = None
        self.mac = None
        self.ip = ip
        self.prefixLen = prefix_len
        self.params = {}
        self.link_id = link_id
        node.addIntf(self, port=port, moveIntfFn=lambda *a, **k: None)

    def updateIP(self) -> str:  # noqa: N802
        return self.ip

    def IP(self) -> str:  # noqa: N802
        return self.ip


def _await_prompts(nodes: Sequence[MeshNode], what: str, timeout_s: float) -> None:
    """Read every node's pty until its prompt (``chr(127)``) shows, all at once."""
    poller = select.poll()
    by_fd = {}
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
            raise EmulationError(f"{len(tails)} node shell(s) did not {what} within "
                                 f"{timeout_s:.0f} s (e.g. {', '.join(sample)}); the machine "
                                 f"may be overloaded")
        for fd, _ in poller.poll(min(left, 1.0) * 1000):
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                node = by_fd[fd]
                raise EmulationError(f"shell of node {node.name} (pid {node.pid}) exited "
                                     f"before it could {what}: {tails[fd][-300:]!r}")
            tail = (tails[fd] + data)[-512:]
            if tail.endswith(b"\x7f"):
                del tails[fd]
                poller.unregister(fd)
            else:
                tails[fd] = tail


# ---- the emulation ------------------------------------------------------------------------
class Emulation:
    """A live emulated network.

    Parameters
    ----------
    names : sequence of str
        Node names by node id (Mininet node names; ``sat ping gs`` uses them).
    kinds : sequence of str
        Node kinds (:data:`meshemu.live.addressing.NODE_KINDS`); satellites (``sat``,
        ``compute``) end ISLs, the others GSLs.
    shaper : meshemu.live.shapers.LinkShaper
        Creates and shapes the links; closed by :meth:`stop`.
    run_dir : path
        Where ``addressing.csv`` and ``addressing.json`` go.
    run_id : str
        Names this run's processes and lock (letters, digits, ``_``, ``-``).
    queue_packets : int or (int, int)
        Transmit queue of every link in packets, or ``(ISLs, GSLs)``.
    ipv6 : bool
        Keep IPv6 on in the nodes (off by default: see :data:`NO_IPV6_SYSCTLS`).

    Attributes
    ----------
    mininet : mininet.net.Mininet
        The Mininet object holding the nodes (for :class:`mininet.cli.CLI`), after build.
    plan : meshemu.live.addressing.AddressPlan
        Addresses and interface names, after build.
    """

    def __init__(self, names: Sequence[str], kinds: Sequence[str], shaper, run_dir: Path | str,
                 run_id: str, queue_packets: int | tuple[int, int] = 1000,
                 ipv6: bool = False):
        self.plan = adr.AddressPlan.from_links(names, kinds, np.zeros(0, dtype=np.int64))
        if not isinstance(run_id, str) or not run_id or not all(
                c.isalnum() or c in "_-" for c in run_id) or len(run_id) > 40:
            raise EmulationError(f"run_id must be 1..40 letters, digits, '_' or '-'; got "
                                 f"{run_id!r}")
        self.names = self.plan.names
        self.kinds = self.plan.kinds
        self.shaper = shaper
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        q = (queue_packets, queue_packets) if isinstance(queue_packets, int) else queue_packets
        if len(q) != 2 or not all(isinstance(x, int) and x >= 1 for x in q):
            raise EmulationError(f"queue_packets must be a positive integer or a pair (ISL, "
                                 f"GSL); got {queue_packets!r}")
        self.queue_packets = tuple(q)
        self.ipv6 = ipv6
        self.mininet: Mininet | None = None
        self.nodes: list[MeshNode] = []
        self._index = {n: i for i, n in enumerate(self.names)}
        self._netlink: list[nl.Netlink | None] = []
        self._inodes: set[int] = set()
        self._lock: Path | None = None
        self._started = False
        self._stopped = False
        self._tables = None
        self.timings: dict[str, float] = {}

    # -- queries -----------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.names)

    def node(self, name: str) -> MeshNode:
        """The Mininet node called ``name``."""
        return self.nodes[self._node_id(name)]

    def node_address(self, name: str) -> str:
        """The node address (on ``lo``) of node ``name``."""
        return adr.node_address(self._node_id(name))

    def _node_id(self, name: str) -> int:
        try:
            i = self._index[name]
        except KeyError:
            raise EmulationError(f"unknown node {name!r}; nodes are e.g. "
                                 f"{', '.join(self.names[:3])} ... {self.names[-1]}") from None
        if i >= len(self.nodes):
            raise EmulationError("the emulation is not built yet (call build first)")
        return i

    @property
    def pids(self) -> list[int]:
        """Shell pid of every node, by node id (each is in its node's namespace)."""
        return [n.pid for n in self.nodes]

    # -- build -------------------------------------------------------------------------------
    def build(self, link_keys: np.ndarray, first_snapshot: Snapshot, first_tables) -> None:
        """Create the nodes, every link of the run, the addresses and the first routes.

        Parameters
        ----------
        link_keys : ndarray of int64
            Sorted keys ``a * n + b`` of every link that is in any snapshot of the run; link
            id = index. Links not up in ``first_snapshot`` are created down.
        first_snapshot : Snapshot
        first_tables : ForwardingTables
            Routes to every destination in ``first_tables.destinations``.

        Raises
        ------
        NotRootError, ResourceError, EmulationError, CommandError
            On any failure everything created so far is removed before the error propagates.
        """
        if self._started or self._stopped:
            raise EmulationError("build() can run only once per Emulation; make a new one")
        require_root("building an emulation")
        n = self.n_nodes
        plan = adr.AddressPlan.from_links(self.names, self.kinds, link_keys)
        self._check_snapshot(first_snapshot)
        dests, nh = self._check_tables(first_tables)
        n_links = plan.n_links
        check_memory(n, n_links, n * len(dests))
        raise_nofile_limit(FD_FLOOR + 2 * n + 1024)
        ensure_ptys(n)
        self.plan = plan
        self._started = True
        t = {}
        t0 = time.perf_counter()
        try:
            self._lock = write_lock(self.run_id, self.run_dir, n)
            self._spawn_nodes()
            t["shells_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            self._setup_namespaces()
            t["netns_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            self._create_links(first_snapshot)
            t["links_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            self._configure_addresses()
            t["addresses_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            n_routes = self._install_full(dests, nh)
            t["routes_s"] = time.perf_counter() - t1
            self._tables = first_tables
            t1 = time.perf_counter()
            self._wait_links_running()
            t["carrier_s"] = time.perf_counter() - t1
            self._register_intfs()
            plan.write(self.run_dir)
        except BaseException:
            log.error("build of run %s failed; removing what was created", self.run_id)
            try:
                self.stop()
            except Exception as exc:  # the build error matters more
                log.error("teardown after the failed build: %s", exc)
            raise
        t["build_s"] = time.perf_counter() - t0
        self.timings.update(t)
        log.info("built %d nodes, %d links, %d routes in %.1f s (%s)", n, n_links, n_routes,
                 t["build_s"], ", ".join(f"{k} {v:.2f}" for k, v in t.items()))

    def _check_snapshot(self, snap: Snapshot) -> None:
        if snap.n_nodes != self.n_nodes:
            raise EmulationError(f"snapshot has {snap.n_nodes} nodes, the emulation "
                                 f"{self.n_nodes}")

    def _check_tables(self, tables) -> tuple[np.ndarray, np.ndarray]:
        dests = np.asarray(tables.destinations, dtype=np.int64)
        nh = np.asarray(tables.next_hop)
        if nh.ndim != 3 or nh.shape[0] != self.n_nodes or nh.shape[1] != dests.size:
            raise EmulationError(f"forwarding tables must have next_hop of shape (N={self.n_nodes}"
                                 f", D={dests.size}, K); got {nh.shape}")
        if dests.size and (dests.min() < 0 or dests.max() >= self.n_nodes):
            raise EmulationError(f"destinations must be node ids in 0..{self.n_nodes - 1}")
        return dests, nh

    def _spawn_nodes(self) -> None:
        self.mininet = Mininet(topo=None, build=False, controller=None, host=MeshNode,
                               inNamespace=False, autoSetMacs=False)
        for i, name in enumerate(self.names):
            node = self.mininet.addHost(name, cls=MeshNode, run_id=self.run_id,
                                        ip=f"{adr.node_address(i)}/32", inNamespace=True)
            self.nodes.append(node)
        _await_prompts(self.nodes, "start", SHELL_TIMEOUT_S)
        for node in self.nodes:
            node.waiting = False
            node.readbuf = ""

    def _setup_namespaces(self) -> None:
        own = os.stat("/proc/self/ns/net").st_ino
        sysctls = dict(NODE_SYSCTLS)
        if not self.ipv6:
            sysctls.update(NO_IPV6_SYSCTLS)
        names = self.names

        def setup(i: int, pid: int) -> tuple[int, nl.Netlink]:
            ino = os.stat("/proc/thread-self/ns/net").st_ino
            if ino == own:
                raise EmulationError(f"node {names[i]} (pid {pid}) is not in a network "
                                     f"namespace of its own")
            nl.write_sysctls(sysctls)
            return ino, nl.Netlink(names[i])

        self._netlink = [None] * self.n_nodes
        res = nl.in_namespaces(self.pids, setup)
        self._netlink = [r[1] for r in res]
        self._inodes = {r[0] for r in res}

    def _create_links(self, snap: Snapshot) -> None:
        from meshemu.live.shapers import LinkEnds
        plan = self.plan
        n_links = plan.n_links
        ids = self._snapshot_link_ids(snap)
        self._up = np.zeros(n_links, dtype=bool)
        self._delay = np.zeros(n_links)
        self._rate = np.zeros(n_links)
        self._up[ids] = snap.up
        self._delay[ids] = snap.delay_s
        self._rate[ids] = snap.rate_bps
        pids = self.pids
        names = plan.ifnames()
        a, b = plan.a.tolist(), plan.b.tolist()
        links = [(LinkEnds(k, pids[a[k]], names[k], pids[b[k]], names[k]),
                  self._params(k)) for k in range(n_links)]
        if links:
            self.shaper.create_links(links)

    def _params(self, k: int):
        from meshemu.live.shapers import LinkParams
        queue = self.queue_packets[0] if self.plan.isl[k] else self.queue_packets[1]
        return LinkParams(float(self._delay[k]), float(self._rate[k]), queue, 0.0,
                          bool(self._up[k]))

    def _snapshot_link_ids(self, snap: Snapshot) -> np.ndarray:
        keys = snap.key
        ids = np.searchsorted(self.plan.link_keys, keys)
        ok = ids < self.plan.n_links
        ok[ok] = self.plan.link_keys[ids[ok]] == keys[ok]
        if not ok.all():
            bad = keys[~ok][:5]
            pairs = [(self.names[k // self.n_nodes], self.names[k % self.n_nodes]) for k in bad]
            raise EmulationError(f"snapshot at t={snap.t_s} s has links that were not built "
                                 f"(link_keys must hold every link of the run): {pairs}")
        return ids

    def _configure_addresses(self) -> None:
        """Address ``lo`` and every link interface, then make each link's peer a permanent
        neighbour (no ARP through the shapers: the first packet over a link that comes up
        does not wait an extra round trip, as on a real laser link)."""
        plan = self.plan
        n, n_links = self.n_nodes, plan.n_links
        ends = np.concatenate([plan.a, plan.b]).astype(np.int64)
        side = np.concatenate([np.zeros(n_links, np.int8), np.ones(n_links, np.int8)])
        lid = np.concatenate([np.arange(n_links), np.arange(n_links)])
        order = np.argsort(ends, kind="stable")
        bounds = np.searchsorted(ends[order], np.arange(n + 1))
        names = plan.ifnames()
        self._ifindex = np.zeros((n_links, 2), dtype=np.int32)
        macs: list[list[bytes]] = [[b"", b""] for _ in range(n_links)]
        node_addr = plan.node_addr
        ifindex = self._ifindex
        socks = self._netlink
        node_names = self.names

        def check(i: int, errors: list, what: str) -> None:
            if errors:
                _, err, text = errors[0]
                raise EmulationError(f"{what} in node {node_names[i]} failed: "
                                     f"{os.strerror(err)}{': ' + text if text else ''}")

        def configure(i: int, pid: int) -> None:
            sel = order[bounds[i]:bounds[i + 1]]
            msgs = [nl.link_up_msg(1, 0), nl.addr_msg(1, int(node_addr[i]), 32, 0)]
            with nl.socket.socket(nl.socket.AF_INET, nl.socket.SOCK_DGRAM) as s:
                for k, sd in zip(lid[sel].tolist(), side[sel].tolist()):
                    try:
                        idx = nl.socket.if_nametoindex(names[k])
                        macs[k][sd] = nl.if_hwaddr(s, names[k])
                    except OSError:
                        raise EmulationError(f"interface {names[k]} of link {k} is missing in "
                                             f"node {node_names[i]}; the shaper did not "
                                             f"create it") from None
                    ifindex[k, sd] = idx
                    msgs.append(nl.addr_msg(idx, int(adr.link_address_int(k, sd)),
                                            adr.LINK_PREFIXLEN, 0))
                    msgs.append(nl.link_up_msg(idx, 0))
            check(i, socks[i].send_batch(nl.pack_messages(msgs)), "configuring addresses")

        nl.in_namespaces(self.pids, configure)
        for i in range(n):
            sel = order[bounds[i]:bounds[i + 1]]
            msgs = [nl.neigh_msg(int(ifindex[k, sd]), int(adr.link_address_int(k, 1 - sd)),
                                 macs[k][1 - sd], 0)
                    for k, sd in zip(lid[sel].tolist(), side[sel].tolist())]
            check(i, socks[i].send_batch(nl.pack_messages(msgs)), "adding neighbours")

    def _wait_links_running(self, timeout_s: float = LINKS_RUNNING_TIMEOUT_S) -> None:
        """Wait until every interface is operationally up (see
        :func:`meshemu.linux.netns.links_not_running`), so that traffic started right after
        ``build`` is not dropped by interfaces the kernel has not activated yet."""
        deadline = time.monotonic() + timeout_s
        pending = list(range(self.n_nodes))
        while True:
            res = nl.in_namespaces([self.pids[i] for i in pending],
                                   lambda i, pid: nl.links_not_running(), threads=4)
            still = [(pending[j], r) for j, r in enumerate(res) if r]
            if not still:
                return
            if time.monotonic() > deadline:
                i, names = still[0]
                raise EmulationError(f"{len(still)} node(s) still have interfaces that are "
                                     f"not running {timeout_s:.0f} s after they were brought "
                                     f"up, e.g. {self.names[i]}: {', '.join(names[:4])}")
            pending = [i for i, _ in still]
            time.sleep(0.05)

    # -- routes ------------------------------------------------------------------------------
    def _install_full(self, dests: np.ndarray, nh: np.ndarray, block: int = 128) -> int:
        """Install every route of ``nh``, a block of nodes at a time (bounded memory)."""
        n = self.n_nodes
        total = 0
        for u0 in range(0, n, block):
            u1 = min(n, u0 + block)
            hops = nh[u0:u1]
            k = hops.shape[2]
            uu = np.repeat(np.arange(u0, u1, dtype=np.int64), dests.size)
            dd = np.tile(dests, u1 - u0)
            flat = hops.reshape(-1, k)
            keep = (flat[:, 0] >= 0) & (uu != dd)
            total += self._route_ops(uu[keep], dd[keep], flat[keep])
        return total

    def _route_ops(self, u: np.ndarray, d: np.ndarray, hops: np.ndarray) -> int:
        """Make node ``u[m]``'s route to node ``d[m]`` use next hops ``hops[m]`` (-1 padded;
        all -1: no route). Rows must be sorted by ``u``. Returns the number of rows."""
        m = u.size
        if m == 0:
            return 0
        n = self.n_nodes
        plan = self.plan
        prim = hops[:, 0].astype(np.int64)
        delete = prim < 0
        multi = ~delete & (hops[:, 1] >= 0) if hops.shape[1] > 1 else np.zeros(m, bool)
        single = ~delete & ~multi
        seq = np.arange(m, dtype=np.uint32)
        dst_addr = adr.node_address_int(d.astype(np.int64)).astype(np.uint32)
        src_addr = plan.node_addr[u]

        def hop_fields(rows: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            uu = u[rows]
            if np.any((v < 0) | (v >= n) | (v == uu)):
                r = rows[(v < 0) | (v >= n) | (v == uu)][0]
                raise EmulationError(f"forwarding table: node {self.names[u[r]]} has next hop "
                                     f"{hops[r].tolist()} to {self.names[d[r]]}")
            key = np.minimum(uu, v) * n + np.maximum(uu, v)
            k = np.searchsorted(plan.link_keys, key)
            k = np.minimum(k, max(plan.n_links - 1, 0))
            bad = (plan.link_keys[k] != key) if plan.n_links else np.ones(k.size, bool)
            if np.any(bad):
                r = rows[bad][0]
                vv = v[bad][0]
                raise EmulationError(f"forwarding table: node {self.names[u[r]]} forwards to "
                                     f"{self.names[d[r]]} via {self.names[vv]}, but there is no "
                                     f"link {self.names[u[r]]}-{self.names[vv]} in link_keys")
            s_u = (uu > v).astype(np.int64)   # 0: u is end a
            gw = adr.link_address_int(k, 1 - s_u).astype(np.uint32)
            oif = self._ifindex[k, s_u]
            return gw, oif

        per_node: dict[int, list] = {}
        rows = np.flatnonzero(single)
        if rows.size:
            gw, oif = hop_fields(rows, prim[rows])
            rec = nl.route_records(dst_addr[rows], gw, oif, src_addr[rows], seq[rows])
            self._split(per_node, u[rows], rec)
        rows = np.flatnonzero(delete)
        if rows.size:
            rec = nl.delroute_records(dst_addr[rows], seq[rows])
            self._split(per_node, u[rows], rec)
        rows = np.flatnonzero(multi)
        if rows.size:
            kk = hops.shape[1]
            # per column j: the j-th next hop (or the primary where there is none)
            fields = [hop_fields(rows, np.where(hops[rows, j] >= 0, hops[rows, j],
                                                hops[rows, 0]).astype(np.int64))
                      for j in range(kk)]
            msgs: dict[int, list[bytes]] = {}
            for i, r in enumerate(rows.tolist()):
                nh_list: list[tuple[int, int]] = []
                for j in range(kk):
                    pair = (int(fields[j][0][i]), int(fields[j][1][i]))
                    if hops[r, j] >= 0 and pair not in nh_list:
                        nh_list.append(pair)
                msgs.setdefault(int(u[r]), []).append(
                    nl.multipath_route_msg(int(dst_addr[r]), nh_list, int(src_addr[r]), r))
            for node, ms in msgs.items():
                per_node.setdefault(node, []).extend(nl.pack_messages(ms))

        failures = []
        for node, chunks in per_node.items():
            for s, err, text in self._netlink[node].send_batch(chunks, ignore=(errno.ESRCH,)):
                failures.append((node, s, err, text))
        if failures:
            lines = []
            for node, s, err, text in failures[:5]:
                op = "delete" if delete[s] else "replace"
                lines.append(f"{self.names[node]}: {op} route to {self.names[d[s]]} "
                             f"({adr.int_to_ip(dst_addr[s])}) via {hops[s].tolist()}: "
                             f"{os.strerror(err)}{' (' + text + ')' if text else ''}")
            raise EmulationError(f"{len(failures)} route change(s) failed, e.g.:\n  "
                                 + "\n  ".join(lines))
        return m

    @staticmethod
    def _split(per_node: dict[int, list], u: np.ndarray, rec: np.ndarray) -> None:
        """Append each node's records (``u`` sorted) to ``per_node`` as send-sized chunks."""
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        ends = np.r_[starts[1:], u.size]
        buf = rec.tobytes()
        size = rec.itemsize
        for s, e in zip(starts.tolist(), ends.tolist()):
            per_node.setdefault(int(u[s]), []).extend(
                nl.chunked(memoryview(buf)[s * size:e * size], size))

    def _register_intfs(self) -> None:
        """Give Mininet an Intf object per interface (``lo`` with the node address first)."""
        plan = self.plan
        names = plan.ifnames()
        ports = [1] * self.n_nodes
        for i, node in enumerate(self.nodes):
            MeshIntf("lo", node, 0, adr.int_to_ip(plan.node_addr[i]), 32)
        for k in range(plan.n_links):
            for s, u in ((0, int(plan.a[k])), (1, int(plan.b[k]))):
                MeshIntf(names[k], self.nodes[u], ports[u],
                         adr.int_to_ip(adr.link_address_int(k, s)), adr.LINK_PREFIXLEN, k)
                ports[u] += 1

    # -- steps -------------------------------------------------------------------------------
    def apply(self, snapshot: Snapshot, tables) -> StepStats:
        """Bring the network to ``snapshot`` and ``tables``, changing only what differs.

        Link parameters (a delay change above :data:`DELAY_TOLERANCE_S`, any rate change,
        up/down) go to the shaper in one ``update`` call; a link that is down gets no delay
        updates until it comes up. Routes change per :func:`meshemu.routing.route_diff`,
        in one netlink batch per node that has changes.

        Returns
        -------
        StepStats
        """
        from meshemu.routing import route_diff
        if not self._started or self._stopped:
            raise EmulationError("apply() needs a built, running emulation")
        t0 = time.perf_counter()
        self._check_snapshot(snapshot)
        self._check_tables(tables)
        ids = self._snapshot_link_ids(snapshot)
        up = np.zeros_like(self._up)
        up[ids] = snapshot.up
        delay = self._delay.copy()
        delay[ids] = snapshot.delay_s
        rate = self._rate.copy()
        rate[ids] = snapshot.rate_bps
        with np.errstate(invalid="ignore"):
            d_rate = ~(np.abs(rate - self._rate) <= RATE_TOLERANCE * np.maximum(self._rate, 1.0))
            d_rate &= ~((rate == self._rate) | (np.isinf(rate) & np.isinf(self._rate)))
        changed = np.flatnonzero((up != self._up) | (up & (
            (np.abs(delay - self._delay) > DELAY_TOLERANCE_S) | d_rate)))
        self._up[changed] = up[changed]
        self._delay[changed] = delay[changed]
        self._rate[changed] = rate[changed]
        updates = [(k, self._params(k)) for k in changed.tolist()]
        if updates:
            self.shaper.update(updates)
        diff = route_diff(self._tables, tables)
        dests = np.asarray(tables.destinations, dtype=np.int64)
        nodes = np.asarray(diff.nodes, dtype=np.int64)
        order = np.argsort(nodes, kind="stable")
        u = nodes[order]
        d = dests[np.asarray(diff.dest_index)[order]]
        hops = np.asarray(diff.new)[order]
        keep = u != d
        n_routes = self._route_ops(u[keep], d[keep], hops[keep])
        self._tables = tables
        st = StepStats(float(snapshot.t_s), len(updates), int(n_routes),
                       time.perf_counter() - t0)
        log.debug("step t=%.1f s: %d link updates, %d route changes, %.1f ms", st.t_s,
                  st.n_link_updates, st.n_route_changes, st.apply_s * 1e3)
        return st

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Tear everything down: the shaper's links and processes, every process in the
        nodes' namespaces (so the namespaces go too), the ptys, sockets and the run lock.

        Idempotent; never interrupted by SIGINT/SIGTERM (they take effect when it returns).

        Raises
        ------
        EmulationError
            Something could not be removed (after trying everything else); run
            ``meshemu clean``.
        """
        if self._stopped:
            return
        self._stopped = True
        errors: list[BaseException] = []
        t0 = time.perf_counter()
        with signals_deferred():
            try:
                self.shaper.close()
            except Exception as exc:
                errors.append(exc)
            for node in self.nodes:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(node.pid, signal.SIGKILL)
            if self._inodes:
                try:
                    stray = nl.pids_in_netns(self._inodes)
                    if stray:
                        nl.kill_and_wait(stray)
                except Exception as exc:
                    errors.append(exc)
            for node in self.nodes:
                if node.shell is not None and node.shell.wait(timeout=5) is None:
                    errors.append(EmulationError(f"shell of node {node.name} (pid {node.pid}) "
                                                 f"did not die"))
                node.cleanup()
            for sock in self._netlink:
                if sock is not None:
                    sock.close()
            self._netlink = []
            if self._lock is not None:
                self._lock.unlink(missing_ok=True)
                self._lock = None
        self.timings["stop_s"] = time.perf_counter() - t0
        log.info("stopped run %s in %.2f s", self.run_id, self.timings["stop_s"])
        if errors:
            raise EmulationError(f"teardown of run {self.run_id} is incomplete ({errors[0]}); "
                                 f"run `meshemu clean`") from errors[0]

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The live network: one Mininet node per scenario node, shaped links, kernel routes.

:class:`Emulation` turns snapshots (:class:`meshemu.geometry.linkstate.Snapshot`) and forwarding
tables (:class:`meshemu.routing.ForwardingTables`) into a running network::

    emu = Emulation(names, kinds, shaper, run_dir, run_id)
    emu.build(RunLinks.from_snapshots(snapshots), snapshots[0], first_tables)
    stats = emu.apply(snapshot, tables)                   # each step: only what changed
    CLI(emu.mininet)                                      # `sat0 ping gs1` works
    emu.stop()                                            # fast, complete, idempotent

It is assembled from one room per concern, each in its own module of :mod:`meshemu.live`:

* :mod:`~meshemu.live.nodes`: the Mininet nodes (:class:`MeshNode`, a
  :class:`mininet.node.Host`, in a :class:`mininet.net.Mininet` built with ``topo=None``, so
  Mininet's CLI and ``node.cmd`` work); every shell is spawned first and all prompts are
  awaited in one ``poll`` loop (vanilla Mininet needs 55 s to build and 94 s to stop 1,584
  nodes, ``shared/PLATFORM.md``);
* :mod:`~meshemu.live.links`: the link table, every link's parameters as one record taken
  from the snapshots only;
* :mod:`~meshemu.live.routes`: the route installer (``N x N`` routes as numpy records sent
  thousands per ``sendmsg``; per step one netlink batch per node that has changes);
* :mod:`~meshemu.live.lock`: the run lock and the markers ``meshemu clean`` looks for;
* :mod:`~meshemu.live.resources`: memory, open files and ptys, refused before anything is
  built.

Nodes are configured (sysctls, ``lo``, addresses, neighbours) from threads that ``setns``
into each namespace and over one persistent rtnetlink socket per node
(:mod:`meshemu.linux.netns`), never with a shell round trip per command. ``stop()`` closes
the shaper and SIGKILLs every process in the nodes' namespaces (the kernel then frees the
namespaces and their interfaces by itself). Addresses and interface names follow
:mod:`meshemu.live.addressing`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mininet.net import Mininet

# mininet.log makes every logger created after it a MininetLogger with its own handler at
# level OUTPUT (25): meshemu's info messages would vanish and its warnings print twice
logging.setLoggerClass(logging.Logger)

from meshemu.errors import EmulationError  # noqa: E402
from meshemu.geometry.linkstate import Snapshot  # noqa: E402
from meshemu.linux import ifaces, netlink, procs  # noqa: E402
from meshemu.linux import netns as nl  # noqa: E402
from meshemu.linux.limits import mem_available_bytes, require_root  # noqa: E402
from meshemu.live import addressing as adr  # noqa: E402
from meshemu.live.links import DELAY_TOLERANCE_S, RATE_TOLERANCE, LinkTable, RunLinks  # noqa: E402
from meshemu.live.lock import (  # noqa: E402
    ENV_MARKER,
    LOCK_DIR,
    RUN_MARKER,
    lock_is_live,
    lock_path,
    read_lock,
    write_lock,
)
from meshemu.live.nodes import (  # noqa: E402
    MeshIntf,
    MeshNode,
    await_namespaces,
    start_shells,
)
from meshemu.live.resources import (  # noqa: E402
    LINK_BYTES,
    MEMORY_HEADROOM,
    NODE_BYTES,
    ROUTE_BYTES,
    check_capacity,
    check_memory,
    estimate_memory_bytes,
    reserve_descriptors,
)
from meshemu.live.routes import AGGREGATE_FROM_NODES, RouteInstaller, check_tables  # noqa: E402
from meshemu.routing import RouteDiff, route_diff  # noqa: E402
from meshemu.signals import handle_signals, signals_deferred  # noqa: E402

__all__ = [
    "Emulation",
    "StepStats",
    "RunLinks",
    "MeshNode",
    "MeshIntf",
    "LOCK_DIR",
    "RUN_MARKER",
    "ENV_MARKER",
    "lock_path",
    "write_lock",
    "read_lock",
    "lock_is_live",
    "DELAY_TOLERANCE_S",
    "RATE_TOLERANCE",
    "NODE_BYTES",
    "LINK_BYTES",
    "ROUTE_BYTES",
    "MEMORY_HEADROOM",
    "estimate_memory_bytes",
    "check_memory",
    "check_capacity",
    "handle_signals",
    "signals_deferred",
]

log = logging.getLogger(__name__)

#: Seconds ``build`` waits at most for the kernel to activate every interface.
LINKS_RUNNING_TIMEOUT_S = 30.0
#: Seconds to wait for all nodes' namespaces (their holders: :class:`MeshNode`).
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


@dataclass(frozen=True)
class StepStats:
    """What one :meth:`Emulation.apply` did.

    Attributes
    ----------
    t_s : float
        The snapshot's time.
    n_link_updates : int
        Links whose parameters (delay, rate, queue, loss, up/down) were pushed to the shaper.
    n_route_changes : int
        ``(node, destination)`` routes replaced, added or removed in the kernels.
    apply_s : float
        Wall time of the whole apply.
    route_diff : RouteDiff
        :func:`meshemu.routing.route_diff` of the previous tables and these, computed once
        here: ``len(route_diff)`` is the plan's count of route changes for the step
        (what :class:`meshemu.plan.PlanRecorder` counts), so callers need not diff again.
    n_links_went_up, n_links_went_down : int
        Links that came up and that went down (a link absent from the snapshot is down).
    links_s, routes_s : float
        Wall time of the shaper update and of the route changes.
    """

    t_s: float
    n_link_updates: int
    n_route_changes: int
    apply_s: float
    route_diff: RouteDiff
    n_links_went_up: int = 0
    n_links_went_down: int = 0
    links_s: float = 0.0
    routes_s: float = 0.0

    @property
    def n_route_entries(self) -> int:
        """Changed forwarding-table entries (``len(route_diff)``)."""
        return len(self.route_diff)


class Emulation:
    """A live emulated network.

    Parameters
    ----------
    names : sequence of str
        Node names by node id (Mininet node names; ``sat ping gs`` uses them).
    kinds : sequence of str
        Node kinds (:data:`meshemu.live.addressing.NODE_KINDS`), for the addressing plan.
    shaper : meshemu.live.shapers.LinkShaper
        Creates and shapes the links; closed by :meth:`stop`.
    run_dir : path
        Where ``addressing.csv`` and ``addressing.json`` go.
    run_id : str
        Names this run's processes and lock (letters, digits, ``_``, ``-``).
    ipv6 : bool
        Keep IPv6 on in the nodes (off by default: see :data:`NO_IPV6_SYSCTLS`).
    daemons : meshemu.routing.daemons.DaemonScheme, optional
        Route with daemons in the nodes instead of installing routes
        (:mod:`meshemu.live.daemons`); ``tables`` then only feed the step statistics.
    detect : str
        With daemons, how a link that goes down shows itself: ``carrier`` (the interface
        goes down at both ends) or ``silent`` (frames are dropped).
    local : sequence of bool, optional
        Per node id: built on this host. Default: every node. With a subset (one host's
        share of a run over several hosts, :mod:`meshemu.live.cluster`), only those nodes,
        their links to each other and their ends of the links in ``cut`` are built here;
        addresses, interface names and link ids stay those of the whole run.
    cut : dict of int to CutLink, optional
        The links to nodes on other hosts (:mod:`meshemu.live.tunnels`), by link id.

    Attributes
    ----------
    mininet : mininet.net.Mininet
        The Mininet object holding the nodes (for :class:`mininet.cli.CLI`), after build.
    plan : meshemu.live.addressing.AddressPlan
        Addresses and interface names, after build.
    links : meshemu.live.links.LinkTable
        Every link's current parameters, after build.
    timings : dict of str to float
        Seconds spent in the parts of :meth:`build` and in :meth:`stop`.
    memory : dict of str to int
        Bytes of system memory (MemTotal - MemAvailable, so the kernel's share included)
        that each part of :meth:`build` added: what the shells, namespaces, links, addresses
        and routes cost (system-wide, so other processes' changes show too).
    """

    def __init__(
        self,
        names: Sequence[str],
        kinds: Sequence[str],
        shaper: Any,
        run_dir: Path | str,
        run_id: str,
        ipv6: bool = False,
        daemons: Any = None,
        detect: str = "carrier",
        delay_tolerance_s: float = DELAY_TOLERANCE_S,
        route_aggregation: bool | None = None,
        local: Sequence[bool] | np.ndarray | None = None,
        cut: dict[int, Any] | None = None,
    ) -> None:
        self.plan = adr.AddressPlan.from_links(names, kinds, np.zeros(0, dtype=np.int64))
        if (
            not isinstance(run_id, str)
            or not run_id
            or not all(c.isalnum() or c in "_-" for c in run_id)
            or len(run_id) > 40
        ):
            raise EmulationError(
                f"run_id must be 1..40 letters, digits, '_' or '-'; got {run_id!r}"
            )
        self.names = self.plan.names
        self.kinds = self.plan.kinds
        self.shaper = shaper
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.ipv6 = ipv6
        self.mininet: Mininet | None = None
        self.nodes: list[MeshNode] = []
        self.links: LinkTable | None = None
        self.routes: RouteInstaller | None = None
        self._index = {n: i for i, n in enumerate(self.names)}
        self._netlink: list[netlink.Netlink | None] = []
        self._inodes: set[int] = set()
        self._lock: Path | None = None
        self._started = False
        self._stopped = False
        self._tables: Any = None
        self.timings: dict[str, float] = {}
        self.memory: dict[str, int] = {}
        self.daemons = daemons
        self.detect = detect
        self.delay_tolerance_s = delay_tolerance_s
        #: Aggregate prefixes at the build (None: from AGGREGATE_FROM_NODES nodes).
        self.route_aggregation = (
            len(self.names) >= AGGREGATE_FROM_NODES
            if route_aggregation is None
            else route_aggregation
        )
        self.daemon_runner: Any = None
        self._ifindex: np.ndarray | None = None
        n = len(self.names)
        self.local = np.ones(n, bool) if local is None else np.asarray(local, dtype=bool)
        if self.local.shape != (n,):
            raise EmulationError(f"local must have one flag per node ({n}); got {self.local.shape}")
        if local is not None and daemons is not None:
            raise EmulationError("daemon routing over several hosts is not supported yet")
        self.local_ids = np.flatnonzero(self.local)
        self._slot = np.full(n, -1, np.int64)
        self._slot[self.local_ids] = np.arange(self.local_ids.size)
        self.cut: dict[int, Any] = dict(cut or {})
        #: Per link: shaped by this host's shaper (both ends here, or a cut link shaped here).
        self._shaped = np.zeros(0, bool)
        #: Per link: seconds taken off the delay the shaper adds (a cut link's substrate).
        self._offset = np.zeros(0)

    # -- queries -----------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.names)

    def node(self, name: str) -> MeshNode:
        """The Mininet node called ``name``."""
        i = self._node_id(name)
        if self._slot[i] < 0:
            raise EmulationError(f"node {name} is on another host")
        return self.nodes[self._slot[i]]

    def node_address(self, name: str) -> str:
        """The node address (on ``lo``) of node ``name``."""
        return adr.node_address(self._node_id(name))

    def _node_id(self, name: str) -> int:
        try:
            i = self._index[name]
        except KeyError:
            raise EmulationError(
                f"unknown node {name!r}; nodes are e.g. "
                f"{', '.join(self.names[:3])} ... {self.names[-1]}"
            ) from None
        if self.local[i] and self._slot[i] >= len(self.nodes):
            raise EmulationError("the emulation is not built yet (call build first)")
        return i

    @property
    def pids(self) -> list[int]:
        """Pid of every node built here (its namespace holder: :class:`MeshNode`), in node
        id order (each in its node's namespace)."""
        return [n.pid for n in self.nodes]

    def start_shells(self, names: Sequence[str] | None = None) -> None:
        """Start the bash of the named nodes (default: every node built here) at once.

        A node's shell otherwise starts when it is first used (``node.cmd``), one at a time;
        this is for code about to use many (each costs about 220 KiB).
        """
        nodes = self.nodes if names is None else [self.node(n) for n in names]
        start_shells(nodes)

    # -- build -------------------------------------------------------------------------------
    def build(
        self,
        links: RunLinks | np.ndarray,
        first_snapshot: Snapshot,
        first_tables: Any,
        *,
        quiet: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    ) -> None:
        """Create the nodes, every link of the run, the addresses and the first routes.

        Parameters
        ----------
        links : RunLinks or ndarray of int64
            Every link that is in any snapshot of the run, with its kind
            (:meth:`RunLinks.from_snapshots`); link id = index. Links not up in
            ``first_snapshot`` are created down. A plain array of sorted link keys
            ``a * n + b`` is accepted when every one of them is in ``first_snapshot`` (whose
            ``kind`` then says which are ISLs).
        first_snapshot : Snapshot
        first_tables : ForwardingTables
            Routes to every destination in ``first_tables.destinations``.
        quiet : callable returning a context manager, optional
            Entered around the spawning of the node shells, the phase that other work on
            the machine slows most: ``meshemu run`` stops its route processes there
            (:meth:`~meshemu.live.feed.RouteFeed.paused`).

        Raises
        ------
        NotRootError, ResourceError, EmulationError, CommandError
            On any failure everything created so far is removed before the error propagates.
        """
        if self._started or self._stopped:
            raise EmulationError("build() can run only once per Emulation; make a new one")
        require_root("building an emulation")
        n = self.n_nodes
        run_links = self._run_links(links, first_snapshot)
        plan = adr.AddressPlan.from_links(self.names, self.kinds, run_links.key, isl=run_links.isl)
        table = LinkTable(run_links, self.names, self.delay_tolerance_s)
        table.load(first_snapshot)
        dests, nh = check_tables(first_tables, n)
        here = self.local[plan.a] | self.local[plan.b]
        n_here = int(self.local_ids.size)
        check_memory(n_here, int(here.sum()), n_here * len(dests))
        reserve_descriptors(n)
        self.plan, self.links = plan, table
        self._started = True
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            self._lock = write_lock(self.run_id, self.run_dir, n)

            def spawn() -> None:
                with quiet() if quiet is not None else contextlib.nullcontext():
                    self._spawn_nodes()

            steps = (
                ("shells_s", spawn),
                ("netns_s", self._setup_namespaces),
                ("links_s", lambda: self._create_links(table)),
                ("addresses_s", lambda: self._configure_addresses(plan)),
            )
            avail = mem_available_bytes()
            for name, fn in steps:
                t1 = time.perf_counter()
                fn()
                t[name] = time.perf_counter() - t1
                avail, self.memory[name.replace("_s", "_bytes")] = _mem_step(avail)
            t1 = time.perf_counter()
            routes = self._routes()
            n_routes = routes.install_full(dests, nh) if self.daemons is None else 0
            t["routes_s"] = time.perf_counter() - t1
            avail, self.memory["routes_bytes"] = _mem_step(avail)
            self._tables = first_tables
            t1 = time.perf_counter()
            self._wait_links_running()
            t["carrier_s"] = time.perf_counter() - t1
            self._register_intfs()
            plan.write(self.run_dir)
            if self.daemons is not None:
                t1 = time.perf_counter()
                self._start_daemons(table)
                t["daemons_s"] = time.perf_counter() - t1
        except BaseException:
            log.error("build of run %s failed; removing what was created", self.run_id)
            try:
                self.stop()
            except Exception as exc:  # the build error matters more
                log.error("teardown after the failed build: %s", exc)
            raise
        t["build_s"] = time.perf_counter() - t0
        self.timings.update(t)
        log.info(
            "built %d nodes, %d links, %d routes in %.1f s (%s)",
            n,
            plan.n_links,
            n_routes,
            t["build_s"],
            ", ".join(f"{k} {v:.2f}" for k, v in t.items()),
        )

    def _run_links(self, links: RunLinks | np.ndarray, first: Snapshot) -> RunLinks:
        """``links`` as :class:`RunLinks` (a key array takes its kinds from ``first``)."""
        if first.n_nodes != self.n_nodes:
            raise EmulationError(
                f"snapshot has {first.n_nodes} nodes, the emulation {self.n_nodes}"
            )
        if isinstance(links, RunLinks):
            if links.n_nodes != self.n_nodes:
                raise EmulationError(
                    f"links are for {links.n_nodes} nodes, the emulation has {self.n_nodes}"
                )
            return links
        keys = np.asarray(links, dtype=np.int64)
        snap_keys = first.key
        at = np.searchsorted(snap_keys, keys)
        ok = at < snap_keys.size
        ok[ok] = snap_keys[at[ok]] == keys[ok]
        if not ok.all():
            raise EmulationError(
                f"{int((~ok).sum())} of the link keys are not in the first snapshot, so their "
                f"kind (ISL/GSL) is unknown; pass RunLinks.from_snapshots(snapshots) instead "
                f"of the keys"
            )
        return RunLinks(self.n_nodes, keys, np.asarray(first.kind, dtype=np.int8)[at])

    def _spawn_nodes(self) -> None:
        self.mininet = Mininet(
            topo=None,
            build=False,
            controller=None,
            host=MeshNode,
            inNamespace=False,
            autoSetMacs=False,
        )
        for i in self.local_ids.tolist():
            name = self.names[i]
            node = self.mininet.addHost(
                name,
                cls=MeshNode,
                run_id=self.run_id,
                ip=f"{adr.node_address(i)}/32",
                inNamespace=True,
            )
            self.nodes.append(node)
        await_namespaces(self.nodes, SHELL_TIMEOUT_S)

    def _setup_namespaces(self) -> None:
        own = os.stat("/proc/self/ns/net").st_ino
        sysctls: dict[str, str | int] = dict(NODE_SYSCTLS)
        if not self.ipv6:
            sysctls.update(NO_IPV6_SYSCTLS)
        names = [self.names[i] for i in self.local_ids.tolist()]

        proc = nl.ProcSys()

        def setup(i: int, pid: int) -> tuple[int, netlink.Netlink]:
            ino = os.stat("/proc/thread-self/ns/net").st_ino
            if ino == own:
                raise EmulationError(
                    f"node {names[i]} (pid {pid}) is not in a network namespace of its own"
                )
            proc.write(sysctls)
            return ino, netlink.Netlink(names[i])

        self._netlink = [None] * self.n_nodes
        # (two threads: the lookups run in parallel; the few writes that need the RTNL
        # lock, ip_forward and disable_ipv6, retry until the other thread has released it)
        with proc:
            res = nl.in_namespaces(self.pids, setup, threads=2)
        for i, r in zip(self.local_ids.tolist(), res):
            self._netlink[i] = r[1]
        self._inodes = {r[0] for r in res}

    def _create_links(self, table: LinkTable) -> None:
        from meshemu.live.shapers import LinkEnds

        plan, local = self.plan, self.local
        both = local[plan.a] & local[plan.b]
        self._shaped = both.copy()
        self._offset = np.zeros(plan.n_links)
        for k, c in self.cut.items():
            self._shaped[k] = c.shaped_here
            self._offset[k] = c.offset_s
        params = self._shaper_params(np.arange(plan.n_links))
        pids = np.zeros(self.n_nodes, np.int64)
        pids[self.local_ids] = self.pids
        names = plan.ifnames()
        a, b = plan.a.tolist(), plan.b.tolist()
        links = [
            (LinkEnds(k, int(pids[a[k]]), names[k], int(pids[b[k]]), names[k]), params[k])
            for k in np.flatnonzero(both).tolist()
        ]
        if links:
            self.shaper.create_links(links)
        if self.cut:
            self._create_cut_links(params, pids, names)

    def _create_cut_links(self, params: list, pids: np.ndarray, names: list[str]) -> None:
        """This host's ends of the links to other hosts (:mod:`meshemu.live.tunnels`)."""
        from meshemu.linux import commands
        from meshemu.live.tunnels import plain_end_cmds

        plan = self.plan
        shaped, plain = [], []
        for k, c in sorted(self.cut.items()):
            u = int(plan.a[k]) if c.side == "a" else int(plan.b[k])
            if not self.local[u]:
                raise EmulationError(f"cut link {k}: its {c.side} end is not on this host")
            if c.shaped_here:
                shaped.append((int(pids[u]), names[k], c, params[k]))
            else:
                plain += plain_end_cmds(c, int(pids[u]), names[k])
        if shaped:
            self.shaper.create_cut_links(shaped)
        commands.batch("ip", plain)

    def _shaper_params(self, ids: np.ndarray) -> list:
        """The shaper's parameters of links ``ids``: the table's, less a cut link's
        substrate latency (never below 0)."""
        params = self.links.params_of(ids) if self.links is not None else []
        if self._offset.size and np.any(self._offset[ids] > 0):
            import dataclasses

            off = self._offset[ids].tolist()
            params = [
                dataclasses.replace(p, delay_s=max(0.0, p.delay_s - o)) if o > 0 else p
                for p, o in zip(params, off)
            ]
        return params

    def _configure_addresses(self, plan: adr.AddressPlan) -> None:
        """Address ``lo`` and every link interface, then make each link's peer a permanent
        neighbour (no ARP through the shapers: the first packet over a link that comes up
        does not wait an extra round trip, as on a real laser link). Makes the route
        installer, which needs the interface indices."""
        n, n_links = self.n_nodes, plan.n_links
        ends = np.concatenate([plan.a, plan.b]).astype(np.int64)
        side = np.concatenate([np.zeros(n_links, np.int8), np.ones(n_links, np.int8)])
        lid = np.concatenate([np.arange(n_links), np.arange(n_links)])
        order = np.argsort(ends, kind="stable")
        bounds = np.searchsorted(ends[order], np.arange(n + 1))
        names = plan.ifnames()
        ifindex = np.zeros((n_links, 2), dtype=np.int32)
        macs: list[list[bytes]] = [[b"", b""] for _ in range(n_links)]
        node_addr = plan.node_addr
        socks = self._netlink
        node_names = self.names

        def sock(i: int) -> netlink.Netlink:
            s = socks[i]
            if s is None:
                raise EmulationError(f"node {node_names[i]} has no netlink socket")
            return s

        def check(i: int, errors: list[tuple[int, int, str]], what: str) -> None:
            if errors:
                _, err, text = errors[0]
                raise EmulationError(
                    f"{what} in node {node_names[i]} failed: "
                    f"{os.strerror(err)}{': ' + text if text else ''}"
                )

        local_ids = self.local_ids.tolist()
        cut = self.cut

        def configure(j: int, pid: int) -> None:
            i = local_ids[j]
            sel = order[bounds[i] : bounds[i + 1]]
            msgs = [netlink.link_up_msg(1, 0), netlink.addr_msg(1, int(node_addr[i]), 32, 0)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for k, sd in zip(lid[sel].tolist(), side[sel].tolist()):
                    try:
                        idx = socket.if_nametoindex(names[k])
                        macs[k][sd] = ifaces.if_hwaddr(s, names[k])
                    except OSError:
                        raise EmulationError(
                            f"interface {names[k]} of link {k} is missing in "
                            f"node {node_names[i]}; the shaper did not "
                            f"create it"
                        ) from None
                    ifindex[k, sd] = idx
                    msgs.append(
                        netlink.addr_msg(
                            idx, int(adr.link_address_int(k, sd)), adr.LINK_PREFIXLEN, 0
                        )
                    )
                    msgs.append(netlink.link_up_msg(idx, 0))
            check(i, sock(i).send_batch(netlink.pack_messages(msgs)), "configuring addresses")

        nl.in_namespaces(self.pids, configure)
        for i in local_ids:
            sel = order[bounds[i] : bounds[i + 1]]
            # (a link to another host has no permanent neighbour: its peer's MAC is there,
            # so ARP resolves it through the tunnel)
            msgs = [
                netlink.neigh_msg(
                    int(ifindex[k, sd]), int(adr.link_address_int(k, 1 - sd)), macs[k][1 - sd], 0
                )
                for k, sd in zip(lid[sel].tolist(), side[sel].tolist())
                if k not in cut
            ]
            check(i, sock(i).send_batch(netlink.pack_messages(msgs)), "adding neighbours")
        self.routes = RouteInstaller(
            plan, ifindex, socks, aggregate=self.route_aggregation, local=self.local
        )
        self._ifindex = ifindex

    def _routes(self) -> RouteInstaller:
        if self.routes is None:
            raise EmulationError("the emulation's addresses are not configured yet")
        return self.routes

    def _wait_links_running(self, timeout_s: float = LINKS_RUNNING_TIMEOUT_S) -> None:
        """Wait until every interface is operationally up (see
        :func:`meshemu.linux.netns.links_not_running`), so that traffic started right after
        ``build`` is not dropped by interfaces the kernel has not activated yet."""
        deadline = time.monotonic() + timeout_s
        pending = list(range(len(self.nodes)))
        pids = self.pids
        plain = {self.plan.ifname(k) for k, c in self.cut.items() if not c.shaped_here}
        while True:
            res = nl.in_namespaces(
                [pids[i] for i in pending],
                lambda i, pid: ifaces.links_not_running(),
                threads=4,
            )
            # (a tunnel that is a node's own interface has no carrier state: UNKNOWN)
            res = [[x for x in r if x not in plain] for r in res]
            still = [(pending[j], r) for j, r in enumerate(res) if r]
            if not still:
                return
            if time.monotonic() > deadline:
                i, names = still[0]
                raise EmulationError(
                    f"{len(still)} node(s) still have interfaces that are "
                    f"not running {timeout_s:.0f} s after they were brought "
                    f"up, e.g. {self.nodes[i].name}: {', '.join(names[:4])}"
                )
            pending = [i for i, _ in still]
            time.sleep(0.05)

    def _register_intfs(self) -> None:
        """Give Mininet an Intf object per interface (``lo`` with the node address first)."""
        plan = self.plan
        names = plan.ifnames()
        ports = [1] * self.n_nodes
        for i, node in zip(self.local_ids.tolist(), self.nodes):
            MeshIntf("lo", node, 0, adr.int_to_ip(plan.node_addr[i]), 32)
        for k in range(plan.n_links):
            for s, u in ((0, int(plan.a[k])), (1, int(plan.b[k]))):
                if not self.local[u]:
                    continue
                MeshIntf(
                    names[k],
                    self.nodes[self._slot[u]],
                    ports[u],
                    adr.int_to_ip(adr.link_address_int(k, s)),
                    adr.LINK_PREFIXLEN,
                    k,
                )
                ports[u] += 1

    def _start_daemons(self, table: LinkTable) -> None:
        from meshemu.live.daemons import DaemonRunner, daemon_nodes

        plan, scheme = self.plan, self.daemons
        kinds = ["isl" if plan.isl[k] else "gsl" for k in range(plan.n_links)]
        delays = table.rows["delay_s"].tolist()
        costs = [scheme.link_cost(kinds[k], delays[k]) for k in range(plan.n_links)]
        transit = [k in adr.SATELLITE_KINDS for k in self.kinds]
        nodes = daemon_nodes(self.names, transit, plan, kinds, costs)
        if self.detect == "carrier":
            self._set_admin(np.flatnonzero(~table.rows["up"]), up=False)
        self.daemon_runner = DaemonRunner(scheme, nodes, self.nodes, self.run_id, self.run_dir)
        self.daemon_runner.start()

    def _set_admin(self, link_ids: np.ndarray, up: bool) -> None:
        """Set both ends of links administratively up or down (carrier seen by daemons)."""
        if not link_ids.size or self._ifindex is None:
            return
        plan = self.plan
        by_node: dict[int, list[bytes]] = {}
        for k in link_ids.tolist():
            for side, u in ((0, int(plan.a[k])), (1, int(plan.b[k]))):
                by_node.setdefault(u, []).append(
                    netlink.link_state_msg(int(self._ifindex[k, side]), up, 0)
                )
        for u, msgs in by_node.items():
            sock = self._netlink[u]
            if sock is not None:
                errors = sock.send_batch(netlink.pack_messages(msgs))
                if errors:
                    raise EmulationError(
                        f"setting links {'up' if up else 'down'} in node {self.names[u]} "
                        f"failed: {os.strerror(errors[0][1])}"
                    )

    def _daemon_step(self, changes: Any) -> None:
        runner = self.daemon_runner
        runner.check()
        if self.detect == "carrier":
            self._set_admin(changes.down_ids, up=False)
            self._set_admin(changes.up_ids, up=True)
        if self.daemons.options.metric == "delay" and changes.ids.size:
            plan, rows = self.plan, self.links.rows  # type: ignore[union-attr]
            upd = []
            for k in changes.ids.tolist():
                if rows["up"][k]:
                    kind = "isl" if plan.isl[k] else "gsl"
                    cost = self.daemons.link_cost(kind, float(rows["delay_s"][k]))
                    name = plan.ifname(k)
                    upd += [(int(plan.a[k]), name, cost), (int(plan.b[k]), name, cost)]
            runner.set_costs(upd)

    # -- steps -------------------------------------------------------------------------------
    def apply(self, snapshot: Snapshot, tables: Any, diff: RouteDiff | None = None) -> StepStats:
        """Bring the network to ``snapshot`` and ``tables``, changing only what differs.

        Link parameters (see :meth:`meshemu.live.links.LinkTable.advance`: up/down, and for
        links that are up a delay change above ``delay_tolerance_s``, a rate, queue or
        loss change) go to the shaper in one ``update`` call. Routes change per
        :func:`meshemu.routing.route_diff`, in one netlink batch per node that has changes.

        ``diff``, when given, is how ``tables`` differ from the tables of the previous
        call (as :class:`~meshemu.live.feed.RouteFeed` computed them off the clock); it is
        trusted, not computed again.

        Returns
        -------
        StepStats
            Including the route diff itself, so that nobody computes it again.

        Raises
        ------
        EmulationError
            Not built or stopped; a snapshot or tables that do not fit the emulation.
        """
        if not self._started or self._stopped or self.links is None or self.routes is None:
            raise EmulationError("apply() needs a built, running emulation")
        t0 = time.perf_counter()
        dests, _ = check_tables(tables, self.n_nodes)
        changes = self.links.advance(snapshot)
        ids = changes.ids
        mine = ids[self._shaped[ids]] if self._shaped.size else ids
        if mine.size:
            self.shaper.update(list(zip(mine.tolist(), self._shaper_params(mine))))
        t1 = time.perf_counter()
        if diff is None:
            diff = route_diff(self._tables, tables)
        if self.daemons is None:
            n_routes = self.routes.apply_diff(diff, dests)
        else:
            n_routes = 0
            self._daemon_step(changes)
        self._tables = tables
        t2 = time.perf_counter()
        st = StepStats(
            float(snapshot.t_s),
            int(ids.size),
            int(n_routes),
            t2 - t0,
            diff,
            changes.n_went_up,
            changes.n_went_down,
            t1 - t0,
            t2 - t1,
        )
        log.debug(
            "step t=%.1f s: %d link updates, %d route changes, %.1f ms",
            st.t_s,
            st.n_link_updates,
            st.n_route_changes,
            st.apply_s * 1e3,
        )
        return st

    def apply_share(
        self, ids: np.ndarray, rows: np.ndarray, u: np.ndarray, d: np.ndarray, hops: np.ndarray
    ) -> tuple[int, int, float, float]:
        """One step of this host's share (a run over several hosts): links ``ids`` take the
        link-table records ``rows`` (those this host shapes go to its shaper), and node
        ``u[m]``'s route to ``d[m]`` takes next hops ``hops[m]`` (rows sorted by ``u``, all
        on this host). Returns (link updates, route changes, links s, routes s)."""
        if not self._started or self._stopped or self.links is None or self.routes is None:
            raise EmulationError("apply_share() needs a built, running emulation")
        t0 = time.perf_counter()
        ids = np.asarray(ids, dtype=np.int64)
        self.links.rows[ids] = rows
        mine = ids[self._shaped[ids]]
        if mine.size:
            self.shaper.update(list(zip(mine.tolist(), self._shaper_params(mine))))
        t1 = time.perf_counter()
        cover = self.routes.cover  # aggregated: the changes go in as /32s over them
        n_routes = self.routes.route_ops(u, d, hops, None if cover is None else cover[u, d])
        return int(mine.size), int(n_routes), t1 - t0, time.perf_counter() - t1

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
            if self.daemon_runner is not None:
                try:
                    self.daemon_runner.stop()
                except Exception as exc:
                    errors.append(exc)
            try:
                self.shaper.close()
            except Exception as exc:
                errors.append(exc)
            for node in self.nodes:
                node.kill()
            if self._inodes:
                try:
                    stray = procs.pids_in_netns(self._inodes)
                    if stray:
                        procs.kill_and_wait(stray)
                except Exception as exc:
                    errors.append(exc)
            for node in self.nodes:
                if not node.wait_gone(timeout_s=5):
                    errors.append(
                        EmulationError(
                            f"holder or shell of node {node.name} (pid {node.pid}) did not die"
                        )
                    )
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
            raise EmulationError(
                f"teardown of run {self.run_id} is incomplete ({errors[0]}); run `meshemu clean`"
            ) from errors[0]

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mem_step(before: int) -> tuple[int, int]:
    """MemAvailable now, and how much less it is than ``before``."""
    now = mem_available_bytes()
    return now, before - now

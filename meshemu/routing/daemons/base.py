"""The interface of a daemon routing scheme, and the values it is given.

A :class:`DaemonScheme` does not compute routes. For each node it writes configuration
files from that node's interfaces and addresses (:class:`DaemonNode`), and names the
processes that run in the node's namespace (:class:`DaemonProcess`), how to tell that they
are ready, and how to reach their shell (``vtysh``, ``birdc``). The emulator
(:mod:`meshemu.live.daemons`) starts them and installs no routes: the nodes' kernel FIBs are
the daemons'.

It is still a :class:`~meshemu.routing.RoutingScheme`: its ``forwarding_tables`` are those of
its *reference*, the computed scheme with the same metric (``fewest-hops`` for the hop
metric, ``shortest-delay`` for the delay metric). ``meshemu plan`` and the run's
``paths.csv`` show these: what the daemons should converge to.

Metrics (``metric=``): ``hops`` (every link costs :data:`HOP_COST`), ``fixed`` (ISLs and
GSLs cost ``isl_cost`` and ``gsl_cost``), ``delay`` (propagation delay in units of
``delay_unit_us``, at least 1; re-announced only when it changes by more than
``delay_update_fraction``).
"""

from __future__ import annotations

import shutil
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy.typing as npt

from meshemu.errors import RoutingError
from meshemu.geometry.linkstate import Snapshot
from meshemu.routing.base import ForwardingTables, RoutingScheme, SchemeKind

#: Cost of a link with the hop metric.
HOP_COST = 10
METRICS = ("hops", "fixed", "delay")
#: How a failed link shows itself: ``carrier`` (the interface goes down at both ends: the
#: daemon sees it at once) or ``silent`` (frames are dropped: the dead interval finds it).
DETECT_MODES = ("carrier", "silent")


@dataclass(frozen=True)
class DaemonLink:
    """One interface of a node.

    Attributes
    ----------
    ifname : str
    address : str
        This end's address with prefix (``10.64.0.0/31``).
    peer_address : str
    peer : str
        The neighbour's node name.
    kind : str
        ``isl`` or ``gsl``.
    cost : int
        The link's metric at t = 0.
    """

    ifname: str
    address: str
    peer_address: str
    peer: str
    kind: str
    cost: int


@dataclass(frozen=True)
class DaemonNode:
    """What a daemon needs to know about its node.

    Attributes
    ----------
    name : str
    node_id : int
    address : str
        The node address (a /32 on ``lo``); also the router id.
    transit : bool
        False for ground nodes: they must never carry traffic for others (OSPF stub router,
        IS-IS overload bit).
    links : tuple of DaemonLink
        Every interface the node has at any step of the run.
    """

    name: str
    node_id: int
    address: str
    transit: bool
    links: tuple[DaemonLink, ...]


@dataclass(frozen=True)
class DaemonProcess:
    """A process to start in a node's namespace (in this order), with its pid file."""

    name: str
    argv: tuple[str, ...]
    pidfile: str


@dataclass
class DaemonOptions:
    """Options every daemon scheme takes (keyword arguments of the scheme's constructor).

    Timers: ``hello_s`` and ``dead_s`` (adjacency), ``retransmit_s`` (of unacknowledged
    database packets: RFC 2328's 5 s default made a first lost DD packet cost 8 s of the
    initial convergence here), ``spf_delay_ms``, ``spf_hold_ms``,
    ``spf_max_ms`` (SPF throttling: first delay, then back-off between ``hold`` and ``max``),
    ``lsa_interval_ms`` and ``lsa_arrival_ms`` (OSPF's MinLSInterval and MinLSArrival: RFC
    2328's 5 s and 1 s would hold every change back for seconds in a network that changes
    every few seconds).
    """

    metric: str = "hops"
    isl_cost: int = 10
    gsl_cost: int = 10
    delay_unit_us: float = 100.0
    delay_update_fraction: float = 0.1
    hello_s: int = 1
    dead_s: int = 4
    retransmit_s: int = 1
    spf_delay_ms: int = 0
    spf_hold_ms: int = 50
    spf_max_ms: int = 500
    lsa_interval_ms: int = 100
    lsa_arrival_ms: int = 50
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, scheme: str) -> None:
        """RoutingError naming the option when a value is out of range."""
        if self.metric not in METRICS:
            raise RoutingError(
                f"{scheme}: unknown metric {self.metric!r}; please specify one of: "
                f"{', '.join(METRICS)}"
            )
        for name in ("isl_cost", "gsl_cost", "hello_s", "dead_s", "retransmit_s"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
                raise RoutingError(f"{scheme}: {name} must be an integer in [1, 65535]; got {v!r}")
        if self.dead_s <= self.hello_s:
            raise RoutingError(
                f"{scheme}: dead_s ({self.dead_s}) must be larger than hello_s ({self.hello_s})"
            )
        if not self.delay_unit_us > 0 or not 0 <= self.delay_update_fraction < 1:
            raise RoutingError(
                f"{scheme}: delay_unit_us must be > 0 and delay_update_fraction in [0, 1)"
            )


class DaemonScheme(RoutingScheme):
    """A routing protocol run by daemons in the nodes (see the module docstring).

    Subclasses set :attr:`name`, :attr:`packages` (Debian packages that provide
    :attr:`binaries`) and implement :meth:`files`, :meth:`processes` and :meth:`cli_argv`;
    :meth:`ready_argv` may be overridden.
    """

    kind: ClassVar[SchemeKind] = "daemon"
    #: Debian packages that provide the daemon (named in the error when missing).
    packages: ClassVar[tuple[str, ...]] = ()
    #: Programs that must exist (absolute paths or names on PATH).
    binaries: ClassVar[tuple[str, ...]] = ()
    #: Run the processes as this user (FRR drops root to ``frr``); the state directory is
    #: handed to it. None: root.
    user: ClassVar[str | None] = None
    #: The protocol's own packets as a pcap filter expression (tcpdump syntax, e.g.
    #: ``ip proto 89``): meshemu counts them per link and step (``control.csv``). None: not
    #: counted.
    control_filter: ClassVar[str | None] = None
    #: Keep IPv6 on in the nodes (off otherwise): for protocols that speak over IPv6
    #: link-local addresses, such as Babel.
    ipv6: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        known = set(DaemonOptions.__dataclass_fields__) - {"extra"}
        extra = {k: v for k, v in options.items() if k not in known}
        self.options = DaemonOptions(
            **{k: v for k, v in options.items() if k in known}, extra=extra
        )
        self.options.check(self.name)
        from meshemu.routing.computed import FewestHops, ShortestDelay

        self.reference: RoutingScheme = (
            ShortestDelay() if self.options.metric == "delay" else FewestHops()
        )

    # -- what the planner and recorder use ------------------------------------------------
    def forwarding_tables(
        self, snapshot: Snapshot, destinations: npt.ArrayLike
    ) -> ForwardingTables:
        """The reference's tables: what the daemons should converge to."""
        return self.reference.forwarding_tables(snapshot, destinations)

    # -- what the emulator uses -----------------------------------------------------------
    def check_installed(self) -> None:
        """RoutingError naming the Debian package when a binary is missing."""
        missing = [b for b in self.required_binaries() if shutil.which(b) is None]
        if missing:
            raise RoutingError(
                f"routing scheme {self.name} needs {', '.join(missing)}, which is not "
                f"installed: apt-get install {' '.join(self.packages)} (or run ./install.sh)"
            )

    def required_binaries(self) -> tuple[str, ...]:
        """Programs :meth:`check_installed` looks for (default: :attr:`binaries`)."""
        return self.binaries

    def link_cost(self, kind: str, delay_s: float) -> int:
        """A link's metric."""
        o = self.options
        if o.metric == "hops":
            return HOP_COST
        if o.metric == "fixed":
            return o.isl_cost if kind == "isl" else o.gsl_cost
        return int(min(65535, max(1, round(delay_s * 1e6 / o.delay_unit_us))))

    def cost_changed(self, old: int, new: int) -> bool:
        """Whether a delay-metric change is worth announcing."""
        return old != new and abs(new - old) > self.options.delay_update_fraction * old

    @abstractmethod
    def files(self, node: DaemonNode, state_dir: Path) -> dict[str, str]:
        """Configuration files (name in ``state_dir`` -> text) for ``node``."""

    @abstractmethod
    def processes(self, node: DaemonNode, state_dir: Path) -> list[DaemonProcess]:
        """The processes to start in ``node``'s namespace, in order."""

    @abstractmethod
    def cli_argv(self, node: DaemonNode, state_dir: Path) -> list[str]:
        """The daemon's shell for this node (run inside the node's namespace)."""

    def ready_argv(self, node: DaemonNode, state_dir: Path) -> list[str] | None:
        """A command (in the node's namespace) that exits 0 once the daemons answer; None:
        ready when every pid file names a live process."""
        return None

    @abstractmethod
    def set_cost_argv(
        self, node: DaemonNode, state_dir: Path, ifname: str, cost: int
    ) -> list[str] | None:
        """A command that changes an interface's metric live; None when the scheme reloads
        its configuration instead (see :meth:`reload_argv`)."""

    def reload_argv(self, node: DaemonNode, state_dir: Path) -> list[str] | None:
        """A command that makes the daemon re-read its rewritten configuration."""
        return None

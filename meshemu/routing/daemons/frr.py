"""FRR (Debian ``frr``): zebra plus ospfd (``--routing ospf``) or isisd (``--routing isis``).

One instance per node, in the node's namespace, every file in the node's state directory::

    zebra -f DIR/zebra.conf -i DIR/zebra.pid -z DIR/zserv.api --vty_socket DIR -A 127.0.0.1 -P 0
    ospfd -f DIR/ospfd.conf -i DIR/ospfd.pid -z DIR/zserv.api --vty_socket DIR -A 127.0.0.1 -P 0

(``-P 0``: no TCP vty; ``vtysh --vty_socket DIR`` reaches the node's daemons). FRR drops
root for its ``frr`` user, so the state directory belongs to it. zebra is told not to use
kernel nexthop objects (``no zebra nexthop kernel enable``) so that the FIB reads as plain
routes.

OSPF (RFC 2328, FRR's ospfd): one area 0, every link a point-to-point network on its /31,
``lo`` passive (the node address is a stub), router id = node address; a ground node
advertises itself as a stub router (RFC 6987, ``max-metric router-lsa administrative``), so
that it carries transit traffic only if no other path exists. SPF throttling ``timers
throttle spf DELAY HOLD MAX``.

IS-IS (ISO 10589 / RFC 1195, FRR's isisd): level 2 only, wide metrics, point-to-point
circuits, system id from the node id (``0000.0000.NNNN`` in hex); a ground node sets the
overload bit (never used for transit). SPF back-off: ``spf-delay-ietf`` (RFC 8405).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from meshemu.routing.daemons.base import DaemonNode, DaemonProcess, DaemonScheme

FRR_DIR = "/usr/lib/frr"


class _FRR(DaemonScheme):
    packages: ClassVar[tuple[str, ...]] = ("frr",)
    user: ClassVar[str | None] = "frr"
    #: The protocol daemon (``ospfd``, ``isisd``).
    daemon: ClassVar[str]

    def required_binaries(self) -> tuple[str, ...]:
        return (f"{FRR_DIR}/zebra", f"{FRR_DIR}/{self.daemon}", "vtysh")

    def _argv(self, prog: str, d: Path) -> tuple[str, ...]:
        return (
            f"{FRR_DIR}/{prog}",
            "-f",
            str(d / f"{prog}.conf"),
            "-i",
            str(d / f"{prog}.pid"),
            "-z",
            str(d / "zserv.api"),
            "--vty_socket",
            str(d),
            "-A",
            "127.0.0.1",
            "-P",
            "0",
        )

    def processes(self, node: DaemonNode, state_dir: Path) -> list[DaemonProcess]:
        return [
            DaemonProcess(p, self._argv(p, state_dir), str(state_dir / f"{p}.pid"))
            for p in ("zebra", self.daemon)
        ]

    def cli_argv(self, node: DaemonNode, state_dir: Path) -> list[str]:
        return ["vtysh", "--vty_socket", str(state_dir)]

    def ready_argv(self, node: DaemonNode, state_dir: Path) -> list[str] | None:
        return [*self.cli_argv(node, state_dir), "-c", f"show {self._show}"]

    _show: ClassVar[str] = ""

    def _zebra_conf(self, node: DaemonNode, d: Path) -> str:
        return f"hostname {node.name}\nlog file {d / 'zebra.log'}\nno zebra nexthop kernel enable\n"

    def _cost_lines(self, cost: int) -> list[str]:
        raise NotImplementedError

    def set_cost_argv(
        self, node: DaemonNode, state_dir: Path, ifname: str, cost: int
    ) -> list[str] | None:
        argv = [*self.cli_argv(node, state_dir), "-c", "configure terminal"]
        argv += ["-c", f"interface {ifname}"]
        for line in self._cost_lines(cost):
            argv += ["-c", line]
        return argv


class FRROSPF(_FRR):
    """OSPFv2 with FRR (``--routing ospf``)."""

    name = "ospf"
    control_filter = "ip proto 89"  # OSPFv2 (RFC 2328 A.1)
    daemon = "ospfd"
    _show = "ip ospf"

    def _cost_lines(self, cost: int) -> list[str]:
        return [f"ip ospf cost {cost}"]

    def files(self, node: DaemonNode, state_dir: Path) -> dict[str, str]:
        o = self.options
        lines = [f"hostname {node.name}", f"log file {state_dir / 'ospfd.log'}", "!"]
        for lk in node.links:
            lines += [
                f"interface {lk.ifname}",
                " ip ospf area 0",
                " ip ospf network point-to-point",
                f" ip ospf hello-interval {o.hello_s}",
                f" ip ospf dead-interval {o.dead_s}",
                f" ip ospf retransmit-interval {o.retransmit_s}",
                f" ip ospf cost {lk.cost}",
                "!",
            ]
        lines += ["interface lo", " ip ospf area 0", " ip ospf passive", "!"]
        lines += [
            "router ospf",
            f" ospf router-id {node.address}",
            f" timers throttle spf {o.spf_delay_ms} {o.spf_hold_ms} {o.spf_max_ms}",
            f" timers throttle lsa all {o.lsa_interval_ms}",
            f" timers lsa min-arrival {o.lsa_arrival_ms}",
        ]
        if not node.transit:
            lines.append(" max-metric router-lsa administrative")
        lines.append("!")
        return {
            "zebra.conf": self._zebra_conf(node, state_dir),
            "ospfd.conf": "\n".join(lines) + "\n",
        }


class FRRISIS(_FRR):
    """IS-IS with FRR (``--routing isis``)."""

    name = "isis"
    control_filter = "isis"  # ISO 10589 PDUs over 802.2 LLC
    daemon = "isisd"
    _show = "isis summary"

    def _cost_lines(self, cost: int) -> list[str]:
        return [f"isis metric {cost}"]

    def files(self, node: DaemonNode, state_dir: Path) -> dict[str, str]:
        o = self.options
        lines = [f"hostname {node.name}", f"log file {state_dir / 'isisd.log'}", "!"]
        mult = max(2, math.ceil(o.dead_s / o.hello_s))
        for lk in node.links:
            lines += [
                f"interface {lk.ifname}",
                " ip router isis 1",
                " isis network point-to-point",
                f" isis hello-interval {o.hello_s}",
                f" isis hello-multiplier {mult}",
                f" isis psnp-interval {o.retransmit_s}",
                f" isis metric {lk.cost}",
                "!",
            ]
        lines += ["interface lo", " ip router isis 1", " isis passive", "!"]
        sysid = f"{node.node_id + 1:012x}"
        lines += [
            "router isis 1",
            f" net 49.0001.{sysid[0:4]}.{sysid[4:8]}.{sysid[8:12]}.00",
            " is-type level-2-only",
            " metric-style wide",
            " lsp-gen-interval 1",
            f" spf-delay-ietf init-delay {o.spf_delay_ms} short-delay {o.spf_hold_ms} "
            f"long-delay {o.spf_max_ms} holddown {o.spf_max_ms} time-to-learn {o.spf_max_ms}",
        ]
        if not node.transit:
            lines.append(" set-overload-bit")
        lines.append("!")
        return {
            "zebra.conf": self._zebra_conf(node, state_dir),
            "isisd.conf": "\n".join(lines) + "\n",
        }

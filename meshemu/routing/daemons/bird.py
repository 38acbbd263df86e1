"""BIRD 2 (Debian ``bird2``): OSPFv2 (``--routing bird-ospf``), a second implementation of
the same protocol as FRR's ospfd, for comparing implementations.

One ``bird -f -c DIR/bird.conf -s DIR/bird.ctl -P DIR/bird.pid`` per node, in the node's
namespace; ``birdc -s DIR/bird.ctl`` is its shell. Area 0, every link a ``ptp`` interface
with its cost, ``lo`` a stub; the kernel protocol exports the OSPF routes only (``learn``
off: BIRD owns no other route). A ground node is a stub router (RFC 6987, ``stub router
yes``); BIRD's retransmit interval is at least 2 s. A cost change rewrites the
configuration and runs ``birdc configure``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from meshemu.routing.daemons.base import DaemonNode, DaemonProcess, DaemonScheme


class BirdOSPF(DaemonScheme):
    """OSPFv2 with BIRD 2 (``--routing bird-ospf``)."""

    name = "bird-ospf"
    control_filter = "ip proto 89"
    packages: ClassVar[tuple[str, ...]] = ("bird2",)
    binaries: ClassVar[tuple[str, ...]] = ("bird", "birdc")

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._costs: dict[tuple[str, str], int] = {}  # (node, ifname) -> cost set live

    def files(self, node: DaemonNode, state_dir: Path) -> dict[str, str]:
        o = self.options
        ifaces = []
        for lk in node.links:
            cost = self._costs.get((node.name, lk.ifname), lk.cost)
            ifaces.append(
                f'    interface "{lk.ifname}" {{ type ptp; hello {o.hello_s}; '
                f"dead {o.dead_s}; retransmit {max(2, o.retransmit_s)}; cost {cost}; }};"
            )
        stub = "  stub router yes;\n" if not node.transit else ""
        text = (
            f"router id {node.address};\n"
            f'log "{state_dir / "bird.log"}" all;\n'
            "protocol device { scan time 10; }\n"
            "protocol kernel {\n"
            "  ipv4 { export where source = RTS_OSPF; import none; };\n"
            "  merge paths yes;\n"
            "}\n"
            "protocol ospf v2 meshemu {\n"
            "  ipv4 { import all; export none; };\n"
            f"{stub}"
            "  area 0 {\n" + "\n".join(ifaces) + '\n    interface "lo" { stub yes; };\n'
            "  };\n"
            "}\n"
        )
        return {"bird.conf": text}

    def processes(self, node: DaemonNode, state_dir: Path) -> list[DaemonProcess]:
        d = state_dir
        argv = ("bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl"))
        return [DaemonProcess("bird", (*argv, "-P", str(d / "bird.pid")), str(d / "bird.pid"))]

    def cli_argv(self, node: DaemonNode, state_dir: Path) -> list[str]:
        return ["birdc", "-s", str(state_dir / "bird.ctl")]

    def ready_argv(self, node: DaemonNode, state_dir: Path) -> list[str] | None:
        return [*self.cli_argv(node, state_dir), "show", "status"]

    def set_cost_argv(
        self, node: DaemonNode, state_dir: Path, ifname: str, cost: int
    ) -> list[str] | None:
        self._costs[(node.name, ifname)] = cost
        return None

    def reload_argv(self, node: DaemonNode, state_dir: Path) -> list[str] | None:
        return [*self.cli_argv(node, state_dir), "configure"]

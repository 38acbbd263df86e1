"""A routing daemon of one's own as a meshemu plug-in: RIPv2 (RFC 2453) with BIRD 2, a
distance-vector protocol to compare with the link-state ones.

Run it with ``meshemu run SCENARIO --routing tests/plugins/rip_scheme.py:RIP``. The README
shows this file as the plug-in example; ``tests/integration/test_daemons.py`` runs it.
"""

from __future__ import annotations

from pathlib import Path

from meshemu.routing.daemons import DaemonNode, DaemonProcess, DaemonScheme


class RIP(DaemonScheme):
    """RIPv2 with BIRD: one ``bird`` per node, every file in the node's state directory."""

    name = "rip"
    control_filter = "udp port 520"  # its packets, counted per link (control.csv)
    packages = ("bird2",)  # named in the error when a binary is missing
    binaries = ("bird", "birdc")

    def files(self, node: DaemonNode, state_dir: Path) -> dict[str, str]:
        """The configuration, from the node's address and interfaces."""
        # a ground node announces only itself: it must not carry transit traffic
        export = "all" if node.transit else f"where net = {node.address}/32"
        ifaces = ", ".join(f'"{link.ifname}"' for link in node.links)
        timers = f"update time {self.options.hello_s * 2}; timeout time {self.options.dead_s * 3};"
        text = f"""router id {node.address};
log "{state_dir / "bird.log"}" all;
protocol device {{ scan time 10; }}
protocol direct {{ ipv4; interface "lo"; }}
protocol kernel {{ ipv4 {{ export where source = RTS_RIP; import none; }}; merge paths yes; }}
protocol rip meshemu {{
  ipv4 {{ import all; export {export}; }};
  ecmp yes;
  interface {ifaces} {{ {timers} }};
}}
"""
        return {"bird.conf": text}

    def processes(self, node: DaemonNode, state_dir: Path) -> list[DaemonProcess]:
        """One BIRD in the foreground (the emulator watches it)."""
        d = state_dir
        argv = ("bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl"))
        return [DaemonProcess("bird", (*argv, "-P", str(d / "bird.pid")), str(d / "bird.pid"))]

    def cli_argv(self, node: DaemonNode, state_dir: Path) -> list[str]:
        """``s0_0_0 birdc show route`` in ``--cli``."""
        return ["birdc", "-s", str(state_dir / "bird.ctl")]

    def ready_argv(self, node: DaemonNode, state_dir: Path) -> list[str]:
        """Exits 0 once BIRD answers."""
        return [*self.cli_argv(node, state_dir), "show", "status"]

    def set_cost_argv(
        self, node: DaemonNode, state_dir: Path, ifname: str, cost: int
    ) -> list[str] | None:
        """RIP counts hops: link costs do not change."""
        return None

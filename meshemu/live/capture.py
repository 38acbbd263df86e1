"""Packet capture on chosen nodes or links of a live emulation (``meshemu run --capture``).

A spec is ``NODE`` (every interface of the node, ``tcpdump -i any``) or ``NODE:PEER`` (the
node's interface on the link to PEER; the link must exist at some step of the run). Each
spec writes ``capture-<spec>.pcap`` in the run directory with ``tcpdump`` running inside
the node's namespace; the meshemu header on UDP port 47000 dissects in Scapy
(``meshemu.traffic.header`` binds it) and Wireshark-style tools see it as UDP payload.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from meshemu.errors import EmulationError

log = logging.getLogger(__name__)

#: Bytes kept of each packet: headers plus the meshemu header, not the padding.
SNAPLEN = 256


def parse_specs(specs: list[str] | None, names: list[str] | tuple[str, ...],
                link_keys: np.ndarray) -> list[tuple[str, str | None]]:
    """Validate capture specs against the run's nodes and links (before anything is built).

    Returns ``(node, peer or None)`` pairs.

    Raises
    ------
    EmulationError
        Unknown node, a link that never exists in the run, or tcpdump missing.
    """
    if not specs:
        return []
    if shutil.which("tcpdump") is None:
        raise EmulationError("--capture needs tcpdump; install it (apt-get install tcpdump, "
                             "which ./install.sh does)")
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    out = []
    for spec in specs:
        node, _, peer = spec.partition(":")
        for x in (node, peer) if peer else (node,):
            if x not in index:
                raise EmulationError(f"--capture {spec}: unknown node {x!r}; give NODE or "
                                     f"NODE:PEER with names from nodes.csv (e.g. {names[0]})")
        if peer:
            a, b = sorted((index[node], index[peer]))
            if not np.any(link_keys == a * n + b):
                raise EmulationError(f"--capture {spec}: there is no link {node}-{peer} at any "
                                     f"step of this run; see links.csv of `meshemu plan`")
        out.append((node, peer or None))
    return out


class Captures:
    """tcpdump processes of a run; :meth:`stop` ends them and returns the pcap files."""

    def __init__(self, emu, specs: list[tuple[str, str | None]], out_dir: Path):
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        plan = emu.plan
        n = len(plan.names)
        ifnames = plan.ifnames() if any(p for _, p in specs) else []
        for node, peer in specs:
            if peer:
                a, b = sorted((emu._node_id(node), emu._node_id(peer)))
                k = int(np.searchsorted(plan.link_keys, a * n + b))
                iface, tag = ifnames[k], f"{node}-{peer}"
            else:
                iface, tag = "any", node
            path = Path(out_dir) / f"capture-{tag}.pcap"
            p = emu.node(node).popen(["tcpdump", "-i", iface, "-w", str(path), "-U", "-n",
                                      "-s", str(SNAPLEN), "--immediate-mode"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append((p, path))
        deadline = time.monotonic() + 5
        for p, path in self.procs:  # tcpdump writes the file header once it listens
            while not path.exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
                self.stop()
                raise EmulationError(f"tcpdump for {path.name} exited: {err}")
        log.info("capturing into %s", ", ".join(p.name for _, p in self.procs))

    def stop(self) -> list[Path]:
        """Stop every capture (idempotent); returns the pcap files written."""
        for p, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for p, _ in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return [path for _, path in self.procs if path.exists()]

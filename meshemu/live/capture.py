"""Packet capture on chosen nodes or links of a live emulation (``meshemu run --capture``).

A spec is ``NODE`` (every interface of the node, ``tcpdump -i any``) or ``NODE:PEER`` (the
node's interface on the link to PEER; the link must exist at some step of the run). Each
spec writes ``capture-<spec>.pcap`` in the run directory with ``tcpdump`` running inside
the node's namespace; the meshemu header on UDP port 47000 dissects in Scapy
(``meshemu.traffic.header`` binds it) and Wireshark-style tools see it as UDP payload.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import EmulationError

log = logging.getLogger(__name__)

#: Bytes kept of each packet: headers plus the meshemu header, not the padding.
SNAPLEN = 256
#: Seconds tcpdump may take to start listening (it says so on stderr) before the run fails.
LISTEN_TIMEOUT_S = 30.0


def parse_specs(
    specs: list[str] | None, names: list[str] | tuple[str, ...], link_keys: np.ndarray
) -> list[tuple[str, str | None]]:
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
        raise EmulationError(
            "--capture needs tcpdump; install it (apt-get install tcpdump, which ./install.sh does)"
        )
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    out = []
    for spec in specs:
        node, _, peer = spec.partition(":")
        for x in (node, peer) if peer else (node,):
            if x not in index:
                raise EmulationError(
                    f"--capture {spec}: unknown node {x!r}; give NODE or "
                    f"NODE:PEER with names from nodes.csv (e.g. {names[0]})"
                )
        if peer:
            a, b = sorted((index[node], index[peer]))
            if not np.any(link_keys == a * n + b):
                raise EmulationError(
                    f"--capture {spec}: there is no link {node}-{peer} at any "
                    f"step of this run; see links.csv of `meshemu plan`"
                )
        out.append((node, peer or None))
    return out


class Captures:
    """tcpdump processes of a run; :meth:`stop` ends them and returns the pcap files.

    The constructor returns once every tcpdump listens (it says ``listening on`` on stderr),
    so nothing sent after it is missed.

    Parameters
    ----------
    emu : meshemu.live.emulation.Emulation
        A built emulation.
    specs : list of (node, peer or None)
        From :func:`parse_specs`.
    out_dir : Path
        Where the pcap files go.

    Raises
    ------
    EmulationError
        A tcpdump exited, or did not listen within :data:`LISTEN_TIMEOUT_S`.
    """

    def __init__(self, emu: Any, specs: list[tuple[str, str | None]], out_dir: Path) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        plan = emu.plan
        index = {name: i for i, name in enumerate(plan.names)}
        for node, peer in specs:
            if peer:
                k = plan.link_id(index[node], index[peer])
                if k < 0:
                    raise EmulationError(
                        f"--capture {node}:{peer}: there is no link {node}-{peer} in this emulation"
                    )
                iface, tag = plan.ifname(k), f"{node}-{peer}"
            else:
                iface, tag = "any", node
            path = Path(out_dir) / f"capture-{tag}.pcap"
            p = emu.node(node).popen(
                [
                    "tcpdump",
                    "-i",
                    iface,
                    "-w",
                    str(path),
                    "-U",
                    "-n",
                    "-s",
                    str(SNAPLEN),
                    "--immediate-mode",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            self.procs.append((p, path))
        try:
            self._await_listening(LISTEN_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        log.info("capturing into %s", ", ".join(p.name for _, p in self.procs))

    def _await_listening(self, timeout_s: float) -> None:
        """Wait until every tcpdump has written ``listening on`` to its stderr."""
        said = {p.stderr.fileno(): (p, path, b"") for p, path in self.procs if p.stderr}
        deadline = time.monotonic() + timeout_s
        while said:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(path.name for _, path, _ in said.values())
                raise EmulationError(
                    f"tcpdump for {names} did not start listening within "
                    f"{timeout_s:.0f} s; the machine may be overloaded"
                )
            ready, _, _ = select.select(list(said), [], [], left)
            for fd in ready:
                p, path, text = said[fd]
                data = os.read(fd, 4096)
                text += data
                if b"listening on" in text:
                    del said[fd]
                elif not data:  # stderr closed: tcpdump exited
                    p.wait()
                    err = text.decode(errors="replace").strip()
                    raise EmulationError(f"tcpdump for {path.name} exited: {err}")
                else:
                    said[fd] = (p, path, text)

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

"""The meshemu worker of one host: a Ray actor that builds and drives that host's share.

:class:`HostWorker` is a plain class; :mod:`meshemu.live.cluster.engine` makes it a Ray
actor pinned to its host by the custom resource ``meshemu-host-<i>``
(:func:`meshemu.live.cluster.simhosts.host_resource`). It builds its nodes with the one
:class:`~meshemu.live.emulation.Emulation` (``local=`` its nodes, ``cut=`` its ends of the
links to other hosts, :mod:`meshemu.live.tunnels`) and applies each step's share the driver
sends (:meth:`Emulation.apply_share`). Its files go to ``<run dir>/hosts/h<i>/``.

The traffic agents of its nodes run here too, under this host's own
:class:`~meshemu.traffic.supervision.AgentSupervisor` (``agents_*`` methods, called by the
driver's :class:`~meshemu.live.cluster.traffic.RemoteAgents`): the driver plans the traffic
once and sends each host the configurations of its nodes; the agents write their files into
``<run dir>/hosts/h<i>/traffic/`` on this host, and :meth:`HostWorker.agents_stop` returns
those files' bytes, so the driver writes them into its run directory as a one-host run's
agents would have.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_RTT_RE = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def host_run_id(run_id: str, host: int) -> str:
    """The run id of host ``host``'s share (its processes, lock and shaper namespace)."""
    return f"{run_id}h{host}"


class HostWorker:
    """One host's share of a run (see the module docstring).

    Parameters
    ----------
    host : int
        The host's index in the partition.
    run_id : str
        The run's id (the share's own is :func:`host_run_id`).
    """

    def __init__(self, host: int, run_id: str) -> None:
        self.host = host
        self.run_id = host_run_id(run_id, host)
        self.emu: Any = None
        self.agents: Any = None
        self._clock_sock: socket.socket | None = None

    # -- what the driver asks before building --------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Who this worker is: host index, cluster address, host name, pid, network namespace."""
        import ray

        return {
            "host": self.host,
            "address": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "netns": os.stat("/proc/self/ns/net").st_ino,
            "run_id": self.run_id,
        }

    def clock(self) -> float:
        """This host's wall clock (``time.time()``), for the driver's offset estimate when
        the clock server cannot be reached."""
        return time.time()

    def clock_server(self, address: str) -> int:
        """Start (once) this host's clock server on ``address`` (its cluster address): a
        thread answering each UDP datagram with this host's ``time.time_ns()`` and the
        datagram's first 8 bytes (the driver's sequence number); its port. A Ray call's
        round trip (0.5-10 ms on a loaded machine) bounds an offset too loosely; a datagram's
        is tens of microseconds on a LAN."""
        if self._clock_sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, 0))
            self._clock_sock = sock
            threading.Thread(
                target=_serve_clock, args=(sock,), name="meshemu-clock", daemon=True
            ).start()
        return int(self._clock_sock.getsockname()[1])

    def ping(self, address: str, count: int = 10) -> float:
        """Minimum round trip to ``address`` over the cluster network (s), by ``ping``."""
        p = subprocess.run(
            ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2", address],
            capture_output=True,
            text=True,
            timeout=30 + count,
        )
        m = _RTT_RE.search(p.stdout)
        if p.returncode != 0 or m is None:
            raise RuntimeError(
                f"host {self.host}: cannot ping host address {address}: "
                f"{(p.stdout + p.stderr).strip()[-300:]}"
            )
        return float(m.group(1)) / 1e3

    def underlay_mtu(self, address: str) -> int:
        """MTU of the interface that carries this host's cluster address ``address``."""
        out = subprocess.run(
            ["ip", "-o", "addr", "show", "to", address], capture_output=True, text=True
        ).stdout.split()
        if len(out) < 2:
            return 1500
        dev = out[1].split("@")[0]
        return int(Path(f"/sys/class/net/{dev}/mtu").read_text()) if dev else 1500

    # -- the share -------------------------------------------------------------------------------
    def build(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Build this host's nodes and links and install their first routes.

        ``spec``: ``names``, ``kinds``, ``links`` (RunLinks), ``snapshot`` (the first),
        ``tables`` (the first ForwardingTables), ``local`` (bool per node), ``cut`` (list of
        CutLink), ``shaper`` (name), ``shaper_workers``, ``run_dir``.
        Returns the build timings (s).
        """
        from meshemu.live.emulation import Emulation
        from meshemu.live.shapers import make_shaper

        workers = spec.get("shaper_workers", 1)
        shaper = make_shaper(
            spec["shaper"], self.run_id, **({"workers": workers} if workers != 1 else {})
        )
        out = Path(spec["run_dir"]) / "hosts" / f"h{self.host}"
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.emu = Emulation(
            spec["names"],
            spec["kinds"],
            shaper,
            out,
            self.run_id,
            local=spec["local"],
            cut={c.link_id: c for c in spec["cut"]},
        )
        self.emu.build(spec["links"], spec["snapshot"], spec["tables"])
        return {"build_s": time.perf_counter() - t0, **self.emu.timings}

    def apply(
        self, ids: np.ndarray, rows: np.ndarray, u: np.ndarray, d: np.ndarray, hops: np.ndarray
    ) -> dict[str, float]:
        """One step's share (:meth:`Emulation.apply_share`); how long it took here."""
        t0 = time.perf_counter()
        n_links, n_routes, links_s, routes_s = self.emu.apply_share(ids, rows, u, d, hops)
        return {
            "apply_s": time.perf_counter() - t0,
            "links": n_links,
            "routes": n_routes,
            "links_s": links_s,
            "routes_s": routes_s,
            "unix_s": time.time(),
        }

    def node_exec(self, name: str, argv: list[str], timeout_s: float = 60.0) -> tuple[int, str]:
        """Run ``argv`` in node ``name``'s network namespace; (exit status, output)."""
        node = self.emu.node(name)
        p = subprocess.run(
            ["nsenter", "-t", str(node.pid), "-n", *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        return p.returncode, p.stdout + p.stderr

    def counters(self) -> dict[int, tuple[int, int, int]]:
        """This host's shaper's per-link counters (link id -> packets, bytes, dropped)."""
        return {} if self.emu is None else self.emu.shaper.counters()

    def guard(self) -> list[Any]:
        """This host's shaper's fidelity-guard records since the previous call
        (:class:`~meshemu.live.shapers.base.GuardRecord`; link ids are the run's)."""
        return [] if self.emu is None else list(self.emu.shaper.guard() or [])

    # -- the traffic agents of this host's nodes ----------------------------------------------
    def agents_start(self, configs: dict[str, Any], ready_timeout_s: float) -> int:
        """Start the agents of ``configs`` (node -> AgentConfig) in their nodes here, each
        writing into this host's traffic directory; wait until each is ready."""
        import dataclasses

        from meshemu.traffic.supervision import AgentSupervisor

        d = Path(self.emu.run_dir) / "traffic"
        d.mkdir(parents=True, exist_ok=True)
        emu = self.emu
        self.agents = AgentSupervisor(d, lambda node, argv, **kw: emu.node(node).popen(argv, **kw))
        local = {n: dataclasses.replace(c, out_dir=str(d)) for n, c in configs.items()}
        self.agents.start(local, ready_timeout_s)
        return len(local)

    def agents_go(self, start_unix_ns: int, end_unix_ns: int) -> None:
        """The traffic's time zero and end to every agent here."""
        self.agents.go(start_unix_ns, end_unix_ns)

    def agents_send(self, node: str, cmd: Any) -> bool:
        """A command to the agent of ``node``."""
        return bool(self.agents is not None and self.agents.send(node, cmd))

    def agents_wait_done(self, nodes: list[str], deadline_unix_s: float) -> bool:
        """Wait until the agents of ``nodes`` here are done (or ``deadline_unix_s``)."""
        return self.agents is None or self.agents.wait_done(nodes, deadline_unix_s)

    def agents_stop(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Stop the agents here; their statuses and their files (name -> bytes: the
        measurements, configurations and logs of ``traffic/<node>.*``)."""
        if self.agents is None:
            return {}, {}
        sup, self.agents = self.agents, None
        statuses = sup.stop()
        files = {}
        for node in sup.procs:
            for p in sup.dir.glob(f"{node}.*"):
                files[p.name] = p.read_bytes()
        return dict(statuses), files

    def agents_log_tail(self, node: str) -> str:
        """The end of the log of ``node``'s agent."""
        return "(no agents)" if self.agents is None else self.agents.log_tail(node)

    def stop(self) -> dict[str, float]:
        """Tear this host's share down (idempotent); its stop timings."""
        if self.agents is not None:  # (the driver stops them first; a run that failed early)
            try:
                self.agents.stop()
            except Exception as exc:  # noqa: BLE001 (the network goes anyway)
                log.warning("host %d: stopping the agents: %s", self.host, exc)
            self.agents = None
        if self._clock_sock is not None:
            self._clock_sock.close()  # (its thread ends on the error)
            self._clock_sock = None
        if self.emu is None:
            return {}
        self.emu.stop()
        return {"stop_s": self.emu.timings.get("stop_s", 0.0)}


#: A clock answer: the host's ``time.time_ns()`` and the request's 8-byte sequence number.
CLOCK_REPLY = struct.Struct("!q8s")


def _serve_clock(sock: socket.socket) -> None:
    """:meth:`HostWorker.clock_server`'s loop, until its socket is closed."""
    while True:
        try:
            data, peer = sock.recvfrom(64)
            sock.sendto(CLOCK_REPLY.pack(time.time_ns(), data[:8].ljust(8, b"\0")), peer)
        except OSError:
            return


def clean_host(run_id: str) -> list[str]:
    """What ``meshemu clean`` removes of a host's share whose worker died (a Ray task on
    that host)."""
    from meshemu.live.clean import clean

    return clean(run_id)

"""The traffic agents of a run over several hosts, seen from the driver.

The driver plans the traffic once, as a one-host run does (:class:`~meshemu.traffic.runtime.
TrafficRun`: flows, configurations, paths, the summary); only where the agents run changes.
:class:`RemoteAgents` stands where :class:`~meshemu.traffic.supervision.AgentSupervisor`
stands (``start``, ``go``, ``send``, ``wait_done``, ``stop``, ``procs``) and passes each call
to the :class:`~meshemu.live.cluster.worker.HostWorker` of the hosts whose nodes the agents
are in, through Ray. Each worker runs its own ``AgentSupervisor`` over its nodes' agents. At
``stop`` every worker returns its agents' statuses and files (bytes through Ray: the hosts
need not share a file system), which are written into the run directory's ``traffic/``, so
:func:`meshemu.traffic.collection.collect` merges them exactly as in a one-host run.

Calls to one Ray actor from one caller run in the order they were made, so the ``Targets``
sent during the run (fire and forget) reach each agent in order, before its ``stop``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from meshemu.errors import EmulationError

log = logging.getLogger(__name__)

#: Seconds on top of the agents' own timeouts for a host's answer through Ray.
RAY_MARGIN_S = 30.0


class RemoteAgents:
    """The agents of a run's nodes, on the hosts that hold those nodes (module docstring).

    Parameters
    ----------
    emu : ClusterEmulation
        The built run (its workers, partition and failure reporting).
    directory : Path
        The run directory's ``traffic/`` on the driver, where the agents' files are written
        at :meth:`stop`.
    """

    def __init__(self, emu: Any, directory: Path):
        self.emu = emu
        self.dir = Path(directory)
        self.procs: dict[str, int] = {}  # node -> host of its agent
        self.statuses: dict[str, Any] = {}
        self.done: dict[str, int] = {}
        self._stopped = False

    def _hosts(self, nodes: Iterable[str] | None = None) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for n in self.procs if nodes is None else nodes:
            if n in self.procs:
                out.setdefault(self.procs[n], []).append(n)
        return out

    def start(self, configs: Mapping[str, Any], ready_timeout_s: float = 60.0) -> None:
        """Start every agent on its node's host; wait until all are ready."""
        per: dict[int, dict[str, Any]] = {}
        for node, cfg in configs.items():
            h = self.emu.host_of(node)
            per.setdefault(h, {})[node] = cfg
            self.procs[node] = h
        w = self.emu.workers
        refs = {h: w[h].agents_start.remote(c, ready_timeout_s) for h, c in per.items()}
        n = self.emu._gather(refs, ready_timeout_s + RAY_MARGIN_S, "start its traffic agents")
        log.info("traffic agents per host: %s", n)

    def go(self, start_unix_ns: int, end_unix_ns: int) -> None:
        """The traffic's time zero and end to every host's agents."""
        w = self.emu.workers
        refs = {h: w[h].agents_go.remote(start_unix_ns, end_unix_ns) for h in self._hosts()}
        self.emu._gather(refs, RAY_MARGIN_S, "give its traffic agents the go")

    def send(self, node: str, cmd: Any) -> bool:
        """Send ``cmd`` to the agent of ``node`` (not waited for; see the module docstring)."""
        h = self.procs.get(node)
        if h is None or self._stopped:
            return False
        self.emu.workers[h].agents_send.remote(node, cmd)
        return True

    def broadcast(self, cmd: Any) -> None:
        """Send ``cmd`` to every agent."""
        for node in self.procs:
            self.send(node, cmd)

    def wait_done(self, nodes: Iterable[str], deadline_unix_s: float) -> bool:
        """Wait until the agents of ``nodes`` are done on every host, or the deadline."""
        w = self.emu.workers
        refs = {
            h: w[h].agents_wait_done.remote(ns, deadline_unix_s)
            for h, ns in self._hosts(nodes).items()
        }
        left = max(0.0, deadline_unix_s - time.time())
        res = self.emu._gather(refs, left + RAY_MARGIN_S, "wait for its traffic agents")
        return all(res.values())

    def stop(self) -> dict[str, Any]:
        """Stop every host's agents; write their files into :attr:`dir`; their statuses.
        A host that does not answer is named in a warning (its agents end with their stdin
        when its worker goes). Idempotent."""
        if self._stopped:
            return self.statuses
        self._stopped = True
        self.dir.mkdir(parents=True, exist_ok=True)
        w = self.emu.workers
        for h in sorted(self._hosts()):
            try:
                got = self.emu._gather(
                    {h: w[h].agents_stop.remote()}, 60.0, "stop its traffic agents"
                )
            except EmulationError as exc:
                log.warning("%s", exc)
                continue
            statuses, files = got[h]
            self.statuses.update(statuses)
            for name, data in files.items():
                (self.dir / Path(name).name).write_bytes(data)
        return self.statuses

    def log_tail(self, node: str) -> str:
        """The end of ``node``'s agent's log (from its host)."""
        h = self.procs.get(node)
        if h is None:
            return "(no agent)"
        try:
            got = self.emu._gather(
                {h: self.emu.workers[h].agents_log_tail.remote(node)}, RAY_MARGIN_S, "read a log"
            )
        except EmulationError as exc:
            return f"(log unavailable: {exc})"
        return str(got[h])

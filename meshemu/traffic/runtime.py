"""Running a workload profile in a live emulation, and collecting what it measured.

:func:`start_traffic` is called by :func:`meshemu.live.runner.run_emulation` once the network is
built: it resolves the profile against the scenario's nodes, plans every flow
(:mod:`meshemu.traffic.planning`), starts one agent (:mod:`meshemu.traffic.agent`) inside
each node that sends or receives (:mod:`meshemu.traffic.supervision`), and returns a
:class:`TrafficRun`. The runner then calls ``step(k, t_s, paths, tables)`` after every
step, ``finish()`` at the end of the clock and ``stop()`` in its ``finally``; ``stop()``
collects the agents' measurements (:mod:`meshemu.traffic.collection`).

Files in the run directory (columns from :mod:`meshemu.report.files`; only ever added at
the end):

``flows.csv``            ``flow_id,name,kind,src,dst``
``packets.csv``          ``flow_id,msg_id,seq,src,dst,size_bytes,send_unix_ns,recv_unix_ns,owd_ms``
                         (one row per received data packet; bulk flows above
                         :data:`SAMPLE_ABOVE_MBPS` keep every n-th row, n in ``traffic.json``)
``flow_throughput.csv``  ``t_s,flow_id,rx_bytes,mbps`` per step (sampled rows weighted by n)
``flow_paths.csv``       ``t_s,flow_id,src,dst,path,delay_ms`` at step 0 and on every change
``link_counters.csv``    ``t_s,a,b,packets,bytes,dropped`` cumulative, per used link and step
``iterations.csv``       ``job,algorithm,iteration,start_unix,end_unix,duration_ms,predicted_ms``
                         (+ ``first_start_unix,critical_path_ms``)
``rtt.csv``              ``flow_id,msg_id,src,dst,send_unix_ns,rtt_ms`` (acknowledged messages)
``inference.csv``        ``request_id,user,server,send_unix,done_unix,latency_ms,deadline_ms,
                         missed``
``traffic.json``         the resolved profile, the flows and the summary
``owd_trust.csv``        over several hosts: how far each flow's one-way delays can be trusted
                         (:mod:`meshemu.traffic.clocks`)

The agents' own files (``traffic/<node>.*``: configs, logs, raw measurements) stay in the
``traffic/`` sub-directory.

An iteration of a collective runs from the moment its *last* node started it (after that
node's compute time; every node starts its next iteration when its own part of the
previous one is over, so starts are staggered) to the moment its last node finished it:
``start_unix`` is that latest start, ``end_unix`` the latest end, and ``first_start_unix``
(an extra last column) the earliest start. Measured from the earliest start instead, an
iteration would also count the stagger, which the alpha-beta prediction
(:func:`meshemu.traffic.schedule.predict_iteration_s`, using the paths and link parameters
of the step in force at ``start_unix``) does not model.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.geometry.linkstate import Snapshot
from meshemu.report import files as F
from meshemu.routing import ForwardingTables
from meshemu.spec.profile import (
    AllReduceSpec,
    BulkSpec,
    InferenceSpec,
    Profile,
    ReplaySpec,
    ResolvedProfile,
    load_profile,
    resolve,
)
from meshemu.traffic.clocks import FlowTrust
from meshemu.traffic.collection import StepMark, collect, write_flows
from meshemu.traffic.config import AgentStatus, Targets
from meshemu.traffic.planning import (  # noqa: F401
    FALLBACK_MAX_NODES,
    SAMPLE_ABOVE_MBPS,
    Flow,
    Job,
    Path_,
    Router,
    path_links,
    plan_traffic,
    predictions_ms,
    server_rankings,
)
from meshemu.traffic.supervision import TERM_WAIT_S, AgentSupervisor, Spawn  # noqa: F401

log = logging.getLogger(__name__)

#: Seconds between the go (every agent is up) and the traffic's time zero.
GO_MARGIN_S = 0.2
#: ``finish()`` waits at most this long past the end of the traffic.
FINISH_GRACE_S = 3.0
#: Seconds ``finish()`` leaves for packets in flight once the agents are done.
IN_FLIGHT_S = 0.3

#: Endpoint pairs ``(src_id, dst_id)`` to node paths, as the runner records them.
Paths = Mapping[tuple[int, int], Sequence[int] | None]


class StepFiles:
    """``flow_paths.csv`` and ``link_counters.csv``, written as the steps go."""

    def __init__(self, run_dir: Path, names: Sequence[str], emu: Any):
        self.names = names
        self.emu = emu
        self._fp = open(run_dir / F.FLOW_PATHS.name, "w", newline="")
        self._fpw = csv.writer(self._fp, lineterminator="\n")
        self._fpw.writerow(F.FLOW_PATHS.columns)
        self._lc = open(run_dir / F.LINK_COUNTERS.name, "w", newline="")
        self._lcw = csv.writer(self._lc, lineterminator="\n")
        self._lcw.writerow(F.LINK_COUNTERS.columns)
        self._counter_warned = False

    def path(self, t_s: float, fl: Flow, snap: Snapshot | None, p: list[int] | None) -> None:
        """A flow's path (at step 0 and when it changed)."""
        pl = path_links(snap, p) if snap is not None and p else None
        self._fpw.writerow(
            [
                f"{t_s:g}",
                fl.flow_id,
                fl.src,
                fl.dst,
                " ".join(self.names[x] for x in p) if p else "",
                f"{pl[0] * 1e3:.6f}" if pl else "",
            ]
        )

    def counters(self, t_s: float) -> None:
        """The shaper's per-link counters (links that carried or dropped something)."""
        try:
            counters = self.emu.shaper.counters()
        except Exception as exc:  # a shaper without counters: note once, go on
            if not self._counter_warned:
                log.warning("link counters unavailable: %s", exc)
                self._counter_warned = True
            return
        plan = self.emu.plan
        a_ids, b_ids = plan.a, plan.b
        for lid in sorted(counters):
            pk, by, dr = counters[lid]
            if pk or dr:
                self._lcw.writerow(
                    [
                        f"{t_s:g}",
                        self.names[int(a_ids[lid])],
                        self.names[int(b_ids[lid])],
                        pk,
                        by,
                        dr,
                    ]
                )

    def flush(self) -> None:
        """Flush both files."""
        self._fp.flush()
        self._lc.flush()

    def close(self) -> None:
        """Close both files."""
        for f in (self._fp, self._lc):
            with contextlib.suppress(Exception):
                f.close()


class TrafficRun:
    """The traffic of one emulation run (see the module docstring).

    Build with :func:`start_traffic`.
    """

    def __init__(
        self,
        resolved: ResolvedProfile,
        emu: Any,
        snapshots: Sequence[Snapshot],
        out_dir: Path,
        wall_duration_s: float,
        tables0: ForwardingTables | None = None,
        spawn: Spawn | None = None,
        supervisor: Callable[[Path], Any] | None = None,
        trust: Callable[[Sequence[Flow]], Sequence[FlowTrust]] | None = None,
    ):
        self.resolved = resolved
        self.profile: Profile = resolved.profile
        self.emu = emu
        self.snapshots = snapshots
        self.out = Path(out_dir)
        self.dir = self.out / "traffic"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.names = list(resolved.names)
        self.id_of = {n: i for i, n in enumerate(self.names)}
        self.t_call = time.time()
        self.wall_duration_s = float(wall_duration_s)
        # provisional; start_agents() sets them when every agent is up
        self.start_ns = int((self.t_call + GO_MARGIN_S) * 1e9)
        self.end_ns = int((self.t_call + wall_duration_s) * 1e9)
        endpoints = [self.id_of[n] for w in resolved.workloads for n in _endpoints(w)]
        self.router = Router(snapshots, tables0, endpoints)
        self.plan = plan_traffic(
            resolved,
            self.router,
            snapshots[0] if snapshots else None,
            (self.end_ns - self.start_ns) / 1e9,
            emu.node_address,
            str(self.dir),
        )
        write_flows(self.out, self.plan.flows)
        # over several hosts the emulation's own (meshemu.live.cluster.traffic.RemoteAgents)
        self.supervisor: Any = (
            supervisor(self.dir)
            if supervisor is not None
            else AgentSupervisor(
                self.dir, spawn or (lambda node, argv, **kw: emu.node(node).popen(argv, **kw))
            )
        )
        self.trust = trust
        self.steps: list[StepMark] = []
        self.paths_at: list[dict[int, list[int] | None]] = []  # per step: flow -> path
        self._last_path: dict[int, tuple[int, ...]] = {}
        self._targets_sent: dict[str, list[Targets]] = {}
        self._stopped = False
        self._summary: dict[str, Any] | None = None
        self._files: list[Path] = []
        self.step_files = StepFiles(self.out, self.names, emu)

    # what tests and callers read
    @property
    def flows(self) -> tuple[Flow, ...]:
        """Every flow, by id."""
        return self.plan.flows

    @property
    def jobs(self) -> tuple[Job, ...]:
        """The collective jobs."""
        return self.plan.jobs

    @property
    def sample(self) -> Mapping[int, int]:
        """Flow id -> every n-th received packet recorded."""
        return self.plan.sample

    @property
    def procs(self) -> dict[str, Any]:
        """The agents' processes by node."""
        return self.supervisor.procs

    # -- agents ------------------------------------------------------------------------------
    def start_agents(self, ready_timeout_s: float = 60.0) -> None:
        """Start one agent per configured node, wait until each reports ``ready``, then
        give the go: the traffic's time zero is :data:`GO_MARGIN_S` later and it ends
        ``wall_duration_s`` after the go."""
        self.supervisor.start(self.plan.configs, ready_timeout_s)
        if self.snapshots:  # first server ranking for inference clients (small networks)
            snap = self.snapshots[0]
            first: dict[int, list[int] | None] = {}
            if self.router.can_route(snap):
                first = {
                    fl.flow_id: self.router.route(snap, self.id_of[fl.src], self.id_of[fl.dst])
                    for fl in self.flows
                    if fl.kind == "inference"
                }
            self._send_targets(snap, first)
        t_go = time.time()
        self.start_ns = int((t_go + GO_MARGIN_S) * 1e9)
        self.end_ns = int((t_go + self.wall_duration_s) * 1e9)
        self.supervisor.go(self.start_ns, self.end_ns)
        log.info(
            "traffic: %d agents up in %.1f s, %d flows",
            len(self.procs),
            t_go - self.t_call,
            len(self.flows),
        )

    def _send_targets(self, snap: Snapshot | None, cur: Mapping[int, Path_]) -> None:
        """Tell each inference user its servers, nearest first, when the ranking changed."""
        for user, targets in server_rankings(self.plan, snap, cur).items():
            if self._targets_sent.get(user) != targets:
                self._targets_sent[user] = targets
                for t in targets:
                    self.supervisor.send(user, t)

    # -- per step ----------------------------------------------------------------------------
    def step(
        self, k: int, t_s: float, paths: Paths | None, tables: ForwardingTables | None = None
    ) -> None:
        """Record step ``k`` (emulated time ``t_s``): flow paths, link counters, targets.

        ``paths`` maps ``(src_id, dst_id)`` of endpoint pairs to node-id lists (None:
        unreachable). Pairs it lacks (e.g. a bulk flow between two plain satellites) are
        traced through ``tables``, the forwarding tables the emulator installed at this step
        (:func:`meshemu.routing.trace_path`: the path the kernel forwards on, whatever the
        scheme); without ``tables`` through the snapshot's ``shortest-delay`` tables in
        networks of at most :data:`FALLBACK_MAX_NODES` nodes, and left unknown in bigger ones.
        """
        if self._stopped:
            return
        now = time.time_ns()
        snap = self.snapshots[k] if k < len(self.snapshots) else None
        self.steps.append(StepMark(k, float(t_s), now))
        paths = paths or {}
        cur: dict[int, list[int] | None] = {}
        for fl in self.flows:
            key = (self.id_of[fl.src], self.id_of[fl.dst])
            if key in paths:
                p = paths[key]
            elif snap is not None and self.router.can_route(snap, tables):
                p = self.router.route(snap, *key, tables)
            else:
                p = None
            p = None if p is None else [int(x) for x in p]
            cur[fl.flow_id] = p
            sig = tuple(p) if p else ()
            if k == 0 or not self._last_path or self._last_path.get(fl.flow_id) != sig:
                self.step_files.path(t_s, fl, snap, p)
            self._last_path[fl.flow_id] = sig
        self.paths_at.append(cur)
        self._send_targets(snap, cur)
        self.step_files.counters(t_s)
        if k % 10 == 0:
            self.step_files.flush()

    # -- end ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """Wait until every sending agent is done, or the traffic's end plus
        :data:`FINISH_GRACE_S`, whichever comes first; then leave :data:`IN_FLIGHT_S` for
        packets in flight."""
        self.supervisor.wait_done(self.plan.active_nodes, self.end_ns / 1e9 + FINISH_GRACE_S)
        time.sleep(IN_FLIGHT_S)  # packets in flight: nothing to wait on but the time

    def stop(self) -> None:
        """Stop every agent and write the run's traffic files. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            statuses = self.supervisor.stop()
        finally:
            self.step_files.close()
        self._collect(statuses)

    def _collect(self, statuses: Mapping[str, AgentStatus]) -> None:
        nodes = list(self.procs)
        ordered = {n: statuses[n] for n in nodes if n in statuses}
        trust = None if self.trust is None else list(self.trust(self.flows))
        self._summary, self._files = collect(
            self.out,
            self.dir,
            self.resolved,
            self.plan,
            nodes,
            ordered,
            self.steps,
            self.predictions_ms,
            (self.start_ns, self.end_ns),
            self.t_call,
            trust,
        )

    def summary(self) -> dict[str, Any]:
        """The traffic's summary (stops the agents first if need be)."""
        if self._summary is None:
            self.stop()
        return self._summary or {"lines": []}

    def files(self) -> list[Path]:
        """The run directory's traffic files that exist."""
        return [f for f in self._files if f.exists()]

    # -- predictions -------------------------------------------------------------------------
    def _step_at(self, unix_ns: int) -> int:
        """Index into self.steps of the step in force at wall time ``unix_ns``."""
        if not self.steps:
            return -1
        walls = [s.wall_ns for s in self.steps]
        return max(0, int(np.searchsorted(walls, unix_ns, side="right")) - 1)

    def predict_ms(self, job: Job, unix_ns: int) -> float:
        """Alpha-beta prediction (ms) of an iteration of ``job`` started at ``unix_ns``."""
        return self.predictions_ms(job, unix_ns)[0]

    def predictions_ms(self, job: Job, unix_ns: int) -> tuple[float, float]:
        """Phase-by-phase alpha-beta prediction and critical-path prediction (ms) of an
        iteration of ``job`` started at ``unix_ns``, on the paths and links of the step then
        in force (see :func:`meshemu.traffic.planning.predictions_ms`)."""
        i = self._step_at(unix_ns)
        if i >= 0:
            k = self.steps[i].k
            snap = self.snapshots[min(k, len(self.snapshots) - 1)]
            paths: Mapping[int, Path_] | None = self.paths_at[i]
        else:
            snap = self.snapshots[0]
            paths = None
        return predictions_ms(job, snap, paths, self.router, self.id_of)


def _endpoints(w: AllReduceSpec | InferenceSpec | BulkSpec | ReplaySpec) -> list[str]:
    """The nodes flows of workload ``w`` start or end at."""
    if isinstance(w, AllReduceSpec):
        return list(w.nodes)
    if isinstance(w, InferenceSpec):
        return list(w.users) + list(w.servers)
    return [w.src, w.dst]


def start_traffic(
    profile: str | Path | Profile,
    scenario: Any,
    emu: Any,
    sched: Any,
    snapshots: Sequence[Snapshot],
    out_dir: Path | str,
    wall_duration_s: float,
    tables0: ForwardingTables | None = None,
    spawn: Spawn | None = None,
    supervisor: Callable[[Path], Any] | None = None,
    trust: Callable[[Sequence[Flow]], Sequence[FlowTrust]] | None = None,
) -> TrafficRun:
    """Resolve ``profile`` against the scenario's nodes and start its agents.

    Parameters
    ----------
    profile : str, Path or Profile
        A profile name in ``traffic/``, a YAML path, or a loaded profile.
    scenario : Scenario
        (Only used for logging; nodes come from ``sched.nodes``.)
    emu : meshemu.live.emulation.Emulation
        The built network (``node_address``, ``node(name).popen``, ``shaper.counters``,
        ``plan``).
    sched : LinkSchedule or any object with ``nodes.names`` and ``nodes.kind``
    snapshots : list of Snapshot
        The run's snapshots by step (for path delays, rates and predictions).
    out_dir : path
        The run directory.
    wall_duration_s : float
        Wall-clock seconds the traffic may run (from now).
    tables0 : ForwardingTables, optional
        The tables installed at step 0; paths at the start (pacing, first server ranking)
        follow them. Without them, the snapshot's ``shortest-delay`` tables are assumed.
    spawn : Spawn, optional
        How to start an agent in a node (default: the node's ``popen``).
    supervisor : callable, optional
        ``supervisor(traffic_dir)``: the agents' supervisor, when not this machine's
        :class:`AgentSupervisor` (a run over several hosts:
        :meth:`meshemu.live.cluster.engine.ClusterEmulation.agents`).
    trust : callable, optional
        ``trust(flows)``: how far each flow's one-way delays can be trusted, called once the
        agents have stopped (a run over several hosts, :mod:`meshemu.traffic.clocks`).

    Raises
    ------
    ProfileError
        The profile is malformed or names unknown nodes.
    EmulationError
        An agent could not start.
    """
    prof = load_profile(profile)
    res = resolve(prof, sched.nodes.names, sched.nodes.kind)
    run = TrafficRun(
        res, emu, snapshots, Path(out_dir), wall_duration_s, tables0, spawn, supervisor, trust
    )
    try:
        run.start_agents()
    except BaseException:
        run.stop()
        raise
    return run

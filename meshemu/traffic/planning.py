"""Planning a profile's traffic (pure but for the addresses): flows, collective jobs, one
:class:`~meshemu.traffic.config.AgentConfig` per node, paths, and the alpha-beta
predictions of the collectives' iterations.

Paths follow forwarding tables (:func:`meshemu.routing.trace_path`): the tables the runner
installed at that step when there are any, else the ``shortest-delay`` scheme's tables of
the snapshot (:class:`Router`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from meshemu.geometry.linkstate import Snapshot
from meshemu.routing import ForwardingTables, get_scheme, trace_path
from meshemu.spec.profile import AllReduceSpec, BulkSpec, InferenceSpec, ReplaySpec, ResolvedProfile
from meshemu.traffic import schedule as sch
from meshemu.traffic.config import (
    AgentConfig,
    CollectiveConfig,
    InferenceClientConfig,
    InferenceServerConfig,
    StreamConfig,
    Targets,
)

#: Bulk flows faster than this record every n-th packet only (n = ceil(rate / this)).
SAMPLE_ABOVE_MBPS = 20.0
#: Without forwarding tables, flows are routed over the snapshot's shortest-delay tables
#: only in networks up to this size; in bigger ones their path is left unknown.
FALLBACK_MAX_NODES = 300
#: First request id of the inference clients (ids are unique over the run).
FIRST_REQUEST_ID = 1_000_000

#: A node path (node ids), or None: unreachable or unknown.
Path_ = list[int] | None


@dataclass(frozen=True)
class Flow:
    """One direction of traffic between two nodes (``flows.csv``)."""

    flow_id: int
    name: str
    kind: str
    src: str
    dst: str


@dataclass(frozen=True)
class Job:
    """A collective job: its nodes by rank, its plan, and per transfer the flow and pace."""

    job: str
    algorithm: str
    nodes: tuple[str, ...]
    plan: tuple[sch.Transfer, ...]
    flow_ids: tuple[int, ...]
    pace_bps: tuple[float, ...]
    iterations: int


@dataclass(frozen=True)
class TrafficPlan:
    """Everything :func:`plan_traffic` decides.

    Attributes
    ----------
    flows : tuple of Flow
        By flow id (``flows[i].flow_id == i + 1``).
    sample : mapping of int to int
        Flow id -> record every n-th received packet.
    jobs : tuple of Job
    configs : mapping of str to AgentConfig
        One per node that sends or receives.
    active_nodes : frozenset of str
        Nodes with sending work of their own (the runtime waits for their ``done``).
    """

    flows: tuple[Flow, ...]
    sample: Mapping[int, int]
    jobs: tuple[Job, ...]
    configs: Mapping[str, AgentConfig]
    active_nodes: frozenset[str] = field(default_factory=frozenset)


def path_links(
    snap: Snapshot, path: Sequence[int] | None
) -> tuple[float, list[int], list[float]] | None:
    """Delay (s), link keys and link rates of a node path in a snapshot (None: a hop is
    missing or down)."""
    if not path or len(path) < 2:
        return None
    delay = 0.0
    keys, rates = [], []
    n = snap.n_nodes
    for u, v in zip(path[:-1], path[1:]):
        e = snap.edge_index(u, v)
        if e < 0 or not snap.up[e]:
            return None
        delay += float(snap.delay_s[e])
        keys.append(min(u, v) * n + max(u, v))
        rates.append(float(snap.rate_bps[e]))
    return delay, keys, rates


class Router:
    """Paths between flow endpoints in a snapshot, through forwarding tables.

    Parameters
    ----------
    snapshots : list of Snapshot
        The run's snapshots by step.
    tables0 : ForwardingTables, optional
        The tables installed at step 0 (used for the first snapshot when no tables are
        given).
    endpoints : sequence of int
        Node ids flows end at (the destinations of the fallback tables).
    """

    def __init__(
        self,
        snapshots: Sequence[Snapshot],
        tables0: ForwardingTables | None,
        endpoints: Sequence[int],
    ):
        self.snapshots = snapshots
        self.tables0 = tables0
        self.endpoints = np.unique(np.asarray(endpoints, dtype=np.int32))
        self._fallback: dict[int, ForwardingTables] = {}

    def tables_for(
        self, snap: Snapshot, tables: ForwardingTables | None = None
    ) -> ForwardingTables | None:
        """``tables``, or the step-0 tables when ``snap`` is the first snapshot, or None."""
        if tables is None and self.snapshots and snap is self.snapshots[0]:
            return self.tables0
        return tables

    def can_route(self, snap: Snapshot, tables: ForwardingTables | None = None) -> bool:
        """Whether :meth:`route` is cheap enough for every flow in ``snap``."""
        return self.tables_for(snap, tables) is not None or snap.n_nodes <= FALLBACK_MAX_NODES

    def route(
        self, snap: Snapshot, src: int, dst: int, tables: ForwardingTables | None = None
    ) -> Path_:
        """The path from ``src`` to ``dst`` in ``snap``, traced through ``tables`` (or the
        step-0 ones for the first snapshot), else through the snapshot's
        ``shortest-delay`` tables (computed once per snapshot)."""
        t = self.tables_for(snap, tables)
        if t is None:
            t = self._fallback.get(id(snap))
            if t is None:
                t = get_scheme("shortest-delay").forwarding_tables(snap, self.endpoints)
                self._fallback[id(snap)] = t
        if not np.any(t.destinations == dst):
            return None
        return trace_path(t, snap, src, dst)


def _pace(
    w: AllReduceSpec,
    plan: list[sch.Transfer],
    ids: list[int],
    snap0: Snapshot | None,
    router: Router,
) -> np.ndarray:
    """Pacing rate per transfer: the workload's, never above 95 % of the fair share of the
    bottleneck at t = 0."""
    pace = np.full(len(plan), w.rate_mbps * 1e6)
    if snap0 is None:
        return pace
    links: list[list[int] | None] = []
    rates: dict[int, float] = {}
    for t in plan:
        pl = path_links(snap0, router.route(snap0, ids[t.src], ids[t.dst]))
        links.append(pl[1] if pl else None)
        if pl:
            rates.update(zip(pl[1], pl[2]))
    fair = sch.fair_share_rates(plan, links, rates, np.full(len(plan), np.inf))
    ok = fair > 0
    pace[ok] = np.minimum(pace[ok], 0.95 * fair[ok])
    return pace


@dataclass
class _Roles:
    """A node's roles while planning."""

    collectives: list[CollectiveConfig] = field(default_factory=list)
    inference_clients: list[InferenceClientConfig] = field(default_factory=list)
    inference_servers: list[InferenceServerConfig] = field(default_factory=list)
    streams: list[StreamConfig] = field(default_factory=list)


class _Planner:
    """The state of :func:`plan_traffic` while it goes through the workloads."""

    def __init__(
        self, resolved: ResolvedProfile, router: Router, snap0: Snapshot | None, traffic_s: float
    ):
        self.resolved = resolved
        self.router = router
        self.snap0 = snap0
        self.traffic_s = traffic_s
        self.id_of = {n: i for i, n in enumerate(resolved.names)}
        self.flows: list[Flow] = []
        self.sample: dict[int, int] = {}
        self.jobs: list[Job] = []
        self.roles: dict[str, _Roles] = {}
        self.active: set[str] = set()
        self.next_request_id = FIRST_REQUEST_ID

    def flow(self, name: str, kind: str, src: str, dst: str) -> int:
        fid = len(self.flows) + 1
        self.flows.append(Flow(fid, name, kind, src, dst))
        return fid

    def node(self, node: str) -> _Roles:
        return self.roles.setdefault(node, _Roles())

    def allreduce(self, w: AllReduceSpec) -> None:
        nodes = tuple(w.nodes)
        plan = sch.collective_plan(w.algorithm, len(nodes), w.model_bytes)
        pair_flow: dict[tuple[int, int], int] = {}
        for t in plan:
            if (t.src, t.dst) not in pair_flow:
                pair_flow[(t.src, t.dst)] = self.flow(
                    w.name, "allreduce", nodes[t.src], nodes[t.dst]
                )
        flow_ids = tuple(pair_flow[(t.src, t.dst)] for t in plan)
        pace = tuple(
            float(x)
            for x in _pace(w, plan, [self.id_of[n] for n in nodes], self.snap0, self.router)
        )
        self.jobs.append(Job(w.name, w.algorithm, nodes, tuple(plan), flow_ids, pace, w.iterations))
        for r, node in enumerate(nodes):
            self.node(node).collectives.append(
                CollectiveConfig(
                    job=w.name,
                    rank=r,
                    nodes=nodes,
                    iterations=w.iterations,
                    compute_ms=w.compute_ms,
                    start_s=w.start_s,
                    plan=tuple(plan),
                    flow_ids=flow_ids,
                    pace_bps=pace,
                )
            )
            self.active.add(node)

    def inference(self, wi: int, w: InferenceSpec) -> None:
        span = (
            self.traffic_s - w.start_s
            if w.duration_s is None
            else min(w.duration_s, self.traffic_s - w.start_s)
        )
        for ui, user in enumerate(w.users):
            flow_req, flow_resp = {}, {}
            for s in w.servers:
                flow_req[s] = self.flow(w.name, "inference", user, s)
                flow_resp[s] = self.flow(w.name, "inference", s, user)
                self.node(s).inference_servers.append(
                    InferenceServerConfig(
                        flow_req[s], flow_resp[s], w.response_bytes, w.rate_mbps * 1e6
                    )
                )
            rng = np.random.default_rng([self.resolved.profile.seed, wi, ui])
            times = sch.poisson_arrivals(w.rate_per_s, span, rng) + w.start_s
            id_base = self.next_request_id
            # request ids: unique over the run, and they fit the header's u32 msg_id
            self.next_request_id += 1_000_000 * (times.size // 1_000_000 + 1)
            self.node(user).inference_clients.append(
                InferenceClientConfig(
                    job=w.name,
                    servers=tuple(w.servers),
                    times_s=tuple(times.tolist()),
                    request_bytes=w.request_bytes,
                    response_bytes=w.response_bytes,
                    deadline_ms=w.deadline_ms,
                    target=w.target,
                    pace_bps=w.rate_mbps * 1e6,
                    flow_req=flow_req,
                    flow_resp=flow_resp,
                    id_base=id_base,
                )
            )
            self.active.add(user)

    def stream(self, w: BulkSpec | ReplaySpec) -> None:
        if isinstance(w, BulkSpec):
            fid = self.flow(w.name, "bulk", w.src, w.dst)
            if w.rate_mbps > SAMPLE_ABOVE_MBPS:
                self.sample[fid] = math.ceil(w.rate_mbps / SAMPLE_ABOVE_MBPS)
            cfg = StreamConfig(fid, w.dst, w.start_s, w.duration_s, rate_bps=w.rate_mbps * 1e6)
        else:
            fid = self.flow(w.name, "replay", w.src, w.dst)
            t, s = sch.replay_schedule(w.times_s, w.ip_bytes, w.duration_s)
            cfg = StreamConfig(
                fid,
                w.dst,
                w.start_s,
                w.duration_s,
                times_s=tuple(t.tolist()),
                ip_bytes=tuple(s.tolist()),
            )
        self.node(w.src).streams.append(cfg)
        self.node(w.dst)  # receives: gets an agent
        self.active.add(w.src)


def plan_traffic(
    resolved: ResolvedProfile,
    router: Router,
    snap0: Snapshot | None,
    traffic_s: float,
    address_of: Callable[[str], str],
    out_dir: str,
    bind: str | None = None,
) -> TrafficPlan:
    """Flows, jobs and agent configurations of ``resolved``.

    Parameters
    ----------
    resolved : ResolvedProfile
        The profile resolved against the scenario's nodes.
    router : Router
        Paths at t = 0 (collectives are paced below their bottleneck's fair share).
    snap0 : Snapshot or None
        The first snapshot (None: no pacing limit from paths).
    traffic_s : float
        Seconds the traffic lasts (inference request times are drawn within it).
    address_of : callable
        Node name -> node address.
    out_dir : str
        Where the agents write their files.
    bind : str, optional
        What the agents' sockets bind to; by default each node's own address, so that its
        packets carry that source whatever interface a route leaves by (routing daemons
        install routes without a preferred source).
    """
    p = _Planner(resolved, router, snap0, traffic_s)
    for wi, w in enumerate(resolved.workloads):
        if isinstance(w, AllReduceSpec):
            p.allreduce(w)
        elif isinstance(w, InferenceSpec):
            p.inference(wi, w)
        elif isinstance(w, (BulkSpec, ReplaySpec)):
            p.stream(w)
    peers = sorted({f.src for f in p.flows} | {f.dst for f in p.flows})
    addrs = {n: address_of(n) for n in peers}
    configs = {
        node: AgentConfig(
            node=node,
            addrs=addrs,
            out_dir=out_dir,
            bind=bind if bind is not None else addrs.get(node, "0.0.0.0"),
            control=True,
            sample=dict(p.sample),
            collectives=tuple(r.collectives),
            inference_clients=tuple(r.inference_clients),
            inference_servers=tuple(r.inference_servers),
            streams=tuple(r.streams),
        )
        for node, r in p.roles.items()
    }
    return TrafficPlan(tuple(p.flows), dict(p.sample), tuple(p.jobs), configs, frozenset(p.active))


def server_rankings(
    plan: TrafficPlan, snap: Snapshot | None, paths: Mapping[int, Path_]
) -> dict[str, list[Targets]]:
    """Per inference user, each client's servers from nearest to farthest (request path
    delay in ``snap``; ``paths`` maps flow ids to node paths)."""
    out: dict[str, list[Targets]] = {}
    for user, c in plan.configs.items():
        for cl in c.inference_clients:
            ranked = []
            for server in cl.servers:
                p = paths.get(cl.flow_req[server])
                pl = path_links(snap, p) if snap is not None and p else None
                ranked.append((pl[0] if pl else math.inf, server))
            out.setdefault(user, []).append(Targets(cl.job, tuple(x for _, x in sorted(ranked))))
    return out


def predictions_ms(
    job: Job,
    snap: Snapshot,
    paths: Mapping[int, Path_] | None,
    router: Router,
    id_of: Mapping[str, int],
) -> tuple[float, float]:
    """Phase-by-phase alpha-beta prediction and critical-path prediction (ms) of an
    iteration of ``job`` on ``snap`` (see :mod:`meshemu.traffic.schedule`); ``paths`` maps
    flow ids to node paths (None: route with ``router``). NaN when a transfer has no path."""
    delays, links, hop_rates = [], [], []
    rates: dict[int, float] = {}
    for t, fid in zip(job.plan, job.flow_ids):
        p = (
            paths.get(fid)
            if paths is not None
            else router.route(snap, id_of[job.nodes[t.src]], id_of[job.nodes[t.dst]])
        )
        pl = path_links(snap, p)
        if pl is None:
            return math.nan, math.nan
        delays.append(pl[0])
        links.append(pl[1])
        hop_rates.append(pl[2])
        rates.update(zip(pl[1], pl[2]))
    r = sch.fair_share_rates(job.plan, links, rates, job.pace_bps)
    return (
        sch.predict_iteration_s(job.plan, delays, r, hop_rates) * 1e3,
        sch.critical_path_s(job.plan, delays, r, hop_rates) * 1e3,
    )

"""Running a workload profile in a live emulation, and collecting what it measured.

:func:`start_traffic` is called by :func:`meshemu.live.runner.run_emulation` once the network is
built: it resolves the profile against the scenario's nodes, plans every flow, starts one
agent (:mod:`meshemu.traffic.agent`) inside each node that sends or receives, and returns a
:class:`TrafficRun`. The runner then calls ``step(k, t_s, paths)`` after every step,
``finish()`` at the end of the clock and ``stop()`` in its ``finally``.

Files in the run directory (formats are fixed; columns are only ever added at the end):

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
``inference.csv``        ``request_id,user,server,send_unix,done_unix,latency_ms,deadline_ms,missed``
``traffic.json``         the resolved profile, the flows and the summary

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
import heapq
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import EmulationError
from meshemu.routing import trace_path
from meshemu.traffic import schedule as sch
from meshemu.spec.profile import (AllReduceSpec, BulkSpec, InferenceSpec, Profile,
                                     ReplaySpec, ResolvedProfile, load_profile, resolve)

log = logging.getLogger(__name__)

#: Seconds between the go signal (every agent is up) and the traffic's time zero.
GO_MARGIN_S = 0.2
#: ``finish()`` waits at most this long past the end of the traffic.
FINISH_GRACE_S = 3.0
#: Bulk flows faster than this record every n-th packet only (n = ceil(rate / this)).
SAMPLE_ABOVE_MBPS = 20.0
#: Seconds the agents get to exit after SIGTERM before SIGKILL.
TERM_WAIT_S = 3.0

#: ``step()`` routes flows missing from its ``paths`` argument itself (Python Dijkstra) only
#: in networks up to this size; in bigger ones their path is left unknown.
FALLBACK_MAX_NODES = 300

PACKET_COLUMNS = ["flow_id", "msg_id", "seq", "src", "dst", "size_bytes", "send_unix_ns",
                  "recv_unix_ns", "owd_ms"]


@dataclass
class Flow:
    flow_id: int
    name: str
    kind: str
    src: str
    dst: str


def shortest_delay_path(snap, src: int, dst: int) -> list[int] | None:
    """Lowest-delay path over the snapshot's up links; only transit nodes may relay
    (Dijkstra). Used for pacing before the runner's routes are known, and by tests."""
    n = snap.n_nodes
    adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for a, b, d, up in zip(snap.a.tolist(), snap.b.tolist(), snap.delay_s.tolist(),
                           snap.up.tolist()):
        if up:
            adj[a].append((b, d))
            adj[b].append((a, d))
    transit = np.asarray(snap.transit, dtype=bool)
    dist = {src: 0.0}
    prev: dict[int, int] = {}
    heap = [(0.0, src)]
    while heap:
        d, u = heapq.heappop(heap)
        if u == dst:
            break
        if d > dist.get(u, math.inf) or (u != src and not transit[u]):
            continue
        for v, w in adj[u]:
            nd = d + w
            if nd < dist.get(v, math.inf):
                dist[v] = nd
                prev[v] = u
                heapq.heappush(heap, (nd, v))
    if dst not in dist:
        return None
    path = [dst]
    while path[-1] != src:
        path.append(prev[path[-1]])
    return path[::-1]


def _traced(tables, snap, src: int, dst: int) -> list[int] | None:
    """:func:`meshemu.routing.trace_path`, None when ``dst`` is not among the destinations."""
    if not np.any(tables.destinations == dst):
        return None
    return trace_path(tables, snap, src, dst)


def path_links(snap, path: list[int] | None) -> tuple[float, list[int], list[float]] | None:
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


class TrafficRun:
    """The traffic of one emulation run (see the module docstring).

    Build with :func:`start_traffic`.
    """

    def __init__(self, resolved: ResolvedProfile, emu, snapshots: list, out_dir: Path,
                 wall_duration_s: float, tables0=None):
        self.resolved = resolved
        #: The forwarding tables installed at step 0 (None: route with Dijkstra instead).
        self.tables0 = tables0
        self.profile: Profile = resolved.profile
        self.emu = emu
        self.snapshots = snapshots
        self.out = Path(out_dir)
        self.dir = self.out / "traffic"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.names = list(resolved.names)
        self.kinds = list(resolved.kinds)
        self.id_of = {n: i for i, n in enumerate(self.names)}
        self.t_call = time.time()
        self.wall_duration_s = float(wall_duration_s)
        # provisional; start_agents() sets them when every agent is up
        self.start_ns = int((self.t_call + GO_MARGIN_S) * 1e9)
        self.end_ns = int((self.t_call + wall_duration_s) * 1e9)
        self.flows: list[Flow] = []
        self.sample: dict[int, int] = {}
        self.jobs: list[dict] = []                 # collectives
        self.procs: dict[str, subprocess.Popen] = {}
        self.active_nodes: set[str] = set()
        self.steps: list[tuple[int, float, int]] = []     # (k, t_s, wall ns)
        self.paths_at: list[dict[int, list[int] | None]] = []   # per step: flow -> path
        self._last_path: dict[int, tuple] = {}
        self._stopped = False
        self._aggregated = False
        self._summary: dict | None = None
        self._files: list[Path] = []
        self._plan()
        self._open_step_files()

    # -- planning ----------------------------------------------------------------------------
    def _flow(self, name: str, kind: str, src: str, dst: str) -> int:
        fid = len(self.flows) + 1
        self.flows.append(Flow(fid, name, kind, src, dst))
        return fid

    def _plan(self) -> None:
        seed = self.profile.seed
        dur_s = (self.end_ns - self.start_ns) / 1e9
        cfgs: dict[str, dict] = {}

        def cfg(node: str) -> dict:
            if node not in cfgs:
                cfgs[node] = {"node": node, "collectives": [], "inference_clients": [],
                              "inference_server": {}, "streams": []}
            return cfgs[node]

        snap0 = self.snapshots[0] if self.snapshots else None
        next_request_id = 1_000_000
        for wi, w in enumerate(self.resolved.workloads):
            if isinstance(w, AllReduceSpec):
                nodes = list(w.nodes)
                plan = sch.collective_plan(w.algorithm, len(nodes), w.model_bytes)
                pair_flow: dict[tuple[int, int], int] = {}
                for t in plan:
                    if (t.src, t.dst) not in pair_flow:
                        pair_flow[(t.src, t.dst)] = self._flow(
                            w.name, "allreduce", nodes[t.src], nodes[t.dst])
                flow_ids = [pair_flow[(t.src, t.dst)] for t in plan]
                pace = np.full(len(plan), w.rate_mbps * 1e6)
                if snap0 is not None:
                    # never pace above the fair share of the bottleneck at t = 0
                    links, rates = [], {}
                    for t in plan:
                        pl = path_links(snap0, self._route(
                            snap0, self.id_of[nodes[t.src]], self.id_of[nodes[t.dst]]))
                        links.append(pl[1] if pl else None)
                        if pl:
                            rates.update(zip(pl[1], pl[2]))
                    fair = sch.fair_share_rates(plan, links, rates, np.full(len(plan), np.inf))
                    ok = fair > 0
                    pace[ok] = np.minimum(pace[ok], 0.95 * fair[ok])
                job = {"job": w.name, "algorithm": w.algorithm, "nodes": nodes, "plan": plan,
                       "flow_ids": flow_ids, "pace_bps": pace.tolist(),
                       "iterations": w.iterations}
                self.jobs.append(job)
                for r, node in enumerate(nodes):
                    cfg(node)["collectives"].append({
                        "job": w.name, "rank": r, "nodes": nodes, "iterations": w.iterations,
                        "compute_ms": w.compute_ms, "start_s": w.start_s,
                        "plan": [[t.index, t.src, t.dst, t.nbytes, list(t.deps)] for t in plan],
                        "flow_ids": flow_ids, "pace_bps": pace.tolist()})
                    self.active_nodes.add(node)
            elif isinstance(w, InferenceSpec):
                span = dur_s - w.start_s if w.duration_s is None else min(
                    w.duration_s, dur_s - w.start_s)
                for ui, user in enumerate(w.users):
                    flow_req, flow_resp = {}, {}
                    for s in w.servers:
                        flow_req[s] = self._flow(w.name, "inference", user, s)
                        flow_resp[s] = self._flow(w.name, "inference", s, user)
                        cfg(s)["inference_server"][str(flow_req[s])] = [
                            flow_resp[s], w.response_bytes, w.rate_mbps * 1e6]
                    rng = np.random.default_rng([seed, wi, ui])
                    times = sch.poisson_arrivals(w.rate_per_s, span, rng) + w.start_s
                    id_base = next_request_id
                    # request ids: unique over the run, and they fit the header's u32 msg_id
                    next_request_id += 1_000_000 * (times.size // 1_000_000 + 1)
                    cfg(user)["inference_clients"].append({
                        "job": w.name, "servers": list(w.servers), "times_s": times.tolist(),
                        "request_bytes": w.request_bytes, "response_bytes": w.response_bytes,
                        "deadline_ms": w.deadline_ms, "target": w.target,
                        "pace_bps": w.rate_mbps * 1e6, "flow_req": flow_req,
                        "flow_resp": flow_resp, "id_base": id_base,
                        "targets_file": str(self.dir / "targets.json")})
                    self.active_nodes.add(user)
            elif isinstance(w, BulkSpec):
                fid = self._flow(w.name, "bulk", w.src, w.dst)
                if w.rate_mbps > SAMPLE_ABOVE_MBPS:
                    self.sample[fid] = math.ceil(w.rate_mbps / SAMPLE_ABOVE_MBPS)
                cfg(w.src)["streams"].append({"flow_id": fid, "dst": w.dst,
                                              "rate_bps": w.rate_mbps * 1e6,
                                              "start_s": w.start_s, "duration_s": w.duration_s})
                cfg(w.dst)
                self.active_nodes.add(w.src)
            elif isinstance(w, ReplaySpec):
                fid = self._flow(w.name, "replay", w.src, w.dst)
                t, s = sch.replay_schedule(w.times_s, w.ip_bytes, w.duration_s)
                cfg(w.src)["streams"].append({"flow_id": fid, "dst": w.dst,
                                              "times_s": t.tolist(), "ip_bytes": s.tolist(),
                                              "start_s": w.start_s, "duration_s": w.duration_s})
                cfg(w.dst)
                self.active_nodes.add(w.src)
        peers = sorted({f.src for f in self.flows} | {f.dst for f in self.flows})
        addrs = {n: self.emu.node_address(n) for n in peers}
        for node, c in cfgs.items():
            c.update({"addrs": addrs, "go_file": str(self.dir / "go.json"),
                      "out_dir": str(self.dir),
                      "sample": {str(k): v for k, v in self.sample.items()}})
        self.configs = cfgs
        with open(self.out / "flows.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["flow_id", "name", "kind", "src", "dst"])
            for fl in self.flows:
                w.writerow([fl.flow_id, fl.name, fl.kind, fl.src, fl.dst])

    def _tables_for(self, snap, tables=None):
        """``tables``, or the step-0 tables when ``snap`` is the first snapshot, or None."""
        if tables is None and self.snapshots and snap is self.snapshots[0]:
            return self.tables0
        return tables

    def _route(self, snap, src: int, dst: int, tables=None) -> list[int] | None:
        """The path from ``src`` to ``dst`` in ``snap``: traced through the forwarding tables
        (``tables``, or the step-0 ones for the first snapshot) when there are any, else
        :func:`shortest_delay_path`, memoised per snapshot and pair."""
        tables = self._tables_for(snap, tables)
        if tables is not None:
            return _traced(tables, snap, src, dst)
        cache = self.__dict__.setdefault("_routes", {})
        key = (id(snap), src, dst)
        if key not in cache:
            cache[key] = shortest_delay_path(snap, src, dst)
        return cache[key]

    def _can_route(self, snap, tables=None) -> bool:
        """Whether :meth:`_route` is cheap enough for every flow in ``snap``."""
        return (self._tables_for(snap, tables) is not None
                or snap.n_nodes <= FALLBACK_MAX_NODES)

    # -- agents ------------------------------------------------------------------------------
    def start_agents(self, ready_timeout_s: float = 60.0) -> None:
        """Start one agent per configured node, wait until each has bound its socket, then
        give the go: the traffic's time zero is :data:`GO_MARGIN_S` later and it ends
        ``wall_duration_s`` after the go."""
        (self.dir / "go.json").unlink(missing_ok=True)
        for node, c in self.configs.items():
            for suffix in (".packets.csv", ".iterations.csv", ".inference.csv", ".rtt.csv",
                           ".done",
                           ".status.json"):
                (self.dir / f"{node}{suffix}").unlink(missing_ok=True)
            path = self.dir / f"{node}.json"
            path.write_text(json.dumps(c))
            logf = open(self.dir / f"{node}.log", "wb")
            try:
                self.procs[node] = self.emu.node(node).popen(
                    [sys.executable, "-m", "meshemu.traffic.agent", str(path)],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    cwd=str(Path(__file__).resolve().parents[2]))
            finally:
                logf.close()
        deadline = time.monotonic() + ready_timeout_s
        pending = set(self.procs)
        while pending and time.monotonic() < deadline:
            for node in list(pending):
                p = self.procs[node]
                if p.poll() is not None:
                    raise EmulationError(f"traffic agent of {node} exited with status "
                                         f"{p.returncode}: {self._log_tail(node)}")
                if (self.dir / f"{node}.packets.csv").exists():
                    pending.discard(node)
            time.sleep(0.05)
        if pending:
            raise EmulationError(f"traffic agents of {sorted(pending)} did not start within "
                                 f"{ready_timeout_s:.0f} s: {self._log_tail(min(pending))}")
        if self.snapshots:   # first server ranking for inference clients (small networks)
            snap = self.snapshots[0]
            first = {}
            if self._can_route(snap):
                first = {fl.flow_id: self._route(snap, self.id_of[fl.src], self.id_of[fl.dst])
                         for fl in self.flows if fl.kind == "inference"}
            self._write_targets(snap, first)
        t_go = time.time()
        self.start_ns = int((t_go + GO_MARGIN_S) * 1e9)
        self.end_ns = int((t_go + self.wall_duration_s) * 1e9)
        tmp = self.dir / "go.json.tmp"
        tmp.write_text(json.dumps({"start_unix_ns": self.start_ns, "end_unix_ns": self.end_ns}))
        os.replace(tmp, self.dir / "go.json")
        log.info("traffic: %d agents up in %.1f s, %d flows", len(self.procs),
                 t_go - self.t_call, len(self.flows))

    def _log_tail(self, node: str) -> str:
        try:
            return (self.dir / f"{node}.log").read_text()[-800:]
        except OSError:
            return "(no log)"

    # -- per step ----------------------------------------------------------------------------
    def _open_step_files(self) -> None:
        self._fp = open(self.out / "flow_paths.csv", "w", newline="")
        self._fpw = csv.writer(self._fp, lineterminator="\n")
        self._fpw.writerow(["t_s", "flow_id", "src", "dst", "path", "delay_ms"])
        self._lc = open(self.out / "link_counters.csv", "w", newline="")
        self._lcw = csv.writer(self._lc, lineterminator="\n")
        self._lcw.writerow(["t_s", "a", "b", "packets", "bytes", "dropped"])

    def step(self, k: int, t_s: float, paths: dict | None, tables=None) -> None:
        """Record step ``k`` (emulated time ``t_s``): flow paths, link counters, targets.

        ``paths`` maps ``(src_id, dst_id)`` of endpoint pairs to node-id lists (None:
        unreachable). Pairs it lacks (e.g. a bulk flow between two plain satellites) are
        traced through ``tables``, the forwarding tables the emulator installed at this step
        (:func:`meshemu.routing.trace_path`: the path the kernel forwards on, whatever the
        scheme); without ``tables`` they are routed with :func:`shortest_delay_path` in
        networks of at most :data:`FALLBACK_MAX_NODES` nodes, and left unknown in bigger ones.
        """
        if self._stopped:
            return
        now = time.time_ns()
        snap = self.snapshots[k] if k < len(self.snapshots) else None
        self.steps.append((k, float(t_s), now))
        paths = paths or {}
        cur: dict[int, list[int] | None] = {}
        for fl in self.flows:
            key = (self.id_of[fl.src], self.id_of[fl.dst])
            if key in paths:
                p = paths[key]
            elif snap is not None and self._can_route(snap, tables):
                p = self._route(snap, *key, tables)
            else:
                p = None
            p = None if p is None else [int(x) for x in p]
            cur[fl.flow_id] = p
            sig = tuple(p) if p else ()
            if k == 0 or not self._last_path or self._last_path.get(fl.flow_id) != sig:
                pl = path_links(snap, p) if snap is not None and p else None
                self._fpw.writerow([f"{t_s:g}", fl.flow_id, fl.src, fl.dst,
                                    " ".join(self.names[x] for x in p) if p else "",
                                    f"{pl[0] * 1e3:.6f}" if pl else ""])
            self._last_path[fl.flow_id] = sig
        self.paths_at.append(cur)
        self._write_targets(snap, cur)
        self._write_counters(t_s)
        if k % 10 == 0:
            self._fp.flush()
            self._lc.flush()

    def _write_targets(self, snap, cur: dict) -> None:
        """Per inference user, its servers from nearest to farthest (request path delay)."""
        data: dict[str, list[str]] = {}
        for user, c in self.configs.items():
            for cl in c["inference_clients"]:
                ranked = []
                for server in cl["servers"]:
                    p = cur.get(cl["flow_req"][server])
                    pl = path_links(snap, p) if snap is not None and p else None
                    ranked.append((pl[0] if pl else math.inf, server))
                data[user] = [x for _, x in sorted(ranked)]
        if not data:
            return
        tmp = self.dir / "targets.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.dir / "targets.json")

    def _write_counters(self, t_s: float) -> None:
        try:
            counters = self.emu.shaper.counters()
        except Exception as exc:  # a shaper without counters: note once, go on
            if not getattr(self, "_counter_warned", False):
                log.warning("link counters unavailable: %s", exc)
                self._counter_warned = True
            return
        plan = self.emu.plan
        a_ids, b_ids = plan.a, plan.b
        for lid in sorted(counters):
            pk, by, dr = counters[lid]
            if pk or dr:
                self._lcw.writerow([f"{t_s:g}", self.names[int(a_ids[lid])],
                                    self.names[int(b_ids[lid])], pk, by, dr])

    # -- end ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """Wait until every sending agent is done, or the traffic's end plus
        :data:`FINISH_GRACE_S`, whichever comes first."""
        deadline = self.end_ns / 1e9 + FINISH_GRACE_S
        while time.time() < deadline:
            if all((self.dir / f"{n}.done").exists() or self.procs[n].poll() is not None
                   for n in self.active_nodes if n in self.procs):
                break
            time.sleep(0.1)
        time.sleep(0.3)  # packets in flight

    def stop(self) -> None:
        """Stop every agent (SIGTERM, then SIGKILL) and write the run's traffic files.
        Idempotent."""
        if not self._stopped:
            self._stopped = True
            for p in self.procs.values():
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + TERM_WAIT_S
            for node, p in self.procs.items():
                try:
                    p.wait(timeout=max(0.05, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("traffic agent of %s ignored SIGTERM; killing it", node)
                    p.kill()
                    p.wait()
            for f in (self._fp, self._lc):
                with contextlib.suppress(Exception):
                    f.close()
        if not self._aggregated:
            self._aggregated = True
            self._aggregate()

    def summary(self) -> dict:
        if self._summary is None:
            self.stop()
        return self._summary or {"lines": []}

    def files(self) -> list[Path]:
        return [f for f in self._files if f.exists()]

    # -- aggregation -------------------------------------------------------------------------
    def _aggregate(self) -> None:
        out = self.out
        # packets.csv: the agents' rows, merged
        pk_path = out / "packets.csv"
        rx_rows: list[tuple[int, int, int]] = []     # (flow, size, recv_ns)
        owd: dict[int, list[float]] = {}
        with open(pk_path, "w") as f:
            f.write(",".join(PACKET_COLUMNS) + "\n")
            for node in sorted(self.procs):
                src = self.dir / f"{node}.packets.csv"
                if not src.exists():
                    continue
                with open(src) as g:
                    for line in g:
                        parts = line.rstrip("\n").split(",")
                        if len(parts) != 9:
                            continue  # a line cut by SIGKILL
                        f.write(line)
                        fl = int(parts[0])
                        rx_rows.append((fl, int(parts[5]), int(parts[7])))
                        owd.setdefault(fl, []).append(float(parts[8]))
        self._throughput(rx_rows)
        self._merge_rtt()
        iters = self._iterations()
        inf = self._inference()
        statuses = {}
        for node in self.procs:
            with contextlib.suppress(OSError, ValueError):
                statuses[node] = json.loads((self.dir / f"{node}.status.json").read_text())
        self._summary = self._make_summary(iters, inf, rx_rows, owd, statuses)
        doc = {"profile": self.resolved.to_dict(),
               "flows": [fl.__dict__ for fl in self.flows],
               "sample_every": {str(k): v for k, v in self.sample.items()},
               "start_unix": self.start_ns / 1e9, "end_unix": self.end_ns / 1e9,
               "predicted_overhead_ms": sch.OVERHEAD_S * 1e3,
               "jobs": [{"job": j["job"], "algorithm": j["algorithm"], "nodes": j["nodes"],
                         "pace_bps": j["pace_bps"]} for j in self.jobs],
               "agents": statuses, "summary": self._summary}
        (out / "traffic.json").write_text(json.dumps(doc, indent=2, default=str))
        self._files = [out / n for n in ("flows.csv", "packets.csv", "flow_throughput.csv",
                                         "flow_paths.csv", "link_counters.csv",
                                         "iterations.csv", "inference.csv", "rtt.csv",
                                         "traffic.json")]

    def _merge_rtt(self) -> None:
        """``rtt.csv``: the agents' round-trip samples of acknowledged messages."""
        with open(self.out / "rtt.csv", "w") as f:
            f.write("flow_id,msg_id,src,dst,send_unix_ns,rtt_ms\n")
            for node in self.procs:
                p = self.dir / f"{node}.rtt.csv"
                if not p.exists():
                    continue
                with open(p) as src:
                    f.writelines(ln for ln in src if ln.count(",") == 5 and ln.endswith("\n"))

    def _bins(self) -> tuple[np.ndarray, list[float]]:
        """Wall-time bin edges (ns) and emulated t_s of each bin."""
        if self.steps:
            edges = [s[2] for s in self.steps]
            ts = [s[1] for s in self.steps]
            step = (edges[-1] - edges[-2]) if len(edges) > 1 else 1_000_000_000
            edges.append(max(edges[-1] + step, time.time_ns()))
            return np.array(edges, dtype=np.int64), ts
        n = max(1, math.ceil((time.time_ns() - self.t_call * 1e9) / 1e9))
        edges = np.array([int(self.t_call * 1e9) + i * 1_000_000_000 for i in range(n + 1)],
                         dtype=np.int64)
        return edges, [float(i) for i in range(n)]

    def _throughput(self, rows: list[tuple[int, int, int]]) -> None:
        edges, ts = self._bins()
        nb = len(ts)
        nf = len(self.flows)
        acc = np.zeros((nb, nf + 1))
        if rows:
            arr = np.array(rows, dtype=np.int64)
            b = np.searchsorted(edges, arr[:, 2], side="right") - 1
            ok = (b >= 0) & (b < nb)
            w = np.array([self.sample.get(int(f), 1) for f in range(nf + 1)])
            np.add.at(acc, (b[ok], arr[ok, 0]), arr[ok, 1] * w[arr[ok, 0]])
        with open(self.out / "flow_throughput.csv", "w", newline="") as f:
            wr = csv.writer(f, lineterminator="\n")
            wr.writerow(["t_s", "flow_id", "rx_bytes", "mbps"])
            for i in range(nb):
                dt = (edges[i + 1] - edges[i]) / 1e9
                for fl in self.flows:
                    by = acc[i, fl.flow_id]
                    wr.writerow([f"{ts[i]:g}", fl.flow_id, int(by),
                                 f"{by * 8 / dt / 1e6:.4f}" if dt > 0 else "0"])

    def _step_at(self, unix_ns: int) -> int:
        """Index into self.steps of the step in force at wall time ``unix_ns``."""
        if not self.steps:
            return -1
        walls = [s[2] for s in self.steps]
        return max(0, int(np.searchsorted(walls, unix_ns, side="right")) - 1)

    def predict_ms(self, job: dict, unix_ns: int) -> float:
        """Alpha-beta prediction (ms) of an iteration of ``job`` started at ``unix_ns``."""
        return self.predictions_ms(job, unix_ns)[0]

    def predictions_ms(self, job: dict, unix_ns: int) -> tuple[float, float]:
        """Phase-by-phase alpha-beta prediction and critical-path prediction (ms) of an
        iteration of ``job`` started at ``unix_ns`` (see :mod:`meshemu.traffic.schedule`)."""
        i = self._step_at(unix_ns)
        if i >= 0:
            k = self.steps[i][0]
            snap = self.snapshots[min(k, len(self.snapshots) - 1)]
            paths = self.paths_at[i]
        else:
            snap = self.snapshots[0]
            paths = None
        plan = job["plan"]
        nodes = job["nodes"]
        delays, links, hop_rates = [], [], []
        rates: dict[int, float] = {}
        for t, fid in zip(plan, job["flow_ids"]):
            p = paths.get(fid) if paths is not None else self._route(
                snap, self.id_of[nodes[t.src]], self.id_of[nodes[t.dst]])
            pl = path_links(snap, p)
            if pl is None:
                return math.nan, math.nan
            delays.append(pl[0])
            links.append(pl[1])
            hop_rates.append(pl[2])
            rates.update(zip(pl[1], pl[2]))
        r = sch.fair_share_rates(plan, links, rates, job["pace_bps"])
        return (sch.predict_iteration_s(plan, delays, r, hop_rates) * 1e3,
                sch.critical_path_s(plan, delays, r, hop_rates) * 1e3)

    def _iterations(self) -> dict[str, list[dict]]:
        per: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for node in self.procs:
            p = self.dir / f"{node}.iterations.csv"
            if not p.exists():
                continue
            for line in p.read_text().splitlines():
                parts = line.split(",")
                if len(parts) != 5:
                    continue
                per.setdefault((parts[0], int(parts[1])), []).append(
                    (int(parts[2]), int(parts[3]), int(parts[4])))
        out: dict[str, list[dict]] = {}
        with open(self.out / "iterations.csv", "w", newline="") as f:
            wr = csv.writer(f, lineterminator="\n")
            wr.writerow(["job", "algorithm", "iteration", "start_unix", "end_unix",
                         "duration_ms", "predicted_ms", "first_start_unix",
                         "critical_path_ms"])
            for job in self.jobs:
                p = len(job["nodes"])
                for it in range(job["iterations"]):
                    rows = per.get((job["job"], it), [])
                    if len(rows) < p:
                        continue  # not finished by every node
                    first = min(r[1] for r in rows)
                    start = max(r[1] for r in rows)
                    end = max(r[2] for r in rows)
                    pred, crit = self.predictions_ms(job, start)
                    rec = {"iteration": it, "start": start, "end": end, "first_start": first,
                           "duration_ms": (end - start) / 1e6, "predicted_ms": pred,
                           "critical_path_ms": crit}
                    out.setdefault(job["job"], []).append(rec)
                    wr.writerow([job["job"], job["algorithm"], it, f"{start / 1e9:.6f}",
                                 f"{end / 1e9:.6f}", f"{rec['duration_ms']:.3f}",
                                 f"{pred:.3f}" if math.isfinite(pred) else "",
                                 f"{first / 1e9:.6f}",
                                 f"{crit:.3f}" if math.isfinite(crit) else ""])
        return out

    def _inference(self) -> list[list[str]]:
        rows = []
        for node in sorted(self.procs):
            p = self.dir / f"{node}.inference.csv"
            if p.exists():
                rows += [ln.split(",") for ln in p.read_text().splitlines()
                         if ln.count(",") == 7]
        rows.sort(key=lambda r: float(r[3]))
        with open(self.out / "inference.csv", "w", newline="") as f:
            wr = csv.writer(f, lineterminator="\n")
            wr.writerow(["request_id", "user", "server", "send_unix", "done_unix", "latency_ms",
                         "deadline_ms", "missed"])
            wr.writerows(rows)
        return rows

    def _make_summary(self, iters, inf, rx_rows, owd, statuses) -> dict:
        lines: list[str] = []
        s: dict[str, Any] = {"flows": len(self.flows), "agents": len(self.procs)}
        for job in self.jobs:
            recs = iters.get(job["job"], [])
            d = [r["duration_ms"] for r in recs]
            pr = [r["predicted_ms"] for r in recs if math.isfinite(r["predicted_ms"])]
            cp = [r["critical_path_ms"] for r in recs if math.isfinite(r["critical_path_ms"])]
            s.setdefault("allreduce", {})[job["job"]] = {
                "algorithm": job["algorithm"], "nodes": len(job["nodes"]),
                "iterations_planned": job["iterations"], "iterations_done": len(recs),
                "mean_ms": float(np.mean(d)) if d else None,
                "predicted_mean_ms": float(np.mean(pr)) if pr else None,
                "critical_path_mean_ms": float(np.mean(cp)) if cp else None}
            if d:
                lines.append(f"all-reduce {job['algorithm']} over {len(job['nodes'])} nodes "
                             f"({job['job']}): {len(d)}/{job['iterations']} iterations, mean "
                             f"{np.mean(d):.0f} ms (predicted "
                             f"{np.mean(pr) if pr else float('nan'):.0f} ms, critical path "
                             f"{np.mean(cp) if cp else float('nan'):.0f} ms)")
            else:
                lines.append(f"all-reduce {job['algorithm']} ({job['job']}): no iteration "
                             f"finished")
        if any(w.kind == "inference" for w in self.resolved.workloads):
            lat = np.array([float(r[5]) for r in inf if r[5]])
            missed = sum(int(r[7]) for r in inf)
            unanswered = sum(1 for r in inf if not r[5])
            s["inference"] = {"requests": len(inf), "answered": int(lat.size),
                              "deadline_misses": missed, "unanswered": unanswered}
            if lat.size:
                p50, p95, p99 = np.percentile(lat, [50, 95, 99])
                s["inference"].update({"p50_ms": p50, "p95_ms": p95, "p99_ms": p99})
                lines.append(f"inference: {len(inf)} requests, p50/p95/p99 {p50:.0f}/{p95:.0f}/"
                             f"{p99:.0f} ms, {missed} deadline misses ({unanswered} "
                             f"unanswered)")
            else:
                lines.append(f"inference: {len(inf)} requests, none answered")
        for fl in self.flows:
            if fl.kind not in ("bulk", "replay"):
                continue
            every = self.sample.get(fl.flow_id, 1)
            got = [r for r in rx_rows if r[0] == fl.flow_id]
            by = sum(r[1] for r in got) * every
            o = owd.get(fl.flow_id, [])
            span = (max(r[2] for r in got) - min(r[2] for r in got)) / 1e9 if len(got) > 1 \
                else 0.0
            rate = by * 8 / span / 1e6 if span > 0 else 0.0
            s.setdefault("streams", {})[fl.name] = {"rx_bytes": by, "rx_packets": len(got) * every,
                                                    "mbps": rate,
                                                    "owd_p50_ms": float(np.median(o)) if o else None}
            lines.append(f"{fl.kind} {fl.src}->{fl.dst}: {by / 1e6:.1f} MB in {len(got) * every} "
                         f"packets, {rate:.1f} Mbit/s, one-way delay p50 "
                         f"{np.median(o) if o else float('nan'):.1f} ms")
        retx = sum(st.get("retransmissions", 0) for st in statuses.values())
        sent = sum(st.get("sent_packets", 0) for st in statuses.values())
        cpu = sum(st.get("cpu_s", 0.0) for st in statuses.values())
        s.update({"sent_packets": sent, "retransmissions": retx,
                  "received_packets": len(rx_rows), "agents_cpu_s": round(cpu, 2)})
        lines.append(f"traffic: {sent} packets sent, {retx} retransmitted, "
                     f"{len(self.procs)} agents using {cpu:.1f} CPU-s")
        s["lines"] = lines
        return s


def start_traffic(profile: str | Path | Profile, scenario, emu, sched, snapshots: list,
                  out_dir: Path | str, wall_duration_s: float, tables0=None) -> TrafficRun:
    """Resolve ``profile`` against the scenario's nodes and start its agents.

    Parameters
    ----------
    profile : str, Path or Profile
        A profile name in ``traffic/``, a YAML path, or a loaded profile.
    scenario : Scenario
        (Only used for logging; nodes come from ``sched.nodes``.)
    emu : meshemu.live.emulation.Emulation
        The built network.
    sched : LinkSchedule or any object with ``nodes.names`` and ``nodes.kind``
    snapshots : list of Snapshot
        The run's snapshots by step (for path delays, rates and predictions).
    out_dir : path
        The run directory.
    wall_duration_s : float
        Wall-clock seconds the traffic may run (from now).
    tables0 : ForwardingTables, optional
        The tables installed at step 0; paths at the start (pacing, first server ranking)
        follow them. Without them, a shortest-delay path is assumed.

    Raises
    ------
    ProfileError
        The profile is malformed or names unknown nodes.
    EmulationError
        An agent could not start.
    """
    prof = load_profile(profile)
    res = resolve(prof, sched.nodes.names, sched.nodes.kind)
    run = TrafficRun(res, emu, snapshots, Path(out_dir), wall_duration_s, tables0)
    try:
        run.start_agents()
    except BaseException:
        run.stop()
        raise
    return run

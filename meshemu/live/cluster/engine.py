"""The driver of a run over several hosts, on Ray.

Ray (https://docs.ray.io) is the control plane: membership (the Ray nodes, each with the
custom resource ``meshemu-host-<i>``), placement (one :class:`HostWorker` actor per host,
pinned by that resource), remote calls (build, each step's share, stop), failure detection
(a dead actor raises ``RayActorError``; a call that does not return in time is a host that
fell behind) and collecting results. meshemu keeps only what is specific to emulation.

:class:`ClusterEmulation` stands where :class:`~meshemu.live.emulation.Emulation` stands in
``meshemu run``: ``build(links, first_snapshot, first_tables)``, ``apply(snapshot, tables)
-> StepStats`` and ``stop()``. The driver keeps the whole link table and the previous
tables; each step it sends each host only the links it has an end of and the route changes
of its nodes. Before building it measures, per pair of hosts with links between them, the
substrate's round trip (``ping`` from one worker to the other, minimum of 10), and takes
half of it off the delay the shaper adds to those links; and, at start and at the end, each
host's clock offset to the driver's (the sample with the shortest round trip of
:data:`CLOCK_SAMPLES`; its half round trip bounds the error).

Traffic: :meth:`ClusterEmulation.agents` is the run's agent supervisor (its agents run on
their nodes' hosts, :mod:`meshemu.live.cluster.traffic`), :attr:`ClusterEmulation.shaper`
gathers every host's link counters, and :meth:`ClusterEmulation.owd_trust` applies the
one-way-delay trust rule (:mod:`meshemu.traffic.clocks`) to the clock offsets measured at
start and at the end of the traffic.
"""

from __future__ import annotations

import csv
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import EmulationError
from meshemu.live import addressing as adr
from meshemu.live.cluster.simhosts import host_resource
from meshemu.live.cluster.worker import HostWorker, clean_host, host_run_id
from meshemu.live.emulation import StepStats
from meshemu.live.links import LinkTable, RunLinks
from meshemu.live.tunnels import LINK_MTU, VXLAN_OVERHEAD, CutLink, vni_of
from meshemu.partition import Partition
from meshemu.routing import RouteDiff, route_diff

log = logging.getLogger(__name__)

#: Seconds a host may take to build its share.
BUILD_TIMEOUT_S = 600.0
#: A step's share must be applied within this many step periods (at least
#: :data:`STEP_TIMEOUT_MIN_S`), or the host is reported as fallen behind and the run stops.
STEP_TIMEOUT_PERIODS = 5.0
STEP_TIMEOUT_MIN_S = 10.0
#: Ray calls to each host's clock when its clock server cannot be reached; the shortest
#: one's sample is kept.
CLOCK_SAMPLES = 15
#: Exchanges with each host's UDP clock server (about 0.1 ms each on a LAN; the shortest
#: round trip's sample is kept, so more find one not delayed by a busy CPU), and how long
#: one waits for its answer.
CLOCK_UDP_SAMPLES = 200
CLOCK_UDP_TIMEOUT_S = 0.2
#: Columns of ``hosts_steps.csv``: per step and host, the worker's apply time, the driver's
#: round trip for all hosts' shares, and when this host was done after the driver sent the
#: step (its clock corrected by the offset measured at start): the host's own lag.
HOST_STEP_COLUMNS = (
    "step",
    "host",
    "apply_ms",
    "call_ms",
    "done_ms",
    "link_updates",
    "route_changes",
)


def connect(address: str) -> Any:
    """``ray.init`` to the cluster at ``address`` (``HOST:PORT``), with a clear error."""
    try:
        import ray
    except ImportError:
        raise EmulationError(
            "meshemu run --cluster needs Ray: install meshemu with ./install.sh (the "
            "'cluster' extra: pip install 'meshemu[cluster]')"
        ) from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # ConnectionError, AuthenticationError
            raise EmulationError(
                f"cannot join the Ray cluster at {address}: {exc}. Start it with "
                f"`meshemu cluster start` (see README, Beyond one machine); with token "
                f"authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH"
            ) from None
    return ray


def cluster_hosts(ray: Any) -> dict[int, str]:
    """Host index -> node address of every live Ray node with a ``meshemu-host-<i>``
    resource."""
    out: dict[int, str] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for res in node.get("Resources", {}):
            if res.startswith("meshemu-host-") and res[13:].isdigit():
                out[int(res[13:])] = node["NodeManagerAddress"]
    return out


class ClusterEmulation:
    """A run's network spread over the hosts of a Ray cluster (see the module docstring).

    Parameters
    ----------
    address : str
        The Ray head, ``HOST:PORT``.
    names, kinds : sequences of str
    partition : Partition
    shaper : str
        The shaper every host uses (``userspace``: the links between hosts go through its
        delay line).
    run_dir : path
    run_id : str
    period_s : float
        Wall seconds per step (the step timeout is a multiple of it).
    """

    def __init__(
        self,
        address: str,
        names: list[str],
        kinds: list[str],
        partition: Partition,
        shaper: str,
        run_dir: Path,
        run_id: str,
        period_s: float,
        shaper_workers: int = 1,
    ) -> None:
        self.address = address
        self.names, self.kinds = list(names), list(kinds)
        self.partition = partition
        self.shaper_name = shaper
        self.shaper_workers = shaper_workers
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.step_timeout_s = max(STEP_TIMEOUT_MIN_S, STEP_TIMEOUT_PERIODS * period_s)
        self.workers: dict[int, Any] = {}
        self.info: dict[int, dict[str, Any]] = {}
        self.links: LinkTable | None = None
        self.substrate_s: dict[str, float] = {}
        self.clock: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.host_timings: dict[int, dict[str, float]] = {}
        self.below_substrate: list[tuple[str, str, float, float]] = []
        self._tables: Any = None
        self._ray: Any = None
        self._stopped = False
        self._dead: set[int] = set()
        self._step = 0
        self._rows: list[tuple] = []
        self._csv: Any = None
        self._writer: Any = None
        #: The link ends (node ids) by link id, as the traffic's link counters read them.
        self.plan: Any = None
        #: Added to host i's measured clock offset (ms): a test hook for the trust rule
        #: (simulated hosts share one kernel clock); empty in a real run.
        self.clock_skew_ms: dict[int, float] = {}
        self._clock_ports: dict[int, int] = {}

    @property
    def n_hosts(self) -> int:
        return self.partition.n_hosts

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    def host_name(self, h: int) -> str:
        """``host <i> (<address>, <hostname>)`` for messages."""
        i = self.info.get(h, {})
        where = ", ".join(str(x) for x in (i.get("address"), i.get("hostname")) if x)
        return f"host {h}" + (f" ({where})" if where else "")

    # -- build -------------------------------------------------------------------------------
    def build(self, links: RunLinks, first_snapshot: Any, first_tables: Any) -> None:
        """Start a worker on every host, measure the substrate, build every share."""
        ray = self._ray = connect(self.address)
        t0 = time.perf_counter()
        try:
            self._start_workers(ray)
            self.clock["start"] = self.measure_clocks()
            self.links = LinkTable(links, self.names)
            self.links.load(first_snapshot)
            key = np.asarray(links.key, dtype=np.int64)
            self.plan = _LinkEnds(key // self.n_nodes, key % self.n_nodes)
            cut = self._cut_links(links)
            specs = self._specs(links, first_snapshot, first_tables, cut)
            refs = {h: self.workers[h].build.remote(specs[h]) for h in self.workers}
            for h, res in self._gather(refs, BUILD_TIMEOUT_S, "build its share").items():
                self.host_timings[h] = res
            self._tables = first_tables
            self._open_csv()
        except BaseException:
            self.stop()
            raise
        self.timings["build_s"] = time.perf_counter() - t0

    def _start_workers(self, ray: Any) -> None:
        hosts = cluster_hosts(ray)
        missing = [h for h in range(self.n_hosts) if h not in hosts]
        if missing:
            raise EmulationError(
                f"the partition needs {self.n_hosts} hosts, but the Ray cluster at "
                f"{self.address} has no live node with resource(s) "
                f"{', '.join(host_resource(h) for h in missing)} (it has "
                f"{sorted(hosts) or 'none'}); start meshemu's Ray on every host with "
                f"`meshemu cluster start --host I`, or give --hosts {len(hosts)}"
            )
        actor = ray.remote(HostWorker)
        for h in range(self.n_hosts):
            self.workers[h] = actor.options(
                resources={host_resource(h): 1},
                num_cpus=0,
                max_restarts=0,
                name=f"meshemu-{self.run_id}-h{h}",
            ).remote(h, self.run_id)
        refs = {h: w.info.remote() for h, w in self.workers.items()}
        self.info = self._gather(refs, 120.0, "start its meshemu worker")
        for h, i in self.info.items():
            log.info("%s: worker pid %d", self.host_name(h), i["pid"])

    def _cut_links(self, links: RunLinks) -> dict[int, list[CutLink]]:
        """Per host, its ends of the links to other hosts; the substrate measured first."""
        p = self.partition
        n = self.n_nodes
        a, b = links.key // n, links.key % n
        ha, hb = p.host[a], p.host[b]
        cut_ids = np.flatnonzero(ha != hb)
        pairs = sorted({(int(min(x, y)), int(max(x, y))) for x, y in zip(ha[cut_ids], hb[cut_ids])})
        addr = {h: self.info[h]["address"] for h in self.info}
        refs = {pr: self.workers[pr[0]].ping.remote(addr[pr[1]]) for pr in pairs}
        rtt: dict[tuple[int, int], float] = self._gather_keyed(
            refs, 120.0, "measure the substrate's latency"
        )
        mtus = self._gather(
            {h: self.workers[h].underlay_mtu.remote(addr[h]) for h in self.workers},
            60.0,
            "read its cluster interface's MTU",
        )
        for pr, r in rtt.items():
            self.substrate_s[f"{pr[0]}-{pr[1]}"] = r / 2
        rows = self.links.rows if self.links is not None else None
        out: dict[int, list[CutLink]] = {h: [] for h in range(self.n_hosts)}
        for k in cut_ids.tolist():
            x, y = int(ha[k]), int(hb[k])
            lo, hi = min(x, y), max(x, y)
            mtu = min(LINK_MTU, mtus[x] - VXLAN_OVERHEAD, mtus[y] - VXLAN_OVERHEAD)
            off = rtt[(lo, hi)] / 2
            if rows is not None and rows["up"][k] and rows["delay_s"][k] < off:
                self.below_substrate.append(
                    (self.names[a[k]], self.names[b[k]], float(rows["delay_s"][k]), off)
                )
            for side, h, peer in (("a", x, y), ("b", y, x)):
                out[h].append(
                    CutLink(
                        k,
                        shaped_here=(h == lo),
                        local_ip=addr[h],
                        remote_ip=addr[peer],
                        vni=vni_of(k),
                        mtu=mtu,
                        offset_s=off,
                        side=side,
                    )
                )
        if self.below_substrate:
            bad = self.below_substrate[0]
            log.warning(
                "%d link(s) between hosts have a planned delay below the substrate's "
                "latency, e.g. %s-%s: %.3f ms planned, %.3f ms substrate; they carry the "
                "substrate's delay",
                len(self.below_substrate),
                bad[0],
                bad[1],
                bad[2] * 1e3,
                bad[3] * 1e3,
            )
        return out

    def _specs(
        self, links: RunLinks, snap: Any, tables: Any, cut: dict[int, list[CutLink]]
    ) -> dict[int, dict[str, Any]]:
        p = self.partition
        return {
            h: {
                "names": self.names,
                "kinds": self.kinds,
                "links": links,
                "snapshot": snap,
                "tables": tables,
                "local": p.host == h,
                "cut": cut[h],
                "shaper": self.shaper_name,
                "shaper_workers": self.shaper_workers,
                "run_dir": str(self.run_dir),
            }
            for h in range(self.n_hosts)
        }

    def measure_clocks(self) -> dict[str, dict[str, float]]:
        """Per host, its clock's offset to the driver's (ms, + = ahead), the bound on the
        error (half the shortest round trip) and how it was measured (``via``: ``udp``, the
        host's clock server, or ``ray`` calls when that cannot be reached)."""
        ray = self._ray
        out: dict[str, dict[str, Any]] = {}
        for h, w in self.workers.items():
            if h in self._dead:
                continue
            best = self._udp_clock(h)
            via = "udp"
            if best is None:
                via = "ray"
                for _ in range(CLOCK_SAMPLES):
                    t0 = time.time()
                    remote = ray.get(w.clock.remote(), timeout=30)
                    t1 = time.time()
                    sample = (t1 - t0, remote - (t0 + t1) / 2)
                    if best is None or sample[0] < best[0]:
                        best = sample
            assert best is not None
            skew = self.clock_skew_ms.get(h, 0.0)
            out[str(h)] = {
                "offset_ms": best[1] * 1e3 + skew,
                "error_ms": best[0] / 2 * 1e3,
                "via": via,
            }
        return out

    def _udp_clock(self, h: int) -> tuple[float, float] | None:
        """(round trip, offset) in s of the shortest of :data:`CLOCK_UDP_SAMPLES` exchanges
        with host ``h``'s clock server (Cristian's algorithm); None when it does not answer."""
        import socket

        from meshemu.live.cluster.worker import CLOCK_REPLY

        addr = self.info.get(h, {}).get("address")
        if addr is None:
            return None
        try:
            if h not in self._clock_ports:
                self._clock_ports[h] = self._ray.get(
                    self.workers[h].clock_server.remote(addr), timeout=30
                )
        except Exception as exc:  # noqa: BLE001 (an older worker, a dead host)
            log.info("%s: no clock server (%s)", self.host_name(h), exc)
            return None
        best: tuple[float, float] | None = None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(CLOCK_UDP_TIMEOUT_S)
            try:
                sock.connect((addr, self._clock_ports[h]))
            except OSError as exc:
                log.info("%s: clock server unreachable (%s)", self.host_name(h), exc)
                return None
            for i in range(CLOCK_UDP_SAMPLES):
                seq = i.to_bytes(8, "big")
                try:
                    t0 = time.time_ns()
                    sock.send(seq)
                    while True:  # (a late answer to an earlier request is skipped)
                        remote, got = CLOCK_REPLY.unpack(sock.recv(64)[: CLOCK_REPLY.size])
                        if got == seq:
                            break
                    t1 = time.time_ns()
                except (OSError, struct.error):  # a lost datagram (socket.timeout is one)
                    continue
                # (integer ns: a float of ~1.8e18 ns keeps only 256 ns)
                sample = ((t1 - t0) / 1e9, (remote - (t0 + t1) // 2) / 1e9)
                if best is None or sample[0] < best[0]:
                    best = sample
        if best is None:
            log.info("%s: its clock server did not answer", self.host_name(h))
        return best

    # -- gathering with failure detection ---------------------------------------------------
    def _gather(self, refs: dict[int, Any], timeout_s: float, what: str) -> dict[int, Any]:
        return self._gather_keyed(refs, timeout_s, what)

    def _gather_keyed(self, refs: dict[Any, Any], timeout_s: float, what: str) -> dict[Any, Any]:
        """``ray.get`` of every ref; a dead or late host raises EmulationError naming it."""
        ray = self._ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        out: dict[Any, Any] = {}
        deadline = time.monotonic() + timeout_s
        for key, ref in refs.items():
            h = key if isinstance(key, int) else key[0]
            try:
                out[key] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except RayActorError as exc:
                self._dead.add(h)
                raise EmulationError(
                    f"{self.host_name(h)}: its meshemu worker died while it was to {what} "
                    f"({type(exc).__name__}); the run stops on every host"
                ) from None
            except GetTimeoutError:
                raise EmulationError(
                    f"{self.host_name(h)} fell behind: it did not {what} within "
                    f"{timeout_s:.0f} s; the run stops on every host"
                ) from None
            except RayTaskError as exc:
                raise EmulationError(
                    f"{self.host_name(h)} failed to {what}: {getattr(exc, 'cause', exc)}"
                ) from None
        return out

    # -- steps -------------------------------------------------------------------------------
    def apply(self, snapshot: Any, tables: Any, diff: RouteDiff | None = None) -> StepStats:
        """Send each host its share of the step; wait for all; the step's statistics
        (``diff``: how ``tables`` differ from the previous step's, when already known)."""
        if self.links is None or self._stopped:
            raise EmulationError("apply() needs a built, running cluster emulation")
        t0 = time.perf_counter()
        self._step += 1
        n = self.n_nodes
        changes = self.links.advance(snapshot)
        ids = changes.ids
        rows = self.links.rows[ids]
        if diff is None:
            diff = route_diff(self._tables, tables)
        dests = np.asarray(tables.destinations, dtype=np.int64)
        nodes = np.asarray(diff.nodes, dtype=np.int64)
        order = np.argsort(nodes, kind="stable")
        u = nodes[order]
        d = dests[np.asarray(diff.dest_index)[order]]
        hops = np.asarray(diff.new)[order]
        keep = u != d
        u, d, hops = u[keep], d[keep], hops[keep]
        host = self.partition.host
        la, lb = host[self.links.links.key[ids] // n], host[self.links.links.key[ids] % n]
        hu = host[u]
        sent = time.perf_counter()
        sent_unix = time.time()
        offsets = self.clock.get("start", {})
        refs = {}
        for h, w in self.workers.items():
            mine = (la == h) | (lb == h)
            r = hu == h
            refs[h] = w.apply.remote(ids[mine], rows[mine], u[r], d[r], hops[r])
        res = self._gather(refs, self.step_timeout_s, f"apply step {self._step}")
        done = time.perf_counter()
        for h, x in res.items():
            off_s = offsets.get(str(h), {}).get("offset_ms", 0.0) / 1e3
            row = (
                self._step,
                h,
                round(x["apply_s"] * 1e3, 3),
                round((done - sent) * 1e3, 3),
                round((x["unix_s"] - off_s - sent_unix) * 1e3, 3),
                x["links"],
                x["routes"],
            )
            self._rows.append(row)
            if self._writer is not None:
                self._writer.writerow(row)
        if self._csv is not None:
            self._csv.flush()  # (a few rows per step: followed as the run goes)
        self._tables = tables
        return StepStats(
            float(snapshot.t_s),
            int(ids.size),
            int(u.size),
            time.perf_counter() - t0,
            diff,
            changes.n_went_up,
            changes.n_went_down,
        )

    # -- traffic -----------------------------------------------------------------------------
    def host_of(self, name: str) -> int:
        """The host that holds node ``name``."""
        try:
            return int(self.partition.host[self.names.index(name)])
        except ValueError:
            raise EmulationError(f"unknown node {name!r}") from None

    def node_address(self, name: str) -> str:
        """The node address (on ``lo``) of node ``name``: the same on every host."""
        self.host_of(name)
        return adr.node_address(self.names.index(name))

    def agents(self, directory: Path) -> Any:
        """The run's agent supervisor (:class:`~meshemu.live.cluster.traffic.RemoteAgents`),
        writing the agents' files into ``directory`` at the end."""
        from meshemu.live.cluster.traffic import RemoteAgents

        return RemoteAgents(self, directory)

    @property
    def shaper(self) -> Any:
        """Every host's shaper seen as one for its link counters (``counters()``)."""
        return _ClusterCounters(self)

    def owd_trust(self, flows: Any, threshold_ms: float) -> list[Any]:
        """The trust rule (:func:`meshemu.traffic.clocks.flow_trust`) per flow, with the
        clocks measured at start and now (the end of the traffic; measured once)."""
        from meshemu.traffic.clocks import flow_trust

        if "end" not in self.clock and not self._stopped:
            try:
                self.clock["end"] = self.measure_clocks()
            except Exception as exc:  # noqa: BLE001 (a dead host: its flows are untrusted)
                log.warning("clock offsets at the end of the traffic: %s", exc)
        host_of = {n: int(h) for n, h in zip(self.names, self.partition.host)}
        return flow_trust(flows, host_of, self.clock, threshold_ms)

    def node_exec(self, name: str, argv: list[str], timeout_s: float = 60.0) -> tuple[int, str]:
        """Run ``argv`` in node ``name`` (on its host); (exit status, output)."""
        i = self.names.index(name)
        h = int(self.partition.host[i])
        return self._gather(
            {h: self.workers[h].node_exec.remote(name, argv, timeout_s)},
            timeout_s + 30,
            f"run {argv[0]} in {name}",
        )[h]

    def summary(self) -> dict[str, Any]:
        """The ``cluster`` section of ``summary.json``."""
        per: dict[str, Any] = {}
        arr = np.array([r[2] for r in self._rows]) if self._rows else np.zeros(0)
        call = np.array([r[3] for r in self._rows]) if self._rows else np.zeros(0)
        done = np.array([r[4] for r in self._rows]) if self._rows else np.zeros(0)
        hosts = np.array([r[1] for r in self._rows], dtype=np.int64)
        for h in range(self.n_hosts):
            sel = hosts == h
            a, c, dn = arr[sel], call[sel], done[sel]
            per[str(h)] = {
                **{k: self.info.get(h, {}).get(k) for k in ("address", "hostname")},
                "nodes": int((self.partition.host == h).sum()),
                "build_s": self.host_timings.get(h, {}).get("build_s"),
                "apply_ms_p50": float(np.percentile(a, 50)) if a.size else None,
                "apply_ms_p99": float(np.percentile(a, 99)) if a.size else None,
                "call_ms_p99": float(np.percentile(c, 99)) if c.size else None,
                "done_ms_p99": float(np.percentile(dn, 99)) if dn.size else None,
            }
        clock = dict(self.clock)
        worst = max(
            (abs(v["offset_ms"]) + v["error_ms"] for s in clock.values() for v in s.values()),
            default=0.0,
        )
        return {
            "address": self.address,
            "n_hosts": self.n_hosts,
            "partition": {k: v for k, v in self.partition.to_dict().items() if k != "cut"},
            "hosts": per,
            "substrate_one_way_ms": {k: v * 1e3 for k, v in self.substrate_s.items()},
            "links_below_substrate": [
                {"a": x[0], "b": x[1], "planned_ms": x[2] * 1e3, "substrate_ms": x[3] * 1e3}
                for x in self.below_substrate
            ],
            "clock": clock,
            "clock_offset_bound_ms": worst,
            "overall_call_ms_p99": float(np.percentile(call, 99)) if call.size else None,
        }

    def _open_csv(self) -> None:
        self._csv = open(self.run_dir / "hosts_steps.csv", "w", newline="")
        self._writer = csv.writer(self._csv)
        self._writer.writerow(HOST_STEP_COLUMNS)

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every host's share; a host whose worker died is cleaned by a task on that
        host (``meshemu clean`` of its run id). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        ray = self._ray
        errors: list[str] = []
        if ray is not None and self.workers:
            try:
                if "end" not in self.clock:  # (measured at the end of the traffic)
                    self.clock["end"] = self.measure_clocks()
            except Exception as exc:  # noqa: BLE001 (a dead host: reported below)
                log.info("clock at the end: %s", exc)
            refs = {h: w.stop.remote() for h, w in self.workers.items() if h not in self._dead}
            for h, ref in refs.items():
                try:
                    self.host_timings.setdefault(h, {}).update(ray.get(ref, timeout=300))
                except Exception as exc:  # noqa: BLE001 (a worker that died at the end)
                    self._dead.add(h)
                    log.warning("%s: stop failed (%s)", self.host_name(h), exc)
            for h in sorted(self._dead):
                task = ray.remote(clean_host).options(
                    resources={host_resource(h): 1}, num_cpus=0, max_retries=0
                )
                try:
                    removed = ray.get(task.remote(host_run_id(self.run_id, h)), timeout=120)
                    log.warning("%s: cleaned after its worker died: %s", self.host_name(h), removed)
                except Exception as exc:  # noqa: BLE001
                    errors.append(
                        f"{self.host_name(h)}: could not clean it ({exc}); run `meshemu clean "
                        f"{host_run_id(self.run_id, h)}` there"
                    )
            for w in self.workers.values():
                try:
                    ray.kill(w, no_restart=True)
                except Exception:  # noqa: BLE001 (already dead)
                    pass
        if self._csv is not None:
            self._csv.close()
        if ray is not None and os.environ.get("MESHEMU_KEEP_RAY") != "1":
            ray.shutdown()
        if errors:
            raise EmulationError("; ".join(errors))


class _LinkEnds:
    """The ends ``a``, ``b`` (node ids) of every link, by link id."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a, self.b = a, b


class _ClusterCounters:
    """The hosts' shapers seen as one shaper, for its link counters (``counters()``: a link
    between hosts is shaped, so counted, by one host; a link counted by two is summed) and
    its fidelity guard (``guard()``: every host's records; a link is shaped, so measured,
    where its frames are delayed, and a link both hosts measure has a record from each)."""

    has_guard = True

    def __init__(self, emu: ClusterEmulation):
        self.emu = emu
        self.name = f"{emu.shaper_name} (over {emu.n_hosts} hosts)"

    def guard(self) -> list[Any]:
        e = self.emu
        refs = {h: w.guard.remote() for h, w in e.workers.items() if h not in e._dead}
        got = e._gather(refs, e.step_timeout_s, "read its fidelity guard")
        return [r for h in sorted(got) for r in got[h]]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        e = self.emu
        refs = {h: w.counters.remote() for h, w in e.workers.items() if h not in e._dead}
        out: dict[int, tuple[int, int, int]] = {}
        for c in e._gather(refs, e.step_timeout_s, "read its link counters").values():
            for lid, (pk, by, dr) in c.items():
                o = out.get(lid, (0, 0, 0))
                out[lid] = (o[0] + pk, o[1] + by, o[2] + dr)
        return out

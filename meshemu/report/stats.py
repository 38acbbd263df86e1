"""Statistics of a run: per flow (loss, reordering, one-way delay, throughput, path
changes), per all-reduce job, of inference requests and of the emulation clock.

Input: a :class:`~meshemu.report.run.Run`; output: :class:`RunStats`.

Definitions
-----------
Emulated time of a packet
    ``t_s = t_s[step 0] + (send_unix_ns / 1e9 - unix_s[step 0]) * time_scale``, with step 0
    taken from ``steps.csv`` (its ``unix_s`` is the moment the clock started) and
    ``time_scale`` from ``summary.json`` (default 1).
Percentiles
    ``numpy.percentile`` with linear interpolation between order statistics (NumPy's default,
    method 7 of Hyndman and Fan, *Sample quantiles in statistical packages*, 1996).
Sequence groups
    ``packets.csv`` numbers packets by ``(msg_id, seq)``; each sender (``src``) of a flow
    numbers its packets on its own, so everything below is per sender, then added up. The
    traffic agents count every packet a sender puts on a flow in ``seq`` (retransmissions
    included, see :mod:`meshemu.traffic.header`): ``seq`` is then flow-wide and the sender's
    packets are one group running from its smallest to its largest ``seq``. When instead a
    ``seq`` value occurs in more than one message, ``seq`` restarts in every message and each
    message is a group running from the sender's smallest ``seq`` (the common first number,
    usually 0) to the largest ``seq`` logged for that message.
Loss
    ``lost = expected - received`` where ``expected`` is the number of sequence numbers in
    the groups' ranges and ``received`` the number of distinct ``(msg_id, seq)`` with a
    receive time (a row whose ``recv_unix_ns`` and ``owd_ms`` are both empty is a packet that
    was sent and not received). ``loss % = 100 * lost / expected``. Packets lost after the
    last one logged for their message are not counted unless the sender logged them. With
    flow-wide ``seq`` this is loss in the network: a retransmission has a new ``seq``, so the
    packet it replaces still counts as lost.
Reordering
    Received packets in order of ``recv_unix_ns``: a packet is reordered when its ``seq`` is
    lower than a ``seq`` already received in the same group.
    ``reordering % = 100 * reordered / received packets``.
Throughput
    Mean of the flow's ``mbps`` samples in ``flow_throughput.csv``; without that file,
    received bytes * 8 / (last receive - first receive).
Inference deadline misses
    The ``missed`` column when it is filled, else a request with no latency or a latency
    above its ``deadline_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from meshemu.report.files import (
    FLOW_PATHS,
    FLOW_THROUGHPUT,
    FLOWS,
    INFERENCE,
    ITERATIONS,
    OWD_TRUST,
    PACKETS,
    PATHS,
    RTT,
    STEPS,
    TRAFFIC_FILES,
)
from meshemu.report.run import Run, Table, group_indices, n_rows, natural_key, pair_indices

#: Percentiles reported for delays and latencies.
PERCENTILES = (50, 95, 99)


def percentiles(values: Iterable[float], qs: Sequence[float] = PERCENTILES) -> list[float]:
    """Percentiles of the finite values (NaN each when there are none); linear interpolation
    (``numpy.percentile`` default)."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [math.nan] * len(qs)
    return [float(x) for x in np.percentile(v, qs)]


@dataclass(frozen=True)
class SeqStats:
    """Loss and reordering of one flow (see the module docstring for the definitions)."""

    expected: int
    received: int  # distinct (msg_id, seq) received
    lost: int
    reordered: int
    arrivals: int  # received rows (duplicates included)
    per_message_seq: bool  # True when seq restarts in every message

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else math.nan

    @property
    def reorder_pct(self) -> float:
        return 100.0 * self.reordered / self.arrivals if self.arrivals else math.nan


def sequence_stats(
    msg_id: np.ndarray, seq: np.ndarray, recv_time: np.ndarray, sender: np.ndarray | None = None
) -> SeqStats:
    """Loss and reordering of one flow from its packet log.

    Parameters
    ----------
    msg_id : array of str or int, shape (N,)
    seq : array of float or int, shape (N,)
    recv_time : array of float, shape (N,)
        Receive time (any unit); NaN for a packet logged as sent but not received.
    sender : array of str, shape (N,), optional
        The packet's source node. Each sender numbers its packets on its own (a flow that
        carries requests one way and responses the other has two counters); the counts of
        the senders are added up.
    """
    if sender is not None:
        sender = np.asarray(sender).astype(str)
        parts = [
            sequence_stats(np.asarray(msg_id)[i], np.asarray(seq)[i], np.asarray(recv_time)[i])
            for i in group_indices(sender).values()
        ]
        if len(parts) != 1:
            return SeqStats(
                sum(p.expected for p in parts),
                sum(p.received for p in parts),
                sum(p.lost for p in parts),
                sum(p.reordered for p in parts),
                sum(p.arrivals for p in parts),
                any(p.per_message_seq for p in parts),
            )
    msg_id = np.asarray(msg_id)
    seq = np.asarray(seq, dtype=float)
    recv_time = np.asarray(recv_time, dtype=float)
    ok = np.isfinite(seq)
    msg_id, seq, recv_time = msg_id[ok], seq[ok].astype(np.int64), recv_time[ok]
    if seq.size == 0:
        return SeqStats(0, 0, 0, 0, 0, False)
    _, msg = np.unique(msg_id, return_inverse=True)
    msg = msg.reshape(-1).astype(np.int64)
    pairs = np.unique(np.stack([msg, seq], axis=1), axis=0)
    _, msgs_per_seq = np.unique(pairs[:, 1], return_counts=True)
    per_message = bool((msgs_per_seq > 1).any())
    base = int(seq.min())
    group = msg if per_message else np.zeros_like(msg)
    n_groups = int(group.max()) + 1
    top = np.full(n_groups, base - 1, np.int64)
    np.maximum.at(top, group, seq)
    present = np.zeros(n_groups, bool)
    present[group] = True
    expected = int((top[present] - base + 1).sum())
    got = np.isfinite(recv_time)
    received = (
        int(np.unique(np.stack([msg[got], seq[got]], axis=1), axis=0).shape[0]) if got.any() else 0
    )
    # reordering: in arrival order, per group, seq below the running maximum
    g, s, r = group[got], seq[got], recv_time[got]
    order = np.lexsort((r, g))  # by group, then receive time (stable)
    g, s = g[order], s[order]
    span = int(s.max() - s.min()) + 1 if s.size else 1
    shifted = (s - (s.min() if s.size else 0)) + g * span  # groups never overlap
    run_max = np.maximum.accumulate(shifted) if s.size else shifted
    prev_max = np.concatenate([[np.iinfo(np.int64).min], run_max[:-1]])
    reordered = int((shifted < prev_max).sum())
    return SeqStats(
        expected, received, max(expected - received, 0), reordered, int(got.sum()), per_message
    )


@dataclass(frozen=True)
class FlowStats:
    """Statistics of one traffic flow."""

    flow_id: str
    name: str
    kind: str
    src: str
    dst: str
    seq: SeqStats
    owd_ms: np.ndarray = field(repr=False)  # received packets' one-way delays
    t_s: np.ndarray = field(repr=False)  # their send times, emulated
    throughput_mbps: float
    path_changes: int

    @property
    def owd_p(self) -> list[float]:
        return percentiles(self.owd_ms)


@dataclass(frozen=True)
class JobStats:
    """All-reduce iteration times of one job (or of all jobs pooled)."""

    job: str
    algorithm: str
    iterations: int
    mean_ms: float
    p95_ms: float
    predicted_mean_ms: float
    predicted_p95_ms: float

    @property
    def error_pct(self) -> float:
        """How much slower (positive) the measured mean is than the predicted mean."""
        if not (self.predicted_mean_ms and math.isfinite(self.predicted_mean_ms)):
            return math.nan
        return 100.0 * (self.mean_ms - self.predicted_mean_ms) / self.predicted_mean_ms


@dataclass(frozen=True)
class InferenceStats:
    """Latency of inference requests."""

    requests: int
    completed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    deadline_misses: int

    @property
    def miss_pct(self) -> float:
        return 100.0 * self.deadline_misses / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class RunStats:
    """Everything the report says about a run."""

    label: str
    flows: list[FlowStats]
    jobs: list[JobStats]  # per job, then "all jobs" pooled (when any)
    inference: InferenceStats | None
    route_changes: int | None
    link_updates: int | None
    steps: int | None
    apply_ms_p50: float
    apply_ms_p99: float
    lag_ms_p99: float
    notes: list[str]
    rtt_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def owd_all_ms(self) -> np.ndarray:
        """One-way delays of every received packet of every flow."""
        return np.concatenate([f.owd_ms for f in self.flows]) if self.flows else np.zeros(0)


def flow_stats(run: Run) -> list[FlowStats]:
    """Per-flow statistics; flows come from ``flows.csv``, plus any other flow id found in
    ``packets.csv``, ``flow_paths.csv`` or ``flow_throughput.csv``."""
    pk = run.table(PACKETS)
    thr = run.table(FLOW_THROUGHPUT)
    fp = run.table(FLOW_PATHS)
    paths = run.table(PATHS)
    pk_groups = group_indices(pk["flow_id"]) if pk is not None else {}
    thr_groups = group_indices(thr["flow_id"]) if thr is not None else {}
    fp_groups = group_indices(fp["flow_id"]) if fp is not None else {}
    pair_groups = pair_indices(paths) if paths is not None else {}
    flows = _flow_names(run, pk_groups, fp_groups, thr_groups)
    untrusted = _untrusted_owd(run)
    out = []
    for fid in sorted(flows, key=natural_key):
        info = flows[fid]
        idx = pk_groups.get(fid)
        if pk is not None and idx is not None:
            sq, owd_ms, t_s, mbps = _packet_stats(run, pk, idx)
            if fid in untrusted:  # the run refused its one-way delays (owd_trust.csv)
                owd_ms, t_s = np.zeros(0), np.zeros(0)
        else:
            sq, owd_ms, t_s, mbps = (
                SeqStats(0, 0, 0, 0, 0, False),
                np.zeros(0),
                np.zeros(0),
                math.nan,
            )
        if thr is not None and fid in thr_groups:  # the sampled throughput wins
            v = thr["mbps"][thr_groups[fid]]
            mbps = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        changes = len(path_change_times(run, fid, info["src"], info["dst"], fp_groups, pair_groups))
        out.append(
            FlowStats(
                fid,
                info["name"],
                info["kind"],
                info["src"],
                info["dst"],
                sq,
                owd_ms,
                t_s,
                mbps,
                changes,
            )
        )
    return out


def _untrusted_owd(run: Run) -> set[str]:
    """Flow ids whose one-way delays a run over several hosts marked untrusted (its hosts'
    clocks too far apart, ``owd_trust.csv``, :mod:`meshemu.traffic.clocks`)."""
    t = run.table(OWD_TRUST)
    if t is None:
        return set()
    ids, owd = np.asarray(t["flow_id"]).astype(str), np.asarray(t["owd"]).astype(str)
    return set(ids[owd == "untrusted"].tolist())


def _flow_names(
    run: Run,
    pk_groups: dict[str, np.ndarray],
    fp_groups: dict[str, np.ndarray],
    thr_groups: dict[str, np.ndarray],
) -> dict[str, dict[str, str]]:
    """Name, kind, src and dst of every flow id (a flow id several flows share a name with
    gets its id appended)."""
    fl, pk, fp = run.table(FLOWS), run.table(PACKETS), run.table(FLOW_PATHS)
    flows: dict[str, dict[str, str]] = {}
    if fl is not None:
        for i in range(n_rows(fl)):
            fid = str(fl["flow_id"][i])
            flows[fid] = {
                "name": str(fl["name"][i]) or fid,
                "kind": str(fl["kind"][i]),
                "src": str(fl["src"][i]),
                "dst": str(fl["dst"][i]),
            }
    for t, groups in ((pk, pk_groups), (fp, fp_groups)):  # flows without flows.csv
        if t is None:
            continue
        for fid, idx in groups.items():
            flows.setdefault(
                fid,
                {
                    "name": fid,
                    "kind": "",
                    "src": str(t["src"][idx[0]]),
                    "dst": str(t["dst"][idx[0]]),
                },
            )
    for fid in thr_groups:
        flows.setdefault(fid, {"name": fid, "kind": "", "src": "", "dst": ""})
    names = [f["name"] for f in flows.values()]
    for fid, f in flows.items():  # several flows of one name (a ring's hops): add the id
        if names.count(f["name"]) > 1:
            f["name"] = f"{f['name']}[{fid}]"
    return flows


def _packet_stats(
    run: Run, pk: Table, idx: np.ndarray
) -> tuple[SeqStats, np.ndarray, np.ndarray, float]:
    """Sequence statistics, OWDs (ms) and their emulated send times (s), in send order, and
    the throughput from receive times (Mbit/s) of one flow's rows of ``packets.csv``."""
    recv = pk["recv_unix_ns"][idx]
    send = pk["send_unix_ns"][idx]
    owd = pk["owd_ms"][idx].copy()
    fill = ~np.isfinite(owd) & np.isfinite(recv)
    owd[fill] = (recv[fill] - send[fill]) / 1e6
    got = np.isfinite(owd)
    # arrival time: recv_unix_ns, else send + OWD, else the order of the file
    recv_t = np.where(np.isfinite(recv), recv, send + owd * 1e6)
    if (got & ~np.isfinite(recv_t)).any():
        recv_t = np.where(got, np.arange(idx.size, dtype=float), np.nan)
    sq = sequence_stats(pk["msg_id"][idx], pk["seq"][idx], recv_t, pk["src"][idx])
    t_s = run.emulated_time_s(send[got] / 1e9)
    order = np.argsort(t_s, kind="stable")
    size = pk["size_bytes"][idx]
    ok = np.isfinite(recv) & np.isfinite(size)
    mbps = math.nan
    if ok.sum() > 1 and recv[ok].max() > recv[ok].min():
        mbps = float(size[ok].sum() * 8 / ((recv[ok].max() - recv[ok].min()) / 1e9) / 1e6)
    return sq, owd[got][order], t_s[order], mbps


def path_change_times(
    run: Run,
    flow_id: str,
    src: str,
    dst: str,
    fp_groups: dict[str, np.ndarray] | None = None,
    pair_groups: dict[tuple[str, str], np.ndarray] | None = None,
) -> list[float]:
    """Emulated times at which a flow's path changed: from ``flow_paths.csv`` (the path the
    flow took), else from the planned paths of ``src -> dst`` in ``paths.csv``."""
    fp = run.table(FLOW_PATHS)
    if fp is not None:
        groups = fp_groups if fp_groups is not None else group_indices(fp["flow_id"])
        if flow_id in groups:
            idx = groups[flow_id]
            return _changes(fp["t_s"][idx], fp["path"][idx])
    paths = run.table(PATHS)
    if paths is not None:
        pairs = pair_groups if pair_groups is not None else pair_indices(paths)
        pidx = pairs.get((src, dst))
        if pidx is not None:
            idx = pidx
            return _changes(paths["t_s"][idx], paths["path"][idx])
    return []


def _changes(t: np.ndarray, path: np.ndarray) -> list[float]:
    order = np.argsort(t, kind="stable")
    t, path = t[order], path[order]
    return [float(t[i]) for i in range(1, len(t)) if path[i] != path[i - 1]]


def job_stats(run: Run) -> list[JobStats]:
    """All-reduce statistics per ``(job, algorithm)``, then ``all jobs`` pooled."""
    it = run.table(ITERATIONS)
    if it is None:
        return []
    keys = np.char.add(np.char.add(it["job"].astype(str), "\x1f"), it["algorithm"].astype(str))
    out = []

    def one(job: str, alg: str, idx: np.ndarray) -> JobStats:
        d = it["duration_ms"][idx]
        p = it["predicted_ms"][idx]
        d_ok, p_ok = d[np.isfinite(d)], p[np.isfinite(p)]
        return JobStats(
            job,
            alg,
            int(d_ok.size),
            float(d_ok.mean()) if d_ok.size else math.nan,
            percentiles(d, (95,))[0],
            float(p_ok.mean()) if p_ok.size else math.nan,
            percentiles(p, (95,))[0],
        )

    groups = group_indices(keys)
    for key in sorted(groups, key=natural_key):
        job, alg = key.split("\x1f", 1)
        out.append(one(job, alg, groups[key]))
    algs = sorted(set(it["algorithm"].astype(str)))
    out.append(one("all jobs", ",".join(a for a in algs if a), np.arange(n_rows(it))))
    return out


def inference_stats(run: Run) -> InferenceStats | None:
    """Latency percentiles and deadline misses of ``inference.csv`` (None without it)."""
    inf = run.table(INFERENCE)
    if inf is None:
        return None
    lat = inf["latency_ms"]
    missed = inf["missed"]
    computed = ~np.isfinite(lat) | (np.isfinite(inf["deadline_ms"]) & (lat > inf["deadline_ms"]))
    miss = np.where(np.isfinite(missed), missed != 0, computed)
    p50, p95, p99 = percentiles(lat)
    return InferenceStats(
        int(lat.size), int(np.isfinite(lat).sum()), p50, p95, p99, int(miss.sum())
    )


def run_stats(run: Run) -> RunStats:
    """All statistics of a run (see the module docstring for the definitions)."""
    s = run.summary
    notes: list[str] = []
    missing = [f for f in TRAFFIC_FILES if run.table(f) is None]
    if len(missing) == len(TRAFFIC_FILES):
        notes.append("no traffic files: a run without traffic (or a plan)")
    elif missing:
        notes.append(f"missing or empty: {', '.join(missing)}")
    if run.table(PACKETS) is not None and run.clock_origin() is None:
        notes.append("no steps.csv: packet times are relative to the first packet")
    timing = s.get("timing") or {}
    st = run.table(STEPS)
    apply_p50 = apply_p99 = lag_p99 = math.nan
    if "apply_ms_p50" in timing:
        apply_p50 = float(timing["apply_ms_p50"])
        apply_p99 = float(timing.get("apply_ms_p99", math.nan))
        lag_p99 = float(timing.get("lag_ms_p99", math.nan))
    elif st is not None:
        later = st["step"] > 0  # step 0's apply_ms is the build time
        apply_p50, apply_p99 = percentiles(st["apply_ms"][later], (50, 99))
        lag_p99 = percentiles(st["lag_ms"][later], (99,))[0]
    rc = s.get("route_changes_total")
    if rc is None:
        rc = (s.get("events") or {}).get("route_changes")
    if rc is None and st is not None:
        rc = int(np.nansum(st["route_changes"]))
    lu = s.get("link_updates_total")
    if lu is None and st is not None and np.isfinite(st["link_updates"]).any():
        lu = int(np.nansum(st["link_updates"]))
    rt = run.table(RTT)
    rtt = rt["rtt_ms"][np.isfinite(rt["rtt_ms"])] if rt is not None else np.zeros(0)
    return RunStats(
        run.label,
        flow_stats(run),
        job_stats(run),
        inference_stats(run),
        None if rc is None else int(rc),
        None if lu is None else int(lu),
        s.get("steps"),
        apply_p50,
        apply_p99,
        lag_p99,
        notes,
        rtt,
    )

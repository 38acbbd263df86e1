"""``meshemu report`` and ``meshemu compare``: statistics, plots and tables of run directories.

Data flow: run directory (CSV files written by ``meshemu run`` / ``meshemu plan``)
-> :func:`load_run` (a :class:`Run`: one :class:`Table` per file, ``None`` for a missing file)
-> :func:`run_stats` (per-flow, all-reduce, inference and clock statistics)
-> tables (``summary.csv``, ``summary.md``) and PNG plots in ``RUN_DIR/report/``.

:func:`compare` puts the key metrics of several runs side by side (``compare.csv``,
``compare.md``, ``compare.png``).

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

import argparse
import csv
import datetime as dt
import itertools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meshemu.errors import MeshemuError, ReportError  # noqa: E402

log = logging.getLogger(__name__)

#: Subdirectory of the run directory the report is written to.
REPORT_DIR = "report"

#: Percentiles reported for delays and latencies.
PERCENTILES = (50, 95, 99)

# file -> (required columns, optional columns, numeric columns)
_SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "nodes.csv": (("id", "name", "kind"), ("shell", "plane", "index"), ("id",)),
    "paths.csv": (("t_s", "src", "dst", "path", "delay_ms"), ("hops",),
                  ("t_s", "hops", "delay_ms")),
    "steps.csv": (("step", "t_s", "unix_s", "apply_ms"),
                  ("wall_s", "lag_ms", "link_updates", "route_changes"),
                  ("step", "t_s", "wall_s", "unix_s", "lag_ms", "apply_ms", "link_updates",
                   "route_changes")),
    "flows.csv": (("flow_id", "src", "dst"), ("name", "kind"), ()),
    "packets.csv": (("flow_id", "msg_id", "seq", "send_unix_ns", "recv_unix_ns"),
                    ("src", "dst", "size_bytes", "owd_ms"),
                    ("seq", "size_bytes", "send_unix_ns", "recv_unix_ns", "owd_ms")),
    "flow_throughput.csv": (("t_s", "flow_id", "mbps"), ("rx_bytes",),
                            ("t_s", "rx_bytes", "mbps")),
    "flow_paths.csv": (("t_s", "flow_id", "path"), ("src", "dst", "delay_ms"),
                       ("t_s", "delay_ms")),
    "link_counters.csv": (("t_s", "a", "b", "bytes"), ("packets", "dropped"),
                          ("t_s", "packets", "bytes", "dropped")),
    "iterations.csv": (("job", "iteration", "duration_ms", "predicted_ms"),
                       ("algorithm", "start_unix", "end_unix"),
                       ("iteration", "start_unix", "end_unix", "duration_ms", "predicted_ms")),
    "inference.csv": (("request_id", "latency_ms"),
                      ("user", "server", "send_unix", "done_unix", "deadline_ms", "missed"),
                      ("send_unix", "done_unix", "latency_ms", "deadline_ms", "missed")),
    "rtt.csv": (("flow_id", "rtt_ms"), ("msg_id", "src", "dst", "send_unix_ns"),
                ("send_unix_ns", "rtt_ms")),
}

#: Traffic files; any of them may be missing (a run without traffic has none).
TRAFFIC_FILES = ("flows.csv", "packets.csv", "flow_throughput.csv", "flow_paths.csv",
                 "link_counters.csv", "iterations.csv", "inference.csv")


# ----------------------------------------------------------------------------- loading

Table = dict[str, np.ndarray]
"""Columns of one CSV file: float64 arrays for numeric columns, str arrays otherwise."""


def read_table(path: Path | str, required: Sequence[str] = (), optional: Sequence[str] = (),
               numeric: Sequence[str] = ()) -> Table | None:
    """Read a CSV file with a header into columns; ``None`` when the file does not exist.

    Parameters
    ----------
    path : path
    required : columns that must be in the header (ReportError otherwise)
    optional : columns filled with NaN (numeric) or ``""`` when absent
    numeric : columns converted to float64: empty, ``nan`` and ``None`` become NaN,
        ``True``/``False`` become 1/0. Extra columns are kept as strings.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    if header is None:  # an empty file: nothing was logged
        return None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}; expected a header "
                          f"with {','.join(required)} (found {','.join(header) or 'nothing'})")
    width = len(header)
    # transpose; short rows are padded with "", columns beyond the header are dropped
    cols = list(itertools.zip_longest(*rows, fillvalue=""))[:width] if rows else []
    cols += [("",) * len(rows)] * (width - len(cols))
    table: Table = {}
    for name, values in zip(header, cols):
        if name in numeric:
            table[name] = _floats(values, path, name)
        else:
            table[name] = np.array(values, dtype=str) if values else np.zeros(0, dtype=str)
    for name in optional:
        if name not in table:
            table[name] = (np.full(len(rows), np.nan) if name in numeric
                           else np.full(len(rows), "", dtype=object).astype(str))
    return table


_SPECIAL = {"": math.nan, "nan": math.nan, "none": math.nan, "null": math.nan,
            "true": 1.0, "false": 0.0}


def _floats(values: Sequence[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.array(values, dtype=float)
    except ValueError:
        pass
    out = np.empty(len(values))
    for i, v in enumerate(values):
        key = v.strip().lower()
        if key in _SPECIAL:
            out[i] = _SPECIAL[key]
            continue
        try:
            out[i] = float(v)
        except ValueError:
            raise ReportError(f"{path}, line {i + 2}: column {column} should be a number, got "
                              f"{v!r}") from None
    return out


def _n_rows(t: Table) -> int:
    return len(next(iter(t.values()))) if t else 0


@dataclass(eq=False)
class Run:
    """The files of one run (or plan) directory.

    Attributes
    ----------
    run_dir : Path
    summary : dict
        ``summary.json``.
    tables : dict of str to Table or None
        One entry per known file name (``None`` when the file is missing).
    """

    run_dir: Path
    summary: dict
    tables: dict[str, Table | None]

    def table(self, name: str) -> Table | None:
        """The columns of ``name`` (``"packets.csv"``, ...), ``None`` when the file is missing
        or has no rows."""
        t = self.tables.get(name)
        return t if t is not None and _n_rows(t) > 0 else None

    @property
    def name(self) -> str:
        """The directory's name (of its absolute path, so ``.`` has one too)."""
        return self.run_dir.resolve().name

    @property
    def label(self) -> str:
        """``routing (dir name)``, as a column title in comparisons."""
        return f"{self.summary.get('routing', '?')} ({self.name})"

    @property
    def time_scale(self) -> float:
        ts = self.summary.get("time_scale", 1.0)
        return float(ts) if ts else 1.0

    def clock_origin(self) -> tuple[float, float] | None:
        """``(t_s, unix_s)`` of step 0 from ``steps.csv``, or None without it."""
        st = self.table("steps.csv")
        if st is None:
            return None
        i = int(np.argmin(st["step"]))
        return float(st["t_s"][i]), float(st["unix_s"][i])

    def emulated_time_s(self, unix_s: np.ndarray) -> np.ndarray:
        """Map unix times (s) to emulated time (s); see the module docstring.

        Without ``steps.csv``, time 0 is the first packet sent (``packets.csv``).
        """
        unix_s = np.asarray(unix_s, dtype=float)
        origin = self.clock_origin()
        if origin is None:
            pk = self.table("packets.csv")
            sent = pk["send_unix_ns"][np.isfinite(pk["send_unix_ns"])] if pk is not None else []
            first = sent.min() / 1e9 if len(sent) else (np.nanmin(unix_s) if unix_s.size else 0)
            origin = (0.0, float(first))
        t0, u0 = origin
        return t0 + (unix_s - u0) * self.time_scale


def load_run(run_dir: Path | str) -> Run:
    """Read a run (or plan) directory; ReportError if it is not one.

    Every file of :data:`TRAFFIC_FILES` and ``steps.csv`` may be missing.
    """
    d = Path(run_dir)
    if not d.exists():
        raise ReportError(f"run directory {str(d)!r} does not exist; give the directory "
                          f"written by 'meshemu run' or 'meshemu plan' (see runs/)")
    if not d.is_dir():
        raise ReportError(f"{str(d)!r} is a file, not a run directory; give the directory "
                          f"written by 'meshemu run' or 'meshemu plan'")
    sp = d / "summary.json"
    if not sp.is_file():
        raise ReportError(f"{str(d)!r} has no summary.json: is it a meshemu run directory? "
                          f"Give the directory written by 'meshemu run' or 'meshemu plan' "
                          f"(a run that was interrupted before its end writes none)")
    try:
        summary = json.loads(sp.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{sp}: not valid JSON ({exc}); was the run interrupted while "
                          f"writing it?") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{sp}: expected a JSON object, got {type(summary).__name__}")
    tables = {name: read_table(d / name, *schema) for name, schema in _SCHEMAS.items()}
    return Run(d, summary, tables)


# ----------------------------------------------------------------------------- statistics

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
    received: int          # distinct (msg_id, seq) received
    lost: int
    reordered: int
    arrivals: int          # received rows (duplicates included)
    per_message_seq: bool  # True when seq restarts in every message

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else math.nan

    @property
    def reorder_pct(self) -> float:
        return 100.0 * self.reordered / self.arrivals if self.arrivals else math.nan


def sequence_stats(msg_id: np.ndarray, seq: np.ndarray, recv_time: np.ndarray,
                   sender: np.ndarray | None = None) -> SeqStats:
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
        parts = [sequence_stats(np.asarray(msg_id)[i], np.asarray(seq)[i],
                                np.asarray(recv_time)[i])
                 for i in _group_indices(sender).values()]
        if len(parts) != 1:
            return SeqStats(*(sum(getattr(p, f) for p in parts)
                              for f in ("expected", "received", "lost", "reordered", "arrivals")),
                            any(p.per_message_seq for p in parts))
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
    received = int(np.unique(np.stack([msg[got], seq[got]], axis=1), axis=0).shape[0]) \
        if got.any() else 0
    # reordering: in arrival order, per group, seq below the running maximum
    g, s, r = group[got], seq[got], recv_time[got]
    order = np.lexsort((r, g))  # by group, then receive time (stable)
    g, s = g[order], s[order]
    span = int(s.max() - s.min()) + 1 if s.size else 1
    shifted = (s - (s.min() if s.size else 0)) + g * span  # groups never overlap
    run_max = np.maximum.accumulate(shifted) if s.size else shifted
    prev_max = np.concatenate([[np.iinfo(np.int64).min], run_max[:-1]])
    reordered = int((shifted < prev_max).sum())
    return SeqStats(expected, received, max(expected - received, 0), reordered, int(got.sum()),
                    per_message)


@dataclass(frozen=True)
class FlowStats:
    """Statistics of one traffic flow."""

    flow_id: str
    name: str
    kind: str
    src: str
    dst: str
    seq: SeqStats
    owd_ms: np.ndarray = field(repr=False)   # received packets' one-way delays
    t_s: np.ndarray = field(repr=False)      # their send times, emulated
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
    jobs: list[JobStats]             # per job, then "all jobs" pooled (when any)
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
        return (np.concatenate([f.owd_ms for f in self.flows]) if self.flows
                else np.zeros(0))


def flow_stats(run: Run) -> list[FlowStats]:
    """Per-flow statistics; flows come from ``flows.csv``, plus any other flow id found in
    ``packets.csv``, ``flow_paths.csv`` or ``flow_throughput.csv``."""
    pk = run.table("packets.csv")
    fl = run.table("flows.csv")
    thr = run.table("flow_throughput.csv")
    fp = run.table("flow_paths.csv")
    paths = run.table("paths.csv")
    flows: dict[str, dict[str, str]] = {}
    if fl is not None:
        for i in range(_n_rows(fl)):
            fid = str(fl["flow_id"][i])
            flows[fid] = {"name": str(fl["name"][i]) or fid, "kind": str(fl["kind"][i]),
                          "src": str(fl["src"][i]), "dst": str(fl["dst"][i])}
    pk_groups: dict[str, np.ndarray] = {}
    if pk is not None:
        pk_groups = _group_indices(pk["flow_id"])
        for fid, idx in pk_groups.items():
            if fid not in flows:
                flows[fid] = {"name": fid, "kind": "", "src": str(pk["src"][idx[0]]),
                              "dst": str(pk["dst"][idx[0]])}
    thr_groups = _group_indices(thr["flow_id"]) if thr is not None else {}
    fp_groups = _group_indices(fp["flow_id"]) if fp is not None else {}
    for fid, idx in fp_groups.items():  # flows without flows.csv or packets
        flows.setdefault(fid, {"name": fid, "kind": "", "src": str(fp["src"][idx[0]]),
                               "dst": str(fp["dst"][idx[0]])})
    for fid in thr_groups:
        flows.setdefault(fid, {"name": fid, "kind": "", "src": "", "dst": ""})
    pair_groups = _pair_groups(paths) if paths is not None else {}
    names = [f["name"] for f in flows.values()]
    for fid, f in flows.items():  # several flows of one name (a ring's hops): add the id
        if names.count(f["name"]) > 1:
            f["name"] = f"{f['name']}[{fid}]"
    out = []
    for fid in sorted(flows, key=_natural_key):
        info = flows[fid]
        idx = pk_groups.get(fid)
        if idx is not None:
            recv = pk["recv_unix_ns"][idx]
            owd = pk["owd_ms"][idx].copy()
            fill = ~np.isfinite(owd) & np.isfinite(recv)
            owd[fill] = (recv[fill] - pk["send_unix_ns"][idx][fill]) / 1e6
            got = np.isfinite(owd)
            # arrival time: recv_unix_ns, else send + OWD, else the order of the file
            recv_t = np.where(np.isfinite(recv), recv,
                              pk["send_unix_ns"][idx] + owd * 1e6)
            if (got & ~np.isfinite(recv_t)).any():
                recv_t = np.where(got, np.arange(idx.size, dtype=float), np.nan)
            sq = sequence_stats(pk["msg_id"][idx], pk["seq"][idx], recv_t, pk["src"][idx])
            t_s = run.emulated_time_s(pk["send_unix_ns"][idx][got] / 1e9)
            owd_ms = owd[got]
            order = np.argsort(t_s, kind="stable")
            t_s, owd_ms = t_s[order], owd_ms[order]
        else:
            sq = SeqStats(0, 0, 0, 0, 0, False)
            owd_ms = t_s = np.zeros(0)
        mbps = math.nan
        if fid in thr_groups:
            mbps = float(np.nanmean(thr["mbps"][thr_groups[fid]])) \
                if np.isfinite(thr["mbps"][thr_groups[fid]]).any() else math.nan
        elif idx is not None:
            recv = pk["recv_unix_ns"][idx]
            size = pk["size_bytes"][idx]
            ok = np.isfinite(recv) & np.isfinite(size)
            if ok.sum() > 1 and recv[ok].max() > recv[ok].min():
                mbps = float(size[ok].sum() * 8 / ((recv[ok].max() - recv[ok].min()) / 1e9) / 1e6)
        changes = len(path_change_times(run, fid, info["src"], info["dst"], fp_groups,
                                        pair_groups))
        out.append(FlowStats(fid, info["name"], info["kind"], info["src"], info["dst"], sq,
                             owd_ms, t_s, mbps, changes))
    return out


def path_change_times(run: Run, flow_id: str, src: str, dst: str,
                      fp_groups: dict[str, np.ndarray] | None = None,
                      pair_groups: dict[tuple[str, str], np.ndarray] | None = None
                      ) -> list[float]:
    """Emulated times at which a flow's path changed: from ``flow_paths.csv`` (the path the
    flow took), else from the planned paths of ``src -> dst`` in ``paths.csv``."""
    fp = run.table("flow_paths.csv")
    if fp is not None:
        groups = fp_groups if fp_groups is not None else _group_indices(fp["flow_id"])
        if flow_id in groups:
            idx = groups[flow_id]
            return _changes(fp["t_s"][idx], fp["path"][idx])
    paths = run.table("paths.csv")
    if paths is not None:
        groups = pair_groups if pair_groups is not None else _pair_groups(paths)
        idx = groups.get((src, dst))
        if idx is not None:
            return _changes(paths["t_s"][idx], paths["path"][idx])
    return []


def _changes(t: np.ndarray, path: np.ndarray) -> list[float]:
    order = np.argsort(t, kind="stable")
    t, path = t[order], path[order]
    return [float(t[i]) for i in range(1, len(t)) if path[i] != path[i - 1]]


def job_stats(run: Run) -> list[JobStats]:
    """All-reduce statistics per ``(job, algorithm)``, then ``all jobs`` pooled."""
    it = run.table("iterations.csv")
    if it is None:
        return []
    keys = np.char.add(np.char.add(it["job"].astype(str), "\x1f"), it["algorithm"].astype(str))
    out = []

    def one(job: str, alg: str, idx: np.ndarray) -> JobStats:
        d = it["duration_ms"][idx]
        p = it["predicted_ms"][idx]
        d_ok, p_ok = d[np.isfinite(d)], p[np.isfinite(p)]
        return JobStats(job, alg, int(d_ok.size),
                        float(d_ok.mean()) if d_ok.size else math.nan, percentiles(d, (95,))[0],
                        float(p_ok.mean()) if p_ok.size else math.nan, percentiles(p, (95,))[0])

    groups = _group_indices(keys)
    for key in sorted(groups, key=_natural_key):
        job, alg = key.split("\x1f", 1)
        out.append(one(job, alg, groups[key]))
    algs = sorted(set(it["algorithm"].astype(str)))
    out.append(one("all jobs", ",".join(a for a in algs if a), np.arange(_n_rows(it))))
    return out


def inference_stats(run: Run) -> InferenceStats | None:
    """Latency percentiles and deadline misses of ``inference.csv`` (None without it)."""
    inf = run.table("inference.csv")
    if inf is None:
        return None
    lat = inf["latency_ms"]
    missed = inf["missed"]
    computed = ~np.isfinite(lat) | (np.isfinite(inf["deadline_ms"]) & (lat > inf["deadline_ms"]))
    miss = np.where(np.isfinite(missed), missed != 0, computed)
    p50, p95, p99 = percentiles(lat)
    return InferenceStats(int(lat.size), int(np.isfinite(lat).sum()), p50, p95, p99,
                          int(miss.sum()))


def run_stats(run: Run) -> RunStats:
    """All statistics of a run (see the module docstring for the definitions)."""
    s = run.summary
    notes: list[str] = []
    missing = [f for f in TRAFFIC_FILES if run.table(f) is None]
    if len(missing) == len(TRAFFIC_FILES):
        notes.append("no traffic files: a run without traffic (or a plan)")
    elif missing:
        notes.append(f"missing or empty: {', '.join(missing)}")
    if run.table("packets.csv") is not None and run.clock_origin() is None:
        notes.append("no steps.csv: packet times are relative to the first packet")
    timing = s.get("timing") or {}
    st = run.table("steps.csv")
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
    rt = run.table("rtt.csv")
    rtt = rt["rtt_ms"][np.isfinite(rt["rtt_ms"])] if rt is not None else np.zeros(0)
    return RunStats(run.label, flow_stats(run), job_stats(run), inference_stats(run),
                    None if rc is None else int(rc), None if lu is None else int(lu),
                    s.get("steps"), apply_p50, apply_p99, lag_p99, notes, rtt)


# ----------------------------------------------------------------------------- tables

@dataclass(frozen=True)
class Metric:
    """One row of ``summary.csv``: ``section,name,metric,value,unit``."""

    section: str   # run | traffic | flow | allreduce | inference
    name: str      # flow name, job name, "all flows", ...
    metric: str
    value: float
    unit: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.section, self.name, self.metric)


def metrics(stats: RunStats) -> list[Metric]:
    """The summary table of a run as rows (what ``summary.csv`` holds)."""
    rows: list[Metric] = []
    add = rows.append
    add(Metric("run", "", "steps", _num(stats.steps)))
    add(Metric("run", "", "route_changes", _num(stats.route_changes)))
    add(Metric("run", "", "link_updates", _num(stats.link_updates)))
    add(Metric("run", "", "apply_ms_p50", stats.apply_ms_p50, "ms"))
    add(Metric("run", "", "apply_ms_p99", stats.apply_ms_p99, "ms"))
    add(Metric("run", "", "lag_ms_p99", stats.lag_ms_p99, "ms"))
    if stats.flows:
        seqs = [f.seq for f in stats.flows]
        exp = sum(q.expected for q in seqs)
        arr = sum(q.arrivals for q in seqs)
        p = percentiles(stats.owd_all_ms)
        thr = [f.throughput_mbps for f in stats.flows if math.isfinite(f.throughput_mbps)]
        name = "all flows"
        add(Metric("traffic", name, "flows", len(stats.flows)))
        add(Metric("traffic", name, "packets", sum(q.received for q in seqs)))
        add(Metric("traffic", name, "lost", sum(q.lost for q in seqs)))
        add(Metric("traffic", name, "loss_pct",
                   100.0 * sum(q.lost for q in seqs) / exp if exp else math.nan, "%"))
        add(Metric("traffic", name, "reorder_pct",
                   100.0 * sum(q.reordered for q in seqs) / arr if arr else math.nan, "%"))
        for q, v in zip(PERCENTILES, p):
            add(Metric("traffic", name, f"owd_p{q}", v, "ms"))
        add(Metric("traffic", name, "throughput_mbps", float(sum(thr)) if thr else math.nan,
                   "Mbit/s"))
    if stats.rtt_ms.size:
        for q, v in zip(PERCENTILES, percentiles(stats.rtt_ms)):
            add(Metric("traffic", "all flows", f"rtt_p{q}", v, "ms"))
    for f in stats.flows:
        add(Metric("flow", f.name, "packets", f.seq.received))
        add(Metric("flow", f.name, "lost", f.seq.lost))
        add(Metric("flow", f.name, "loss_pct", f.seq.loss_pct, "%"))
        add(Metric("flow", f.name, "reorder_pct", f.seq.reorder_pct, "%"))
        for q, v in zip(PERCENTILES, f.owd_p):
            add(Metric("flow", f.name, f"owd_p{q}", v, "ms"))
        add(Metric("flow", f.name, "throughput_mbps", f.throughput_mbps, "Mbit/s"))
        add(Metric("flow", f.name, "path_changes", f.path_changes))
    jobs = stats.jobs if len(stats.jobs) > 2 else stats.jobs[1:]  # one job: pooled only
    for j in jobs:
        add(Metric("allreduce", j.job, "iterations", j.iterations))
        add(Metric("allreduce", j.job, "mean_ms", j.mean_ms, "ms"))
        add(Metric("allreduce", j.job, "p95_ms", j.p95_ms, "ms"))
        add(Metric("allreduce", j.job, "predicted_mean_ms", j.predicted_mean_ms, "ms"))
        add(Metric("allreduce", j.job, "predicted_p95_ms", j.predicted_p95_ms, "ms"))
        add(Metric("allreduce", j.job, "error_pct", j.error_pct, "%"))
    if stats.inference is not None:
        i = stats.inference
        add(Metric("inference", "all", "requests", i.requests))
        add(Metric("inference", "all", "completed", i.completed))
        add(Metric("inference", "all", "p50_ms", i.p50_ms, "ms"))
        add(Metric("inference", "all", "p95_ms", i.p95_ms, "ms"))
        add(Metric("inference", "all", "p99_ms", i.p99_ms, "ms"))
        add(Metric("inference", "all", "deadline_misses", i.deadline_misses))
        add(Metric("inference", "all", "miss_pct", i.miss_pct, "%"))
    return rows


def _num(x) -> float:
    return math.nan if x is None else x


def fmt(x) -> str:
    """A number for a table: ``n/a`` for missing, integers as such, else 2 decimals (1 above
    100)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer()
                                            and abs(x) >= 1000):
        return str(int(x))
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}"


def _csv_value(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return str(round(float(x), 6))


def write_metrics_csv(path: Path, rows: list[Metric]) -> Path:
    """``section,name,metric,value,unit`` (empty value when not available)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["section", "name", "metric", "value", "unit"])
        for r in rows:
            w.writerow([r.section, r.name, r.metric, _csv_value(r.value), r.unit])
    return Path(path)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def summary_markdown(run: Run, stats: RunStats, short: bool = False) -> str:
    """The summary table as Markdown (``short``: for the terminal, without notes)."""
    s = run.summary
    out = []
    if not short:
        out.append(f"# meshemu report: {run.name}\n")
    out.append(f"scenario {s.get('scenario', '?')}, routing {s.get('routing', '?')}, "
               f"shaper {s.get('shaper', 'n/a (plan)')}, {s.get('nodes', '?')} nodes, "
               f"{s.get('steps', '?')} steps of {s.get('step_s', '?')} s, time scale "
               f"{run.time_scale:g}\n")
    out.append(_md_table(["steps", "route changes", "link updates", "apply p50 (ms)",
                          "apply p99 (ms)", "lag p99 (ms)"],
                         [[fmt(stats.steps), fmt(stats.route_changes), fmt(stats.link_updates),
                           fmt(stats.apply_ms_p50), fmt(stats.apply_ms_p99),
                           fmt(stats.lag_ms_p99)]]))
    flows = [f for f in stats.flows if f.seq.received] if short else stats.flows
    if short and len(flows) < len(stats.flows):
        out.append(f"({len(stats.flows) - len(flows)} flows without packets left out; see "
                   f"summary.md)")
    if flows:
        rows = []
        for f in flows:
            p50, p95, p99 = f.owd_p
            rows.append([f.name, f.kind, f"{f.src} -> {f.dst}", fmt(f.seq.received),
                         fmt(f.seq.loss_pct), fmt(f.seq.reorder_pct), fmt(p50), fmt(p95),
                         fmt(p99), fmt(f.throughput_mbps), fmt(f.path_changes)])
        out.append("\n" + _md_table(["flow", "kind", "src -> dst", "packets", "loss %",
                                     "reorder %", "OWD p50 (ms)", "OWD p95 (ms)",
                                     "OWD p99 (ms)", "Mbit/s", "path changes"], rows))
    if stats.jobs:
        jobs = stats.jobs if len(stats.jobs) > 2 else stats.jobs[:1]  # pooled row if > 1 job
        out.append("\n" + _md_table(
            ["all-reduce job", "algorithm", "iterations", "mean (ms)", "p95 (ms)",
             "predicted mean (ms)", "predicted p95 (ms)", "measured vs predicted %"],
            [[j.job, j.algorithm, fmt(j.iterations), fmt(j.mean_ms), fmt(j.p95_ms),
              fmt(j.predicted_mean_ms), fmt(j.predicted_p95_ms), fmt(j.error_pct)]
             for j in jobs]))
    if stats.rtt_ms.size:
        p50, p95, p99 = percentiles(stats.rtt_ms)
        out.append("\n" + _md_table(
            ["transport RTT (acknowledged messages)", "p50 (ms)", "p95 (ms)", "p99 (ms)"],
            [[fmt(stats.rtt_ms.size), fmt(p50), fmt(p95), fmt(p99)]]))
    if stats.inference is not None:
        i = stats.inference
        out.append("\n" + _md_table(
            ["inference requests", "completed", "p50 (ms)", "p95 (ms)", "p99 (ms)",
             "deadline misses", "miss %"],
            [[fmt(i.requests), fmt(i.completed), fmt(i.p50_ms), fmt(i.p95_ms), fmt(i.p99_ms),
              fmt(i.deadline_misses), fmt(i.miss_pct)]]))
    if not short:
        lines = (s.get("traffic") or {}).get("lines") or []
        if lines:
            out.append("\ntraffic summary from the run:\n\n" + "\n".join(f"- {x}" for x in lines))
        if stats.notes:
            out.append("\nnotes:\n\n" + "\n".join(f"- {x}" for x in stats.notes))
        out.append("\nDefinitions (loss, reordering, percentiles): see meshemu/report.py.")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- plots

def _finish(fig, path: Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#dddddd")


def plot_latency(path: Path, run: Run, flows: list[FlowStats], max_flows: int = 8) -> Path:
    """Measured one-way delay over emulated time per flow, planned path delay (paths.csv,
    dashed) and the times the flow's path changed (dotted vertical lines)."""
    shown = [f for f in flows if f.owd_ms.size][:max_flows]
    paths = run.table("paths.csv")
    pairs = _pair_groups(paths) if paths is not None else {}
    fp = run.table("flow_paths.csv")
    fp_groups = _group_indices(fp["flow_id"]) if fp is not None else {}
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 2.4 * len(shown) + 0.8), sharex=True,
                             squeeze=False)
    for ax, f in zip(axes[:, 0], shown):
        ax.plot(f.t_s, f.owd_ms, ".", ms=2.5, color="#1f77b4", label="measured OWD")
        idx = pairs.get((f.src, f.dst))
        planned = (paths, idx) if idx is not None else (fp, fp_groups.get(f.flow_id))
        if planned[1] is not None:  # paths.csv, else the delay of the flow's own path
            t, i = planned
            order = i[np.argsort(t["t_s"][i], kind="stable")]
            ax.plot(t["t_s"][order], t["delay_ms"][order], "--", color="#d62728",
                    lw=1.2, drawstyle="steps-post", label="planned path delay")
        for k, t in enumerate(path_change_times(run, f.flow_id, f.src, f.dst, fp_groups,
                                                pairs)):
            ax.axvline(t, color="#7f7f7f", ls=":", lw=1, label="path change" if k == 0 else None)
        _style(ax, "", "OWD (ms)")
        ax.set_title(f"{f.name}: {f.src} -> {f.dst}", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("emulated time (s)")
    more = f" (first {max_flows} of {len(flows)} flows)" if len(flows) > max_flows else ""
    return _finish(fig, path, f"{run.name}: one-way delay{more}")


def plot_throughput(path: Path, run: Run, flows: list[FlowStats], max_flows: int = 12) -> Path:
    """Receive throughput over emulated time per flow (``flow_throughput.csv``)."""
    thr = run.table("flow_throughput.csv")
    groups = _group_indices(thr["flow_id"])
    names = {f.flow_id: f.name for f in flows}
    fig, ax = plt.subplots(figsize=(10, 5))
    for fid in sorted(groups, key=_natural_key)[:max_flows]:
        idx = groups[fid]
        idx = idx[np.argsort(thr["t_s"][idx], kind="stable")]
        ax.plot(thr["t_s"][idx], thr["mbps"][idx], lw=1.2, label=names.get(fid, fid))
    _style(ax, "emulated time (s)", "throughput (Mbit/s)")
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path, f"{run.name}: throughput per flow")


def _cdf(ax, values: np.ndarray, label: str, of_all: bool = False, **kw) -> None:
    """Empirical CDF of the finite values (``of_all``: as a fraction of all values, so that
    NaN ones, e.g. requests never completed, keep the curve below 1)."""
    v = np.sort(values[np.isfinite(values)])
    n = values.size if of_all else v.size
    if v.size:
        ax.plot(v, np.arange(1, v.size + 1) / n, label=label, drawstyle="steps-post", **kw)


def plot_latency_cdf(path: Path, run: Run, flows: list[FlowStats], max_flows: int = 8) -> Path:
    """CDFs of packet one-way delay (per flow and pooled) and of inference latency."""
    inf = run.table("inference.csv")
    panels = [p for p in ("owd", "inf") if (p == "owd" and any(f.owd_ms.size for f in flows))
              or (p == "inf" and inf is not None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if p == "owd":
            for f in [f for f in flows if f.owd_ms.size][:max_flows]:
                _cdf(ax, f.owd_ms, f.name, lw=1)
            allv = np.concatenate([f.owd_ms for f in flows])
            _cdf(ax, allv, "all flows", lw=2.2, color="black")
            _style(ax, "one-way delay (ms)", "CDF")
            ax.set_title("packet one-way delay", fontsize=10)
        else:
            lat = inf["latency_ms"]
            done = int(np.isfinite(lat).sum())
            _cdf(ax, lat, f"latency ({done} of {lat.size} completed)", of_all=True, lw=1.8)
            dl = inf["deadline_ms"][np.isfinite(inf["deadline_ms"])]
            if dl.size and np.all(dl == dl[0]):
                ax.axvline(dl[0], color="#d62728", ls="--", label=f"deadline {dl[0]:g} ms")
            _style(ax, "inference latency (ms)", "CDF")
            ax.set_title("inference request latency", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    return _finish(fig, path, f"{run.name}: latency CDFs")


def plot_iterations(path: Path, run: Run) -> Path:
    """All-reduce iteration time per iteration: measured (markers) vs predicted (dashed)."""
    it = run.table("iterations.csv")
    keys = np.char.add(np.char.add(it["job"].astype(str), " "), it["algorithm"].astype(str))
    groups = _group_indices(keys)
    fig, ax = plt.subplots(figsize=(10, 5))
    for k, key in enumerate(sorted(groups, key=_natural_key)):
        idx = groups[key]
        idx = idx[np.argsort(it["iteration"][idx], kind="stable")]
        color = f"C{k % 10}"
        ax.plot(it["iteration"][idx], it["duration_ms"][idx], "o-", ms=3, lw=1, color=color,
                label=f"{key.strip()} measured")
        ax.plot(it["iteration"][idx], it["predicted_ms"][idx], "--", lw=1.4, color=color,
                label=f"{key.strip()} predicted")
    _style(ax, "iteration", "iteration time (ms)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path, f"{run.name}: all-reduce iteration time")


def plot_link_util(path: Path, run: Run, top: int = 15) -> Path:
    """Top links by mean throughput (from cumulative ``link_counters.csv``), with their drops,
    and the throughput over time of the busiest five."""
    lc = run.table("link_counters.csv")
    keys = np.char.add(np.char.add(lc["a"].astype(str), " - "), lc["b"].astype(str))
    series = []
    for key, idx in _group_indices(keys).items():
        idx = idx[np.argsort(lc["t_s"][idx], kind="stable")]
        t, b = lc["t_s"][idx], lc["bytes"][idx]
        dt_s = np.diff(t)
        db = np.clip(np.diff(b), 0, None)  # a counter that went back was reset
        ok = dt_s > 0
        mbps = np.zeros(dt_s.size)
        mbps[ok] = db[ok] * 8 / dt_s[ok] / 1e6
        span = t[-1] - t[0]
        mean = float(db.sum() * 8 / span / 1e6) if span > 0 else 0.0
        drops = lc["dropped"][idx]
        dropped = int(np.nanmax(drops) - np.nanmin(drops)) if np.isfinite(drops).any() else 0
        series.append((mean, key, t[1:], mbps, dropped))
    series.sort(key=lambda x: -x[0])
    best = series[:top]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(best) + 3.5))
    ax1.barh([s[1] for s in best][::-1], [s[0] for s in best][::-1], color="#1f77b4")
    for y, s in enumerate(best[::-1]):
        if s[4]:
            ax1.annotate(f"{s[4]} dropped", (s[0], y), fontsize=7, xytext=(3, -3),
                         textcoords="offset points")
    ax1.tick_params(axis="y", labelsize=7)
    _style(ax1, "mean throughput (Mbit/s)", "")
    ax1.set_title(f"top {len(best)} of {len(series)} links", fontsize=10)
    for s in best[:5]:
        ax2.plot(s[2], s[3], lw=1.1, label=s[1], drawstyle="steps-pre")
    _style(ax2, "emulated time (s)", "throughput (Mbit/s)")
    ax2.legend(fontsize=7)
    ax2.set_title("busiest five over time", fontsize=10)
    return _finish(fig, path, f"{run.name}: link utilisation")


def plot_paths_map(path: Path, run: Run, flows: list[FlowStats], max_paths: int = 12) -> Path:
    """World map (:func:`meshemu.report.maps.plot_map`) with the flows' paths at the first time one
    is known; the scenario is reloaded from ``summary.json`` (``source``, else ``scenario``).

    Raises ReportError when the scenario cannot be reloaded or does not match ``nodes.csv``.
    """
    from meshemu.report.maps import plot_map
    from meshemu.spec.scenario import load_scenario
    from meshemu.geometry.schedule import LinkSchedule

    s = run.summary
    scenario = None
    errors = []
    for spec in (s.get("source"), s.get("scenario")):
        if not spec:
            continue
        try:
            scenario = load_scenario(spec)
            break
        except MeshemuError as exc:
            errors.append(str(exc))
    if scenario is None:
        raise ReportError("cannot reload the scenario for the map: "
                          + ("; ".join(errors) or "summary.json names none"))
    sched = LinkSchedule(scenario, float(s.get("step_s", 1.0)))
    nodes = run.table("nodes.csv")
    if nodes is not None and tuple(nodes["name"]) != tuple(sched.nodes.names):
        raise ReportError(f"the scenario {scenario.source or scenario.name!r} no longer has "
                          f"the nodes of this run (was it edited since?)")
    routes = _map_paths(run, flows, max_paths)
    t = routes[0][0] if routes else 0.0
    ids = {n: i for i, n in enumerate(sched.nodes.names)}
    drawn = [[ids[n] for n in p.split()] for _, p in routes
             if p and all(n in ids for n in p.split())]
    snap = sched.snapshot_at(t)
    what = "flows" if run.table("flow_paths.csv") is not None or flows else "endpoint pairs"
    return plot_map(path, sched, snap, paths=drawn,
                    title=f"{run.name}: paths of {len(drawn)} {what} at t = {t:g} s")


def _map_paths(run: Run, flows: list[FlowStats], max_paths: int) -> list[tuple[float, str]]:
    """``(t_s, path)`` per flow at the earliest time a path is known (or per planned pair)."""
    fp = run.table("flow_paths.csv")
    paths = run.table("paths.csv")
    if fp is not None:
        t0 = float(np.nanmin(fp["t_s"]))
        out = {}
        for fid, idx in _group_indices(fp["flow_id"]).items():
            idx = idx[np.argsort(fp["t_s"][idx], kind="stable")]
            k = idx[np.searchsorted(fp["t_s"][idx], t0, side="right") - 1] \
                if fp["t_s"][idx[0]] <= t0 else idx[0]
            out[fid] = (float(fp["t_s"][k]), str(fp["path"][k]))
        return [out[k] for k in sorted(out, key=_natural_key)][:max_paths]
    if paths is None:
        return []
    t0 = float(np.nanmin(paths["t_s"]))
    pairs = _pair_groups(paths)
    wanted = [(f.src, f.dst) for f in flows] or sorted(pairs)
    out = []
    for pair in dict.fromkeys(wanted):
        idx = pairs.get(pair)
        if idx is None:
            continue
        k = idx[np.argmin(np.abs(paths["t_s"][idx] - t0))]
        out.append((t0, str(paths["path"][k])))
    return out[:max_paths]


# ----------------------------------------------------------------------------- report

@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` wrote.

    Attributes
    ----------
    files : list of Path
        Every file written (PNGs, ``summary.csv``, ``summary.md``).
    table : list of Metric
        The rows of ``summary.csv``.
    stats : RunStats
    skipped : list of str
        Plots not written, each with the reason.
    """

    files: list[Path]
    table: list[Metric]
    stats: RunStats | None = None
    skipped: list[str] = field(default_factory=list)


def report(run_dir: Path | str, out_dir: Path | str | None = None) -> ReportResult:
    """Statistics, tables and plots of one run directory.

    Parameters
    ----------
    run_dir : path
        Written by ``meshemu run`` (or ``meshemu plan``: only the map and the clock-free
        metrics then).
    out_dir : path, optional
        Default ``RUN_DIR/report``.
    """
    return _report(load_run(run_dir), out_dir)


def _report(run: Run, out_dir: Path | str | None) -> ReportResult:
    out = Path(out_dir) if out_dir is not None else run.run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    stats = run_stats(run)
    files: list[Path] = []
    skipped: list[str] = []
    have_owd = any(f.owd_ms.size for f in stats.flows)
    plots = [
        ("latency.png", have_owd, "no received packets (packets.csv)",
         lambda p: plot_latency(p, run, stats.flows)),
        ("throughput.png", run.table("flow_throughput.csv") is not None,
         "no flow_throughput.csv", lambda p: plot_throughput(p, run, stats.flows)),
        ("latency_cdf.png", have_owd or run.table("inference.csv") is not None,
         "no packets.csv and no inference.csv", lambda p: plot_latency_cdf(p, run, stats.flows)),
        ("iterations.png", run.table("iterations.csv") is not None, "no iterations.csv",
         lambda p: plot_iterations(p, run)),
        ("paths_map.png", True, "", lambda p: plot_paths_map(p, run, stats.flows)),
        ("link_util.png", run.table("link_counters.csv") is not None, "no link_counters.csv",
         lambda p: plot_link_util(p, run)),
    ]
    for name, possible, why, fn in plots:
        if not possible:
            skipped.append(f"{name}: {why}")
            continue
        try:
            files.append(fn(out / name))
        except ReportError as exc:
            skipped.append(f"{name}: {exc}")
    for s in skipped:
        log.info("skipped %s", s)
    table = metrics(stats)
    files.append(write_metrics_csv(out / "summary.csv", table))
    md = summary_markdown(run, stats)
    if skipped:
        md += "\nplots not written:\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n"
    (out / "summary.md").write_text(md)
    files.append(out / "summary.md")
    return ReportResult(files, table, stats, skipped)


def report_from_cli(args: argparse.Namespace) -> int:
    """``meshemu report RUN_DIR``."""
    run = load_run(args.run_dir)
    res = _report(run, getattr(args, "out", None))
    print(summary_markdown(run, res.stats, short=True))
    for note in res.stats.notes:
        print(f"note: {note}")
    for s in res.skipped:
        print(f"skipped {s}")
    out = res.files[0].parent if res.files else Path(args.run_dir) / REPORT_DIR
    print(f"wrote {out}/: {', '.join(f.name for f in res.files)}")
    return 0


# ----------------------------------------------------------------------------- compare

#: Rows of the comparison: (section, name, metric) and a label. Per-flow rows are added for
#: flows present in every run.
COMPARE_ROWS: tuple[tuple[tuple[str, str, str], str], ...] = (
    (("traffic", "all flows", "packets"), "packets received"),
    (("traffic", "all flows", "loss_pct"), "loss %"),
    (("traffic", "all flows", "reorder_pct"), "reordering %"),
    (("traffic", "all flows", "owd_p50"), "OWD p50 (ms)"),
    (("traffic", "all flows", "owd_p95"), "OWD p95 (ms)"),
    (("traffic", "all flows", "owd_p99"), "OWD p99 (ms)"),
    (("traffic", "all flows", "throughput_mbps"), "throughput, sum of flows (Mbit/s)"),
    (("traffic", "all flows", "rtt_p50"), "transport RTT p50 (ms)"),
    (("traffic", "all flows", "rtt_p99"), "transport RTT p99 (ms)"),
    (("allreduce", "all jobs", "mean_ms"), "all-reduce mean iteration (ms)"),
    (("allreduce", "all jobs", "p95_ms"), "all-reduce p95 iteration (ms)"),
    (("allreduce", "all jobs", "predicted_mean_ms"), "all-reduce predicted mean (ms)"),
    (("inference", "all", "p50_ms"), "inference p50 (ms)"),
    (("inference", "all", "p95_ms"), "inference p95 (ms)"),
    (("inference", "all", "p99_ms"), "inference p99 (ms)"),
    (("inference", "all", "deadline_misses"), "inference deadline misses"),
    (("inference", "all", "miss_pct"), "inference miss %"),
    (("run", "", "route_changes"), "route changes"),
    (("run", "", "link_updates"), "link updates"),
    (("run", "", "apply_ms_p50"), "step apply p50 (ms)"),
    (("run", "", "apply_ms_p99"), "step apply p99 (ms)"),
    (("run", "", "lag_ms_p99"), "step lag p99 (ms)"),
)
_FLOW_COMPARE = (("owd_p50", "OWD p50 (ms)"), ("owd_p99", "OWD p99 (ms)"),
                 ("loss_pct", "loss %"), ("throughput_mbps", "Mbit/s"))


@dataclass(frozen=True)
class Comparison:
    """Key metrics of several runs: ``values[i][j]`` is row ``i`` of run ``j``."""

    labels: list[str]
    rows: list[str]
    values: list[list[float]]
    warnings: list[str]
    stats: list[RunStats]


def comparison(run_dirs: Sequence[Path | str]) -> Comparison:
    """Load and compare run directories (at least two); see :func:`compare`."""
    if len(run_dirs) < 2:
        raise ReportError(f"compare needs at least two run directories, got {len(run_dirs)}; "
                          f"usage: meshemu compare RUN_DIR RUN_DIR...")
    runs = [load_run(d) for d in run_dirs]
    warnings = []
    for what, get in (("scenario", lambda r: r.summary.get("scenario")),
                      ("traffic profile", _traffic_profile),
                      ("duration", lambda r: r.summary.get("duration_s")),
                      ("time scale", lambda r: r.time_scale)):
        vals = [get(r) for r in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals}) > 1:
            warnings.append(f"the runs differ in {what}: "
                            + ", ".join(f"{r.name}={_short(v)}"
                                        for r, v in zip(runs, vals)))
    for w in warnings:
        log.warning("%s", w)
    stats = [run_stats(r) for r in runs]
    labels = [r.label for r in runs]
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # two runs of the same dir name and routing
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    tables = [{m.key: m.value for m in metrics(s)} for s in stats]
    row_keys = [(k, lab) for k, lab in COMPARE_ROWS if any(k in t for t in tables)]
    # flows in every run that carried packets in at least one of them
    busy = {g.name for st in stats for g in st.flows if g.seq.received}
    common = [f.name for f in stats[0].flows if f.name in busy
              and all(any(g.name == f.name for g in s.flows) for s in stats[1:])]
    for name in common[:20]:
        row_keys += [(("flow", name, m), f"{name}: {lab}") for m, lab in _FLOW_COMPARE]
    values = [[t.get(k, math.nan) for t in tables] for k, _ in row_keys]
    return Comparison(labels, [lab for _, lab in row_keys], values, warnings, stats)


def _traffic_profile(run: Run):
    t = run.summary.get("traffic") or {}
    if isinstance(t, dict) and t.get("profile"):
        return t["profile"]
    fl = run.table("flows.csv")
    if fl is None:
        return None
    return sorted(zip(fl["name"].tolist(), fl["kind"].tolist(), fl["src"].tolist(),
                      fl["dst"].tolist()))


def _short(v, n: int = 40) -> str:
    s = str(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def compare(run_dirs: Sequence[Path | str], out_dir: Path | str | None = None) -> list[Path]:
    """Key metrics of several runs side by side.

    Writes ``compare.csv`` (``metric`` then one column per run), ``compare.md`` and
    ``compare.png`` (bar charts of OWD p50/p99, inference p99, all-reduce mean iteration time,
    loss and route changes, and an OWD CDF overlay) into ``out_dir`` (default
    ``runs/compare-<time>``). Runs that differ in scenario or traffic profile are compared
    anyway, with a warning (logged and written in ``compare.md``).

    Returns
    -------
    list of Path
        The files written.
    """
    cmp = comparison(run_dirs)
    out = Path(out_dir) if out_dir else \
        Path("runs") / f"compare-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric"] + cmp.labels)
        for lab, vals in zip(cmp.rows, cmp.values):
            w.writerow([lab] + [_csv_value(v) for v in vals])
    (out / "compare.md").write_text(comparison_markdown(cmp, [str(d) for d in run_dirs]))
    files = [out / "compare.csv", out / "compare.md", plot_compare(out / "compare.png", cmp)]
    return files


def comparison_markdown(cmp: Comparison, run_dirs: Sequence[str] = ()) -> str:
    """The comparison table as Markdown, warnings first."""
    parts = ["# meshemu compare\n"]
    if run_dirs:
        parts.append("runs: " + ", ".join(run_dirs) + "\n")
    if cmp.warnings:
        parts.append("\n".join(f"warning: {w}" for w in cmp.warnings) + "\n")
    parts.append(_md_table(["metric"] + cmp.labels,
                           [[lab] + [fmt(v) for v in vals]
                            for lab, vals in zip(cmp.rows, cmp.values)]))
    return "\n".join(parts) + "\n"


def plot_compare(path: Path, cmp: Comparison) -> Path:
    """Bar charts of the key metrics, one bar per run, and an OWD CDF overlay."""
    panels = [("OWD (ms)", ["OWD p50 (ms)", "OWD p99 (ms)"]),
              ("inference p99 (ms)", ["inference p99 (ms)"]),
              ("all-reduce iteration (ms)", ["all-reduce mean iteration (ms)",
                                             "all-reduce predicted mean (ms)"]),
              ("loss %", ["loss %"]),
              ("route changes", ["route changes"])]
    row_of = {lab: i for i, lab in enumerate(cmp.rows)}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    n = len(cmp.labels)
    colors = [f"C{j % 10}" for j in range(n)]
    for ax, (title, rows) in zip(axes.flat, panels):
        rows = [r for r in rows if r in row_of]
        vals = np.array([cmp.values[row_of[r]] for r in rows], dtype=float).reshape(len(rows), n)
        if not rows or not np.isfinite(vals).any():
            ax.text(0.5, 0.5, "not measured in these runs", ha="center", va="center",
                    transform=ax.transAxes, color="#7f7f7f")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            width = 0.8 / n
            x = np.arange(len(rows))
            for j in range(n):
                ax.bar(x + (j - (n - 1) / 2) * width, np.nan_to_num(vals[:, j]), width,
                       color=colors[j], label=cmp.labels[j])
            ax.set_xticks(x)
            ax.set_xticklabels([r.replace(" (ms)", "") for r in rows], fontsize=8)
            ax.grid(True, axis="y", color="#dddddd")
        ax.set_title(title, fontsize=10)
    ax = axes.flat[5]
    for j, s in enumerate(cmp.stats):
        _cdf(ax, s.owd_all_ms, cmp.labels[j], color=colors[j], lw=1.5)
    if not any(s.owd_all_ms.size for s in cmp.stats):
        ax.text(0.5, 0.5, "no packets in these runs", ha="center", va="center",
                transform=ax.transAxes, color="#7f7f7f")
    _style(ax, "one-way delay (ms)", "CDF")
    ax.set_title("OWD CDF, all flows", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, cmp.labels, loc="lower center", ncol=min(n, 4), fontsize=8)
    fig.suptitle("meshemu compare")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def compare_from_cli(args: argparse.Namespace) -> int:
    """``meshemu compare RUN_DIR RUN_DIR... [--out DIR]``."""
    files = compare(args.run_dirs, args.out)
    print(files[1].read_text())
    print(f"wrote {files[0].parent}/: {', '.join(f.name for f in files)}")
    return 0


# ----------------------------------------------------------------------------- helpers

def _group_indices(keys: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each distinct key (in file order)."""
    keys = np.asarray(keys).astype(str)
    if keys.size == 0:
        return {}
    uniq, inv = np.unique(keys, return_inverse=True)
    order = np.argsort(inv.reshape(-1), kind="stable")
    bounds = np.cumsum(np.bincount(inv.reshape(-1), minlength=uniq.size))[:-1]
    return {str(k): idx for k, idx in zip(uniq, np.split(order, bounds))}


def _pair_groups(t: Table) -> dict[tuple[str, str], np.ndarray]:
    keys = np.char.add(np.char.add(t["src"].astype(str), "\x1f"), t["dst"].astype(str))
    return {tuple(k.split("\x1f", 1)): v for k, v in _group_indices(keys).items()}


def _natural_key(s: str):
    """Sort "2" before "10" (flow ids are usually numbers)."""
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)

"""The run directory's file contract: every file meshemu writes into a run (or plan)
directory, its columns in order, which of them readers require and which are numeric.

Writers (:mod:`meshemu.report.record` for the plan files, :mod:`meshemu.live`,
:mod:`meshemu.traffic`) take the header from here and readers (:mod:`meshemu.report.run`)
check against the same :class:`FileSpec`, so a column is named in one place. Columns are
only ever added at the end of a file; readers accept files without the optional columns
(older runs).

Besides the CSV files a run directory holds ``positions.npz`` (:data:`POSITIONS`: every
node's WGS-84 position per recorded step, so that a report draws its map without the
scenario) and ``summary.json`` (the keys readers use are in :data:`SUMMARY_KEYS`).

This module needs only NumPy and the standard library, so readers never import the
geometry or the scenario parser through it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from meshemu.errors import ReportError


@dataclass(frozen=True)
class FileSpec:
    """One CSV file of a run directory.

    Attributes
    ----------
    name : str
        File name inside the run directory.
    columns : tuple of str
        Every column, in the order writers write them.
    required : tuple of str
        Columns a reader needs (the others may be missing in older runs).
    numeric : tuple of str
        Columns readers convert to float64.
    types : tuple of str
        The Arrow type of each column when the file is written as Parquet (the plan's large
        tables, :data:`PARQUET_SPECS`): ``float64``, ``int8``, ``int32``, ``int64`` or
        ``string``, the type a CSV cell of that column holds. Empty: CSV only.
    """

    name: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    numeric: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    @property
    def optional(self) -> tuple[str, ...]:
        """Columns that are not required."""
        return tuple(c for c in self.columns if c not in self.required)

    @property
    def stem(self) -> str:
        """The name without ``.csv`` (``links``)."""
        return self.name.removesuffix(".csv")

    @property
    def parquet_name(self) -> str:
        """The name of the table written as Parquet (``links.parquet``)."""
        return self.stem + PARQUET_SUFFIX

    @property
    def header(self) -> str:
        """The header line (with its newline), for writers that format rows themselves."""
        return ",".join(self.columns) + "\n"


#: ``shell``, ``plane``, ``slot``: the satellite's place in the +Grid (slots counted by argument
#: of latitude at t = 0); ``index``: Walker index in plane, or position in the TLE file;
#: ``norad_id``: NORAD catalogue number of TLE satellites. -1 where not applicable.
NODES = FileSpec(
    "nodes.csv",
    ("id", "name", "kind", "shell", "plane", "index", "slot", "norad_id"),
    ("id", "name", "kind"),
    ("id",),
    ("int64", "string", "string", "int32", "int32", "int32", "int32", "int64"),
)
#: The fidelity guard (``meshemu/live/guard.py``): per step, link and direction, frames sent,
#: lateness against the scheduled departure (p99, max) and frames the shaper lost because it
#: could not keep up; ``link_id`` -1 for a shaper worker as a whole; ``queue_frames``: the
#: direction's drop-tail queue (frames waiting for or in serialisation) when the guard was
#: read at the step's end (userspace delay line only; absent in older files). Only rows with
#: frames or a queue.
SHAPER = FileSpec(
    "shaper.csv",
    (
        "step",
        "t_s",
        "link_id",
        "a",
        "b",
        "direction",
        "frames",
        "late_p99_ms",
        "late_max_ms",
        "behind_drops",
        "queue_frames",
    ),
    ("step", "link_id", "frames", "late_p99_ms"),
    ("t_s", "late_p99_ms", "late_max_ms", "queue_frames"),
)
#: Daemon routing (``meshemu/live/fib.py``): every change of a node's kernel next hops toward
#: an endpoint (``next_hops`` ``|``-separated node names, empty: no route); the first rows are
#: the state when the clock started.
FIB = FileSpec(
    "fib.csv", ("t_s", "node", "dest", "next_hops"), ("t_s", "node", "dest", "next_hops"), ("t_s",)
)
#: Daemon routing (``meshemu/report/convergence.py``): one row per topology event.
CONVERGENCE = FileSpec(
    "convergence.csv",
    (
        "t_s",
        "kind",
        "links_down",
        "links_up",
        "fib_changes",
        "convergence_s",
        "converged",
        "loop_s",
        "blackhole_s",
        "stretch",
    ),
    ("t_s", "kind", "convergence_s"),
    (
        "t_s",
        "links_down",
        "links_up",
        "fib_changes",
        "convergence_s",
        "loop_s",
        "blackhole_s",
        "stretch",
    ),
)
#: What the workloads saw around each topology event (``meshemu/report/disruption.py``).
DISRUPTION = FileSpec(
    "disruption.csv",
    (
        "t_s",
        "kind",
        "flow_id",
        "src",
        "dst",
        "sent",
        "lost",
        "outage_s",
        "reordered",
        "owd_base_ms",
        "owd_max_ms",
        "owd_p50_ms",
    ),
    ("t_s", "kind", "flow_id", "lost", "outage_s"),
    ("t_s", "sent", "lost", "outage_s", "reordered", "owd_base_ms", "owd_max_ms", "owd_p50_ms"),
)
#: A routing protocol's frames per step, link and direction (``meshemu/live/control.py``).
CONTROL = FileSpec(
    "control.csv",
    ("t_s", "a", "b", "packets", "bytes"),
    ("t_s", "a", "b", "packets", "bytes"),
    ("t_s", "packets", "bytes"),
)
#: The routing daemons' CPU and memory per step and daemon name.
DAEMON_USAGE = FileSpec(
    "daemon_usage.csv",
    ("t_s", "daemon", "processes", "cpu_s", "cpu_pct", "rss_mib"),
    ("t_s", "daemon", "cpu_s"),
    ("t_s", "processes", "cpu_s", "cpu_pct", "rss_mib"),
)
#: Each routing daemon process at the end of the run.
DAEMONS = FileSpec(
    "daemons.csv",
    ("node", "daemon", "pid", "cpu_s", "rss_kib", "pss_kib", "hwm_kib"),
    ("node", "daemon", "cpu_s"),
    ("pid", "cpu_s", "rss_kib", "pss_kib", "hwm_kib"),
)
#: ``up``: 1 when the link carries traffic, 0 while it is acquiring. ``delay_ms`` is the
#: propagation delay; ``access_down_ms`` / ``access_up_ms`` the mean extra delay of the
#: access model (``gsl.access_model``) from ``a`` to ``b`` (a GSL's satellite to the ground:
#: downlink) and back (uplink), 0 on other links.
LINKS = FileSpec(
    "links.csv",
    (
        "t_s",
        "a",
        "b",
        "kind",
        "up",
        "distance_km",
        "delay_ms",
        "rate_mbps",
        "access_down_ms",
        "access_up_ms",
    ),
    ("t_s", "a", "b"),
    ("t_s", "distance_km", "delay_ms", "rate_mbps", "access_down_ms", "access_up_ms"),
    (
        "float64",
        "string",
        "string",
        "string",
        "int8",
        "float64",
        "float64",
        "float64",
        "float64",
        "float64",
    ),
)
#: The idle RTT probe of ``meshemu validate`` (``meshemu/live/fidelity.py``): one row per
#: echo request, its send time in the scenario's UTC and ``t_s``, its RTT (empty: no answer).
PROBE = FileSpec(
    "probe.csv",
    ("seq", "utc_s", "t_s", "rtt_ms"),
    ("seq", "utc_s", "rtt_ms"),
    ("utc_s", "t_s", "rtt_ms"),
)
#: An unreachable pair has an empty ``path`` and no ``hops`` or ``delay_ms`` (empty cells in
#: CSV, nulls in Parquet). ``delay_ms`` is the predicted one-way delay, ``propagation_ms``
#: (the links' propagation) plus ``access_ms`` (the mean extra delay of the access links on
#: the path, each in the direction it is taken: the deterministic part of the access model).
PATHS = FileSpec(
    "paths.csv",
    ("t_s", "src", "dst", "path", "hops", "delay_ms", "propagation_ms", "access_ms"),
    ("t_s", "src", "dst", "path", "delay_ms"),
    ("t_s", "hops", "delay_ms", "propagation_ms", "access_ms"),
    ("float64", "string", "string", "string", "int32", "float64", "float64", "float64"),
)
_STEP_COLUMNS = (
    "step",
    "t_s",
    "wall_s",
    "unix_s",
    "lag_ms",
    "apply_ms",
    "link_updates",
    "route_changes",
    "route_wait_ms",
    "routing_ms",
    "links_ms",
    "routes_ms",
    "record_ms",
)
STEPS = FileSpec("steps.csv", _STEP_COLUMNS, ("step", "t_s", "unix_s", "apply_ms"), _STEP_COLUMNS)
FLOWS = FileSpec("flows.csv", ("flow_id", "name", "kind", "src", "dst"), ("flow_id", "src", "dst"))
PACKETS = FileSpec(
    "packets.csv",
    (
        "flow_id",
        "msg_id",
        "seq",
        "src",
        "dst",
        "size_bytes",
        "send_unix_ns",
        "recv_unix_ns",
        "owd_ms",
    ),
    ("flow_id", "msg_id", "seq", "send_unix_ns", "recv_unix_ns"),
    ("seq", "size_bytes", "send_unix_ns", "recv_unix_ns", "owd_ms"),
)
FLOW_THROUGHPUT = FileSpec(
    "flow_throughput.csv",
    ("t_s", "flow_id", "rx_bytes", "mbps"),
    ("t_s", "flow_id", "mbps"),
    ("t_s", "rx_bytes", "mbps"),
)
FLOW_PATHS = FileSpec(
    "flow_paths.csv",
    ("t_s", "flow_id", "src", "dst", "path", "delay_ms"),
    ("t_s", "flow_id", "path"),
    ("t_s", "delay_ms"),
)
LINK_COUNTERS = FileSpec(
    "link_counters.csv",
    ("t_s", "a", "b", "packets", "bytes", "dropped"),
    ("t_s", "a", "b", "bytes"),
    ("t_s", "packets", "bytes", "dropped"),
)
ITERATIONS = FileSpec(
    "iterations.csv",
    (
        "job",
        "algorithm",
        "iteration",
        "start_unix",
        "end_unix",
        "duration_ms",
        "predicted_ms",
        "first_start_unix",
        "critical_path_ms",
    ),
    ("job", "iteration", "duration_ms", "predicted_ms"),
    (
        "iteration",
        "start_unix",
        "end_unix",
        "duration_ms",
        "predicted_ms",
        "first_start_unix",
        "critical_path_ms",
    ),
)
INFERENCE = FileSpec(
    "inference.csv",
    (
        "request_id",
        "user",
        "server",
        "send_unix",
        "done_unix",
        "latency_ms",
        "deadline_ms",
        "missed",
    ),
    ("request_id", "latency_ms"),
    ("send_unix", "done_unix", "latency_ms", "deadline_ms", "missed"),
)
RTT = FileSpec(
    "rtt.csv",
    ("flow_id", "msg_id", "src", "dst", "send_unix_ns", "rtt_ms"),
    ("flow_id", "rtt_ms"),
    ("send_unix_ns", "rtt_ms"),
)
#: A run over several hosts: how far each flow's one-way delays can be trusted, from the
#: clock offsets between its hosts (:mod:`meshemu.traffic.clocks`); ``owd`` is ``trusted``,
#: ``untrusted`` or ``one host``.
OWD_TRUST = FileSpec(
    "owd_trust.csv",
    (
        "flow_id",
        "src",
        "dst",
        "src_host",
        "dst_host",
        "offset_start_ms",
        "offset_end_ms",
        "error_ms",
        "drift_ms",
        "bound_ms",
        "threshold_ms",
        "owd",
    ),
    ("flow_id", "owd"),
    ("offset_start_ms", "offset_end_ms", "error_ms", "drift_ms", "bound_ms", "threshold_ms"),
)

#: Every CSV file of the contract, by file name.
SPECS: dict[str, FileSpec] = {
    s.name: s
    for s in (
        NODES,
        LINKS,
        PATHS,
        STEPS,
        FLOWS,
        PACKETS,
        FLOW_THROUGHPUT,
        FLOW_PATHS,
        LINK_COUNTERS,
        ITERATIONS,
        INFERENCE,
        RTT,
        PROBE,
        OWD_TRUST,
    )
}

#: The plan's tables that may be written as Parquet instead of CSV (``--format``).
PARQUET_SPECS: tuple[FileSpec, ...] = (NODES, LINKS, PATHS)

#: Traffic files; any of them may be missing (a run without traffic has none).
TRAFFIC_FILES = (
    FLOWS.name,
    PACKETS.name,
    FLOW_THROUGHPUT.name,
    FLOW_PATHS.name,
    LINK_COUNTERS.name,
    ITERATIONS.name,
    INFERENCE.name,
)

#: Values of ``links.csv``'s ``kind`` column; the index is ``Snapshot.kind``
#: (:data:`meshemu.geometry.linkstate.KIND_NAMES`).
LINK_KINDS = ("isl", "gsl", "trl")

#: Node kinds of ``nodes.csv`` that are satellites (the others are on the ground).
SATELLITE_KINDS = ("sat", "compute")

#: Other files: the run's summary, and the addressing plan.
SUMMARY_JSON = "summary.json"
ADDRESSING_CSV = "addressing.csv"
ADDRESSING_JSON = "addressing.json"


# ----------------------------------------------------------------------------- table formats

#: ``meshemu plan --format``: ``csv``, ``parquet``, or ``auto`` (:func:`choose_format`).
TABLE_FORMATS = ("auto", "csv", "parquet")
#: ``auto`` writes Parquet when a plan's ``links`` and ``paths`` rows reach this many (links
#: of the first step plus endpoint pairs, times the steps), CSV below.
AUTO_PARQUET_ROWS = 1_000_000
#: A table written as Parquet is a directory of that name holding one file per step (a crash
#: loses at most the step being written); ``nodes.parquet`` is a single file.
PARQUET_SUFFIX = ".parquet"


def choose_format(table_format: str, rows: int) -> str:
    """``csv`` or ``parquet`` for a plan whose large tables will hold about ``rows`` rows.

    Raises
    ------
    ReportError
        ``table_format`` is not one of :data:`TABLE_FORMATS`.
    """
    if table_format not in TABLE_FORMATS:
        raise ReportError(
            f"unknown table format {table_format!r}; use one of {', '.join(TABLE_FORMATS)} "
            f"(auto: Parquet from {AUTO_PARQUET_ROWS:,} rows of links and paths, else CSV)"
        )
    if table_format != "auto":
        return table_format
    return "parquet" if rows >= AUTO_PARQUET_ROWS else "csv"


def table_path(run_dir: Path | str, spec: FileSpec) -> Path | None:
    """The file (``links.csv``) or Parquet table (``links.parquet``) of ``spec`` in
    ``run_dir``, whichever exists (CSV first); None when neither does."""
    d = Path(run_dir)
    for name in (spec.name, spec.parquet_name):
        if (d / name).exists():
            return d / name
    return None


def resolve_table(path: Path | str) -> Path:
    """``path`` if it exists, else the same table in the other format (``paths.csv`` ->
    ``paths.parquet`` and back); ``path`` itself when neither exists."""
    p = Path(path)
    if p.exists():
        return p
    stem = p.name.removesuffix(".csv").removesuffix(PARQUET_SUFFIX)
    for other in (stem + ".csv", stem + PARQUET_SUFFIX):
        if (p.parent / other).exists():
            return p.parent / other
    return p


def open_csv(run_dir: Path | str, spec: FileSpec) -> tuple[Any, Any]:
    """Open ``run_dir/spec.name`` for writing as the run goes; returns ``(file, writer)``
    with the header written. The caller closes the file."""
    f = open(Path(run_dir) / spec.name, "w", newline="")
    w = csv.writer(f)
    w.writerow(spec.columns)
    return f, w


# ----------------------------------------------------------------------------- positions


@dataclass(frozen=True)
class ArraySpec:
    """One array of an ``.npz`` file: name, dtype, axes and unit."""

    name: str
    dtype: str
    axes: tuple[str, ...]
    unit: str = ""


@dataclass(frozen=True)
class NpzSpec:
    """An ``.npz`` file of a run directory and its arrays."""

    name: str
    arrays: tuple[ArraySpec, ...]


#: ``positions.npz``: WGS-84 latitude, longitude and altitude of every node (ids as in
#: ``nodes.csv``) at the recorded steps. Long runs keep every ``stride``-th step only, so that
#: the file stays under :data:`POSITIONS_MAX_BYTES` (``stride`` is a power of two).
POSITIONS = NpzSpec(
    "positions.npz",
    (
        ArraySpec("t_s", "float64", ("step",), "s"),
        ArraySpec("lat_deg", "float32", ("step", "node"), "deg"),
        ArraySpec("lon_deg", "float32", ("step", "node"), "deg"),
        ArraySpec("alt_km", "float32", ("step", "node"), "km"),
        ArraySpec("stride", "int64", (), "steps"),
    ),
)

#: Upper bound on the size of ``positions.npz`` (steps are thinned beyond it).
POSITIONS_MAX_BYTES = 48 * 2**20


@dataclass(frozen=True)
class Positions:
    """Node positions per recorded step (the content of ``positions.npz``).

    Attributes
    ----------
    t_s : ndarray, shape (T,)
        Times of the recorded steps (s after the scenario epoch).
    lat_deg, lon_deg, alt_km : ndarray of float32, shape (T, N)
    stride : int
        Steps between two recorded ones (1: every step).
    """

    t_s: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    alt_km: np.ndarray
    stride: int = 1

    @property
    def n_nodes(self) -> int:
        """Number of nodes (columns)."""
        return int(self.lat_deg.shape[1])

    def nearest(self, t_s: float) -> int:
        """Index of the recorded step nearest ``t_s``."""
        return int(np.argmin(np.abs(self.t_s - t_s)))


def write_positions(run_dir: Path | str, pos: Positions) -> Path:
    """Write ``positions.npz`` (atomically: a partial file never has the final name)."""
    path = Path(run_dir) / POSITIONS.name
    tmp = path.with_name(path.name + ".tmp")
    arrays: dict[str, npt.NDArray[Any]] = {
        a.name: np.asarray(getattr(pos, a.name), dtype=a.dtype) for a in POSITIONS.arrays
    }
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    return path


def read_positions(run_dir: Path | str) -> Positions | None:
    """Read ``positions.npz`` checked against :data:`POSITIONS`; None when it is missing."""
    path = Path(run_dir) / POSITIONS.name
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    missing = [a.name for a in POSITIONS.arrays if a.name not in got]
    if missing:
        raise ReportError(
            f"{path}: missing array(s) {', '.join(missing)}; expected "
            f"{', '.join(a.name for a in POSITIONS.arrays)}"
        )
    t = got["t_s"]
    grid = got["lat_deg"]
    if t.ndim != 1 or grid.ndim != 2 or grid.shape[0] != t.size:
        raise ReportError(
            f"{path}: t_s has shape {t.shape} and lat_deg {grid.shape}; "
            f"expected (step,) and (step, node)"
        )
    for name in ("lon_deg", "alt_km"):
        if got[name].shape != grid.shape:
            raise ReportError(
                f"{path}: {name} has shape {got[name].shape}, expected {grid.shape} as lat_deg"
            )
    if got["stride"].shape != ():
        raise ReportError(f"{path}: stride should be a single number")
    return Positions(
        t.astype(np.float64), got["lat_deg"], got["lon_deg"], got["alt_km"], int(got["stride"])
    )


# ----------------------------------------------------------------------------- summary.json

#: Keys of ``summary.json`` that readers use (dotted: nested objects), and what they hold.
#: Writers: :meth:`meshemu.report.record.PlanRecorder.summary` (the plan part) and the live
#: runner (``kind`` ... ``link_updates_total``); any of them may be missing.
SUMMARY_KEYS: dict[str, str] = {
    "scenario": "scenario name",
    "routing": "routing scheme name",
    "duration_s": "emulated duration (s)",
    "step_s": "time between steps (s)",
    "steps": "number of steps recorded",
    "nodes": "number of nodes",
    "events.route_changes": "route changes over the plan",
    "kind": "'run' for a live run (a plan has none)",
    "gsl.schedule": "continuous or slotted GSL assignments",
    "gsl.slot_s": "slotted: the slot (s)",
    "gsl.slot_offset_s": "slotted: the UTC second (mod slot_s) of the boundaries",
    "slots": "a probed slotted run: the probe's figures (meshemu/report/slots.py probe_figures)",
    "shaper": "link shaper of a live run",
    "time_scale": "emulated seconds per wall-clock second (default 1)",
    "timing.apply_ms_p50": "step apply time, median (ms)",
    "timing.apply_ms_p99": "step apply time, 99th percentile (ms)",
    "timing.lag_ms_p99": "step start lag, 99th percentile (ms)",
    "route_changes_total": "route changes over the run",
    "link_updates_total": "link updates over the run",
    "traffic.profile": "traffic profile name",
    "traffic.lines": "one-line summaries of the traffic, as printed by the run",
}

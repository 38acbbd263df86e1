"""The run directory's file contract: every file meshemu writes into a run (or plan)
directory, its columns in order, which of them readers require and which are numeric.

Writers (:mod:`meshemu.plan`, :mod:`meshemu.live`, :mod:`meshemu.traffic`) take the header
from here and readers (:mod:`meshemu.report`) check against the same :class:`FileSpec`, so
a column is named in one place. Columns are only ever added at the end of a file; readers
accept files without the optional columns (older runs).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    """

    name: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    numeric: tuple[str, ...] = ()

    @property
    def optional(self) -> tuple[str, ...]:
        """Columns that are not required."""
        return tuple(c for c in self.columns if c not in self.required)

    @property
    def header(self) -> str:
        """The header line (with its newline), for writers that format rows themselves."""
        return ",".join(self.columns) + "\n"


NODES = FileSpec("nodes.csv", ("id", "name", "kind", "shell", "plane", "index"),
                 ("id", "name", "kind"), ("id",))
LINKS = FileSpec("links.csv", ("t_s", "a", "b", "kind", "up", "distance_km", "delay_ms",
                               "rate_mbps"),
                 ("t_s", "a", "b"), ("t_s", "distance_km", "delay_ms", "rate_mbps"))
PATHS = FileSpec("paths.csv", ("t_s", "src", "dst", "path", "hops", "delay_ms"),
                 ("t_s", "src", "dst", "path", "delay_ms"), ("t_s", "hops", "delay_ms"))
STEPS = FileSpec("steps.csv", ("step", "t_s", "wall_s", "unix_s", "lag_ms", "apply_ms",
                               "link_updates", "route_changes"),
                 ("step", "t_s", "unix_s", "apply_ms"),
                 ("step", "t_s", "wall_s", "unix_s", "lag_ms", "apply_ms", "link_updates",
                  "route_changes"))
FLOWS = FileSpec("flows.csv", ("flow_id", "name", "kind", "src", "dst"),
                 ("flow_id", "src", "dst"))
PACKETS = FileSpec("packets.csv", ("flow_id", "msg_id", "seq", "src", "dst", "size_bytes",
                                   "send_unix_ns", "recv_unix_ns", "owd_ms"),
                   ("flow_id", "msg_id", "seq", "send_unix_ns", "recv_unix_ns"),
                   ("seq", "size_bytes", "send_unix_ns", "recv_unix_ns", "owd_ms"))
FLOW_THROUGHPUT = FileSpec("flow_throughput.csv", ("t_s", "flow_id", "rx_bytes", "mbps"),
                           ("t_s", "flow_id", "mbps"), ("t_s", "rx_bytes", "mbps"))
FLOW_PATHS = FileSpec("flow_paths.csv", ("t_s", "flow_id", "src", "dst", "path", "delay_ms"),
                      ("t_s", "flow_id", "path"), ("t_s", "delay_ms"))
LINK_COUNTERS = FileSpec("link_counters.csv", ("t_s", "a", "b", "packets", "bytes", "dropped"),
                         ("t_s", "a", "b", "bytes"), ("t_s", "packets", "bytes", "dropped"))
ITERATIONS = FileSpec("iterations.csv", ("job", "algorithm", "iteration", "start_unix",
                                         "end_unix", "duration_ms", "predicted_ms",
                                         "first_start_unix", "critical_path_ms"),
                      ("job", "iteration", "duration_ms", "predicted_ms"),
                      ("iteration", "start_unix", "end_unix", "duration_ms", "predicted_ms",
                       "first_start_unix", "critical_path_ms"))
INFERENCE = FileSpec("inference.csv", ("request_id", "user", "server", "send_unix",
                                       "done_unix", "latency_ms", "deadline_ms", "missed"),
                     ("request_id", "latency_ms"),
                     ("send_unix", "done_unix", "latency_ms", "deadline_ms", "missed"))
RTT = FileSpec("rtt.csv", ("flow_id", "msg_id", "src", "dst", "send_unix_ns", "rtt_ms"),
               ("flow_id", "rtt_ms"), ("send_unix_ns", "rtt_ms"))

#: Every CSV file of the contract, by file name.
SPECS: dict[str, FileSpec] = {s.name: s for s in (NODES, LINKS, PATHS, STEPS, FLOWS, PACKETS,
                                                   FLOW_THROUGHPUT, FLOW_PATHS, LINK_COUNTERS,
                                                   ITERATIONS, INFERENCE, RTT)}

#: Traffic files; any of them may be missing (a run without traffic has none).
TRAFFIC_FILES = (FLOWS.name, PACKETS.name, FLOW_THROUGHPUT.name, FLOW_PATHS.name,
                 LINK_COUNTERS.name, ITERATIONS.name, INFERENCE.name)

#: Other files: the run's summary, and the addressing plan.
SUMMARY_JSON = "summary.json"
ADDRESSING_CSV = "addressing.csv"
ADDRESSING_JSON = "addressing.json"


@contextmanager
def csv_writer(run_dir: Path | str, spec: FileSpec, mode: str = "w") -> Iterator[Any]:
    """Open ``run_dir/spec.name`` and yield a :func:`csv.writer` with the header written.

    With ``mode="a"`` the header is written only when the file is new or empty.
    """
    path = Path(run_dir) / spec.name
    fresh = mode == "w" or not path.exists() or path.stat().st_size == 0
    with open(path, mode, newline="") as f:
        w = csv.writer(f)
        if fresh:
            w.writerow(spec.columns)
        yield w


def open_csv(run_dir: Path | str, spec: FileSpec) -> tuple[Any, Any]:
    """Open ``run_dir/spec.name`` for writing as the run goes; returns ``(file, writer)``
    with the header written. The caller closes the file."""
    f = open(Path(run_dir) / spec.name, "w", newline="")
    w = csv.writer(f)
    w.writerow(spec.columns)
    return f, w

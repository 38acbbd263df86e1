"""Reading a run directory: :class:`Run` (``summary.json`` and one :data:`Table` per CSV file
of the contract in :mod:`meshemu.report.files`), :func:`load_run` and :func:`read_table`.

Every file is checked against its :class:`~meshemu.report.files.FileSpec`: required columns
must be in the header, optional ones are filled when missing (older runs), numeric ones are
converted to float64. ``links.csv`` (large: every link at every step) and ``positions.npz``
are read on demand (:meth:`Run.links_at`, :meth:`Run.positions`).

The plan's large tables may be Parquet instead (``nodes.parquet``, ``links.parquet``,
``paths.parquet``: :mod:`meshemu.report.parquet`). :func:`read_table` reads either format
into the same columns, and :func:`read_spec` finds whichever the directory holds, so nothing
else needs to know which was written.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import ReportError
from meshemu.report import files
from meshemu.report.files import LINK_KINDS, LINKS, PACKETS, STEPS, FileSpec, Positions

#: Files :func:`load_run` reads up front: every CSV of the contract but ``links.csv``.
LOADED_SPECS: tuple[FileSpec, ...] = tuple(s for s in files.SPECS.values() if s is not LINKS)

Table = dict[str, np.ndarray]
"""Columns of one CSV file: float64 arrays for numeric columns, str arrays otherwise."""


def read_table(
    path: Path | str,
    required: Sequence[str] = (),
    optional: Sequence[str] = (),
    numeric: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> Table | None:
    """Read a CSV file with a header, or a Parquet table (a ``.parquet`` file or directory),
    into columns; ``None`` when the file does not exist.

    Both formats give the same columns: a Parquet integer or string column reads as the
    strings its CSV cells hold, and a null as an empty cell.

    Parameters
    ----------
    path : path
    required : columns that must be in the header (ReportError otherwise)
    optional : columns filled with NaN (numeric) or ``""`` when absent
    numeric : columns converted to float64: empty, ``nan`` and ``None`` become NaN,
        ``True``/``False`` become 1/0. Extra columns are kept as strings.
    columns : only these columns (and the required ones) are returned; Parquet reads no
        others (a CSV file is read whole).
    """
    path = Path(path)
    if path.suffix == files.PARQUET_SUFFIX and path.exists():
        from meshemu.report import parquet

        if not parquet.parts(path):  # a table no step was written to, as an empty CSV file
            return None
        return _read_parquet(path, required, optional, numeric, columns=columns)
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
    _check_header(header, required, path)
    table = _columns(header, rows, path, numeric)
    if columns is not None:
        table = {k: v for k, v in table.items() if k in columns or k in required}
        optional = [c for c in optional if c in columns]
    for name in optional:
        if name not in table:
            table[name] = (
                np.full(len(rows), np.nan)
                if name in numeric
                else np.full(len(rows), "", dtype=object).astype(str)
            )
    return table


def _read_parquet(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str],
    numeric: Sequence[str],
    t_s: float | None = None,
    columns: Sequence[str] | None = None,
) -> Table:
    from meshemu.report import parquet

    wanted = None if columns is None else list(dict.fromkeys([*required, *columns]))
    tab = parquet.read(path, wanted, t_s=t_s)
    _check_header(list(tab.column_names), required, path)
    if columns is not None:
        optional = [c for c in optional if c in columns]
    n = tab.num_rows
    table: Table = {
        name: parquet.to_numpy(tab.column(name), name in numeric) for name in tab.column_names
    }
    for name in optional:
        if name not in table:
            table[name] = (
                np.full(n, np.nan) if name in numeric else np.full(n, "", dtype=object).astype(str)
            )
    return table


def _check_header(header: list[str], required: Sequence[str], path: Path) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise ReportError(
            f"{path}: missing column(s) {', '.join(missing)}; expected a header "
            f"with {','.join(required)} (found {','.join(header) or 'nothing'})"
        )


def _columns(header: list[str], rows: list[list[str]], path: Path, numeric: Sequence[str]) -> Table:
    """Transpose rows into columns; short rows are padded with "", cells beyond the header
    are dropped."""
    width = len(header)
    cols = list(itertools.zip_longest(*rows, fillvalue=""))[:width] if rows else []
    cols += [("",) * len(rows)] * (width - len(cols))
    table: Table = {}
    for name, values in zip(header, cols):
        if name in numeric:
            table[name] = _floats(values, path, name)
        else:
            table[name] = np.array(values, dtype=str) if values else np.zeros(0, dtype=str)
    return table


def _rows_at(reader: Any, path: Path, t_s: float) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the step nearest ``t_s`` in a CSV in time order (``t_s`` column)."""
    header = next(reader, None)
    if header is None:
        return None
    header = [h.strip() for h in header]
    _check_header(header, LINKS.required, path)
    it = header.index("t_s")
    before: tuple[float, list[list[str]]] | None = None  # the group at or before t_s
    cur_t, cur_rows = math.nan, list[list[str]]()
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            t = float(row[it])
        except (ValueError, IndexError):
            raise ReportError(
                f"{path}, line {line}: column t_s should be a number, got "
                f"{row[it] if it < len(row) else ''!r}"
            ) from None
        if t != cur_t:
            if cur_rows and cur_t >= t_s:  # the group just finished is the first after t_s
                break
            if cur_rows:
                before = (cur_t, cur_rows)
            cur_t, cur_rows = t, []
        cur_rows.append(row)
    after = (cur_t, cur_rows) if cur_rows else None
    if before is None and after is None:
        return header, []
    pick = min((g for g in (before, after) if g is not None), key=lambda g: abs(g[0] - t_s))
    return header, pick[1]


def read_spec(run_dir: Path | str, spec: FileSpec) -> Table | None:
    """Read ``run_dir/spec.name`` (or the same table as Parquet) checked against its contract
    (see :func:`read_table`)."""
    path = files.table_path(run_dir, spec)
    if path is None:
        return None
    return read_table(path, spec.required, spec.optional, spec.numeric)


_SPECIAL = {
    "": math.nan,
    "nan": math.nan,
    "none": math.nan,
    "null": math.nan,
    "true": 1.0,
    "false": 0.0,
}


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
            raise ReportError(
                f"{path}, line {i + 2}: column {column} should be a number, got {v!r}"
            ) from None
    return out


def _kind_ids(kind: np.ndarray) -> np.ndarray:
    """Index of each ``kind`` in :data:`~meshemu.report.files.LINK_KINDS` (-1: unknown)."""
    out = np.full(kind.shape, -1, dtype=np.int64)
    for i, k in enumerate(LINK_KINDS):
        out[kind == k] = i
    return out


def n_rows(t: Table) -> int:
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
    summary: dict[str, Any]
    tables: dict[str, Table | None]

    def need(self, which: FileSpec) -> Table:
        """The columns of a file that must be there; ReportError when it is missing or
        empty."""
        t = self.table(which)
        if t is None:
            raise ReportError(f"no {which.name} (or no rows in it) in {self.run_dir}")
        return t

    def table(self, which: FileSpec | str) -> Table | None:
        """The columns of a file (a :class:`FileSpec` such as ``files.PACKETS``, or its name),
        ``None`` when the file is missing or has no rows."""
        t = self.tables.get(which.name if isinstance(which, FileSpec) else which)
        return t if t is not None and n_rows(t) > 0 else None

    def positions(self) -> Positions:
        """Node positions per recorded step (``positions.npz``); ReportError without it."""
        pos = files.read_positions(self.run_dir)
        if pos is None:
            raise ReportError(
                f"no {files.POSITIONS.name} in {self.run_dir}: it was written "
                f"without positions (by an older meshemu, or by a recorder not "
                f"given positions_ecef_km); run it again to get a map"
            )
        nodes = self.table(files.NODES)
        if nodes is not None and n_rows(nodes) != pos.n_nodes:
            raise ReportError(
                f"{files.POSITIONS.name} has {pos.n_nodes} nodes but "
                f"{files.NODES.name} has {n_rows(nodes)}"
            )
        return pos

    def links_at(self, t_s: float) -> Table | None:
        """The rows of ``links.csv`` at the step nearest ``t_s`` (None without the file).

        The file is read as a stream, in time order, and only up to that step (Parquet: its
        ``t_s`` column, then the rows of that step).
        """
        path = files.table_path(self.run_dir, LINKS)
        if path is None:
            return None
        if path.suffix == files.PARQUET_SUFFIX:
            table = self._parquet_links_at(path, t_s)
            table["kind_id"] = _kind_ids(table["kind"])
            return table
        try:
            with open(path, newline="") as f:
                rows = _rows_at(csv.reader(f), path, t_s)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ReportError(f"cannot read {path}: {exc}") from None
        if rows is None:
            return None
        header, body = rows
        table = _columns(header, body, path, LINKS.numeric)
        table["kind_id"] = _kind_ids(table["kind"])
        return table

    @staticmethod
    def _parquet_links_at(path: Path, t_s: float) -> Table:
        from meshemu.report import parquet

        times = np.unique(parquet.to_numpy(parquet.read(path, ["t_s"]).column("t_s"), True))
        times = times[np.isfinite(times)]
        if times.size == 0:
            return _read_parquet(path, LINKS.required, (), LINKS.numeric)
        t = float(times[np.argmin(np.abs(times - t_s))])
        return _read_parquet(path, LINKS.required, (), LINKS.numeric, t_s=t)

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
        st = self.table(STEPS)
        if st is None:
            return None
        i = int(np.argmin(st["step"]))
        return float(st["t_s"][i]), float(st["unix_s"][i])

    def emulated_time_s(self, unix_s: np.ndarray) -> np.ndarray:
        """Map unix times (s) to emulated time (s); see :mod:`meshemu.report.stats`.

        Without ``steps.csv``, time 0 is the first packet sent (``packets.csv``).
        """
        unix_s = np.asarray(unix_s, dtype=float)
        origin = self.clock_origin()
        if origin is None:
            pk = self.table(PACKETS)
            sent = (
                pk["send_unix_ns"][np.isfinite(pk["send_unix_ns"])]
                if pk is not None
                else np.zeros(0)
            )
            first = sent.min() / 1e9 if sent.size else (np.nanmin(unix_s) if unix_s.size else 0)
            origin = (0.0, float(first))
        t0, u0 = origin
        return t0 + (unix_s - u0) * self.time_scale


def load_run(run_dir: Path | str) -> Run:
    """Read a run (or plan) directory; ReportError if it is not one.

    Every file of :data:`~meshemu.report.files.TRAFFIC_FILES` and ``steps.csv`` may be
    missing.
    """
    d = Path(run_dir)
    if not d.exists():
        raise ReportError(
            f"run directory {str(d)!r} does not exist; give the directory "
            f"written by 'meshemu run' or 'meshemu plan' (see runs/)"
        )
    if not d.is_dir():
        raise ReportError(
            f"{str(d)!r} is a file, not a run directory; give the directory "
            f"written by 'meshemu run' or 'meshemu plan'"
        )
    sp = d / files.SUMMARY_JSON
    if not sp.is_file():
        raise ReportError(
            f"{str(d)!r} has no summary.json: is it a meshemu run directory? "
            f"Give the directory written by 'meshemu run' or 'meshemu plan' "
            f"(a run that was interrupted before its end writes none)"
        )
    try:
        summary = json.loads(sp.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(
            f"{sp}: not valid JSON ({exc}); was the run interrupted while writing it?"
        ) from None
    if not isinstance(summary, dict):
        raise ReportError(f"{sp}: expected a JSON object, got {type(summary).__name__}")
    tables = {spec.name: read_spec(d, spec) for spec in LOADED_SPECS}
    return Run(d, summary, tables)


# ----------------------------------------------------------------------------- helpers


def group_indices(keys: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each distinct key (in file order)."""
    keys = np.asarray(keys).astype(str)
    if keys.size == 0:
        return {}
    uniq, inv = np.unique(keys, return_inverse=True)
    order = np.argsort(inv.reshape(-1), kind="stable")
    bounds = np.cumsum(np.bincount(inv.reshape(-1), minlength=uniq.size))[:-1]
    return {str(k): idx for k, idx in zip(uniq, np.split(order, bounds))}


def pair_indices(t: Table) -> dict[tuple[str, str], np.ndarray]:
    """Row indices of each ``(src, dst)`` pair of a table with those columns."""
    keys = np.char.add(np.char.add(t["src"].astype(str), "\x1f"), t["dst"].astype(str))
    out: dict[tuple[str, str], np.ndarray] = {}
    for k, v in group_indices(keys).items():
        src, dst = k.split("\x1f", 1)
        out[(src, dst)] = v
    return out


def natural_key(s: str) -> tuple[int, float, str]:
    """Sort "2" before "10" (flow ids are usually numbers)."""
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)

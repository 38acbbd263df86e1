"""The plan's large tables as Parquet (pyarrow): written a step at a time, read back whole or
at one step.

A table (``links.parquet``, ``paths.parquet``) is a directory holding one Parquet file per
step, ``part-<step>.parquet``, each one row group. A part is written under a name starting
with ``.`` and renamed when complete, so a plan that crashes leaves every step it finished
readable and no partial file among them. Parquet readers take the directory as one table:
``pyarrow.parquet.read_table("links.parquet")``, ``pandas.read_parquet("links.parquet")``,
``polars.read_parquet("links.parquet/*.parquet")``, DuckDB's
``read_parquet('links.parquet/*.parquet')``. ``nodes.parquet`` is a single file.

A step's part is encoded and written by a thread while the next step is computed (pyarrow
releases the GIL), and :meth:`StepTable.write` first waits for the previous part: at most
one recorded step is ever in flight, and :meth:`StepTable.close` waits for it.

Columns and their order are those of the CSV file (:class:`~meshemu.report.files.FileSpec`),
with the Arrow type of each in ``FileSpec.types``. meshemu reads both formats through
:func:`meshemu.report.run.read_table`, which turns either into the same columns.

pyarrow is imported here only, and only when a Parquet table is written or read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import ReportError
from meshemu.report.files import FileSpec

#: Parquet compression of the plan's tables (fast to write; pyarrow's default).
COMPRESSION = "snappy"


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (the submodule, used as pa.parquet)
    except ImportError:  # pragma: no cover - a dependency of meshemu
        raise ReportError(
            "Parquet tables need pyarrow, a dependency of meshemu: pip install pyarrow, or "
            "write CSV (meshemu plan --format csv)"
        ) from None
    return pa


def schema(spec: FileSpec) -> Any:
    """The Arrow schema of ``spec`` (its columns and ``types``)."""
    pa = _pa()
    if len(spec.types) != len(spec.columns):
        raise ReportError(f"{spec.name} has no Parquet types (it is written as CSV only)")
    return pa.schema([(c, getattr(pa, t)()) for c, t in zip(spec.columns, spec.types)])


def arrow_table(spec: FileSpec, columns: Mapping[str, Any]) -> Any:
    """An Arrow table of ``spec``'s columns, in order, from numpy arrays or Arrow arrays
    (a numpy array with a mask is given as ``(values, null_mask)``)."""
    pa = _pa()
    sch = schema(spec)
    arrays = []
    for f in sch:
        col = columns[f.name]
        if isinstance(col, tuple):
            values, mask = col
            arrays.append(pa.array(values, type=f.type, mask=mask))
        elif isinstance(col, pa.Array | pa.ChunkedArray):
            arrays.append(col if col.type == f.type else col.cast(f.type))
        else:
            arrays.append(pa.array(col, type=f.type))
    return pa.Table.from_arrays(arrays, schema=sch)


def write_file(path: Path | str, spec: FileSpec, columns: Mapping[str, Any]) -> Path:
    """Write one Parquet file (one row group) atomically: a partial file never has the name."""
    path = Path(path)
    write_arrow(path, arrow_table(spec, columns))
    return path


def write_arrow(path: Path, table: Any) -> None:
    """Write an Arrow table as one Parquet file (one row group), atomically.

    Dictionary encoding is asked for the columns that repeat (strings, integers, and floats
    that are constant over a step such as ``t_s`` and ``rate_mbps``), not for measured
    floats, where it only costs time; statistics are kept for ``t_s`` (readers that select
    one step skip the other row groups).
    """
    pa = _pa()
    tmp = path.with_name("." + path.name + ".tmp")
    repeat = [
        f.name
        for f in table.schema
        if not pa.types.is_floating(f.type) or f.name in ("t_s", "rate_mbps")
    ]
    pa.parquet.write_table(
        table,
        tmp,
        compression=COMPRESSION,
        row_group_size=max(table.num_rows, 1),
        use_dictionary=repeat,
        write_statistics=[c for c in ("t_s",) if c in table.column_names],
    )
    os.replace(tmp, path)


class StepTable:
    """A Parquet table written one step (one file, one row group) at a time.

    Parameters
    ----------
    run_dir : Path
        The run directory; the table is ``run_dir/<spec.parquet_name>`` (created, emptied of
        parts left by an earlier plan).
    spec : FileSpec
    """

    def __init__(self, run_dir: Path | str, spec: FileSpec) -> None:
        schema(spec)  # a spec without types fails here, before anything is written
        self.spec = spec
        self.path = Path(run_dir) / spec.parquet_name
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self.path.iterdir():
            if old.name.startswith(("part-", ".part-")):
                old.unlink()
        self.parts = 0
        self.rows = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def write(self, columns: Mapping[str, Any]) -> None:
        """Write one step's rows (see :func:`arrow_table`) as the next part: once the
        previous part is on disk, in the writer thread.

        Raises
        ------
        ReportError, OSError
            Writing the previous part failed.
        """
        table = arrow_table(self.spec, columns)
        self._wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"parquet-{self.spec.stem}")
        part = self.path / f"part-{self.parts:06d}.parquet"
        self._pending = self._pool.submit(write_arrow, part, table)
        self.parts += 1
        self.rows += table.num_rows

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Wait until the last part is on disk and stop the writer thread."""
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def read(path: Path | str, columns: list[str] | None = None, t_s: float | None = None) -> Any:
    """A Parquet table (a file, or a directory of parts) as an Arrow table.

    Parameters
    ----------
    path : path
    columns : list of str, optional
        Only these columns (those missing from the file are left out).
    t_s : float, optional
        Only the rows whose ``t_s`` equals it.

    Raises
    ------
    ReportError
        The table cannot be read (not Parquet, or damaged).
    """
    pa = _pa()
    path = Path(path)
    try:
        names = pa.parquet.read_schema(_first_part(path)).names
        cols = [c for c in columns if c in names] if columns is not None else None
        filters = [("t_s", "==", float(t_s))] if t_s is not None else None
        return pa.parquet.read_table(path, columns=cols, filters=filters)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None


def parts(path: Path | str) -> list[Path]:
    """The complete parts of a Parquet table directory, in step order (a file: itself)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix == ".parquet" and p.name[0] not in "._")


def _first_part(path: Path) -> Path:
    found = parts(path)
    if not found:
        raise ReportError(f"{path} holds no Parquet part (an empty table: the plan wrote no step)")
    return found[0]


def to_numpy(column: Any, numeric: bool) -> np.ndarray:
    """One Arrow column as :data:`meshemu.report.run.Table` holds it: float64 with NaN for
    nulls when ``numeric``, else str (integers as their decimal digits, nulls as ``""``),
    as the same cell reads from CSV."""
    pa = _pa()
    import pyarrow.compute as pc

    if numeric:
        return np.asarray(
            pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy(), dtype=np.float64
        )
    text = pc.fill_null(column.cast(pa.string()), "")
    values = text.to_numpy(zero_copy_only=False)
    return values.astype(str) if values.size else np.zeros(0, dtype=str)

"""What the browser view serves: a run (or plan) directory read into JSON-ready values.

::

    geometry (complete when served)        measurements (may still grow in a live run)
    nodes.csv, positions.npz, links.csv,   flows.csv, flow_paths.csv, link_counters.csv,
    paths.csv, summary.json                fib.csv, steps.csv; at a run's end also
         |                                 flow_throughput.csv, packets.csv
         v                                      v
    RunData.meta() / .step(k)              RunData.flows() / .node(i, k) / .link(l)

A replay reads both from the run directory. A live run (``meshemu run --view``) reads its
geometry from a plan of the same scenario and span computed before the clock starts (the
geometry is deterministic, so it is the run's own), and its measurements from the run
directory as the run flushes them (:class:`GrowingTable` reads only the complete lines
added since its last look).

Every file is checked against its :class:`~meshemu.report.files.FileSpec` (required
columns in the header), as :mod:`meshemu.report.run` does. Link ids are positions in the
table of every link that exists at some step (``meta()["links"]``), in first-seen order of
``links.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import ReportError
from meshemu.report import files as F
from meshemu.report.files import FileSpec
from meshemu.report.run import read_spec

#: Decimal places of positions in a step's JSON (1e-3 deg is about 100 m).
POS_DIGITS = 3


class GrowingTable:
    """A CSV file of the contract that may still be written to: each :meth:`table` call
    reads the complete lines added since the last one (a partly written last line waits
    for its newline). A file that shrank was rewritten and is read again from the start.

    Parameters
    ----------
    path : Path
    spec : FileSpec
        Its contract: the required columns must be in the header, numeric ones become
        float64 arrays.
    """

    def __init__(self, path: Path, spec: FileSpec):
        self.path, self.spec = path, spec
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._offset = 0
        self._header: list[str] | None = None
        self._rows: list[list[str]] = []
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None

    def _poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            if self._offset:
                self._reset()
            return
        if size < self._offset:
            self._reset()
        if size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        cut = data.rfind(b"\n")
        if cut < 0:
            return
        self._offset += cut + 1
        try:
            lines = list(csv.reader(io.StringIO(data[: cut + 1].decode())))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ReportError(f"cannot read {self.path}: {exc}") from None
        if self._header is None:
            if not lines:
                return
            self._header = [h.strip() for h in lines.pop(0)]
            missing = [c for c in self.spec.required if c not in self._header]
            if missing:
                raise ReportError(
                    f"{self.path}: missing column(s) {', '.join(missing)}; expected a header "
                    f"with {','.join(self.spec.required)} (found {','.join(self._header)})"
                )
        self._rows.extend(r for r in lines if r)

    def table(self) -> dict[str, np.ndarray]:
        """Every column read so far (empty arrays for a missing file, optional columns
        filled with NaN or ``""``)."""
        with self._lock:
            self._poll()
            n = len(self._rows)
            if self._cached is not None and self._cached[0] == n:
                return self._cached[1]
            header = self._header or []
            cols: dict[str, np.ndarray] = {}
            for j, name in enumerate(header):
                values = [r[j] if j < len(r) else "" for r in self._rows]
                cols[name] = (
                    _floats(values) if name in self.spec.numeric else np.array(values, dtype=str)
                )
            for name in self.spec.columns:
                if name not in cols:
                    cols[name] = (
                        np.full(n, np.nan)
                        if name in self.spec.numeric
                        else np.full(n, "", dtype="<U1")
                    )
            self._cached = (n, cols)
            return cols


class AgentPackets:
    """The traffic agents' own received-packet files, ``traffic/<node>.packets.csv`` (no
    header, the columns of ``packets.csv``), read as a live run writes them: each agent
    flushes its file every second (:data:`meshemu.traffic.agent.FLUSH_NS`) and the run merges
    them into ``packets.csv`` only at its end. Each :meth:`arrays` call parses (with Arrow,
    which does not hold the interpreter lock while it parses) only the complete lines added
    since the last one; a line cut short is skipped, as the final merge skips it. The flows'
    sampling (``sample`` of the agents' ``traffic/<node>.json``: one received row stands for
    ``n``) is read with them.
    """

    COLUMNS = ("flow_id", "size_bytes", "send_unix_ns", "recv_unix_ns", "owd_ms")

    def __init__(self, agent_dir: Path):
        self.dir = agent_dir
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.generation = getattr(self, "generation", -1) + 1
        self._offset: dict[Path, int] = {}
        self._chunks: list[dict[str, np.ndarray]] = []
        self._configs: set[Path] = set()
        self.sample: dict[int, int] = {}

    def _poll(self) -> None:
        if not self.dir.is_dir():
            if self._offset:
                self._reset()
            return
        for cfg in self.dir.glob("*.json"):
            if cfg in self._configs:
                continue
            try:
                got = json.loads(cfg.read_text())
            except (OSError, ValueError):
                continue  # being written: read at the next call
            self._configs.add(cfg)
            if isinstance(got, dict) and isinstance(got.get("sample"), dict):
                for k, v in got["sample"].items():
                    self.sample[int(k)] = int(v)
        for path in sorted(self.dir.glob("*.packets.csv")):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            off = self._offset.get(path, 0)
            if size < off:  # rewritten (a new run in the same directory): read it all again
                self._reset()
                self._poll()
                return
            if size == off:
                continue
            with open(path, "rb") as f:
                f.seek(off)
                data = f.read(size - off)
            cut = data.rfind(b"\n")
            if cut < 0:
                continue
            self._offset[path] = off + cut + 1
            chunk = _parse_packets(data[: cut + 1])
            if len(chunk["flow_id"]):
                self._chunks.append(chunk)

    def take(self) -> tuple[dict[str, np.ndarray], int]:
        """The rows added since the previous call (``flow_id``, ``size_bytes``,
        ``send_unix_ns``, ``recv_unix_ns`` int64, ``owd_ms`` float64 with NaN where empty)
        and the reading's generation: it changes when a file was rewritten and every row
        is read again (whoever sums the rows starts again then)."""
        with self._lock:
            self._poll()
            chunks, self._chunks = self._chunks, []
            if not chunks:
                empty = {c: np.zeros(0, dtype=np.int64) for c in self.COLUMNS}
                return {**empty, "owd_ms": np.zeros(0)}, self.generation
            return {c: np.concatenate([ch[c] for ch in chunks]) for c in self.COLUMNS}, (
                self.generation
            )


class FlowSums:
    """Per flow and step of the run, summed as the agents' rows come in (each row once):
    bytes received (times the flow's sampling), and the sum and count of one-way delays.
    A row's step is that of its receive time (bytes) or send time (delays) in emulated time,
    ``t0 + (unix_s - u0) * time_scale`` with ``(t0, u0)`` the first step's emulated and
    wall-clock time of ``steps.csv``, as :meth:`RunData._latency` maps ``packets.csv``."""

    def __init__(self, steps: np.ndarray, time_scale: float):
        self.steps, self.time_scale = steps, time_scale
        self.reset()

    def reset(self) -> None:
        self.bytes: dict[int, np.ndarray] = {}
        self.owd_sum: dict[int, np.ndarray] = {}
        self.owd_n: dict[int, np.ndarray] = {}
        self._pending: list[dict[str, np.ndarray]] = []

    def add(
        self,
        rows: dict[str, np.ndarray],
        sample: dict[int, int],
        clock: tuple[float, float] | None,
    ) -> None:
        """Sum ``rows`` in (kept until ``clock``, the first step's ``(t_s, unix_s)``, is
        known)."""
        if len(rows["flow_id"]):
            self._pending.append(rows)
        if clock is None or not self._pending:
            return
        t0, u0 = clock
        T = len(self.steps)
        for r in self._pending:

            def step_of(unix_ns: np.ndarray) -> np.ndarray:
                t = t0 + (unix_ns / 1e9 - u0) * self.time_scale
                return np.searchsorted(self.steps, t, side="right") - 1

            k_rx = step_of(r["recv_unix_ns"])
            k_tx = np.clip(step_of(r["send_unix_ns"]), 0, T - 1)
            owd = r["owd_ms"]
            if np.isnan(owd).all():
                owd = (r["recv_unix_ns"] - r["send_unix_ns"]) / 1e6
            for f in np.unique(r["flow_id"]).tolist():
                sel = r["flow_id"] == f
                ok = sel & (k_rx >= 0) & (k_rx < T)
                w = float(sample.get(int(f), 1))
                by = self.bytes.setdefault(f, np.zeros(T))
                by += np.bincount(k_rx[ok], weights=r["size_bytes"][ok] * w, minlength=T)
                fin = sel & np.isfinite(owd)
                self.owd_sum.setdefault(f, np.zeros(T))[:] += np.bincount(
                    k_tx[fin], weights=owd[fin], minlength=T
                )
                self.owd_n.setdefault(f, np.zeros(T))[:] += np.bincount(k_tx[fin], minlength=T)
        self._pending = []

    def throughput(self, flow: int, n_over: int) -> tuple[np.ndarray, np.ndarray]:
        """Mbit/s of ``flow`` in the first ``n_over`` steps (those that are over)."""
        n = max(0, min(n_over, len(self.steps)))
        by = self.bytes.get(flow, np.zeros(len(self.steps)))[:n]
        ends = np.append(self.steps[1:], self.steps[-1] + 1.0) if len(self.steps) else self.steps
        wall = (ends[:n] - self.steps[:n]) / self.time_scale
        return self.steps[:n], np.where(wall > 0, by * 8 / np.maximum(wall, 1e-12) / 1e6, 0.0)

    def latency(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mean one-way delay per flow (str id) and step, where it has any."""
        out = {}
        for f, n in self.owd_n.items():
            has = n > 0
            if has.any():
                out[str(f)] = (self.steps[has], self.owd_sum[f][has] / n[has])
        return out


def _parse_packets(data: bytes) -> dict[str, np.ndarray]:
    """Header-less ``packets.csv`` lines (an agent's file) into :data:`AgentPackets.COLUMNS`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    ints = ("flow_id", "size_bytes", "send_unix_ns", "recv_unix_ns")
    try:
        tab = pacsv.read_csv(
            io.BytesIO(data),
            # one thread: this runs in the run's process, beside its step loop
            read_options=pacsv.ReadOptions(column_names=list(F.PACKETS.columns), use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(AgentPackets.COLUMNS),
                column_types={**{c: pa.int64() for c in ints}, "owd_ms": pa.float64()},
            ),
        )
    except pa.ArrowInvalid:  # a cell that is no number: keep the lines that parse
        lines = data.splitlines()
        good = [ln for ln in lines if _packet_line_ok(ln)]
        if not good or len(good) == len(lines):
            return {c: np.zeros(0, dtype=np.int64) for c in ints} | {"owd_ms": np.zeros(0)}
        return _parse_packets(b"\n".join(good) + b"\n")
    res = {c: np.asarray(pc.fill_null(tab[c], 0).to_numpy(), dtype=np.int64) for c in ints}
    res["owd_ms"] = np.asarray(pc.fill_null(tab["owd_ms"], np.nan).to_numpy(), dtype=float)
    return res


def _packet_line_ok(line: bytes) -> bool:
    cells = line.split(b",")
    if len(cells) != len(F.PACKETS.columns):
        return False
    try:
        for c in AgentPackets.COLUMNS[:-1]:
            int(cells[F.PACKETS.columns.index(c)])
        if cells[-1]:
            float(cells[-1])
    except ValueError:
        return False
    return True


def _floats(values: Sequence[str]) -> np.ndarray:
    try:
        return np.array(values, dtype=float)
    except ValueError:
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
            except ValueError:
                pass
        return out


def _nums(a: np.ndarray | Sequence[float], digits: int = 4) -> list[float | None]:
    """A JSON-ready list: NaN becomes null."""
    arr = np.round(np.asarray(a, dtype=float), digits)
    return [None if math.isnan(x) else x for x in arr.tolist()]


class RunData:
    """A run (or plan) directory as the view serves it.

    Parameters
    ----------
    geometry_dir : path
        Holds ``nodes.csv``, ``positions.npz``, ``links.csv``, ``paths.csv``.
    measure_dir : path, optional
        Holds the measurements (default: ``geometry_dir``).
    live : bool
        The measurements are still being written (``meshemu run --view``).
    time_scale : float, optional
        Emulated seconds per wall-clock second (default: ``summary.json``'s, else 1).

    Raises
    ------
    ReportError
        The directory is missing or not a run or plan directory (the message says which file
        is missing and how to make one).
    """

    def __init__(
        self,
        geometry_dir: Path | str,
        measure_dir: Path | str | None = None,
        live: bool = False,
        time_scale: float | None = None,
    ):
        self.geometry_dir = Path(geometry_dir)
        self.measure_dir = Path(measure_dir) if measure_dir is not None else self.geometry_dir
        self.live = live
        _check_dir(self.geometry_dir)
        self.summary = _summary(self.geometry_dir)
        if self.measure_dir != self.geometry_dir:
            self.summary = {**self.summary, **_summary(self.measure_dir)}
        self.time_scale = float(time_scale or self.summary.get("time_scale") or 1.0)
        nodes = read_spec(self.geometry_dir, F.NODES)
        if nodes is None:
            raise ReportError(f"{self.geometry_dir / F.NODES.name} has no rows")
        order = np.argsort(nodes["id"])
        self.names: list[str] = [str(x) for x in nodes["name"][order]]
        self.kinds: list[str] = [str(x) for x in nodes["kind"][order]]
        self.id_of = {n: i for i, n in enumerate(self.names)}
        pos = F.read_positions(self.geometry_dir)
        if pos is None:
            raise ReportError(
                f"no {F.POSITIONS.name} in {self.geometry_dir}: it was written by an older "
                f"meshemu; make it again with 'meshemu plan' or 'meshemu run'"
            )
        if pos.n_nodes != len(self.names):
            raise ReportError(
                f"{F.POSITIONS.name} has {pos.n_nodes} nodes but {F.NODES.name} has "
                f"{len(self.names)}"
            )
        self.pos = pos
        self._read_links()
        self._read_paths()
        self.steps = np.array(
            sorted(set(self._link_t.tolist()) | set(self._path_t) | set(pos.t_s.tolist())),
            dtype=float,
        )
        self._link_step = np.searchsorted(self.steps, self._link_t)
        self.step_s = float(self.summary.get("step_s") or _median_step(self.steps))
        self._up = [self._link_id[self._link_step == k] for k in range(len(self.steps))]
        T, L = len(self.steps), len(self.link_a)
        self.delay_ms = np.full((T, L), np.nan, dtype=np.float32)
        self.rate_mbps = np.full((T, L), np.nan, dtype=np.float32)
        self.delay_ms[self._link_step, self._link_id] = self._link_delay
        self.rate_mbps[self._link_step, self._link_id] = self._link_rate
        self.endpoints = sorted(
            {self.id_of[s] for s, _ in self._pairs} | {self.id_of[d] for _, d in self._pairs}
        )
        self.attach_measurements(self.measure_dir)
        self._step_cache: dict[int, bytes] = {}
        self._cache_lock = threading.Lock()

    def attach_measurements(self, measure_dir: Path | str) -> None:
        """Read the measurements from ``measure_dir`` from now on (a live run's directory,
        known once the run has made it)."""
        self.measure_dir = m = Path(measure_dir)
        self._tables = {
            spec.name: GrowingTable(m / spec.name, spec)
            for spec in (
                F.FLOWS,
                F.FLOW_PATHS,
                F.FLOW_THROUGHPUT,
                F.PACKETS,
                F.LINK_COUNTERS,
                F.FIB,
                F.STEPS,
                F.SHAPER,
            )
        }
        self._agents = AgentPackets(m / "traffic")
        self._flow_sums = FlowSums(self.steps, self.time_scale)
        self._flow_sums_gen = 0

    # ----------------------------------------------------------------- reading geometry
    def _read_links(self) -> None:
        """``links.csv`` (or ``links.parquet``): the links up at each step (read by
        :func:`_links_arrow`); a link's id is its rank in first-seen order."""
        t = _links_arrow(self.geometry_dir)
        n = len(self.names)
        if t is None or not len(t["t_s"]):
            z = np.zeros(0, dtype=np.int32)
            self.link_a, self.link_b, self.link_kind = z, z, np.zeros(0, dtype=np.int8)
            self._link_key: dict[tuple[int, int], int] = {}
            self._link_t, self._link_id = np.zeros(0), z
            self._link_delay = self._link_rate = np.zeros(0, dtype=np.float32)
            return
        up = t["up"]
        ids = {}
        for col in ("a", "b"):
            names, codes = t[col]
            try:
                lookup = np.array([self.id_of[str(x)] for x in names], dtype=np.int64)
            except KeyError as exc:
                raise ReportError(
                    f"{self.geometry_dir / F.LINKS.name}: node {exc.args[0]!r} is not in "
                    f"{F.NODES.name}"
                ) from None
            ids[col] = lookup[codes[up]] if lookup.size else np.zeros(0, dtype=np.int64)
        a, b = ids["a"], ids["b"]
        key = a * n + b
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        lid = rank[inv.ravel()]
        firsts = first[order]
        kind_names, kind_codes = t["kind"]
        kind_of = np.array(
            [F.LINK_KINDS.index(k) if k in F.LINK_KINDS else -1 for k in kind_names] or [-1],
            dtype=np.int8,
        )
        self.link_a = a[firsts].astype(np.int32)
        self.link_b = b[firsts].astype(np.int32)
        self.link_kind = kind_of[kind_codes[up][firsts]] if len(kind_names) else kind_of[:0]
        self._link_key = {
            (int(x), int(y)): i
            for i, (x, y) in enumerate(zip(self.link_a.tolist(), self.link_b.tolist()))
        }
        self._link_t = np.asarray(t["t_s"][up], dtype=float)
        self._link_id = lid.astype(np.int32)
        self._link_delay = np.asarray(t["delay_ms"][up], dtype=np.float32)
        self._link_rate = np.asarray(t["rate_mbps"][up], dtype=np.float32)

    def _read_paths(self) -> None:
        t = read_spec(self.geometry_dir, F.PATHS)
        self._path_t: list[float] = []
        self._pairs: set[tuple[str, str]] = set()
        # per time: list of (src, dst, node ids, delay_ms)
        self._paths_at: dict[float, list[tuple[int, int, list[int], float]]] = {}
        if t is None:
            return
        for ts, s, d, p, dl in zip(t["t_s"], t["src"], t["dst"], t["path"], t["delay_ms"]):
            self._pairs.add((str(s), str(d)))
            ids = [self.id_of[x] for x in str(p).split()] if p else []
            self._paths_at.setdefault(float(ts), []).append(
                (self.id_of[str(s)], self.id_of[str(d)], ids, float(dl))
            )
        self._path_t = sorted(self._paths_at)

    # ----------------------------------------------------------------- what is served
    def meta(self) -> dict[str, Any]:
        """The run's constants: nodes, every link, step times, endpoints, flows."""
        s = self.summary
        return {
            "title": f"{s.get('scenario', self.geometry_dir.name)} "
            f"({'live run' if self.live else s.get('kind', 'plan')}, routing "
            f"{s.get('routing', '?')})",
            "scenario": s.get("scenario"),
            "routing": s.get("routing"),
            "kind": "run" if self.live else s.get("kind", "plan"),
            "live": self.live,
            "run_dir": str(self.measure_dir),
            "nodes": {"name": self.names, "kind": self.kinds},
            "links": {
                "a": self.link_a.tolist(),
                "b": self.link_b.tolist(),
                "kind": [F.LINK_KINDS[k] if k >= 0 else "?" for k in self.link_kind.tolist()],
            },
            "steps": self.steps.tolist(),
            "step_s": self.step_s,
            "time_scale": self.time_scale,
            "endpoints": self.endpoints,
            "links_per_step": [int(u.size) for u in self._up],
        }

    def step_json(self, k: int) -> bytes:
        """:meth:`step` as JSON bytes (cached: the geometry of a step never changes)."""
        with self._cache_lock:
            hit = self._step_cache.get(k)
        if hit is not None:
            return hit
        body = json.dumps(self.step(k), separators=(",", ":")).encode()
        with self._cache_lock:
            self._step_cache[k] = body
        return body

    def step(self, k: int) -> dict[str, Any]:
        """Step ``k``: positions (lat, lon deg, alt km), the ids of the links up, and the
        endpoint paths of ``paths.csv``."""
        if not 0 <= k < len(self.steps):
            raise IndexError(f"step {k} out of range 0..{len(self.steps) - 1}")
        t = float(self.steps[k])
        j = self.pos.nearest(t)
        return {
            "k": k,
            "t_s": t,
            "pos_t_s": float(self.pos.t_s[j]),
            "lat": np.round(self.pos.lat_deg[j].astype(float), POS_DIGITS).tolist(),
            "lon": np.round(self.pos.lon_deg[j].astype(float), POS_DIGITS).tolist(),
            "alt": np.round(self.pos.alt_km[j].astype(float), 1).tolist(),
            "up": self._up[k].tolist(),
            "paths": [
                {"src": s, "dst": d, "nodes": p, "delay_ms": round(dl, 3)}
                for s, d, p, dl in self._paths_at.get(t, [])
            ],
        }

    def flows(self) -> dict[str, Any]:
        """Flows with their path timeline (from ``flow_paths.csv``: a row when the path
        changed), throughput per step, mean one-way delay per step and the route-change
        times; ``measured_to_s`` is the latest time any of them covers."""
        fl = self._tables[F.FLOWS.name].table()
        out: list[dict[str, Any]] = []
        fp = self._tables[F.FLOW_PATHS.name].table()
        th = self._tables[F.FLOW_THROUGHPUT.name].table()
        live_th = None
        if len(self._tables[F.PACKETS.name].table()["flow_id"]):
            lat = self._latency()
        else:  # not merged yet (a live run): what the agents have written so far
            sums, n_over = self._agent_sums()
            lat = sums.latency()
            if not len(th["flow_id"]):
                live_th = self._agent_throughput(sums, n_over)
        latest = -math.inf
        for j in range(len(fl["flow_id"])):
            fid = str(fl["flow_id"][j])
            sel = fp["flow_id"] == fid
            pt = fp["t_s"][sel]
            paths = [
                [self.id_of[x] for x in str(p).split() if x in self.id_of] for p in fp["path"][sel]
            ]
            changes = [float(pt[i]) for i in range(1, len(paths)) if paths[i] != paths[i - 1]]
            if live_th is None:
                tsel = th["flow_id"] == fid
                tt, tv = th["t_s"][tsel], th["mbps"][tsel]
            else:
                tt, tv = live_th.get(fid, (np.zeros(0), np.zeros(0)))
            lt, lv = lat.get(fid, (np.zeros(0), np.zeros(0)))
            for arr in (pt, tt, lt):
                if len(arr):
                    latest = max(latest, float(np.nanmax(arr)))
            out.append(
                {
                    "flow_id": fid,
                    "name": str(fl["name"][j]),
                    "kind": str(fl["kind"][j]),
                    "src": self.id_of.get(str(fl["src"][j]), -1),
                    "dst": self.id_of.get(str(fl["dst"][j]), -1),
                    "path_t_s": _nums(pt),
                    "paths": paths,
                    "path_delay_ms": _nums(fp["delay_ms"][sel], 3),
                    "route_changes_t_s": changes,
                    "throughput": {"t_s": _nums(tt), "mbps": _nums(tv, 4)},
                    "latency": {"t_s": _nums(lt), "owd_ms": _nums(lv, 3)},
                }
            )
        if not out:
            out = self._planned_flows()
        return {
            "flows": out,
            "measured_to_s": latest if math.isfinite(latest) else None,
            "flow_stats": "agents" if live_th is not None and live_th else "files",
            "has_fib": bool(len(self._tables[F.FIB.name].table()["t_s"])),
        }

    def _planned_flows(self) -> list[dict[str, Any]]:
        """Without traffic (a plan, or a run without it): one entry per endpoint pair of
        ``paths.csv`` (the pair ordered by name), its path when it changed and its planned
        delay per step as the latency; kind ``planned path``."""
        per: dict[tuple[int, int], tuple[list[float], list[list[int]], list[float]]] = {}
        for t in self._path_t:
            for s, d, p, dl in self._paths_at[t]:
                if self.names[s] > self.names[d]:
                    continue
                ts, ps, ds = per.setdefault((s, d), ([], [], []))
                ts.append(t)
                ps.append(p)
                ds.append(dl)
        out: list[dict[str, Any]] = []
        for (s, d), (ts, ps, ds) in sorted(
            per.items(), key=lambda x: (self.names[x[0][0]], self.names[x[0][1]])
        ):
            keep = [i for i in range(len(ps)) if i == 0 or ps[i] != ps[i - 1]]
            out.append(
                {
                    "flow_id": f"{self.names[s]}-{self.names[d]}",
                    "name": f"{self.names[s]}-{self.names[d]}",
                    "kind": "planned path",
                    "src": s,
                    "dst": d,
                    "path_t_s": [ts[i] for i in keep],
                    "paths": [ps[i] for i in keep],
                    "path_delay_ms": _nums([ds[i] for i in keep], 3),
                    "route_changes_t_s": [ts[i] for i in keep[1:]],
                    "throughput": {"t_s": [], "mbps": []},
                    "latency": {"t_s": ts, "owd_ms": _nums(ds, 3)},
                }
            )
        return out

    def utilisation(self, k: int) -> dict[str, Any]:
        """Per link at step ``k``: bytes carried (``link_counters.csv``) over what its rate
        carries in one step of wall-clock time (null: no counter row, or down)."""
        if not 0 <= k < len(self.steps):
            raise IndexError(f"step {k} out of range 0..{len(self.steps) - 1}")
        lc = self._tables[F.LINK_COUNTERS.name].table()
        util = np.full(len(self.link_a), np.nan)
        wall_s = self.step_s / self.time_scale
        sel = np.nonzero(np.abs(lc["t_s"] - self.steps[k]) < 1e-6)[0]
        for r in sel.tolist():
            lid = self.link_id(
                self.id_of.get(str(lc["a"][r]), -1), self.id_of.get(str(lc["b"][r]), -1)
            )
            if lid is None:
                continue
            rate = float(self.rate_mbps[k, lid])
            if rate > 0:
                util[lid] = float(lc["bytes"][r]) * 8 / wall_s / 1e6 / rate
        return {"k": k, "util": _nums(np.clip(util, 0, 1), 4)}

    def _step_clock(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``steps.csv``'s (emulated t_s, unix_s) per step, in step order; None without it."""
        st = self._tables[F.STEPS.name].table()
        if not len(st["step"]):
            return None
        order = np.argsort(st["step"], kind="stable")
        return st["t_s"][order], st["unix_s"][order]

    def _agent_sums(self) -> tuple[FlowSums, int]:
        """The agents' rows summed so far, and how many steps are over (``steps.csv`` has
        the next one's start)."""
        rows, gen = self._agents.take()
        if gen != self._flow_sums_gen:
            self._flow_sums.reset()
            self._flow_sums_gen = gen
        clock = self._step_clock()
        first = (float(clock[0][0]), float(clock[1][0])) if clock is not None else None
        self._flow_sums.add(rows, self._agents.sample, first)
        return self._flow_sums, (len(clock[0]) - 1 if clock is not None else 0)

    def _agent_throughput(
        self, sums: FlowSums, n_over: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per flow of ``flows.csv``, Mbit/s received in each step that is over, from the
        agents' files, as the run's ``flow_throughput.csv`` will have it (every flow with a
        value for every step, zero without traffic). Empty before any agent wrote a row or
        before a step is over."""
        if not sums.bytes or n_over < 1:
            return {}
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for fid in self._tables[F.FLOWS.name].table()["flow_id"].tolist():
            try:
                out[str(fid)] = sums.throughput(int(fid), n_over)
            except ValueError:
                continue
        return out

    def _latency(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mean one-way delay per flow and step from ``packets.csv`` (send times mapped to
        emulated time through ``steps.csv``'s step 0 and the time scale)."""
        pk = self._tables[F.PACKETS.name].table()
        if not len(pk["flow_id"]):
            return {}
        clock = self._step_clock()
        sent_s = pk["send_unix_ns"] / 1e9
        if clock is not None:
            t0, u0 = float(clock[0][0]), float(clock[1][0])
        else:
            t0, u0 = float(self.steps[0]), float(np.nanmin(sent_s))
        t_em = t0 + (sent_s - u0) * self.time_scale
        owd = pk["owd_ms"]
        if np.isnan(owd).all():
            owd = (pk["recv_unix_ns"] - pk["send_unix_ns"]) / 1e6
        k = np.clip(np.searchsorted(self.steps, t_em, side="right") - 1, 0, len(self.steps) - 1)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for fid in np.unique(pk["flow_id"]):
            sel = (pk["flow_id"] == fid) & np.isfinite(owd)
            if not sel.any():
                continue
            ks = k[sel]
            sums = np.bincount(ks, weights=owd[sel], minlength=len(self.steps))
            cnt = np.bincount(ks, minlength=len(self.steps))
            has = cnt > 0
            out[str(fid)] = (self.steps[has], sums[has] / cnt[has])
        return out

    def node(self, i: int, k: int) -> dict[str, Any]:
        """Node ``i`` at step ``k``: its links up (peer, kind, delay, rate), its routes toward
        the endpoints as the run's path files give them, and its FIB (daemon runs)."""
        if not 0 <= i < len(self.names):
            raise IndexError(f"node {i} out of range 0..{len(self.names) - 1}")
        k = min(max(k, 0), len(self.steps) - 1)
        t = float(self.steps[k])
        up = self._up[k]
        mine = up[(self.link_a[up] == i) | (self.link_b[up] == i)]
        links = [
            {
                "link": int(lid),
                "peer": int(self.link_b[lid] if self.link_a[lid] == i else self.link_a[lid]),
                "kind": F.LINK_KINDS[self.link_kind[lid]] if self.link_kind[lid] >= 0 else "?",
                "delay_ms": _nums([self.delay_ms[k, lid]], 3)[0],
                "rate_mbps": _nums([self.rate_mbps[k, lid]], 3)[0],
            }
            for lid in mine.tolist()
        ]
        links.sort(key=lambda x: (str(x["kind"]), self.names[int(x["peer"] or 0)]))
        return {
            "id": i,
            "name": self.names[i],
            "kind": self.kinds[i],
            "k": k,
            "t_s": t,
            "links": links,
            "routes": self.routes(i, k),
            "fib": self.fib(i, t),
        }

    def routes(self, i: int, k: int) -> list[dict[str, Any]]:
        """Node ``i``'s route toward each endpoint at step ``k``: the rest of the first
        ``paths.csv`` path through ``i`` to it (None where no recorded path passes ``i``:
        ``paths.csv`` holds endpoint pairs only)."""
        t = float(self.steps[k])
        found: dict[int, dict[str, Any]] = {}
        for _s, d, p, _dl in self._paths_at.get(t, []):
            if d in found or d == i or i not in p[:-1]:
                continue
            rest = p[p.index(i) :]
            found[d] = {"dest": d, "next_hop": rest[1], "path": rest, "hops": len(rest) - 1}
        out = []
        for d in self.endpoints:
            if d == i:
                continue
            out.append(found.get(d, {"dest": d, "next_hop": None, "path": [], "hops": None}))
        return out

    def fib(self, i: int, t_s: float) -> list[dict[str, Any]] | None:
        """The node's kernel next hops toward each endpoint at ``t_s`` (``fib.csv``: the last
        change at or before it); None without ``fib.csv`` (computed routing)."""
        fb = self._tables[F.FIB.name].table()
        if not len(fb["t_s"]):
            return None
        name = self.names[i]
        sel = np.nonzero((fb["node"] == name) & (fb["t_s"] <= t_s + 1e-9))[0]
        state: dict[str, tuple[float, str]] = {}
        for r in sel.tolist():
            state[str(fb["dest"][r])] = (float(fb["t_s"][r]), str(fb["next_hops"][r]))
        return [
            {
                "dest": self.id_of.get(d, -1),
                "next_hops": [self.id_of[x] for x in nh.split("|") if x in self.id_of],
                "since_t_s": ts,
            }
            for d, (ts, nh) in sorted(state.items())
        ]

    def link(self, lid: int) -> dict[str, Any]:
        """Link ``lid`` over time: delay and rate (null while down), the shaper's counters
        per direction from ``link_counters.csv`` and its queue per direction and step from
        ``shaper.csv`` (``queue``: frames in the drop-tail queue at the step's end, 0 at a
        step the guard wrote no row for the direction, null at the steps the guard has not
        reached yet; empty where the shaper reports no queue: netem, a plan)."""
        if not 0 <= lid < len(self.link_a):
            raise IndexError(f"link {lid} out of range 0..{len(self.link_a) - 1}")
        a, b = int(self.link_a[lid]), int(self.link_b[lid])
        lc = self._tables[F.LINK_COUNTERS.name].table()
        counters = {}
        for x, y in ((a, b), (b, a)):
            sel = (lc["a"] == self.names[x]) & (lc["b"] == self.names[y])
            if sel.any() or x == a:
                counters[f"{self.names[x]}>{self.names[y]}"] = {
                    "t_s": _nums(lc["t_s"][sel]),
                    "packets": _nums(lc["packets"][sel], 0),
                    "bytes": _nums(lc["bytes"][sel], 0),
                    "dropped": _nums(lc["dropped"][sel], 0),
                }
        return {
            "id": lid,
            "a": a,
            "b": b,
            "kind": F.LINK_KINDS[self.link_kind[lid]] if self.link_kind[lid] >= 0 else "?",
            "t_s": self.steps.tolist(),
            "delay_ms": _nums(self.delay_ms[:, lid], 3),
            "rate_mbps": _nums(self.rate_mbps[:, lid], 3),
            "counters": counters,
            "queue": self._queue(a, b),
        }

    def _queue(self, a: int, b: int) -> dict[str, list[float | None]]:
        """``shaper.csv``'s ``queue_frames`` of the link a-b per direction (``a>b``, ``b>a``,
        by node names) on the steps of :attr:`steps`; {} without queue figures."""
        sh = self._tables[F.SHAPER.name].table()
        q = sh["queue_frames"]
        if not len(q) or np.isnan(q).all():
            return {}
        t = sh["t_s"]
        reached = float(np.nanmax(t))
        k = np.searchsorted(self.steps, t - 1e-6)
        ok = (k < len(self.steps)) & (
            np.abs(self.steps[np.minimum(k, len(self.steps) - 1)] - t) < 1e-6
        )
        out: dict[str, list[float | None]] = {}
        for x, y in ((a, b), (b, a)):
            # a row names the link's ends as the run's link table has them: a>b or b>a
            fwd = (
                (sh["a"] == self.names[x]) & (sh["b"] == self.names[y]) & (sh["direction"] == "a>b")
            )
            rev = (
                (sh["a"] == self.names[y]) & (sh["b"] == self.names[x]) & (sh["direction"] == "b>a")
            )
            sel = ok & (fwd | rev)
            series = np.where(self.steps <= reached + 1e-9, 0.0, np.nan)
            series[k[sel]] = np.nan_to_num(q[sel])
            out[f"{self.names[x]}>{self.names[y]}"] = _nums(series, 0)
        return out

    def link_id(self, a: int, b: int) -> int | None:
        """Id of the link between nodes ``a`` and ``b`` (either order); None if none."""
        return self._link_key.get((a, b), self._link_key.get((b, a)))


def _links_arrow(d: Path) -> dict[str, Any] | None:
    """``links.csv`` or ``links.parquet`` of ``d`` through Arrow (a 10,000-satellite plan's
    file has a million rows: Arrow's CSV reader takes a fraction of a second where the
    :mod:`csv` module takes seconds). Returns ``t_s``, ``delay_ms``, ``rate_mbps`` (float64,
    NaN for an empty cell), ``up`` (bool: ``1``/``true``, or no ``up`` column) and ``a``,
    ``b``, ``kind`` as ``(distinct values, code per row)``; None without the file.

    Raises
    ------
    ReportError
        The file cannot be read or lacks a required column (the message names them).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    path = F.table_path(d, F.LINKS)
    if path is None:
        return None
    strings = ("a", "b", "kind", "up")
    floats = ("t_s", "delay_ms", "rate_mbps")
    try:
        if path.suffix == F.PARQUET_SUFFIX:
            from meshemu.report import parquet

            if not parquet.parts(path):
                return None
            tab = parquet.read(path, [*floats, *strings])
        else:
            with open(path, newline="") as f:
                header = [h.strip() for h in next(csv.reader(f), [])]
            if not header:
                return None
            missing = [c for c in F.LINKS.required if c not in header]
            if missing:
                raise ReportError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected a header with "
                    f"{','.join(F.LINKS.required)} (found {','.join(header)})"
                )
            tab = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    include_columns=[c for c in (*floats, *strings) if c in header],
                    column_types={
                        **{c: pa.string() for c in strings},
                        **{c: pa.float64() for c in floats},
                    },
                    strings_can_be_null=False,
                ),
            )
    except pa.ArrowException as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    missing = [c for c in F.LINKS.required if c not in tab.column_names]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}")
    n = tab.num_rows
    out: dict[str, Any] = {}
    for c in floats:
        out[c] = (
            np.asarray(pc.fill_null(tab[c].cast(pa.float64()), np.nan).to_numpy(), dtype=float)
            if c in tab.column_names
            else np.full(n, np.nan)
        )
    for c in ("a", "b", "kind"):
        if c not in tab.column_names:
            out[c] = (np.array([""]), np.zeros(n, dtype=np.int64))
            continue
        enc = pc.fill_null(tab[c].cast(pa.string()), "").combine_chunks().dictionary_encode()
        out[c] = (
            enc.dictionary.to_numpy(zero_copy_only=False).astype(str),
            np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64),
        )
    if "up" in tab.column_names:
        text = pc.utf8_lower(pc.fill_null(tab["up"].cast(pa.string()), ""))
        up = pc.is_in(text, value_set=pa.array(["1", "1.0", "true", ""]))
        out["up"] = np.asarray(up.to_numpy(zero_copy_only=False), dtype=bool)
    else:  # an older file: its rows are the links up
        out["up"] = np.ones(n, dtype=bool)
    return out


def _cell(row: list[str], j: int) -> float:
    try:
        return float(row[j]) if j >= 0 and row[j] != "" else math.nan
    except (ValueError, IndexError):
        return math.nan


def _median_step(steps: np.ndarray) -> float:
    return float(np.median(np.diff(steps))) if steps.size > 1 else 1.0


def _summary(d: Path) -> dict[str, Any]:
    path = d / F.SUMMARY_JSON
    if not path.is_file():
        return {}
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    return got if isinstance(got, dict) else {}


def _check_dir(d: Path) -> None:
    if not d.exists():
        raise ReportError(
            f"run directory {str(d)!r} does not exist; give a directory written by "
            f"'meshemu run' or 'meshemu plan' (they go under runs/ by default)"
        )
    if not d.is_dir():
        raise ReportError(f"{str(d)!r} is a file, not a run directory")
    missing = [F.NODES.name] if F.table_path(d, F.NODES) is None else []
    if not (d / F.POSITIONS.name).is_file():
        missing.append(F.POSITIONS.name)
    if missing:
        raise ReportError(
            f"{d} is not a run or plan directory: no {' and no '.join(missing)}; give a "
            f"directory written by 'meshemu run' or 'meshemu plan'"
        )

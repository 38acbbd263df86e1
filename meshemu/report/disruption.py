"""What the workloads saw around each topology event: loss, outage, reordering, delay spikes
(issue 11).

For every topology event at ``t_e`` (a row of ``convergence.csv``, or a change of the links
that are up in ``links.csv``) and every flow that carried packets near it, two windows of
*send* time (emulated, from ``steps.csv``'s clock origin as everywhere in the report):

- the **event window** ``[t_e, t_e + convergence_s + window_s)``, cut at the next event:
  the time the routing needed plus ``window_s`` for packets already in flight;
- the **baseline** ``[t_e - baseline_s, t_e)``: the flow's one-way delay before the event.

Each sender numbers its frames per flow (``seq``), and the receiver logs every frame, or every
``n``-th one it receives for fast flows (``traffic.json`` ``sample_every``). Between two
logged frames ``Δseq - n`` frames were lost, whatever the sampling, sent between the two
logged frames' send times. From this:

``lost``       frames lost in gaps that overlap the event window
``sent``       frames sent in the event window (logged x n, plus those lost)
``outage_s``   the longest such lossy gap: how long the flow was cut, as a probe sees it
``reordered``  logged frames of the window that arrived after a higher ``seq``
``owd_base_ms`` / ``owd_max_ms`` / ``owd_p50_ms``  median one-way delay in the baseline;
               largest and median in the event window (``owd_max_ms - owd_base_ms`` is the
               spike, which includes a path that is simply longer after the event)

Only the run's files are read (pure numpy; no root, no scenario).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.report.files import DISRUPTION

#: Default seconds after the routing converged that still count as the event's.
WINDOW_S = 1.0
#: Default seconds before the event whose delays are the baseline.
BASELINE_S = 1.0


@dataclass(frozen=True)
class EventWindow:
    """One topology event: when, what kind, and how long routing took (0 when unknown)."""

    t_s: float
    kind: str
    convergence_s: float = 0.0


@dataclass(frozen=True)
class FlowEffect:
    """What one flow (one sender of it) saw around one event (see module docstring)."""

    t_s: float
    kind: str
    flow_id: str
    src: str
    dst: str
    sent: int
    lost: int
    outage_s: float
    reordered: int
    owd_base_ms: float
    owd_max_ms: float
    owd_p50_ms: float


@dataclass(frozen=True)
class _Stream:
    """One sender's logged frames of one flow, sorted by seq."""

    seq: np.ndarray
    send_t: np.ndarray
    owd: np.ndarray
    late: np.ndarray  # bool: arrived after a frame of higher seq
    every: int


def _streams(
    packets: Mapping[str, np.ndarray], send_t: np.ndarray, every: Mapping[str, int]
) -> dict[tuple[str, str, str], _Stream]:
    flow = np.asarray(packets["flow_id"]).astype(str)
    src = np.asarray(packets["src"]).astype(str)
    dst = np.asarray(packets["dst"]).astype(str)
    seq = np.asarray(packets["seq"], dtype=float)
    recv = np.asarray(packets["recv_unix_ns"], dtype=float)
    owd = np.asarray(packets["owd_ms"], dtype=float)
    ok = np.isfinite(seq) & np.isfinite(recv) & np.isfinite(send_t)
    keys = np.char.add(np.char.add(flow, "\x1f"), np.char.add(np.char.add(src, "\x1f"), dst))
    out: dict[tuple[str, str, str], _Stream] = {}
    for key in np.unique(keys[ok]):
        idx = np.nonzero(ok & (keys == key))[0]
        # reordering, in arrival order: below the running maximum seq
        by_rx = idx[np.argsort(recv[idx], kind="stable")]
        s_rx = seq[by_rx]
        prev_max = np.concatenate([[-math.inf], np.maximum.accumulate(s_rx)[:-1]])
        late_rx = s_rx < prev_max
        order = np.argsort(s_rx, kind="stable")
        s_sorted = s_rx[order]
        keep = np.concatenate([[True], np.diff(s_sorted) > 0])  # duplicates: first only
        pick = by_rx[order][keep]
        f, s, d = str(key).split("\x1f")
        out[(f, s, d)] = _Stream(
            seq[pick].astype(np.int64),
            send_t[pick],
            owd[pick],
            late_rx[order][keep],
            max(1, int(every.get(f, 1))),
        )
    return out


def _effect(st: _Stream, w0: float, w1: float, b0: float) -> tuple[Any, ...] | None:
    """(sent, lost, outage_s, reordered, owd base/max/p50) of a stream in ``[w0, w1)``."""
    t = st.send_t
    near = (t >= b0) & (t < w1)
    if not near.any():
        return None
    lost_gap = np.diff(st.seq) - st.every
    gap_lo, gap_hi = t[:-1], t[1:]
    lossy = (lost_gap > 0) & (gap_lo < w1) & (gap_hi > w0)
    lost = int(lost_gap[lossy].sum())
    outage = float((gap_hi - gap_lo)[lossy].max()) if lossy.any() else 0.0
    inw = (t >= w0) & (t < w1)
    base = (t >= b0) & (t < w0)
    sent = int(inw.sum()) * st.every + lost
    owd_w = st.owd[inw]
    return (
        sent,
        lost,
        round(outage, 6),
        int(st.late[inw].sum()),
        round(float(np.median(st.owd[base])), 4) if base.any() else math.nan,
        round(float(owd_w.max()), 4) if owd_w.size else math.nan,
        round(float(np.median(owd_w)), 4) if owd_w.size else math.nan,
    )


def analyse(
    events: Sequence[EventWindow],
    packets: Mapping[str, np.ndarray],
    send_t_s: np.ndarray,
    every: Mapping[str, int] | None = None,
    window_s: float = WINDOW_S,
    baseline_s: float = BASELINE_S,
    end_s: float = math.inf,
) -> list[FlowEffect]:
    """Every (event, flow sender) pair with packets near the event (see module docstring).

    Parameters
    ----------
    events : sequence of EventWindow
        In time order.
    packets : mapping of column name to array
        ``packets.csv``'s ``flow_id``, ``src``, ``dst``, ``seq``, ``recv_unix_ns``,
        ``owd_ms``.
    send_t_s : ndarray
        Each row's send time, emulated (s).
    every : mapping of flow id to int, optional
        The receivers' logging period per flow (1 when absent).
    """
    if not len(events) or len(send_t_s) == 0:
        return []
    streams = _streams(packets, np.asarray(send_t_s, dtype=float), every or {})
    out: list[FlowEffect] = []
    times = [e.t_s for e in events]
    for j, e in enumerate(events):
        t_next = times[j + 1] if j + 1 < len(times) else end_s
        w0 = e.t_s
        w1 = min(t_next, w0 + max(e.convergence_s, 0.0) + window_s)
        b0 = max(w0 - baseline_s, times[j - 1] if j else -math.inf)
        for (flow, src, dst), st in streams.items():
            r = _effect(st, w0, w1, b0)
            if r is not None:
                out.append(FlowEffect(e.t_s, e.kind, flow, src, dst, *r))
    return out


def write_effects(path: Path, effects: Sequence[FlowEffect]) -> Path:
    """``disruption.csv``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(DISRUPTION.columns)
        for e in effects:
            w.writerow([getattr(e, c) for c in DISRUPTION.columns])
    return path


def summarize(effects: Sequence[FlowEffect]) -> dict[str, Any]:
    """Per event kind (and ``all``): events and flows affected, frames lost of those sent,
    outage p50/p99/max, the largest delay spike over the baseline."""
    out: dict[str, Any] = {}
    kinds = sorted({e.kind for e in effects})
    for kind in [*kinds, "all"]:
        ev = [e for e in effects if kind in ("all", e.kind)]
        if not ev:
            continue
        lossy = [e for e in ev if e.lost > 0]
        outages = np.array([e.outage_s for e in lossy]) if lossy else np.zeros(1)
        spikes = [
            e.owd_max_ms - e.owd_base_ms
            for e in ev
            if math.isfinite(e.owd_max_ms) and math.isfinite(e.owd_base_ms)
        ]
        sent = sum(e.sent for e in ev)
        lost = sum(e.lost for e in ev)
        out[kind] = {
            "events": len({e.t_s for e in ev}),
            "events_with_loss": len({e.t_s for e in lossy}),
            "flow_events": len(ev),
            "sent": sent,
            "lost": lost,
            "loss_pct": round(100.0 * lost / sent, 4) if sent else 0.0,
            "reordered": sum(e.reordered for e in ev),
            "outage_s_p50": float(np.percentile(outages, 50)),
            "outage_s_p99": float(np.percentile(outages, 99)),
            "outage_s_max": float(outages.max()),
            "owd_spike_ms_max": round(max(spikes), 4) if spikes else math.nan,
        }
    return out


def events_from_links(links: Mapping[str, np.ndarray]) -> list[EventWindow]:
    """Topology events of a run without daemon routing: the steps at which the set of links
    that are up changes (``links.csv`` columns ``t_s``, ``a``, ``b``, ``kind``, ``up``)."""
    t = np.asarray(links["t_s"], dtype=float)
    up = np.asarray(links["up"]).astype(str)
    isup = np.isin(up, ("1", "1.0", "True", "true"))
    key = np.char.add(
        np.char.add(np.asarray(links["a"]).astype(str), "\x1f"), np.asarray(links["b"]).astype(str)
    )
    kind = np.asarray(links["kind"]).astype(str)
    order = np.argsort(t, kind="stable")
    t, isup, key, kind = t[order], isup[order], key[order], kind[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(t))[0] + 1, [t.size]])
    out: list[EventWindow] = []
    prev: dict[str, str] | None = None
    for lo, hi in zip(starts[:-1], starts[1:]):
        sel = slice(int(lo), int(hi))
        m = isup[sel]
        now = dict(zip(key[sel][m].tolist(), kind[sel][m].tolist()))
        if prev is not None and now.keys() != prev.keys():
            changed = {prev.get(k) or now.get(k) or "" for k in prev.keys() ^ now.keys()}
            out.append(EventWindow(float(t[lo]), changed.pop() if len(changed) == 1 else "mixed"))
        prev = now
    return out


def run_effects(
    run_dir: Path | str,
    time_scale: float = 1.0,
    window_s: float = WINDOW_S,
    baseline_s: float = BASELINE_S,
) -> list[FlowEffect] | None:
    """:func:`analyse` on a run directory's files; None without ``packets.csv`` or
    ``steps.csv``. Events are ``convergence.csv``'s (daemon routing) or else ``links.csv``'s."""
    import json

    from meshemu.report import files as F
    from meshemu.report.run import read_spec

    d = Path(run_dir)
    pk, steps = read_spec(d, F.PACKETS), read_spec(d, F.STEPS)
    if pk is None or steps is None or not len(pk["seq"]) or not len(steps["step"]):
        return None
    i0 = int(np.argmin(steps["step"]))
    t0, u0 = float(steps["t_s"][i0]), float(steps["unix_s"][i0])
    send_t = t0 + (pk["send_unix_ns"] / 1e9 - u0) * time_scale
    end_s = (
        float(np.max(steps["t_s"])) + float(np.median(np.diff(np.sort(steps["t_s"]))))
        if (len(steps["t_s"]) > 1)
        else math.inf
    )
    conv = read_spec(d, F.CONVERGENCE)
    if conv is not None:
        events = [
            EventWindow(float(t), str(k), float(c) if math.isfinite(c) else 0.0)
            for t, k, c in zip(conv["t_s"], conv["kind"], conv["convergence_s"])
        ]
    else:
        links = read_spec(d, F.LINKS)
        events = events_from_links(links) if links is not None else []
    every: dict[str, int] = {}
    tj = d / "traffic.json"
    if tj.is_file():
        every = {
            str(k): int(v) for k, v in json.loads(tj.read_text()).get("sample_every", {}).items()
        }
    return analyse(events, pk, send_t, every, window_s, baseline_s, end_s)

"""The report of a probed run of a scenario with slotted GSLs (``meshemu validate``).

From the run's ``probe.csv`` (:data:`meshemu.report.files.PROBE`: an idle RTT probe, send
times in the scenario's UTC) and the slot configuration in ``summary.json`` (``gsl``):

- ``rtt_slots.png``: RTT over time with the slot boundaries marked, lost probes as ticks;
- ``slot_jump.csv`` and ``slot_jump.png``: the slot-jump statistic per offset 0..slot_s-1
  (:func:`meshemu.report.slots.slot_jump`);
- ``slots.json``: :func:`meshemu.report.slots.probe_figures` (RTT minimum, median, p95, the
  slot jump, the loss within 1 s of a boundary against elsewhere), also what the run's
  ``summary.json`` holds under ``slots``.

A run without ``probe.csv`` or without slotted GSLs gets none of these.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meshemu.errors import ReportError  # noqa: E402
from meshemu.report.files import PROBE  # noqa: E402
from meshemu.report.run import Run  # noqa: E402
from meshemu.report.slots import probe_figures  # noqa: E402

#: Window around a boundary in which loss counts as "near" (s).
BOUNDARY_WINDOW_S = 1.0


def slot_config(summary: dict[str, Any]) -> tuple[float, float] | None:
    """(slot_s, slot_offset_s) of a run with slotted GSLs, else None."""
    g = summary.get("gsl")
    if not isinstance(g, dict) or g.get("schedule") != "slotted":
        return None
    return float(g["slot_s"]), float(g["slot_offset_s"])


def slot_figures(run: Run) -> dict[str, Any] | None:
    """The probe's figures of a probed slotted run (None when it is not one)."""
    cfg = slot_config(run.summary)
    probe = run.table(PROBE)
    if cfg is None or probe is None:
        return None
    return probe_figures(probe["utc_s"], probe["rtt_ms"], cfg[0], cfg[1], BOUNDARY_WINDOW_S)


def write_slot_report(run: Run, out: Path, plots: bool = True) -> list[Path]:
    """Write the files of the module docstring into ``out``; [] when the run is not a
    probed slotted run."""
    fig_data = slot_figures(run)
    if fig_data is None:
        return []
    cfg = slot_config(run.summary)
    assert cfg is not None
    slot_s, offset_s = cfg
    files = []
    p = out / "slots.json"
    p.write_text(json.dumps(fig_data, indent=2) + "\n")
    files.append(p)
    p = out / "slot_jump.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["offset_s", "mean_jump_ms"])
        offsets: list[float] = fig_data["slot_jump_offsets_s"]
        jumps: list[float | None] = fig_data["slot_jump_ms"]
        for o, j in zip(offsets, jumps):
            w.writerow([f"{o:g}", "" if j is None else f"{j:.4f}"])
    files.append(p)
    if plots:
        files.append(plot_rtt_slots(out / "rtt_slots.png", run, slot_s, offset_s))
        files.append(plot_slot_jump(out / "slot_jump.png", run, fig_data))
    return files


def plot_rtt_slots(path: Path, run: Run, slot_s: float, offset_s: float) -> Path:
    """RTT over scenario time with the slot boundaries marked (dashed) and lost probes as
    red ticks at the bottom."""
    probe = run.table(PROBE)
    if probe is None:
        raise ReportError(f"no {PROBE.name} in {run.run_dir}")
    t, utc, rtt = probe["t_s"], probe["utc_s"], probe["rtt_ms"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ok = np.isfinite(rtt)
    ax.plot(t[ok], rtt[ok], ".", ms=2.5, color="tab:blue", label="RTT")
    if (~ok).any():
        ax.plot(t[~ok], np.zeros((~ok).sum()), "|", color="tab:red", ms=8, label="lost")
    # boundaries: utc = k * slot_s + offset_s; t = utc - (utc_0 - t_0)
    if t.size:
        shift = float(np.nanmedian(utc - t))
        first = np.ceil((utc.min() - offset_s) / slot_s) * slot_s + offset_s
        for b in np.arange(first, utc.max() + 1e-9, slot_s):
            ax.axvline(b - shift, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("emulated time (s)")
    ax.set_ylabel("RTT (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(
        f"{run.name}: idle RTT, slot boundaries every {slot_s:g} s at :{offset_s:g} (dashed)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_slot_jump(path: Path, run: Run, figures: dict[str, Any]) -> Path:
    """The slot-jump statistic per offset (bars), the peak highlighted."""
    o = np.asarray(figures["slot_jump_offsets_s"], dtype=float)
    j = np.array([np.nan if x is None else x for x in figures["slot_jump_ms"]], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4))
    peak = figures["slot_jump_peak_offset_s"]
    colors = ["tab:red" if peak is not None and x == peak else "tab:blue" for x in o]
    ax.bar(o, np.nan_to_num(j), color=colors)
    ax.set_xticks(o)
    ax.set_xlabel("slot offset (s of the UTC minute, mod slot)")
    ax.set_ylabel("mean |change of per-slot min RTT| (ms)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{run.name}: slot-jump statistic (peak at {peak} s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Plots of a plan: world map at an instant, path delay over time.

Matplotlib with the non-interactive Agg backend; every function writes a PNG and returns its
path. The map is an equirectangular lon/lat chart with a graticule (meshemu ships no
coastline data).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meshemu.geometry.linkstate import GSL, ISL, Snapshot  # noqa: E402
from meshemu.geometry.orbit import ecef_to_geodetic  # noqa: E402

_KIND_STYLE = {"sat": ("#1f77b4", "o", 10), "compute": ("#d62728", "*", 60),
               "station": ("#2ca02c", "^", 60), "user": ("#9467bd", "s", 50),
               "datacenter": ("#ff7f0e", "D", 60)}


def plot_map(path: Path, schedule, snapshot: Snapshot, title: str = "",
             paths: list[list[int]] | None = None) -> Path:
    """World map of satellites, ISLs, GSLs (and optionally some paths) at one snapshot."""
    nodes = schedule.nodes
    r = schedule.positions_ecef_km(np.array([snapshot.t_s]))[:, 0]
    lat_s, lon_s, _ = ecef_to_geodetic(r)
    lat = np.concatenate([lat_s, [g.lat_deg for g in schedule.scenario.ground]])
    lon = np.concatenate([lon_s, [((g.lon_deg + 180) % 360) - 180 for g in schedule.scenario.ground]])
    fig, ax = plt.subplots(figsize=(12, 6.2))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    for kind_val, color, lw, label in ((ISL, "#7fa7d6", 0.6, "ISL"), (GSL, "#2ca02c", 1.2, "GSL")):
        sel = snapshot.kind == kind_val
        first = True
        for a, b, up in zip(snapshot.a[sel], snapshot.b[sel], snapshot.up[sel]):
            if abs(lon[a] - lon[b]) > 180:  # crosses the antimeridian: not drawn
                continue
            ax.plot([lon[a], lon[b]], [lat[a], lat[b]], color=color, lw=lw,
                    ls="-" if up else ":", label=label if first else None, zorder=1)
            first = False
    for k, (color, marker, size) in _KIND_STYLE.items():
        sel = nodes.kind == k
        if sel.any():
            ax.scatter(lon[sel], lat[sel], c=color, marker=marker, s=size, label=k, zorder=3)
    for i in np.nonzero(nodes.kind != "sat")[0]:
        if i >= nodes.n_sats or len(nodes) < 200:
            ax.annotate(nodes.names[i], (lon[i], lat[i]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for p in paths or []:
        for u, v in zip(p[:-1], p[1:]):
            if abs(lon[u] - lon[v]) <= 180:
                ax.plot([lon[u], lon[v]], [lat[u], lat[v]], color="#d62728", lw=2.2, zorder=2)
    ax.legend(loc="lower left", fontsize=8, ncol=4)
    ax.set_title(title or f"t = {snapshot.t_s:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_path_delays(path: Path, paths_csv: Path, title: str = "", max_pairs: int = 12) -> Path:
    """One-way path delay over time for endpoint pairs (src < dst by name), from paths.csv."""
    series: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    with open(paths_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["src"] > row["dst"]:
                continue
            t, d = series[(row["src"], row["dst"])]
            t.append(float(row["t_s"]))
            d.append(float(row["delay_ms"]) if row["delay_ms"] else np.nan)
    fig, ax = plt.subplots(figsize=(10, 5))
    ranked = sorted(series.items())
    for (s, d), (t, dl) in ranked[:max_pairs]:
        ax.plot(t, dl, lw=1.2, label=f"{s} - {d}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("one-way path delay (ms)")
    ax.grid(True, color="#dddddd")
    if series:
        ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

"""Plots of a plan: world map at an instant, path delay over time.

Matplotlib with the non-interactive Agg backend; every function writes a PNG and returns its
path. The map is an equirectangular lon/lat chart with a graticule (meshemu ships no
coastline data). It is drawn from positions (:class:`MapNodes`, as recorded in a run
directory's ``positions.npz``) and link states (:class:`MapLinks`: a
:class:`~meshemu.geometry.linkstate.Snapshot`, or :class:`LinkFrame` read from
``links.csv``); this module never propagates orbits or reads a scenario.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meshemu.report.coastlines import add_coastlines  # noqa: E402
from meshemu.report.files import LINK_KINDS, SATELLITE_KINDS  # noqa: E402

_KIND_STYLE = {
    "sat": ("#1f77b4", "o", 10),
    "compute": ("#d62728", "*", 60),
    "station": ("#2ca02c", "^", 60),
    "user": ("#9467bd", "s", 50),
    "datacenter": ("#ff7f0e", "D", 60),
}
_ISL, _GSL = LINK_KINDS.index("isl"), LINK_KINDS.index("gsl")


@dataclass(frozen=True)
class MapNodes:
    """Every node and where it is at one instant.

    Attributes
    ----------
    names : tuple of str
    kind : ndarray of str
        Node kinds as in ``nodes.csv`` (``sat``, ``compute``, ``station``, ...).
    lat_deg, lon_deg : ndarray, shape (N,)
        WGS-84 latitude and longitude (deg; longitude in [-180, 180]).
    """

    names: tuple[str, ...]
    kind: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray


class MapLinks(Protocol):
    """The link state the map draws; :class:`~meshemu.geometry.linkstate.Snapshot` is one."""

    @property
    def t_s(self) -> float: ...
    @property
    def a(self) -> np.ndarray: ...
    @property
    def b(self) -> np.ndarray: ...
    @property
    def kind(self) -> np.ndarray: ...
    @property
    def up(self) -> np.ndarray: ...


@dataclass(frozen=True)
class LinkFrame:
    """Links at one instant (node ids, kind index into ``LINK_KINDS``, up)."""

    t_s: float
    a: np.ndarray
    b: np.ndarray
    kind: np.ndarray
    up: np.ndarray

    @classmethod
    def empty(cls, t_s: float) -> LinkFrame:
        """No links (a run directory without ``links.csv``)."""
        z = np.zeros(0, np.int64)
        return cls(t_s, z, z, z, np.zeros(0, bool))


def plot_map(
    path: Path,
    nodes: MapNodes | Any,
    links: MapLinks,
    title: str = "",
    paths: list[list[int]] | None = None,
) -> Path:
    """World map of satellites, ISLs, GSLs (and optionally some paths) at one instant.

    Parameters
    ----------
    path : Path
        The PNG to write.
    nodes : MapNodes
        Node positions at the instant (e.g. ``PlanRecorder.map_nodes(t_s)``). A
        :class:`~meshemu.geometry.schedule.LinkSchedule` is still accepted (the old call
        ``plot_map(path, schedule, snapshot)``): positions are then computed from it.
    links : MapLinks
        Link state at the instant (a ``Snapshot`` or a :class:`LinkFrame`).
    title : str
        Default ``t = <links.t_s> s``.
    paths : list of list of int, optional
        Node-id paths drawn in red.
    """
    if not isinstance(nodes, MapNodes):  # a LinkSchedule: the call before positions.npz
        from meshemu.report.record import schedule_map_nodes

        nodes = schedule_map_nodes(nodes, float(links.t_s))
    lat, lon = np.asarray(nodes.lat_deg, float), np.asarray(nodes.lon_deg, float)
    fig, ax = plt.subplots(figsize=(12, 6.2))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(True, color="#dddddd", lw=0.6)
    add_coastlines(ax)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    for kind_val, color, lw, label in (
        (_ISL, "#7fa7d6", 0.6, "ISL"),
        (_GSL, "#2ca02c", 1.2, "GSL"),
    ):
        sel = np.asarray(links.kind) == kind_val
        first = True
        for a, b, up in zip(
            np.asarray(links.a)[sel], np.asarray(links.b)[sel], np.asarray(links.up)[sel]
        ):
            if abs(lon[a] - lon[b]) > 180:  # crosses the antimeridian: not drawn
                continue
            ax.plot(
                [lon[a], lon[b]],
                [lat[a], lat[b]],
                color=color,
                lw=lw,
                ls="-" if up else ":",
                label=label if first else None,
                zorder=1,
            )
            first = False
    kinds = np.asarray(nodes.kind).astype(str)
    for k, (color, marker, size) in _KIND_STYLE.items():
        sel = kinds == k
        if sel.any():
            ax.scatter(lon[sel], lat[sel], c=color, marker=marker, s=size, label=k, zorder=3)
    ground = ~np.isin(kinds, SATELLITE_KINDS)
    for i in np.nonzero(kinds != "sat")[0]:  # ground nodes; compute satellites when few
        if ground[i] or len(kinds) < 200:
            ax.annotate(
                nodes.names[i],
                (lon[i], lat[i]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    for p in paths or []:
        for u, v in zip(p[:-1], p[1:]):
            if abs(lon[u] - lon[v]) <= 180:
                ax.plot([lon[u], lon[v]], [lat[u], lat[v]], color="#d62728", lw=2.2, zorder=2)
    ax.legend(loc="lower left", fontsize=8, ncol=4)
    ax.set_title(title or f"t = {float(links.t_s):g} s")
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
    for (src, dst), (t, dl) in ranked[:max_pairs]:
        ax.plot(t, dl, lw=1.2, label=f"{src} - {dst}")
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

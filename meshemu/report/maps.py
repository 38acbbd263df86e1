"""Plots of a plan: world map at an instant, path delay over time.

Matplotlib with the non-interactive Agg backend; every function writes a PNG and returns its
path. The map is an equirectangular lon/lat chart with a graticule and Natural Earth
coastlines (:mod:`meshemu.report.coastlines`, from the npm package world-atlas). It is drawn
from positions (:class:`MapNodes`, as recorded in a run directory's ``positions.npz``) and
link states (:class:`MapLinks`: a :class:`~meshemu.geometry.linkstate.Snapshot`, or
:class:`LinkFrame` read from
``links.csv``); this module never propagates orbits or reads a scenario.

Drawing scales with the constellation: the links of a kind are one ``LineCollection`` (not a
line each), and past :data:`MAX_DRAWN_LINKS` links only an even sample of them is drawn, the
figure saying how many; past :data:`MAX_SCATTER_SATS` satellites they are shaded as a density
(satellites per 1 x 1 deg cell) instead of one marker each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from meshemu.report.coastlines import add_coastlines  # noqa: E402
from meshemu.report.files import LINK_KINDS, PATHS, SATELLITE_KINDS, resolve_table  # noqa: E402

#: Most links of one kind drawn on a map; beyond, an even sample (every k-th link).
MAX_DRAWN_LINKS = 20_000
#: Most satellites drawn as markers; beyond, a density shading.
MAX_SCATTER_SATS = 20_000

_KIND_STYLE = {
    "sat": ("#1f77b4", "o", 10),
    "compute": ("#d62728", "*", 60),
    "station": ("#2ca02c", "^", 60),
    "user": ("#9467bd", "s", 50),
    "datacenter": ("#ff7f0e", "D", 60),
    "pop": ("#8c564b", "P", 70),
    "server": ("#7f7f7f", "x", 40),
}
_ISL, _GSL, _TRL = LINK_KINDS.index("isl"), LINK_KINDS.index("gsl"), LINK_KINDS.index("trl")


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
    notes: list[str] = []
    kind_arr, up_arr = np.asarray(links.kind), np.asarray(links.up, dtype=bool)
    a_arr, b_arr = np.asarray(links.a, dtype=np.int64), np.asarray(links.b, dtype=np.int64)
    for kind_val, color, lw, label in (
        (_ISL, "#7fa7d6", 0.6, "ISL"),
        (_GSL, "#2ca02c", 1.2, "GSL"),
        (_TRL, "#8c564b", 1.0, "backhaul"),
    ):
        sel = np.flatnonzero(kind_arr == kind_val)
        if sel.size > MAX_DRAWN_LINKS:
            every = -(-sel.size // MAX_DRAWN_LINKS)
            notes.append(f"{sel[::every].size:,} of {sel.size:,} {label}s drawn (every {every})")
            sel = sel[::every]
        _draw_links(ax, lon, lat, a_arr[sel], b_arr[sel], up_arr[sel], color, lw, label)
    kinds = np.asarray(nodes.kind).astype(str)
    for k, (color, marker, size) in _KIND_STYLE.items():
        sel = kinds == k
        if not sel.any():
            continue
        if k in SATELLITE_KINDS and sel.sum() > MAX_SCATTER_SATS:
            _draw_density(ax, lon[sel], lat[sel])
            notes.append(f"{int(sel.sum()):,} {k} satellites shaded by density")
            continue
        ax.scatter(lon[sel], lat[sel], c=color, marker=marker, s=size, label=k, zorder=3)
    ground = ~np.isin(kinds, SATELLITE_KINDS)
    named = (kinds != "sat") if len(kinds) < 200 else ground  # compute satellites when few
    for i in np.flatnonzero(named):
        ax.annotate(
            nodes.names[i], (lon[i], lat[i]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    for p in paths or []:
        pa = np.asarray(p, dtype=np.int64)
        if pa.size >= 2:
            seg = _segments(lon, lat, pa[:-1], pa[1:])
            ax.add_collection(LineCollection(list(seg), colors="#d62728", linewidths=2.2, zorder=2))
    ax.legend(loc="lower left", fontsize=8, ncol=4)
    ax.set_title(title or f"t = {float(links.t_s):g} s")
    if notes:
        ax.text(
            0.995,
            0.005,
            "; ".join(notes),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="#444444",
            zorder=4,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _segments(lon: np.ndarray, lat: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Line segments (K, 2, 2) from node ``a`` to node ``b``, without those that cross the
    antimeridian (they would cross the whole map)."""
    keep = np.abs(lon[a] - lon[b]) <= 180
    a, b = a[keep], b[keep]
    return np.stack([np.column_stack([lon[a], lat[a]]), np.column_stack([lon[b], lat[b]])], axis=1)


def _draw_links(
    ax: Any,
    lon: np.ndarray,
    lat: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    up: np.ndarray,
    color: str,
    lw: float,
    label: str,
) -> None:
    """Links as two LineCollections: up (solid, labelled) and acquiring (dotted)."""
    for mask, style in ((up, "-"), (~up, ":")):
        seg = _segments(lon, lat, a[mask], b[mask])
        if seg.shape[0] == 0:
            continue
        ax.add_collection(
            LineCollection(
                list(seg),
                colors=color,
                linewidths=lw,
                linestyles=style,
                label=label if style == "-" else None,
                zorder=1,
            )
        )


def _draw_density(ax: Any, lon: np.ndarray, lat: np.ndarray) -> None:
    """Satellites per 1 x 1 deg cell, as a shaded image under the links."""
    ok = np.isfinite(lon) & np.isfinite(lat)
    h, _, _ = np.histogram2d(lat[ok], lon[ok], bins=(180, 360), range=((-90, 90), (-180, 180)))
    img = ax.imshow(
        np.ma.masked_equal(h, 0),
        extent=(-180, 180, -90, 90),
        origin="lower",
        cmap="Blues",
        alpha=0.8,
        aspect="auto",
        zorder=0,
    )
    ax.figure.colorbar(img, ax=ax, fraction=0.025, pad=0.01, label="satellites per deg^2")


def plot_path_delays(path: Path, paths_csv: Path, title: str = "", max_pairs: int = 12) -> Path:
    """One-way path delay over time for endpoint pairs (src < dst by name), from
    ``paths.csv`` (or ``paths.parquet``: either is read, whichever the directory holds)."""
    from meshemu.report.run import read_table

    series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    wanted = ("t_s", "src", "dst", "delay_ms")
    tab = read_table(resolve_table(paths_csv), wanted, (), PATHS.numeric, columns=wanted)
    if tab is not None:
        keep = np.flatnonzero(tab["src"] < tab["dst"])
        key = np.char.add(np.char.add(tab["src"][keep], "\x1f"), tab["dst"][keep])
        uniq, inv = np.unique(key, return_inverse=True)
        for k in range(min(max_pairs, uniq.size)):  # the first pairs by (src, dst)
            rows = keep[inv.reshape(-1) == k]
            src, dst = str(uniq[k]).split("\x1f", 1)
            series[(src, dst)] = (tab["t_s"][rows], tab["delay_ms"][rows])
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

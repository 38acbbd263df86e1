"""Coastlines for the PNG world maps: Natural Earth's land outlines (public domain), from the
npm package ``world-atlas`` (ISC) that the browser view also draws, installed by
``install.sh`` into ``meshemu/view/web/node_modules``.

The file is TopoJSON: every outline is an *arc* of quantized, delta-encoded points, and
``transform`` maps them to longitude and latitude (the TopoJSON specification, section 2.1.2
"Transforms": ``lon = x * scale[0] + translate[0]``, likewise latitude). The arcs of the
``land`` object are exactly the coastlines, so they are drawn as they are, without
assembling polygons. Natural Earth cuts polygons at the antimeridian and closes Antarctica
along the map's edge; those edge runs are not coastline and are left out.

Without the file (``install.sh`` not run) maps are drawn without coastlines, and a warning
says how to get them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Environment variable naming another world-atlas land file (TopoJSON).
ENV = "MESHEMU_LAND_TOPOJSON"
#: The world-atlas file used by default (1:110 million; ``land-50m.json`` is finer).
DEFAULT_FILE = (
    Path(__file__).resolve().parents[1]
    / "view"
    / "web"
    / "node_modules"
    / "world-atlas"
    / "land-110m.json"
)


def land_file() -> Path:
    """The TopoJSON land file: ``$MESHEMU_LAND_TOPOJSON`` or :data:`DEFAULT_FILE`."""
    return Path(os.environ.get(ENV) or DEFAULT_FILE)


@functools.lru_cache(maxsize=4)
def coastlines(path: Path | None = None) -> tuple[np.ndarray, ...]:
    """Coastline polylines as ``(k, 2)`` arrays of (longitude, latitude) in degrees.

    Raises
    ------
    FileNotFoundError
        The file is missing.
    ValueError
        It is not TopoJSON with a ``transform`` and ``arcs``.
    """
    path = path or land_file()
    topo: Any = json.loads(Path(path).read_text())
    try:
        scale = np.asarray(topo["transform"]["scale"], dtype=float)
        translate = np.asarray(topo["transform"]["translate"], dtype=float)
        arcs = topo["arcs"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not TopoJSON with 'transform' and 'arcs'") from None
    out: list[np.ndarray] = []
    for arc in arcs:
        q = np.cumsum(np.asarray(arc, dtype=float).reshape(-1, 2), axis=0)
        pts = q * scale + translate
        out.extend(_without_edges(pts))
    return tuple(out)


#: How near the map's edge (deg) a point counts as on it (world-atlas quantizes 110m points to
#: 0.0036 deg of longitude).
EDGE_DEG = 0.02


def _without_edges(pts: np.ndarray) -> list[np.ndarray]:
    """Split a polyline where it runs along the antimeridian or the map's bottom edge, or
    jumps across the antimeridian."""
    on_edge = (np.abs(pts[:, 0]) >= 180 - EDGE_DEG) | (pts[:, 1] <= -90 + EDGE_DEG)
    # segment i joins points i and i+1: drop it if it runs along an edge or jumps across the
    # antimeridian (+180 to -180)
    edge_seg = (on_edge[:-1] & on_edge[1:]) | (np.abs(np.diff(pts[:, 0])) > 180)
    pieces: list[np.ndarray] = []
    start = 0
    for i in np.nonzero(edge_seg)[0].tolist():
        if i + 1 - start >= 2:
            pieces.append(pts[start : i + 1])
        start = i + 1
    if len(pts) - start >= 2:
        pieces.append(pts[start:])
    return pieces


def add_coastlines(ax: Any, color: str = "#a8a8a8", lw: float = 0.6) -> bool:
    """Draw the coastlines on a longitude/latitude matplotlib axis, beneath everything else;
    False (and a warning, once) when the data is not installed."""
    from matplotlib.collections import LineCollection

    try:
        lines = coastlines(land_file())
    except FileNotFoundError:
        _warn_missing()
        return False
    ax.add_collection(LineCollection(list(lines), colors=color, linewidths=lw, zorder=0.5))
    return True


@functools.lru_cache(maxsize=1)
def _warn_missing() -> None:
    log.warning(
        "maps drawn without coastlines: %s is missing; ./install.sh installs it (npm ci in "
        "meshemu/view/web), or set %s to a world-atlas land TopoJSON file",
        land_file(),
        ENV,
    )

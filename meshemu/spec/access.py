"""The access network: gateways, PoPs, internet servers and each user's home PoP.

Starlink carries a user's traffic bent-pipe: user terminal -> satellite -> (ISLs) ->
gateway ground station -> terrestrial backhaul -> the user's *home PoP* -> internet, and
traffic goes to the home PoP first even when it is far away (Pan, Zhao and Cai, ICC 2024:
Lagos to Perth; Mohan et al., "A Multifaceted Look at Starlink Performance", WWW 2024). A
scenario models that with an ``access:`` section and the ground kinds ``pop`` and
``server``::

    access:
      route_factor: 1.5              fibre route length / great-circle distance
      fibre_velocity_factor: 0.681   speed of light in fibre / c
      servers: per-pop | none        an internet server node srv_<pop> behind every PoP
      kml:                           gateways and PoPs read from a KML map (optional)
        file: path                   relative to the scenario file
        status: [live]               gateway states kept (live, construction, planned, unknown)
        max_distance_km: 1500        only sites within this great-circle distance of a user
        gateways_per_user: 3         at most the N nearest gateways of each user
      rate_mbps: 10000, queue_packets: 1000    backhaul links
    ground:
      - {name: paris, kind: user, pop: pop_FRA}     home PoP (default: the nearest PoP)
      - {name: gw1, kind: station, pop: pop_FRA}    the PoP a gateway backhauls to (nearest)
      - {name: pop_FRA, kind: pop, ...}

Backhaul delay (:func:`backhaul_delay_s`) is the great-circle distance times the route
factor over the speed of light in fibre. Defaults: the velocity factor is 1 / 1.468, the
group index of standard single-mode fibre at 1550 nm (Corning SMF-28 data sheet); the route
factor 1.5 is meshemu's choice, a round figure for the detour of terrestrial fibre over the
great circle (measured inflations vary widely by region; see Bozkurt et al., "Why Is the
Internet so Slow?!", PAM 2017). Mohan et al. measured about 5 ms from ground station to
PoP (7-8 ms in the US and Canada).

The KML loader (:func:`read_kml_sites`) reads the map of gateways and PoPs kept by the
authors of Mohan et al. (``starlink-gw-pop-2023-10-10.kml``): PoPs are the points of the
folder ``PoPs & Backbone`` (named like ``FRA - FRNTDEU1``), gateways the points of the
regional folders; a gateway's state is its icon colour (the map's legend: green live,
yellow construction, red no construction yet, purple unknown).
"""

from __future__ import annotations

import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshemu.errors import ScenarioError
from meshemu.spec.validate import Validator

#: Speed of light in vacuum, m/s.
C_M_PER_S = 299_792_458.0
#: Speed of light in fibre / c: 1 / 1.468, the group index of SMF-28 at 1550 nm (Corning).
FIBRE_VELOCITY_FACTOR = 1 / 1.468
#: Fibre route length / great-circle distance (meshemu's choice; see the module docstring).
ROUTE_FACTOR = 1.5
#: Mean Earth radius for great-circle distances, km (IUGG).
MEAN_EARTH_RADIUS_KM = 6371.0088

SERVER_MODES = ("per-pop", "none")
GATEWAY_STATES = ("live", "construction", "planned", "unknown")
_KML_NS = "{http://www.opengis.net/kml/2.2}"
#: Icon colours of the KML map's legend.
_STATE_OF_COLOUR = {
    "558B2F": "live",
    "F9A825": "construction",
    "A52714": "planned",
    "673AB7": "unknown",
}
POP_FOLDER = "PoPs & Backbone"


@dataclass(frozen=True)
class KmlSource:
    """Where and which gateways and PoPs to read from a KML map."""

    path: Path
    status: tuple[str, ...] = ("live",)
    max_distance_km: float = 1500.0
    gateways_per_user: int = 3


@dataclass(frozen=True)
class AccessSpec:
    """The ``access:`` section (see the module docstring)."""

    route_factor: float = ROUTE_FACTOR
    fibre_velocity_factor: float = FIBRE_VELOCITY_FACTOR
    servers: str = "per-pop"
    rate_mbps: float = 10_000.0
    queue_packets: int = 1000
    kml: KmlSource | None = None


@dataclass(frozen=True)
class Site:
    """A gateway or PoP read from a KML map."""

    name: str
    label: str
    kind: str  # "station" (a gateway) or "pop"
    lat_deg: float
    lon_deg: float
    state: str


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a sphere of the mean Earth radius (haversine formula)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * MEAN_EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def backhaul_delay_s(distance_km: float, access: AccessSpec) -> float:
    """One-way delay of a terrestrial link: ``distance x route_factor / (c x velocity)``."""
    return distance_km * 1e3 * access.route_factor / (C_M_PER_S * access.fibre_velocity_factor)


def parse_access(v: Validator, d: Any, base_dir: Path) -> AccessSpec | None:
    """The ``access:`` section, or None when the scenario has none."""
    if d is None:
        return None
    p = "access"
    d = v.mapping(
        d,
        p,
        ("route_factor", "fibre_velocity_factor", "servers", "kml", "rate_mbps", "queue_packets"),
    )
    kml = None
    if d.get("kml") is not None:
        k = v.mapping(
            d["kml"], f"{p}.kml", ("file", "status", "max_distance_km", "gateways_per_user")
        )
        f = k.get("file")
        if not isinstance(f, str) or not f:
            v.fail(f"{p}.kml.file", f"is required: a path to a KML file; got {f!r}")
        path = Path(f).expanduser()
        path = path if path.is_absolute() else (base_dir / path)
        if not path.is_file():
            v.fail(
                f"{p}.kml.file",
                f"no such file {str(path)!r} (a path relative to the scenario file; the map "
                f"of Mohan et al. is ../shared/data/starlink-gw-pop-2023-10-10.kml beside "
                f"the project)",
            )
        status = k.get("status", ["live"])
        if (
            not isinstance(status, list)
            or not status
            or any(s not in GATEWAY_STATES for s in status)
        ):
            v.fail(
                f"{p}.kml.status",
                f"must be a list of gateway states from: {', '.join(GATEWAY_STATES)}; "
                f"got {status!r}",
            )
        kml = KmlSource(
            path.resolve(),
            tuple(status),
            v.number(k, "max_distance_km", f"{p}.kml", 1500.0, lo=0, lo_open=True),
            v.number(k, "gateways_per_user", f"{p}.kml", 3, lo=1, integer=True),
        )
    return AccessSpec(
        route_factor=v.number(d, "route_factor", p, ROUTE_FACTOR, lo=1, hi=10),
        fibre_velocity_factor=v.number(
            d, "fibre_velocity_factor", p, FIBRE_VELOCITY_FACTOR, lo=0, hi=1, lo_open=True
        ),
        servers=v.choice(d, "servers", p, SERVER_MODES, "per-pop"),
        rate_mbps=v.number(d, "rate_mbps", p, 10_000.0, lo=0, lo_open=True),
        queue_packets=v.number(d, "queue_packets", p, 1000, lo=1, integer=True),
        kml=kml,
    )


# ----------------------------------------------------------------------------- KML


def site_name(label: str, kind: str) -> str:
    """A node name for a KML placemark: ``pop_FRA`` for ``FRA - FRNTDEU1``,
    ``gw_Redmond_WA`` for ``Redmond, WA | Mega`` (ASCII, at most 31 characters)."""
    text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    if kind == "pop":
        code = re.split(r"\s+-\s+", text.strip())[0].split("/")[0]
        base = "pop_" + re.sub(r"[^A-Za-z0-9]+", "_", code).strip("_")
    else:
        town = text.split("|")[0].replace("Possible site:", "")
        base = "gw_" + re.sub(r"[^A-Za-z0-9]+", "_", town).strip("_")
    return base[:31].rstrip("_")


def read_kml_sites(path: Path) -> list[Site]:
    """Every PoP and gateway (point placemark) of the KML map at ``path``.

    Raises
    ------
    ScenarioError
        The file is not KML, or has no folder named :data:`POP_FOLDER`.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ScenarioError(
            f"cannot read KML: {exc}", field="access.kml.file", source=str(path)
        ) from None
    sites: list[Site] = []
    seen: dict[str, int] = {}
    has_pops = False
    for folder in root.iter(f"{_KML_NS}Folder"):
        fname = (folder.findtext(f"{_KML_NS}name") or "").strip()
        kind = "pop" if fname == POP_FOLDER else "station"
        has_pops |= kind == "pop"
        for pm in folder.findall(f"{_KML_NS}Placemark"):
            coords = pm.findtext(f"{_KML_NS}Point/{_KML_NS}coordinates")
            if coords is None:
                continue  # a backbone line
            lon, lat = (float(x) for x in coords.strip().split(",")[:2])
            label = " ".join((pm.findtext(f"{_KML_NS}name") or "").split())
            style = pm.findtext(f"{_KML_NS}styleUrl") or ""
            colour = style.split("-")[2] if style.count("-") >= 2 else ""
            state = "live" if kind == "pop" else _STATE_OF_COLOUR.get(colour, "unknown")
            name = site_name(label, kind)
            n = seen.get(name, 0)
            seen[name] = n + 1
            if n:
                name = f"{name[:28]}_{n + 1}"
            sites.append(Site(name, label, kind, lat, lon, state))
    if not has_pops:
        raise ScenarioError(
            f"no folder named {POP_FOLDER!r} (the PoPs) in this KML file",
            field="access.kml.file",
            source=str(path),
        )
    return sites


def select_sites(
    sites: Sequence[Site], users: Sequence[tuple[float, float]], src: KmlSource
) -> list[Site]:
    """The sites a scenario uses: per user the ``gateways_per_user`` nearest gateways in the
    wanted states within ``max_distance_km``, and every PoP within that distance of a user
    or of a chosen gateway (at least the PoP nearest each user and each chosen gateway)."""
    gws = [s for s in sites if s.kind == "station" and s.state in src.status]
    pops = [s for s in sites if s.kind == "pop"]
    chosen: dict[str, Site] = {}
    for lat, lon in users:
        near = sorted(gws, key=lambda s: great_circle_km(lat, lon, s.lat_deg, s.lon_deg))
        for s in near[: src.gateways_per_user]:
            if great_circle_km(lat, lon, s.lat_deg, s.lon_deg) <= src.max_distance_km:
                chosen[s.name] = s
    anchors = list(users) + [(s.lat_deg, s.lon_deg) for s in chosen.values()]
    for lat, lon in anchors:
        if not pops:
            break
        by_d = sorted(pops, key=lambda s: great_circle_km(lat, lon, s.lat_deg, s.lon_deg))
        chosen.setdefault(by_d[0].name, by_d[0])
        for s in by_d[1:]:
            if great_circle_km(lat, lon, s.lat_deg, s.lon_deg) <= src.max_distance_km / 2:
                chosen.setdefault(s.name, s)
    return sorted(chosen.values(), key=lambda s: (s.kind != "pop", s.name))

"""Scenario files: constellation, ground nodes, compute placement, ISL and GSL policy.

A scenario is a YAML file (see ``topologies/``) validated on load into frozen dataclasses.
Every error names the field (``isl.max_range_km``), quotes the bad value and says what is
allowed. Load with :func:`load_scenario` (a path, or the name of a file shipped in
``topologies/``) or :meth:`Scenario.from_dict`.

Schema (units are in the key names)::

    name: str
    description: str                       (optional)
    epoch: 2026-01-01T00:00:00Z            t = 0 of the plan and epoch of the Walker shells;
                                           default: the newest TLE epoch, else 2026-01-01
    constellation:
      shells:                              Walker shells (any number)
        - name: str                        (optional, default "shellN")
          type: walker-delta | walker-star
          planes: int >= 1
          sats_per_plane: int >= 1
          phasing: int, 0 <= F < planes    Walker phasing factor F
          altitude_km: 160 .. 40000
          inclination_deg: 0 .. 180
          raan_spread_deg: (0, 360]        default 360 (delta) / 180 (star)
      tle_files:                           TLE/3LE files in CelesTrak format (any number)
        - file: path (relative to the scenario file)   or   group: starlink (the newest
                                           catalogue fetched with `meshemu tle fetch starlink`)
          max_satellites: int              (optional) only the first ones of the file
          shells: auto | none | [{inclination_deg, altitude_km, tolerance_km (10),
                   tolerance_deg (0.5), name}]   how shells are found (default auto)
          min_altitude_km, max_altitude_km (optional) mean-altitude filter
          plane_gap_deg: 1.0               RAAN gap that separates two planes
          min_shell_sats (1 % of the file, >= 10), min_plane_sats (2): smaller clusters and
                                           planes are left out
          max_age_days: 365                limit of |t = 0 - TLE epoch|
    ground:                                ground stations, user sites, data centres
      - {name: str, lat_deg: -90..90, lon_deg: -180..360, alt_m: float,
         kind: station|user|datacenter|pop|server,
         pop: name}                        (with access:) a user's home PoP, the PoP a
                                           station backhauls to, the PoP a server sits
                                           behind; default: the nearest PoP
    access:                                gateways, PoPs, backhaul, servers (see
                                           meshemu/spec/access.py)
    compute:
      satellites: all | none | {every: k} | {list: [names]} | {cluster: {center: name, size: n}}
      power_kw: float                      (informational: the compute satellites' class)
    isl:
      pattern: plus-grid | nearest
      max_range_km, min_grazing_altitude_km, cross_plane_max_lat_deg (null = no limit),
      allow_seam (bool), terminals (int), acquisition_s, rate_mbps, queue_packets,
      loss (per-packet probability 0..1, default 0),
      cross_plane_shift: auto | int        +Grid partner of slot s of plane p: slot s + k of
                                           plane p + 1 (auto: the shift of the shortest links)
    gsl:
      min_elevation_deg (default 25, or 0 when max_range_km is given), max_range_km (slant
      range, optional), links_per_station: int | all, handover: nearest | longest-visible,
      acquisition_s, rate_mbps, queue_packets, loss,
      schedule: continuous | slotted       when assignments may change (default continuous:
                                           at any step); slotted: only at UTC-aligned slot
                                           boundaries (epoch + t), as Starlink's global
                                           scheduler does
      slot_s: 15, slot_offset_s: 12        slotted: the slot and the UTC second (mod slot_s)
                                           of its boundaries (Starlink: :12, :27, :42, :57)
      handover_mode: make-before-break | break-before-make   (default make-before-break)
      outage_s: 0.7                        break-before-make: no GSL of the station carries
                                           traffic for this long after a switch
      hysteresis_km: 0                     continuous + nearest: keep a satellite until
                                           another is nearer by more than this
      gateway_links: int | all             satellites a gateway (a station with a backhaul
                                           PoP) links to at once; default links_per_station
      access_model:                        (optional) delay and loss beyond propagation on
                                           every GSL but a gateway's, per direction
                                           (meshemu/spec/linkmodel.py):
        frame_ms: 1.333                    MAC frame alignment (Starlink: 1/750 s,
                                           Humphreys et al., IEEE TAES 2023); 0: none
        downlink: {constant_ms: 0,         satellite -> ground
                   gilbert_elliott: {p, r, loss_bad: 1, loss_good: 0}}   bursty loss
                                           (netem's loss gemodel p r 1-h 1-k)
        uplink: {constant_ms: 0, grant_min_ms: 0, grant_max_ms: grant_min_ms,
                 gilbert_elliott: {...}}   ground -> satellite; grant wait uniform in
                                           [grant_min_ms, grant_max_ms]
                                           Extra delay per packet: constant + grant + the
                                           wait to the next frame boundary; plans predict
                                           its mean (paths.csv access_ms)
    endpoints: [names]                     (optional) pairs for paths.csv; default: every
                                           ground node and every compute satellite
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import ScenarioError
from meshemu.spec.access import (
    AccessSpec,
    great_circle_km,
    parse_access,
    read_kml_sites,
    select_sites,
)
from meshemu.spec.linkmodel import AccessLinkModel, parse_access_model
from meshemu.spec.tle import ShellMatch, TLESource, parse_entry, resolve_epoch
from meshemu.spec.validate import (
    GROUND_KINDS,
    NODE_KINDS,
    SATELLITE_KINDS,
    Validator,
    read_yaml,
)

__all__ = [
    "GROUND_KINDS",
    "NODE_KINDS",
    "SATELLITE_KINDS",
    "Scenario",
    "load_scenario",
    "list_scenarios",
    "default_scenario_dir",
    "Nodes",
    "ShellSpec",
    "TLESource",
    "ShellMatch",
    "GroundSpec",
    "ComputeSpec",
    "ISLPolicy",
    "GSLPolicy",
    "EARTH_RADIUS_KM",
]

EARTH_RADIUS_KM = 6378.135  # WGS-72 equatorial radius, the constants SGP4 uses

SHELL_TYPES = ("walker-delta", "walker-star")
ISL_PATTERNS = ("plus-grid", "nearest")
HANDOVER_RULES = ("nearest", "longest-visible")
GSL_SCHEDULES = ("continuous", "slotted")
HANDOVER_MODES = ("make-before-break", "break-before-make")

#: Starlink's global scheduler: satellite-to-ground assignments change every 15 s at
#: seconds 12, 27, 42 and 57 of each UTC minute (Tanveer et al., "Making Sense of
#: Constellations", CoNEXT Companion 2023; Pan, Zhao and Cai, ICC 2024; Mohan et al.,
#: "A Multifaceted Look at Starlink Performance", WWW 2024).
STARLINK_SLOT_S = 15.0
STARLINK_SLOT_OFFSET_S = 12.0
#: Break-before-make outage at a slot boundary: the reply gap of about 0.7 s measured at
#: boundaries in Starlink traces (Pan, Zhao and Cai, ICC 2024, as summarised in issue 13).
STARLINK_HANDOVER_OUTAGE_S = 0.7


@dataclass(frozen=True)
class ShellSpec:
    """A Walker shell: ``planes`` x ``sats_per_plane`` satellites with phasing ``phasing``."""

    name: str
    type: str
    planes: int
    sats_per_plane: int
    phasing: int
    altitude_km: float
    inclination_deg: float
    raan_spread_deg: float

    @property
    def n_sats(self) -> int:
        return self.planes * self.sats_per_plane


@dataclass(frozen=True)
class GroundSpec:
    """A ground station, user site or ground data centre (geodetic, WGS-84)."""

    name: str
    lat_deg: float
    lon_deg: float
    alt_m: float = 0.0
    kind: str = "station"
    pop: str = ""  # with access: the home / backhaul / front PoP (resolved on load)


@dataclass(frozen=True)
class ComputeSpec:
    """Which satellites are compute nodes.

    ``mode`` is one of ``all``, ``none``, ``every``, ``list``, ``cluster``.
    """

    mode: str = "none"
    every: int = 0
    names: tuple[str, ...] = ()
    center: str = ""
    size: int = 0
    power_kw: float = 0.0


@dataclass(frozen=True)
class ISLPolicy:
    """Inter-satellite laser link policy."""

    pattern: str = "plus-grid"
    max_range_km: float = 5000.0
    min_grazing_altitude_km: float = 80.0
    cross_plane_max_lat_deg: float | None = None
    allow_seam: bool = False
    terminals: int = 4
    acquisition_s: float = 0.0
    rate_mbps: float = 1000.0
    queue_packets: int = 1000
    loss: float = 0.0
    cross_plane_shift: int | None = None  # None: auto


@dataclass(frozen=True)
class GSLPolicy:
    """Ground-to-satellite link policy.

    A satellite can serve a station when it is at least ``min_elevation_deg`` above the
    horizon and, if ``max_range_km`` is set, at most that slant range away; the station uses
    ``links_per_station`` of them (None: all of them).
    """

    min_elevation_deg: float = 25.0
    links_per_station: int | None = 1
    max_range_km: float | None = None
    handover: str = "nearest"
    acquisition_s: float = 0.0
    rate_mbps: float = 100.0
    queue_packets: int = 1000
    loss: float = 0.0
    schedule: str = "continuous"
    slot_s: float = STARLINK_SLOT_S
    slot_offset_s: float = STARLINK_SLOT_OFFSET_S
    handover_mode: str = "make-before-break"
    outage_s: float = STARLINK_HANDOVER_OUTAGE_S
    hysteresis_km: float = 0.0
    gateway_links: int | None = 1  # None: all; parsed default: links_per_station
    access_model: AccessLinkModel | None = None  # None: propagation delay only


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Build with :func:`load_scenario` or :meth:`from_dict`."""

    name: str
    epoch: dt.datetime
    shells: tuple[ShellSpec, ...]
    tle_sources: tuple[TLESource, ...]
    ground: tuple[GroundSpec, ...]
    compute: ComputeSpec
    isl: ISLPolicy
    gsl: GSLPolicy
    endpoints: tuple[str, ...] = ()
    description: str = ""
    source: str = ""
    access: AccessSpec | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "", base_dir: Path | None = None
    ) -> Scenario:
        """Validate a scenario given as a dict (the parsed YAML).

        Raises
        ------
        ScenarioError
            Naming the first bad field, its value and what is allowed.
        """
        return _parse(data, source, base_dir or Path.cwd())


# ----------------------------------------------------------------------------- loading


def default_scenario_dir() -> Path:
    """The shipped scenarios, inside the package (``meshemu/spec/data/topologies``); the
    repository's top-level ``topologies/`` links to the same files."""
    return Path(str(resources.files("meshemu.spec") / "data" / "topologies"))


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``topologies/``."""
    return sorted(p.stem for p in default_scenario_dir().glob("*.yaml"))


def load_scenario(spec: str | Path) -> Scenario:
    """Load and validate a scenario from a YAML path or a shipped scenario name.

    Parameters
    ----------
    spec : str or Path
        A path to a YAML file, or the name of a scenario in ``topologies/``
        (``default``, ``starlink-shell1``, ...).
    """
    data, path = read_yaml(
        spec, default_scenario_dir(), ScenarioError, "scenario file", "scenarios"
    )
    # relative paths inside count from the file itself (a shipped scenario's symlink in
    # topologies/ and its target in the package read the same files)
    return _parse(data, str(path), path.resolve().parent)


# ----------------------------------------------------------------------------- validation


def _parse(data: Any, source: str, base_dir: Path) -> Scenario:
    v = Validator(ScenarioError, source)
    if not isinstance(data, dict):
        raise ScenarioError(
            f"a scenario must be a YAML mapping, got {type(data).__name__}", source=source or None
        )
    top = v.mapping(
        data,
        "",
        (
            "name",
            "description",
            "epoch",
            "constellation",
            "ground",
            "compute",
            "isl",
            "gsl",
            "endpoints",
            "access",
        ),
    )
    name = top.get("name", Path(source).stem if source else "scenario")
    if not isinstance(name, str) or not name:
        v.fail("name", f"expected a non-empty string, got {name!r}")
    explicit_epoch = _parse_epoch(v, top["epoch"]) if top.get("epoch") is not None else None

    cons = v.mapping(
        top.get("constellation"), "constellation", ("shells", "tle_files"), none_ok=True
    )
    shells = []
    raw_shells = cons.get("shells") or []
    if not isinstance(raw_shells, list):
        v.fail("constellation.shells", f"expected a list of shells, got {raw_shells!r}")
    for i, s in enumerate(raw_shells):
        shells.append(_parse_shell(v, s, f"constellation.shells[{i}]", i))
    tles = []
    raw_tles = cons.get("tle_files") or []
    if not isinstance(raw_tles, list):
        v.fail("constellation.tle_files", f"expected a list, got {raw_tles!r}")
    for i, t in enumerate(raw_tles):
        tles.append(parse_entry(v, t, f"constellation.tle_files[{i}]", base_dir))
    if not shells and not tles:
        v.fail(
            "constellation", "needs at least one Walker shell (shells:) or TLE file (tle_files:)"
        )

    ground = []
    raw_ground = top.get("ground") or []
    if not isinstance(raw_ground, list):
        v.fail("ground", f"expected a list of ground nodes, got {raw_ground!r}")
    seen: set[str] = set()
    for i, g in enumerate(raw_ground):
        p = f"ground[{i}]"
        g = v.mapping(g, p, ("name", "lat_deg", "lon_deg", "alt_m", "kind", "pop"), none_ok=True)
        gname = v.identifier(g.get("name"), f"{p}.name")
        if gname in seen:
            v.fail(f"{p}.name", f"duplicate ground node name {gname!r}")
        seen.add(gname)
        ground.append(
            GroundSpec(
                gname,
                v.number(g, "lat_deg", p, lo=-90, hi=90),
                v.number(g, "lon_deg", p, lo=-180, hi=360),
                v.number(g, "alt_m", p, 0.0, lo=-500, hi=10000),
                v.choice(g, "kind", p, GROUND_KINDS, "station"),
                v.string(g, "pop", p, ""),
            )
        )
    access = parse_access(v, top.get("access"), base_dir)
    ground = _resolve_access(v, ground, access)

    epoch = resolve_epoch(v, explicit_epoch, tles)
    compute = _parse_compute(v, top.get("compute"))
    isl = _parse_isl(v, top.get("isl"))
    gsl = _parse_gsl(v, top.get("gsl"))
    for s_i, s in enumerate(shells):
        if isl.pattern == "plus-grid" and s.sats_per_plane < 3:
            v.fail(
                f"constellation.shells[{s_i}].sats_per_plane",
                f"+Grid needs at least 3 satellites per plane, got {s.sats_per_plane}",
            )
    endpoints = top.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        v.fail("endpoints", f"expected a list of node names, got {endpoints!r}")
    return Scenario(
        name=name,
        epoch=epoch,
        shells=tuple(shells),
        tle_sources=tuple(tles),
        ground=tuple(ground),
        compute=compute,
        isl=isl,
        gsl=gsl,
        endpoints=tuple(endpoints),
        description=str(top.get("description", "")),
        source=source,
        raw=data,
        access=access,
    )


def _resolve_access(
    v: Validator, ground: list[GroundSpec], access: AccessSpec | None
) -> list[GroundSpec]:
    """Ground nodes with the access network filled in: the KML sites, a server per PoP
    and every user's, station's and server's PoP (explicit, else the nearest)."""
    if access is None:
        for i, g in enumerate(ground):
            if g.kind in ("pop", "server") or g.pop:
                v.fail(
                    f"ground[{i}].{'pop' if g.pop else 'kind'}",
                    f"{g.name}: PoPs and servers need an access: section (add access: {{}} "
                    f"for the defaults)",
                )
        return ground
    out = list(ground)
    names = {g.name for g in out}
    if access.kml is not None:
        users = [(g.lat_deg, g.lon_deg) for g in out if g.kind == "user"]
        for site in select_sites(read_kml_sites(access.kml.path), users, access.kml):
            if site.name not in names:
                out.append(GroundSpec(site.name, site.lat_deg, site.lon_deg, 0.0, site.kind))
                names.add(site.name)
    pops = [g for g in out if g.kind == "pop"]
    if not pops:
        v.fail("access", "the access network has no PoP: add ground nodes of kind pop or kml:")
    if access.servers == "per-pop":
        for pop in pops:
            srv = f"srv_{pop.name.removeprefix('pop_')}"[:31]
            if srv not in names:
                out.append(GroundSpec(srv, pop.lat_deg, pop.lon_deg, pop.alt_m, "server", pop.name))
                names.add(srv)
    pop_names = {g.name for g in pops}
    resolved = []
    for i, g in enumerate(out):
        if g.kind == "pop" or g.kind == "datacenter":
            if g.pop:
                v.fail(f"ground[{i}].pop", f"{g.name}: a {g.kind} has no PoP of its own")
            resolved.append(g)
            continue
        if g.pop and g.pop not in pop_names:
            v.fail(
                f"ground[{i}].pop",
                f"{g.name}: unknown PoP {g.pop!r}; the PoPs are: {', '.join(sorted(pop_names))}",
            )
        home = (
            g.pop
            or min(
                pops, key=lambda q: great_circle_km(g.lat_deg, g.lon_deg, q.lat_deg, q.lon_deg)
            ).name
        )
        resolved.append(GroundSpec(g.name, g.lat_deg, g.lon_deg, g.alt_m, g.kind, home))
    return resolved


def _parse_epoch(v: Validator, value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        e = value
    elif isinstance(value, dt.date):
        e = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            e = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            v.fail("epoch", f"{value!r} is not an ISO 8601 UTC time such as 2026-01-01T00:00:00Z")
    else:
        v.fail("epoch", f"{value!r} is not an ISO 8601 UTC time such as 2026-01-01T00:00:00Z")
    if e.tzinfo is None:
        e = e.replace(tzinfo=dt.UTC)
    return e.astimezone(dt.UTC)


def _parse_shell(v: Validator, s: Any, p: str, i: int) -> ShellSpec:
    s = v.mapping(
        s,
        p,
        (
            "name",
            "type",
            "planes",
            "sats_per_plane",
            "phasing",
            "altitude_km",
            "inclination_deg",
            "raan_spread_deg",
        ),
        none_ok=True,
    )
    kind = v.choice(s, "type", p, SHELL_TYPES, "walker-delta")
    planes = v.number(s, "planes", p, lo=1, hi=1000, integer=True)
    spp = v.number(s, "sats_per_plane", p, lo=1, hi=1000, integer=True)
    phasing = v.number(s, "phasing", p, 0, lo=0, integer=True)
    if phasing >= max(planes, 1) and planes > 1:
        v.fail(
            f"{p}.phasing",
            f"Walker phasing F must be in [0, planes-1] = [0, {planes - 1}], got {phasing}",
        )
    alt = v.number(s, "altitude_km", p, lo=160, hi=40000)
    inc = v.number(s, "inclination_deg", p, lo=0, hi=180)
    spread = v.number(
        s,
        "raan_spread_deg",
        p,
        360.0 if kind == "walker-delta" else 180.0,
        lo=0,
        hi=360,
        lo_open=True,
    )
    name = v.identifier(s.get("name", f"shell{i}"), f"{p}.name")
    return ShellSpec(name, kind, planes, spp, phasing, alt, inc, spread)


def _parse_compute(v: Validator, c: Any) -> ComputeSpec:
    p = "compute"
    c = v.mapping(c, p, ("satellites", "power_kw"), none_ok=True)
    power = v.number(c, "power_kw", p, 0.0, lo=0)
    sel = c.get("satellites", "none")
    if sel in ("all", "none"):
        return ComputeSpec(mode=sel, power_kw=power)
    if isinstance(sel, dict) and len(sel) == 1:
        ((mode, arg),) = sel.items()
        if mode == "every":
            k = v.number(sel, "every", f"{p}.satellites", lo=1, integer=True)
            return ComputeSpec(mode="every", every=k, power_kw=power)
        if mode == "list":
            if not isinstance(arg, list) or not arg or not all(isinstance(x, str) for x in arg):
                v.fail(f"{p}.satellites.list", f"expected a list of satellite names, got {arg!r}")
            return ComputeSpec(mode="list", names=tuple(arg), power_kw=power)
        if mode == "cluster":
            arg = v.mapping(arg, f"{p}.satellites.cluster", ("center", "size"), none_ok=True)
            if not isinstance(arg.get("center"), str):
                v.fail(
                    f"{p}.satellites.cluster.center",
                    f"expected a satellite name, got {arg.get('center')!r}",
                )
            size = v.number(arg, "size", f"{p}.satellites.cluster", lo=1, integer=True)
            return ComputeSpec(mode="cluster", center=arg["center"], size=size, power_kw=power)
    v.fail(
        f"{p}.satellites",
        f"unknown selection {sel!r}; please specify one of: all, none, "
        f"{{every: k}}, {{list: [names]}}, {{cluster: {{center: name, size: n}}}}",
    )
    raise AssertionError  # unreachable


def _parse_isl(v: Validator, d: Any) -> ISLPolicy:
    p = "isl"
    d = v.mapping(
        d,
        p,
        (
            "pattern",
            "max_range_km",
            "min_grazing_altitude_km",
            "cross_plane_max_lat_deg",
            "allow_seam",
            "terminals",
            "acquisition_s",
            "rate_mbps",
            "queue_packets",
            "loss",
            "cross_plane_shift",
        ),
        none_ok=True,
    )
    pattern = v.choice(d, "pattern", p, ISL_PATTERNS, "plus-grid")
    shift = d.get("cross_plane_shift", "auto")
    if shift == "auto" or shift is None:
        shift = None
    elif isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        v.fail(
            f"{p}.cross_plane_shift",
            f"must be auto or an integer >= 0 (slots to shift in the next plane); got {shift!r}",
        )
    seam = v.flag(d, "allow_seam", p, False)
    terminals = v.number(d, "terminals", p, 4, lo=0, hi=16, integer=True)
    if pattern == "plus-grid" and terminals < 4:
        v.fail(
            f"{p}.terminals",
            f"+Grid needs 4 laser terminals per satellite (2 intra-plane, "
            f"2 cross-plane), got {terminals}; raise isl.terminals or use "
            f"isl.pattern: nearest",
        )
    return ISLPolicy(
        pattern=pattern,
        max_range_km=v.number(d, "max_range_km", p, 5000.0, lo=0, lo_open=True),
        min_grazing_altitude_km=v.number(d, "min_grazing_altitude_km", p, 80.0, lo=0, hi=2000),
        cross_plane_max_lat_deg=v.number(
            d, "cross_plane_max_lat_deg", p, None, lo=0, hi=90, null=True
        ),
        allow_seam=seam,
        terminals=terminals,
        acquisition_s=v.number(d, "acquisition_s", p, 0.0, lo=0, hi=3600),
        rate_mbps=v.number(d, "rate_mbps", p, 1000.0, lo=0, lo_open=True),
        queue_packets=v.number(d, "queue_packets", p, 1000, lo=1, integer=True),
        loss=v.number(d, "loss", p, 0.0, lo=0, hi=1),
        cross_plane_shift=shift,
    )


def _parse_gsl(v: Validator, d: Any) -> GSLPolicy:
    p = "gsl"
    d = v.mapping(
        d,
        p,
        (
            "min_elevation_deg",
            "max_range_km",
            "links_per_station",
            "handover",
            "acquisition_s",
            "rate_mbps",
            "queue_packets",
            "loss",
            "schedule",
            "slot_s",
            "slot_offset_s",
            "handover_mode",
            "outage_s",
            "hysteresis_km",
            "gateway_links",
            "access_model",
        ),
        none_ok=True,
    )
    max_range = v.number(d, "max_range_km", p, None, lo=0, lo_open=True, null=True)
    schedule = v.choice(d, "schedule", p, GSL_SCHEDULES, "continuous")
    if schedule == "continuous":
        for k in ("slot_s", "slot_offset_s"):
            if k in d:
                v.fail(
                    f"{p}.{k}",
                    "applies to gsl.schedule: slotted only; set gsl.schedule: slotted or drop this",
                )
    slot_s = v.number(d, "slot_s", p, STARLINK_SLOT_S, lo=0, hi=3600, lo_open=True)
    offset = v.number(d, "slot_offset_s", p, STARLINK_SLOT_OFFSET_S % slot_s, lo=0)
    if offset >= slot_s:
        v.fail(
            f"{p}.slot_offset_s",
            f"must be in [0, slot_s) = [0, {slot_s:g}) (the UTC second, modulo slot_s, "
            f"at which slots start); got {offset:g}",
        )
    hysteresis = v.number(d, "hysteresis_km", p, 0.0, lo=0)
    if hysteresis and schedule == "slotted":
        v.fail(
            f"{p}.hysteresis_km",
            "applies to gsl.schedule: continuous only (slotted assignments hold for a slot)",
        )
    mode = v.choice(d, "handover_mode", p, HANDOVER_MODES, "make-before-break")
    if "outage_s" in d and mode != "break-before-make":
        v.fail(f"{p}.outage_s", "applies to gsl.handover_mode: break-before-make only")
    per_station = d.get("links_per_station", 1)
    if per_station != "all":
        x = per_station
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            v.fail(f"{p}.links_per_station", f"must be an integer >= 1 or all; got {x!r}")
    per_gateway = d.get("gateway_links", per_station)
    if per_gateway != "all":
        x = per_gateway
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            v.fail(f"{p}.gateway_links", f"must be an integer >= 1 or all; got {x!r}")
    return GSLPolicy(
        min_elevation_deg=v.number(
            d, "min_elevation_deg", p, 25.0 if max_range is None else 0.0, lo=0, hi=90
        ),
        links_per_station=None if per_station == "all" else per_station,
        max_range_km=max_range,
        handover=v.choice(d, "handover", p, HANDOVER_RULES, "nearest"),
        acquisition_s=v.number(d, "acquisition_s", p, 0.0, lo=0, hi=3600),
        rate_mbps=v.number(d, "rate_mbps", p, 100.0, lo=0, lo_open=True),
        queue_packets=v.number(d, "queue_packets", p, 1000, lo=1, integer=True),
        loss=v.number(d, "loss", p, 0.0, lo=0, hi=1),
        schedule=schedule,
        slot_s=slot_s,
        slot_offset_s=offset,
        handover_mode=mode,
        outage_s=v.number(d, "outage_s", p, STARLINK_HANDOVER_OUTAGE_S, lo=0, hi=60),
        hysteresis_km=hysteresis,
        gateway_links=None if per_gateway == "all" else per_gateway,
        access_model=(
            parse_access_model(v, d["access_model"], f"{p}.access_model")
            if "access_model" in d
            else None
        ),
    )


# ----------------------------------------------------------------------------- nodes


@dataclass(frozen=True, eq=False)
class Nodes:
    """Every node of a scenario: satellites first (shell by shell, plane-major), then ground.

    Attributes
    ----------
    names : tuple of str
    kind : ndarray of str, one of :data:`NODE_KINDS`
    shell, plane, index : ndarray of int (-1 for ground nodes, and plane for TLE satellites
        read with ``shells: none``)
    n_sats : int
        Satellites are nodes ``0 .. n_sats-1``.
    slot : ndarray of int
        Slot in the plane by argument of latitude at t = 0 (-1 where there is none).
    norad_id : ndarray of int
        NORAD catalogue number of TLE satellites (-1 for the others).
    relay : ndarray of bool
        Ground nodes that forward between tiers only (:attr:`tier`): gateways (stations
        with a backhaul PoP) between satellites and PoPs, PoPs between gateways and servers.
    """

    names: tuple[str, ...]
    kind: np.ndarray
    shell: np.ndarray
    plane: np.ndarray
    index: np.ndarray
    n_sats: int
    slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    norad_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    relay: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int:
        """Node id of ``name``; ScenarioError naming some valid names when unknown."""
        try:
            return self._ids[name]
        except KeyError:
            sample = ", ".join(self.names[:3] + self.names[self.n_sats : self.n_sats + 3])
            raise ScenarioError(
                f"unknown node name {name!r}; node names look like: {sample}"
            ) from None

    @property
    def _ids(self) -> dict[str, int]:
        ids = self.__dict__.get("_ids_cache")
        if ids is None:
            ids = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_ids_cache", ids)
        return ids

    @property
    def transit(self) -> np.ndarray:
        """Nodes that may forward traffic for others: satellites (compute ones included)."""
        return np.isin(self.kind, ("sat", "compute"))

    @property
    def tier(self) -> np.ndarray:
        """Distance from space of each node (int8): satellites 0, nodes with a radio
        (stations, users, data centres) 1, PoPs 2, servers 3. A relay forwards only between
        a neighbour of a lower tier and one of a higher tier."""
        t = np.ones(len(self.names), np.int8)
        t[np.isin(self.kind, SATELLITE_KINDS)] = 0
        t[self.kind == "pop"] = 2
        t[self.kind == "server"] = 3
        return t

    @property
    def relays(self) -> np.ndarray:
        """:attr:`relay`, all False when not given."""
        if self.relay.shape != (len(self.names),):
            return np.zeros(len(self.names), bool)
        return np.asarray(self.relay, bool)

    @property
    def is_sat(self) -> np.ndarray:
        return np.arange(len(self.names)) < self.n_sats

"""TLE catalogues as scenario input: parsing, the ``tle_files`` entries, node names, epochs.

A scenario's TLE files are read and checked when the scenario loads, so that a malformed
line, an unknown group or an element set far from the plan's t = 0 is an error before any
geometry runs.

Epoch rule (issue 9): without ``epoch:``, t = 0 is the newest TLE epoch in the scenario.
SGP4 from a TLE degrades with the distance from its epoch: ~1 km at epoch growing by ~1-3 km
per day in low Earth orbit (Vallado, Crawford, Hujsak & Kelso 2006, "Revisiting Spacetrack
Report #3", AIAA 2006-6753, sec. 6; Kelso 2007, "Validation of SGP4 and IS-GPS-200D against
GPS precision ephemerides", AAS 07-127), and far more for satellites that manoeuvre, as
Starlink's do. Propagating more than :data:`WARN_AGE_DAYS` from a TLE's epoch warns with that
estimate; more than ``max_age_days`` (default :data:`MAX_AGE_DAYS`) is an error unless the
scenario raises it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgp4 import exporter
from sgp4.api import WGS72, Satrec

from meshemu.errors import TLEError
from meshemu.spec.validate import Validator

log = logging.getLogger(__name__)

TLE_TEMPLATE = (
    "1 NNNNNC NNNNNAAA NNNNN.NNNNNNNN +.NNNNNNNN +NNNNN-N +NNNNN-N N NNNNN\n"
    "2 NNNNN NNN.NNNN NNN.NNNN NNNNNNN NNN.NNNN NNN.NNNN NN.NNNNNNNNNNNNNN"
)

#: Beyond this distance from a TLE's epoch, loading warns (days).
WARN_AGE_DAYS = 14.0
#: Default limit of the distance from a TLE's epoch (days); ``max_age_days`` raises it.
MAX_AGE_DAYS = 365.0
#: Position error of SGP4 from a TLE, km per day from its epoch (low, high): see the module
#: docstring.
ERROR_KM_PER_DAY = (1.0, 3.0)

SHELL_MODES = ("auto", "none")
_SGP4_EPOCH0 = dt.datetime(1949, 12, 31, tzinfo=dt.UTC)
_NAME_MAX = 31


@dataclass(frozen=True, eq=False)
class TLERecord:
    """One element set of a catalogue.

    Attributes
    ----------
    name : str
        The catalogue's name (``STARLINK-1008``), or ``SAT<norad id>`` in a 2-line file.
    norad_id : int
        The NORAD catalogue number (columns 3-7 of both lines).
    satrec : Satrec
    epoch : datetime
        The element set's epoch (UTC).
    """

    name: str
    norad_id: int
    satrec: Satrec
    epoch: dt.datetime


@dataclass(frozen=True)
class ShellMatch:
    """A shell named in a scenario: satellites within ``tolerance_deg`` of
    ``inclination_deg`` and ``tolerance_km`` of ``altitude_km`` (mean altitude)."""

    inclination_deg: float
    altitude_km: float
    tolerance_km: float = 10.0
    tolerance_deg: float = 0.5
    name: str = ""


@dataclass(frozen=True)
class TLESource:
    """A TLE or 3LE file in CelesTrak's format, and how to turn it into shells.

    Attributes
    ----------
    path : Path
    max_satellites : int or None
        Use only the first ones of the file.
    records : tuple of TLERecord
        The parsed element sets (after ``max_satellites``).
    shells : "auto", "none" or tuple of ShellMatch
        ``auto``: shells from clusters of inclination and mean altitude; ``none``: no
        shells, planes or slots (the ``nearest`` ISL pattern only); a list: these shells.
    min_altitude_km, max_altitude_km : float or None
        Satellites whose mean altitude is outside are left out.
    plane_gap_deg : float
        Within a shell, a gap in right ascension of the ascending node wider than this
        separates two planes.
    min_shell_sats : int or None
        Smaller clusters are left out (``auto``); None: 1 % of the file's satellites, at
        least 10.
    min_plane_sats : int
        Smaller planes are left out.
    max_age_days : float
        Limit of the distance between t = 0 and an element set's epoch.
    group : str or None
        The CelesTrak group this file was fetched for (``group:`` entries).
    """

    path: Path
    max_satellites: int | None = None
    records: tuple[TLERecord, ...] = field(default=(), compare=False, repr=False)
    shells: str | tuple[ShellMatch, ...] = "auto"
    min_altitude_km: float | None = None
    max_altitude_km: float | None = None
    plane_gap_deg: float = 1.0
    min_shell_sats: int | None = None
    min_plane_sats: int = 2
    max_age_days: float = MAX_AGE_DAYS
    group: str | None = None

    @property
    def label(self) -> str:
        """The file's name (what summaries call it)."""
        return self.path.name


# ----------------------------------------------------------------------------- parsing


def _checksum(line: str) -> int:
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line[:68]) % 10


def parse_tle_text(text: str, source: str = "<tle>") -> list[tuple[str, Satrec]]:
    """Parse TLE or 3LE text (CelesTrak format) into ``(name, Satrec)`` pairs.

    Lines starting with ``#`` are comments (a meshemu extension: generated and fetched files
    carry a header).

    Raises
    ------
    TLEError
        On the first malformed line, quoting it beside the expected template.
    """
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    out: list[tuple[str, Satrec]] = []
    i = 0
    while i < len(lines):
        name = None
        if not lines[i].startswith("1 "):
            name = lines[i][2:].strip() if lines[i].startswith("0 ") else lines[i].strip()
            i += 1
        if i + 1 >= len(lines):
            raise TLEError(
                f"line {i + 1}: element set is cut short: expected line 1 and line 2 "
                f"after {lines[i - 1]!r}\nexpected:\n{TLE_TEMPLATE}",
                source=source,
            )
        l1, l2 = lines[i], lines[i + 1]
        _check_lines(l1, l2, i + 1, source)
        try:
            rec = Satrec.twoline2rv(l1, l2, WGS72)
        except (ValueError, IndexError) as exc:
            raise TLEError(
                f"line {i + 1}: cannot parse element set ({exc}):\n  {l1}\n  {l2}\n"
                f"expected:\n{TLE_TEMPLATE}",
                source=source,
            ) from None
        if rec.error != 0 or not (0 < rec.no_kozai < 0.2):
            raise TLEError(
                f"line {i + 2}: implausible mean motion "
                f"{rec.no_kozai * 1440 / (2 * math.pi):.4f} rev/day:\n  {l2}",
                source=source,
            )
        out.append((name or f"SAT{l1[2:7].strip()}", rec))
        i += 2
    if not out:
        raise TLEError(f"no element sets found\nexpected:\n{TLE_TEMPLATE}", source=source)
    return out


def _check_lines(l1: str, l2: str, lineno: int, source: str) -> None:
    for num, ln, k in (("1", l1, lineno), ("2", l2, lineno + 1)):
        if not ln.startswith(num + " ") or len(ln) != 69:
            raise TLEError(
                f"line {k}: not a TLE line {num} (must start with '{num} ' and be 69 "
                f"characters, got {len(ln)}):\n  {ln}\nexpected:\n{TLE_TEMPLATE}",
                source=source,
            )
        if ln[68].isdigit() and int(ln[68]) != _checksum(ln):
            raise TLEError(
                f"line {k}: checksum is {ln[68]} but the line sums to {_checksum(ln)}:\n  {ln}",
                source=source,
            )
    if l1[2:7] != l2[2:7]:
        raise TLEError(
            f"line {lineno}: satellite numbers differ between line 1 "
            f"({l1[2:7]!r}) and line 2 ({l2[2:7]!r})",
            source=source,
        )


def write_tle(path: Path | str, named_recs: list[tuple[str, Satrec]], header: str = "") -> None:
    """Write records as a 3LE file (name line, line 1, line 2)."""
    with open(path, "w") as f:
        for line in header.splitlines():
            f.write(f"# {line}\n")
        for name, rec in named_recs:
            l1, l2 = exporter.export_tle(rec)
            f.write(f"{name}\n{l1}\n{l2}\n")


def satrec_epoch(rec: Satrec) -> dt.datetime:
    """The epoch of an element set (UTC)."""
    days = (rec.jdsatepoch - 2433281.5) + rec.jdsatepochF  # JD of 1949-12-31 00:00 UTC
    return _SGP4_EPOCH0 + dt.timedelta(days=days)


def read_records(path: Path, max_satellites: int | None = None) -> tuple[TLERecord, ...]:
    """The element sets of a TLE/3LE file (the first ``max_satellites`` of them)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise TLEError(f"cannot read TLE file: {why}", source=str(path)) from None
    pairs = parse_tle_text(text, str(path))
    if max_satellites:
        pairs = pairs[:max_satellites]
    return tuple(TLERecord(n, int(r.satnum), r, satrec_epoch(r)) for n, r in pairs)


# ----------------------------------------------------------------------------- names


def node_names(raw: Sequence[str], taken: set[str] | None = None) -> list[str]:
    """Catalogue names made into node names: letters, digits and ``_`` (``STARLINK-1008`` ->
    ``STARLINK_1008``), starting with a letter, at most 31 characters; a name used twice
    gets ``_2``, ``_3``... in file order. Names in ``taken`` are avoided too."""
    used = set(taken or ())
    out = []
    for name in raw:
        base = re.sub(r"_+", "_", "".join(c if c.isalnum() else "_" for c in name)).strip("_")
        if not base or not base[0].isalpha():
            base = "SAT_" + base if base else "SAT"
        base = base[:_NAME_MAX]
        cand, k = base, 1
        while cand in used:
            k += 1
            cand = f"{base[: _NAME_MAX - len(str(k)) - 1]}_{k}"
        used.add(cand)
        out.append(cand)
    return out


# ----------------------------------------------------------------------------- scenario entries

_ENTRY_KEYS = (
    "file",
    "group",
    "max_satellites",
    "shells",
    "min_altitude_km",
    "max_altitude_km",
    "plane_gap_deg",
    "min_shell_sats",
    "min_plane_sats",
    "max_age_days",
)


def parse_entry(v: Validator, raw: Any, p: str, base_dir: Path) -> TLESource:
    """One ``constellation.tle_files[i]`` entry: a ``file:`` (relative to the scenario) or a
    ``group:`` fetched with ``meshemu tle fetch``, with its shell filters."""
    t = v.mapping(raw, p, _ENTRY_KEYS, none_ok=True)
    group = None
    if ("file" in t) == ("group" in t):
        v.fail(p, "needs exactly one of file: (a TLE file) or group: (a fetched CelesTrak group)")
    if "group" in t:
        group = t["group"]
        if not isinstance(group, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", group):
            v.fail(f"{p}.group", f"must be a CelesTrak group name such as starlink; got {group!r}")
        path = _fetched(v, group, f"{p}.group")
    else:
        if not isinstance(t["file"], str) or not t["file"]:
            v.fail(f"{p}.file", f"expected a file path, got {t['file']!r}")
        path = (base_dir / Path(t["file"]).expanduser()).resolve()
        if not path.is_file():
            v.fail(f"{p}.file", f"no such file {str(path)!r}")
    n_max = v.number(t, "max_satellites", p, None, lo=1, integer=True)
    lo = v.number(t, "min_altitude_km", p, None, lo=0, hi=40000)
    hi = v.number(t, "max_altitude_km", p, None, lo=0, hi=40000)
    if lo is not None and hi is not None and hi <= lo:
        v.fail(f"{p}.max_altitude_km", f"must be above min_altitude_km ({lo:g}); got {hi:g}")
    return TLESource(
        path=path,
        max_satellites=n_max,
        records=read_records(path, n_max),
        shells=_parse_shells(v, t.get("shells", "auto"), f"{p}.shells"),
        min_altitude_km=lo,
        max_altitude_km=hi,
        plane_gap_deg=v.number(t, "plane_gap_deg", p, 1.0, lo=0, hi=180, lo_open=True),
        min_shell_sats=v.number(t, "min_shell_sats", p, None, lo=1, integer=True),
        min_plane_sats=v.number(t, "min_plane_sats", p, 2, lo=1, integer=True),
        max_age_days=v.number(t, "max_age_days", p, MAX_AGE_DAYS, lo=0, lo_open=True),
        group=group,
    )


def _fetched(v: Validator, group: str, p: str) -> Path:
    from meshemu.spec.celestrak import latest_fetched, tle_cache_dir

    path = latest_fetched(group)
    if path is None:
        v.fail(
            p,
            f"no fetched catalogue of group {group!r} in {tle_cache_dir()}; fetch one with "
            f"`meshemu tle fetch {group}` (needs the internet; MESHEMU_TLE_DIR sets the "
            f"directory), or use file: with a TLE file instead",
        )
    return path


def _parse_shells(v: Validator, x: Any, p: str) -> str | tuple[ShellMatch, ...]:
    if isinstance(x, str) and x in SHELL_MODES:
        return x
    if not isinstance(x, list) or not x:
        v.fail(
            p,
            f"must be auto, none or a list of {{inclination_deg, altitude_km, tolerance_km, "
            f"tolerance_deg, name}}; got {x!r}",
        )
    out = []
    for i, s in enumerate(x):
        q = f"{p}[{i}]"
        s = v.mapping(
            s, q, ("name", "inclination_deg", "altitude_km", "tolerance_km", "tolerance_deg")
        )
        name = v.identifier(s["name"], f"{q}.name") if "name" in s else ""
        out.append(
            ShellMatch(
                inclination_deg=v.number(s, "inclination_deg", q, lo=0, hi=180),
                altitude_km=v.number(s, "altitude_km", q, lo=100, hi=40000),
                tolerance_km=v.number(s, "tolerance_km", q, 10.0, lo=0, lo_open=True),
                tolerance_deg=v.number(s, "tolerance_deg", q, 0.5, lo=0, hi=90, lo_open=True),
                name=name,
            )
        )
    return tuple(out)


# ----------------------------------------------------------------------------- epoch


def resolve_epoch(
    v: Validator, explicit: dt.datetime | None, sources: Sequence[TLESource]
) -> dt.datetime:
    """t = 0 of the plan: ``explicit``, else the newest TLE epoch, else 2026-01-01 UTC; checks
    every element set's distance from it (warning past :data:`WARN_AGE_DAYS`, error past the
    entry's ``max_age_days``)."""
    epochs = [r.epoch for s in sources for r in s.records]
    if explicit is not None:
        t0 = explicit
    elif epochs:
        t0 = max(epochs)
    else:
        t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i, s in enumerate(sources):
        if not s.records:
            continue
        age = [abs((t0 - r.epoch).total_seconds()) / 86400.0 for r in s.records]
        worst = max(range(len(age)), key=age.__getitem__)
        days, rec = age[worst], s.records[worst]
        if days > s.max_age_days:
            v.fail(
                f"constellation.tle_files[{i}]",
                f"{s.label}: element set {rec.name} (epoch {rec.epoch:%Y-%m-%d %H:%M} UTC) is "
                f"{days:.0f} days from t = 0 ({t0:%Y-%m-%d %H:%M} UTC), more than "
                f"max_age_days {s.max_age_days:g}; SGP4 is meaningless that far from a TLE's "
                f"epoch: set epoch: near the catalogue's epochs (or leave it out to start at "
                f"the newest one), or raise constellation.tle_files[{i}].max_age_days",
            )
        if days > WARN_AGE_DAYS:
            n_old = sum(a > WARN_AGE_DAYS for a in age)
            lo, hi = (days * k for k in ERROR_KM_PER_DAY)
            log.warning(
                "%s: %d element set(s) are more than %g days from t = 0 (furthest: %s, %.0f "
                "days); expect SGP4 position errors of ~%.0f-%.0f km for them (~1-3 km per "
                "day, Vallado et al. 2006), more if they manoeuvred",
                s.label,
                n_old,
                WARN_AGE_DAYS,
                rec.name,
                days,
                lo,
                hi,
            )
    return t0

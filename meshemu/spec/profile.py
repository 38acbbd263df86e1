"""Workload profiles: YAML files in ``traffic/`` validated into frozen dataclasses.

Load with :func:`load_profile` (a path, or the name of a file in the repository's
``traffic/`` folder), then :func:`resolve` it against a scenario's nodes (names checked,
``compute``/``users`` expanded). Every error is a :class:`meshemu.errors.ProfileError`
naming the field (``workloads[1].target``), quoting the bad value and saying what is allowed.

Schema (times are wall-clock seconds from the start of the traffic)::

    name: str
    description: str                         (optional)
    seed: int                                (optional, default 1) Poisson schedules
    workloads:
      - kind: allreduce
        name: str                            (optional, default "allreduce<i>")
        algorithm: ring | tree | parameter_server
        nodes: compute | [names]             compute = the scenario's compute satellites;
                                             parameter_server: the first is the server
        model_mb: float > 0                  model (gradient) size, MB (10^6 bytes)
        iterations: int >= 1
        compute_ms: float >= 0               compute time between iterations (default 0)
        rate_mbps: float > 0                 pacing rate of each transfer (default 20)
        start_s: float >= 0                  (default 0)
      - kind: inference
        users: users | [names]               users = the scenario's user and station nodes
        servers: compute | [names]           (default compute)
        rate_per_s: float > 0                Poisson request rate of each user
        request_bytes, response_bytes: int >= 1
        deadline_ms: float > 0
        target: nearest | least_loaded       nearest: lowest path delay at the current step;
                                             least_loaded: fewest requests this user has
                                             outstanding there (ties: nearest)
        rate_mbps: float > 0                 pacing of requests/responses (default 20)
        start_s: float >= 0, duration_s: float > 0 | null (null: until the run ends)
      - kind: bulk
        src, dst: names
        rate_mbps: float > 0                 constant rate (Ethernet frames counted)
        start_s: float >= 0, duration_s: float > 0 | null
      - kind: replay
        pcap: path                           (relative to the profile file)
        src, dst: names
        start_s: float >= 0, duration_s: float > 0 | null
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from meshemu.errors import ProfileError
from meshemu.spec.validate import Validator, read_yaml
from meshemu.traffic.schedule import ALGORITHMS, ring_plan

KINDS = ("allreduce", "inference", "bulk", "replay")
TARGETS = ("nearest", "least_loaded")
#: Largest pcap (packets) a replay reads.
MAX_REPLAY_PACKETS = 200_000
#: Kinds a node may have to be an inference user when ``users: users``.
USER_KINDS = ("user", "station")


@dataclass(frozen=True)
class AllReduceSpec:
    name: str
    algorithm: str
    nodes: tuple[str, ...] | str
    model_mb: float
    iterations: int
    compute_ms: float = 0.0
    rate_mbps: float = 20.0
    start_s: float = 0.0
    kind: str = "allreduce"

    @property
    def model_bytes(self) -> int:
        return int(round(self.model_mb * 1e6))


@dataclass(frozen=True)
class InferenceSpec:
    name: str
    users: tuple[str, ...] | str
    rate_per_s: float
    request_bytes: int
    response_bytes: int
    deadline_ms: float
    target: str = "nearest"
    servers: tuple[str, ...] | str = "compute"
    rate_mbps: float = 20.0
    start_s: float = 0.0
    duration_s: float | None = None
    kind: str = "inference"


@dataclass(frozen=True)
class BulkSpec:
    name: str
    src: str
    dst: str
    rate_mbps: float
    start_s: float = 0.0
    duration_s: float | None = None
    kind: str = "bulk"


@dataclass(frozen=True)
class ReplaySpec:
    name: str
    pcap: str
    src: str
    dst: str
    start_s: float = 0.0
    duration_s: float | None = None
    kind: str = "replay"
    #: Packet offsets (s from the first) and IP sizes read from the pcap.
    times_s: tuple[float, ...] = field(default=(), repr=False)
    ip_bytes: tuple[int, ...] = field(default=(), repr=False)


Workload = AllReduceSpec | InferenceSpec | BulkSpec | ReplaySpec


@dataclass(frozen=True)
class Profile:
    """A workload profile.

    Attributes
    ----------
    name, description : str
    seed : int
    workloads : tuple of AllReduceSpec | InferenceSpec | BulkSpec | ReplaySpec
    source : str
        File it came from ("" for a dict).
    """

    name: str
    workloads: tuple[Workload, ...]
    description: str = ""
    seed: int = 1
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (pcap timings left out)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "source": self.source,
            "workloads": [],
        }
        for w in self.workloads:
            d = asdict(w)
            d.pop("times_s", None)
            d.pop("ip_bytes", None)
            if isinstance(w, ReplaySpec):
                d["packets"] = len(w.times_s)
            out["workloads"].append(d)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "", base_dir: Path | None = None) -> Profile:
        """Validate a parsed YAML document."""
        return _parse(data, source, base_dir or Path.cwd())


def default_profile_dir() -> Path:
    """The shipped traffic profiles, inside the package (``meshemu/spec/data/traffic``); the
    repository's top-level ``traffic/`` links to the same files."""
    return Path(str(resources.files("meshemu.spec") / "data" / "traffic"))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in default_profile_dir().glob("*.yaml"))


def load_profile(spec: str | Path | Profile) -> Profile:
    """Load and validate a profile from a YAML path or the name of one in ``traffic/``."""
    if isinstance(spec, Profile):
        return spec
    data, path = read_yaml(spec, default_profile_dir(), ProfileError, "traffic profile", "profiles")
    return _parse(data, str(path), path.parent)


# ---------------------------------------------------------------------------- validation
_COMMON = ("kind", "name", "start_s")


def _parse(data: Any, source: str, base_dir: Path) -> Profile:
    v = Validator(ProfileError, source)
    d = v.mapping(data, "", ("name", "description", "seed", "workloads"))
    name = d.get("name", Path(source).stem if source else "profile")
    if not isinstance(name, str) or not name:
        v.fail("name", f"must be a non-empty string; got {name!r}")
    desc = v.string(d, "description", "", "")
    seed = v.number(d, "seed", "", default=1, lo=0, integer=True)
    ws = d.get("workloads")
    if not isinstance(ws, list) or not ws:
        v.fail("workloads", f"must be a non-empty list of workloads; got {ws!r}")
    out: list[Workload] = []
    names_seen: set[str] = set()
    for i, w in enumerate(ws):
        p = f"workloads[{i}]"
        if not isinstance(w, dict):
            v.fail(p, f"must be a mapping; got {w!r}")
        kind = v.choice(w, "kind", p, tuple(sorted(KINDS)))
        wname = w.get("name", f"{kind}{i}")
        if not isinstance(wname, str) or not wname or "," in wname:
            v.fail(f"{p}.name", f"must be a non-empty string without commas; got {wname!r}")
        if wname in names_seen:
            v.fail(f"{p}.name", f"{wname!r} is used by another workload; names must differ")
        names_seen.add(wname)
        start = float(v.number(w, "start_s", p, default=0.0, lo=0))
        out.append(_WORKLOAD_PARSERS[kind](v, w, p, wname, start, base_dir))
    return Profile(name, tuple(out), desc, seed, source)


def _parse_allreduce(
    v: Validator, w: dict[str, Any], p: str, name: str, start: float, base_dir: Path
) -> AllReduceSpec:
    v.mapping(
        w, p, _COMMON + ("algorithm", "nodes", "model_mb", "iterations", "compute_ms", "rate_mbps")
    )
    return AllReduceSpec(
        name,
        v.choice(w, "algorithm", p, tuple(sorted(ALGORITHMS))),
        v.node_names(w, "nodes", p, "compute", min_len=2),
        v.number(w, "model_mb", p, lo=0, lo_open=True, hi=10_000),
        v.number(w, "iterations", p, lo=1, hi=1_000_000, integer=True),
        v.number(w, "compute_ms", p, default=0.0, lo=0),
        v.number(w, "rate_mbps", p, default=20.0, lo=0, lo_open=True, hi=100_000),
        start,
    )


def _parse_inference(
    v: Validator, w: dict[str, Any], p: str, name: str, start: float, base_dir: Path
) -> InferenceSpec:
    v.mapping(
        w,
        p,
        _COMMON
        + (
            "users",
            "servers",
            "rate_per_s",
            "request_bytes",
            "response_bytes",
            "deadline_ms",
            "target",
            "rate_mbps",
            "duration_s",
        ),
    )
    users = v.node_names(w, "users", p, "users")
    servers = v.node_names(w, "servers", p, "compute", default="compute")
    rate = v.number(w, "rate_per_s", p, lo=0, lo_open=True, hi=10_000)
    req = v.number(w, "request_bytes", p, lo=1, hi=50_000_000, integer=True)
    resp = v.number(w, "response_bytes", p, lo=1, hi=50_000_000, integer=True)
    dl = v.number(w, "deadline_ms", p, lo=0, lo_open=True)
    target = v.choice(w, "target", p, tuple(sorted(TARGETS)), default="nearest")
    pace = v.number(w, "rate_mbps", p, default=20.0, lo=0, lo_open=True, hi=100_000)
    dur = v.number(w, "duration_s", p, default=None, lo=0, lo_open=True, null=True)
    return InferenceSpec(name, users, rate, req, resp, dl, target, servers, pace, start, dur)


def _ends(v: Validator, w: dict[str, Any], p: str) -> tuple[str, str]:
    src, dst = v.node_name(w, "src", p), v.node_name(w, "dst", p)
    if src == dst:
        v.fail(f"{p}.dst", f"must differ from src; both are {src!r}")
    return src, dst


def _parse_bulk(
    v: Validator, w: dict[str, Any], p: str, name: str, start: float, base_dir: Path
) -> BulkSpec:
    v.mapping(w, p, _COMMON + ("src", "dst", "rate_mbps", "duration_s"))
    src, dst = _ends(v, w, p)
    rate = v.number(w, "rate_mbps", p, lo=0, lo_open=True, hi=100_000)
    dur = v.number(w, "duration_s", p, default=None, lo=0, lo_open=True, null=True)
    return BulkSpec(name, src, dst, rate, start, dur)


def _parse_replay(
    v: Validator, w: dict[str, Any], p: str, name: str, start: float, base_dir: Path
) -> ReplaySpec:
    v.mapping(w, p, _COMMON + ("pcap", "src", "dst", "duration_s"))
    src, dst = _ends(v, w, p)
    pcap = w.get("pcap")
    if not isinstance(pcap, str) or not pcap:
        v.fail(f"{p}.pcap", f"must be the path of a pcap file; got {pcap!r}")
    path = Path(pcap)
    if not path.is_absolute():
        path = base_dir / path
    times, sizes = read_pcap(path, f"{v.source + ': ' if v.source else ''}{p}.pcap")
    dur = v.number(w, "duration_s", p, default=None, lo=0, lo_open=True, null=True)
    return ReplaySpec(name, str(path), src, dst, start, dur, "replay", tuple(times), tuple(sizes))


_WORKLOAD_PARSERS: dict[
    str, Callable[[Validator, dict[str, Any], str, str, float, Path], Workload]
] = {
    "allreduce": _parse_allreduce,
    "inference": _parse_inference,
    "bulk": _parse_bulk,
    "replay": _parse_replay,
}


def read_pcap(path: Path | str, what: str = "pcap") -> tuple[list[float], list[int]]:
    """Packet times (s, relative to the first) and IP sizes (bytes) of a pcap file.

    Packets without an IP layer count with their whole length. At most
    :data:`MAX_REPLAY_PACKETS` are read.

    Raises
    ------
    ProfileError
        The file is missing, unreadable, not a pcap, truncated or empty.
    """
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapReader

    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{what}: no such pcap file: {str(path)!r}")
    times: list[float] = []
    sizes: list[int] = []
    # Scapy only logs a warning for a record cut short: collect those and fail on them
    warnings: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    scapy_log = logging.getLogger("scapy.runtime")
    catcher = _Catch(logging.WARNING)
    scapy_log.addHandler(catcher)
    try:
        with PcapReader(str(path)) as reader:
            for pkt in reader:
                ip = pkt.getlayer("IP")
                length = int(ip.len) if ip is not None and ip.len else len(pkt)
                times.append(float(pkt.time))
                sizes.append(length)
                if len(times) >= MAX_REPLAY_PACKETS:
                    break
    except (Scapy_Exception, EOFError, OSError, ValueError, TypeError) as exc:
        raise ProfileError(
            f"{what}: {str(path)!r} is not a readable pcap file "
            f"(libpcap format, .pcap; pcapng is read too): {exc}"
        ) from None
    except Exception as exc:  # scapy raises assorted errors on truncated records
        raise ProfileError(
            f"{what}: {str(path)!r} is malformed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        scapy_log.removeHandler(catcher)
    bad = [w for w in warnings if "truncated" in w.lower()]
    if bad:
        raise ProfileError(
            f"{what}: {str(path)!r} is malformed: {bad[0]} (after "
            f"{len(times)} packet(s)); the file is cut short or corrupt"
        )
    if not times:
        raise ProfileError(f"{what}: {str(path)!r} holds no packets")
    t0 = min(times)
    return [t - t0 for t in times], sizes


# ------------------------------------------------------------------------------ resolve
@dataclass(frozen=True)
class ResolvedProfile:
    """A profile whose node lists are explicit names, all checked against the scenario."""

    profile: Profile
    workloads: tuple[Workload, ...]
    names: tuple[str, ...]
    kinds: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = self.profile.to_dict()
        d["workloads"] = Profile(self.profile.name, self.workloads).to_dict()["workloads"]
        return d


def resolve(profile: Profile, names: Any, kinds: Any) -> ResolvedProfile:
    """Expand ``compute``/``users`` and check every node name against the scenario.

    Parameters
    ----------
    profile : Profile
    names : sequence of str
        Node names by id (``LinkSchedule(...).nodes.names``).
    kinds : sequence of str
        Node kinds by id (``sat``, ``compute``, ``station``, ``user``, ``datacenter``).
    """
    names = tuple(str(n) for n in names)
    kinds = tuple(str(k) for k in np.asarray(kinds).tolist())
    known = set(names)
    compute = tuple(n for n, k in zip(names, kinds) if k == "compute")
    users = tuple(n for n, k in zip(names, kinds) if k in USER_KINDS)
    src = f"{profile.source}: " if profile.source else ""

    def check(p: str, ns: tuple[str, ...]) -> tuple[str, ...]:
        for n in ns:
            if n not in known:
                sample = [x for x, k in zip(names, kinds) if k != "sat"][:6] or list(names[:6])
                raise ProfileError(
                    f"{src}{p}: unknown node {n!r}; this scenario's nodes "
                    f"include: {', '.join(sample)} (and satellites like "
                    f"{names[0]})"
                )
        return ns

    def expand(
        p: str, value: Any, keyword: str, pool: tuple[str, ...], what: str, min_len: int = 1
    ) -> tuple[str, ...]:
        if value == keyword:
            if len(pool) < min_len:
                raise ProfileError(
                    f"{src}{p}: {keyword!r} means the scenario's {what}, but "
                    f"it has {len(pool)} (need {min_len}); list node names "
                    f"instead"
                )
            return pool
        return check(p, value)

    out: list[Workload] = []
    for i, w in enumerate(profile.workloads):
        p = f"workloads[{i}]"
        if isinstance(w, AllReduceSpec):
            nodes = expand(f"{p}.nodes", w.nodes, "compute", compute, "compute satellites", 2)
            chunk = w.model_bytes / len(nodes) if w.algorithm == "ring" else w.model_bytes
            if chunk / 1364 > 65535:
                raise ProfileError(
                    f"{src}{p}.model_mb: {w.model_mb!r} MB makes messages of "
                    f"{chunk / 1e6:.0f} MB, more than the 89 MB a message can "
                    f"hold; use a smaller model or more nodes"
                )
            ring_plan(len(nodes), w.model_bytes)  # checks p
            out.append(_replace(w, nodes=nodes))
        elif isinstance(w, InferenceSpec):
            us = expand(f"{p}.users", w.users, "users", users, "user and station nodes")
            sv = expand(f"{p}.servers", w.servers, "compute", compute, "compute satellites")
            both = set(us) & set(sv)
            if both:
                raise ProfileError(f"{src}{p}: nodes {sorted(both)} are both users and servers")
            out.append(_replace(w, users=us, servers=sv))
        else:
            check(f"{p}.src", (w.src,))
            check(f"{p}.dst", (w.dst,))
            out.append(w)
    return ResolvedProfile(profile, tuple(out), names, kinds)


_W = TypeVar("_W", AllReduceSpec, InferenceSpec)


def _replace(w: _W, **kw: Any) -> _W:
    from dataclasses import replace

    return replace(w, **kw)

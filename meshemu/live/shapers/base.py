"""What every link shaper shares: link parameters and ends, the :class:`LinkShaper` interface
and its argument checks.

A shaper gives each emulated link its delay, capacity, queue, loss and up/down state. The
implementations live one per module beside this one (:mod:`.netem`, :mod:`.userspace`) and
are picked by name in :mod:`meshemu.live.shapers` (``make_shaper``).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from meshemu.errors import LinkParamsError, ShaperError
from meshemu.spec.linkmodel import DirectionModel

#: Prefix of everything meshemu's shapers create in the root namespace (named netns).
NS_PREFIX = "meshemu-"
#: Suffix of the userspace shaper's namespace, ``meshemu-<run_id>-dl``.
DL_SUFFIX = "-dl"
#: Longest interface name Linux accepts (IFNAMSIZ - 1).
IFNAME_MAX = 15

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


# ---- value types --------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkParams:
    """How one link behaves (both directions alike but for the access model).

    Attributes
    ----------
    delay_s : float
        One-way propagation delay, seconds (>= 0).
    rate_bps : float
        Capacity in bit/s; 0 or ``math.inf`` means unlimited.
    queue_packets : int
        Drop-tail limit of the transmit queue, packets (>= 1).
    loss : float
        Random loss probability, 0..1.
    up : bool
        False: the link drops everything (its interfaces stay up).
    ab, ba : DirectionModel or None
        The access model's extra delay and Gilbert-Elliott loss of frames from the ``a``
        end to ``b`` and back (:mod:`meshemu.spec.linkmodel`; a GSL's satellite is its ``a``
        end, so ``ab`` is the downlink); None: none.
    """

    delay_s: float
    rate_bps: float
    queue_packets: int = 1000
    loss: float = 0.0
    up: bool = True
    ab: DirectionModel | None = None
    ba: DirectionModel | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.delay_s, (int, float))
            and math.isfinite(self.delay_s)
            and 0 <= self.delay_s <= 3600
        ):
            raise LinkParamsError(
                f"delay_s must be a finite number of seconds in 0..3600; got {self.delay_s!r}"
            )
        if not (
            isinstance(self.rate_bps, (int, float))
            and not math.isnan(self.rate_bps)
            and self.rate_bps >= 0
        ):
            raise LinkParamsError(
                f"rate_bps must be >= 0 bit/s (0 or inf = unlimited); got {self.rate_bps!r}"
            )
        if not self.unlimited and self.rate_bps < 8:
            raise LinkParamsError(
                f"rate_bps must be at least 8 bit/s (or 0/inf = unlimited); got {self.rate_bps!r}"
            )
        if (
            isinstance(self.queue_packets, bool)
            or not isinstance(self.queue_packets, int)
            or not 1 <= self.queue_packets <= 2**31 - 1
        ):
            raise LinkParamsError(
                f"queue_packets must be an integer in 1..{2**31 - 1}; got {self.queue_packets!r}"
            )
        if not (isinstance(self.loss, (int, float)) and 0.0 <= self.loss <= 1.0):
            raise LinkParamsError(f"loss must be a probability in 0..1; got {self.loss!r}")
        if not isinstance(self.up, bool):
            raise LinkParamsError(f"up must be True or False; got {self.up!r}")
        for attr in ("ab", "ba"):
            m = getattr(self, attr)
            if m is not None and not isinstance(m, DirectionModel):
                raise LinkParamsError(f"{attr} must be a DirectionModel or None; got {m!r}")

    @property
    def unlimited(self) -> bool:
        """True when the link has no rate limit."""
        return self.rate_bps == 0 or math.isinf(self.rate_bps)


@dataclass(frozen=True)
class LinkEnds:
    """Where one link goes: an interface in each of two namespaces.

    Attributes
    ----------
    link_id : int
        Unique per link within one emulation (>= 0).
    pid_a, pid_b : int
        A process in each namespace (e.g. a Mininet node's shell pid).
    if_a, if_b : str
        Interface names to create there (at most 15 characters, no blanks, '/' or ':').
    """

    link_id: int
    pid_a: int
    if_a: str
    pid_b: int
    if_b: str

    def __post_init__(self) -> None:
        if (
            isinstance(self.link_id, bool)
            or not isinstance(self.link_id, int)
            or not (0 <= self.link_id < 2**32)
        ):
            raise LinkParamsError(
                f"link_id must be an integer in 0..{2**32 - 1}; got {self.link_id!r}"
            )
        for attr in ("pid_a", "pid_b"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise LinkParamsError(f"{attr} must be a process id (> 0); got {v!r}")
        for attr in ("if_a", "if_b"):
            v = getattr(self, attr)
            if not isinstance(v, str) or not _IFNAME_RE.match(v):
                raise LinkParamsError(
                    f"{attr} must be an interface name of 1..{IFNAME_MAX} "
                    f"characters without blanks, '/' or ':'; got {v!r}"
                )
        if self.pid_a == self.pid_b and self.if_a == self.if_b:
            raise LinkParamsError(
                f"link {self.link_id}: both ends are {self.if_a!r} in "
                f"process {self.pid_a}'s namespace"
            )


#: Transmit and receive queues of each veth end (``numtxqueues``/``numrxqueues``). A veth
#: otherwise gets one of each per possible CPU and uses only one (``veth_init_queues``
#: reduces the real counts to 1), so the kernel builds the sysfs objects of the others at
#: ``register_netdevice`` and removes them again: about 5 % of the build's link time.
VETH_QUEUES = 1


def veth_cmd(name_a: str, ns_a: int | str, name_b: str, ns_b: int | str) -> list[str]:
    """An ``ip`` command (without the leading ``ip``) creating a veth pair across namespaces.

    ``name_a`` is created admin-up (``ip link add`` can only bring up the first device of a
    pair: the peer's ``dev_open`` would run before the pair is joined, ``ENOTCONN``; the
    peer must be set up afterwards). ``ns_a``/``ns_b`` are a pid or a netns name. Each end
    has :data:`VETH_QUEUES` queues.
    """
    q = str(VETH_QUEUES)
    queues = ["numtxqueues", q, "numrxqueues", q]
    return [
        "link",
        "add",
        name_a,
        *queues,
        "netns",
        str(ns_a),
        "up",
        "type",
        "veth",
        "peer",
        "name",
        name_b,
        *queues,
        "netns",
        str(ns_b),
    ]


#: ``GuardRecord.link_id`` of a record about a shaper worker as a whole (not one link).
WORKER_LINK = 0xFFFFFFFF


@dataclass(frozen=True)
class GuardRecord:
    """What a shaper measured about itself since the previous :meth:`LinkShaper.guard`.

    Attributes
    ----------
    link_id : int
        The link, or :data:`WORKER_LINK` for a record about a worker as a whole.
    direction : int
        0: frames that entered at the link's ``a`` end, 1: at its ``b`` end (-1 for a worker).
    frames : int
        Frames sent.
    late_p99_ns, late_max_ns : int
        How late frames left against their scheduled departure (p99, max).
    behind_drops : int
        Frames lost because the shaper could not keep up (e.g. its kernel receive ring
        overflowed); not the model's queue drops.
    queue_frames : int
        Frames in the direction's drop-tail queue when the record was taken (0 where the
        shaper does not report it).
    """

    link_id: int
    direction: int
    frames: int
    late_p99_ns: int
    late_max_ns: int
    behind_drops: int = 0
    queue_frames: int = 0


# ---- the interface ------------------------------------------------------------------------
class LinkShaper(ABC):
    """Creates, shapes, updates and removes the emulation's links.

    A shaper is made by :func:`make_shaper`; ``close()`` removes all it created and may be
    called any number of times, also after a failed ``create_links``. It is a context manager.
    """

    name: ClassVar[str]
    #: True when :meth:`guard` measures (the run then writes ``shaper.csv``).
    has_guard: ClassVar[bool] = False

    def __init__(self, run_id: str):
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
            raise ShaperError(f"run_id must be 1..40 letters, digits, '_' or '-'; got {run_id!r}")
        self.run_id = run_id
        self._links: dict[int, tuple[LinkEnds, LinkParams]] = {}

    @abstractmethod
    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        """Create the links: interfaces in the given namespaces, admin up, shaped."""

    @abstractmethod
    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        """Change links' parameters in place, live (packets in flight are kept)."""

    @abstractmethod
    def remove_links(self, link_ids: Sequence[int]) -> None:
        """Remove links (and their interfaces)."""

    @abstractmethod
    def counters(self) -> dict[int, tuple[int, int, int]]:
        """Per link, both directions summed: (packets forwarded, bytes forwarded, dropped)."""

    @abstractmethod
    def close(self) -> None:
        """Remove everything this shaper created. Idempotent."""

    def guard(self) -> list[GuardRecord] | None:
        """How far behind the plan the shaper is, since the previous call (see
        :class:`GuardRecord`); None when this shaper cannot tell (the default)."""
        return None

    @property
    def link_ids(self) -> list[int]:
        """Ids of the links that exist now."""
        return list(self._links)

    def params(self, link_id: int) -> LinkParams:
        """Current parameters of a link."""
        return self._links[self._known([link_id])[0]][1]

    def _check_new(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        seen = set()
        for item in links:
            if (
                not isinstance(item, tuple)
                or len(item) != 2
                or not isinstance(item[0], LinkEnds)
                or not isinstance(item[1], LinkParams)
            ):
                raise LinkParamsError(
                    f"create_links takes (LinkEnds, LinkParams) pairs; got {item!r}"
                )
            lid = item[0].link_id
            if lid in self._links or lid in seen:
                raise LinkParamsError(f"link id {lid} already exists; link ids must be unique")
            seen.add(lid)

    def _known(self, link_ids: Iterable[int]) -> list[int]:
        ids = list(link_ids)
        bad = [i for i in ids if i not in self._links]
        if bad:
            raise LinkParamsError(
                f"unknown link id(s) {bad[:10]}; existing ids: {_id_summary(self._links)}"
            )
        return ids

    def _check_changes(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        self._known(c[0] for c in changes)
        for c in changes:
            if not isinstance(c[1], LinkParams):
                raise LinkParamsError(f"update takes (link_id, LinkParams) pairs; got {c!r}")

    def __enter__(self) -> LinkShaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id_summary(links: dict) -> str:
    if not links:
        return "none"
    ids = sorted(links)
    return f"{len(ids)} ids in {ids[0]}..{ids[-1]}"

"""The link table of an emulation: every link of the run and its parameters, from snapshots.

Each link of the run has a link id (its index in the sorted keys ``a * n_nodes + b`` of every
link that appears in any snapshot, :class:`RunLinks`) and, in the :class:`LinkTable`, one
parameter record with the fields of :class:`meshemu.live.shapers.LinkParams` (delay, rate,
queue size, loss, up, access model per direction). Every value comes from the snapshots
(:class:`Snapshot` ``kind``, ``delay_s``, ``rate_bps``, ``queue_packets``, ``loss``, ``up``,
``access`` and ``access_model``) and from nowhere else; a
link absent from a snapshot is down in it and keeps its other parameters.

:meth:`LinkTable.advance` brings the table to the next snapshot and returns only the links
whose parameters the shaper must change: any up/down change; for a link that is up, a delay
change above the table's ``delay_tolerance_s`` (by default :data:`DELAY_TOLERANCE_S`; the
delay the shaper holds is then never further than that from the plan), a relative rate
change above
:data:`RATE_TOLERANCE`, or any queue or loss change. A link that is down gets no updates
until it comes up (then with all its current parameters).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from meshemu.errors import EmulationError
from meshemu.geometry.linkstate import DEFAULT_QUEUE_PACKETS, GSL, ISL, TRL, Snapshot
from meshemu.live.shapers import LinkParams
from meshemu.spec.linkmodel import AccessLinkModel

#: A link parameter change smaller than this is not pushed to the shaper (seconds).
DELAY_TOLERANCE_S = 1e-6
#: Relative rate change that is not pushed to the shaper.
RATE_TOLERANCE = 1e-9

#: One record per link: the fields of :class:`LinkParams`, in its order.
PARAMS_DTYPE = np.dtype(
    [
        ("delay_s", np.float64),
        ("rate_bps", np.float64),
        ("queue_packets", np.int32),
        ("loss", np.float64),
        ("up", np.bool_),
        ("access", np.bool_),
        ("access_draw", np.float64),
    ]
)


@dataclass(frozen=True, eq=False)
class LinkChanges:
    """What :meth:`LinkTable.advance` changed.

    Attributes
    ----------
    ids : ndarray of int64
        Link ids whose parameters the shaper must update, sorted.
    n_went_up, n_went_down : int
        Of those, the links that came up and that went down (absent from the snapshot:
        down).
    up_ids, down_ids : ndarray of int64
        Their ids.
    """

    ids: np.ndarray
    n_went_up: int
    n_went_down: int
    up_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    down_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True, eq=False)
class RunLinks:
    """Every link that exists at some step of a run, and its kind.

    Build it with :meth:`from_snapshots` (or :meth:`from_snapshot` for a one-step run).

    Attributes
    ----------
    n_nodes : int
    key : ndarray of int64, shape (L,)
        Sorted unique keys ``a * n_nodes + b`` (``a < b``); link id = index.
    kind : ndarray of int8, shape (L,)
        :data:`meshemu.geometry.linkstate.ISL` or ``GSL``, from the snapshots.
    first : ndarray of :data:`PARAMS_DTYPE`, shape (L,), optional
        Each link's parameters where it first appears (:meth:`from_snapshots`): a link that
        is down when the network is built is made with them (so a shaper sizes what it
        sets once per link, such as the GSO segment cap, for the rate the link will have).
    """

    n_nodes: int
    key: np.ndarray
    kind: np.ndarray
    first: np.ndarray | None = None

    @classmethod
    def from_snapshots(cls, snapshots: Iterable[Snapshot]) -> RunLinks:
        """The union of the snapshots' links, with the kind the snapshots give them.

        Raises
        ------
        EmulationError
            No snapshot, snapshots of different node counts, or a link whose kind changes.
        """
        snaps = list(snapshots)
        if not snaps:
            raise EmulationError("a run needs at least one snapshot")
        n = snaps[0].n_nodes
        if any(s.n_nodes != n for s in snaps):
            raise EmulationError(
                f"snapshots of one run must have the same nodes; got node "
                f"counts {sorted({s.n_nodes for s in snaps})}"
            )
        keys = np.concatenate([s.key for s in snaps])
        kinds = np.concatenate([np.asarray(s.kind, dtype=np.int8) for s in snaps])
        uniq, first = np.unique(keys, return_index=True)
        kind = kinds[first]
        if kinds.size and np.any(kind[np.searchsorted(uniq, keys)] != kinds):
            bad = keys[kind[np.searchsorted(uniq, keys)] != kinds][0]
            raise EmulationError(
                f"link {bad // n}-{bad % n} changes kind (ISL/GSL) between "
                f"snapshots; a link's kind is fixed"
            )
        first_rows = np.zeros(uniq.size, dtype=PARAMS_DTYPE)
        for name, default in (
            ("delay_s", 0.0),
            ("rate_bps", 0.0),
            ("queue_packets", DEFAULT_QUEUE_PACKETS),
            ("loss", 0.0),
        ):
            col = np.concatenate(
                [
                    np.asarray(v)
                    if (v := getattr(s, name)).size == s.key.size
                    else np.full(s.key.size, default)
                    for s in snaps
                ]
            )
            first_rows[name] = col[first]
        return cls(n, uniq.astype(np.int64), kind.astype(np.int8), first_rows)

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> RunLinks:
        """The links of one snapshot."""
        return cls.from_snapshots([snap])

    @property
    def n_links(self) -> int:
        return int(self.key.size)

    @property
    def isl(self) -> np.ndarray:
        """True for the inter-satellite links (bool, shape (L,))."""
        return self.kind == ISL


def _check_kinds(kind: np.ndarray) -> None:
    # a terrestrial (TRL) link is emulated as a GSL is: its interfaces are gsl<k> too
    if kind.size and not np.all((kind == ISL) | (kind == GSL) | (kind == TRL)):
        raise EmulationError(
            f"link kinds must be ISL ({ISL}), GSL ({GSL}) or TRL ({TRL}); got "
            f"{sorted(set(np.unique(kind).tolist()) - {ISL, GSL, TRL})}"
        )


class LinkTable:
    """The parameters of every link of the run: one :data:`PARAMS_DTYPE` record per link id.

    Parameters
    ----------
    links : RunLinks
    names : sequence of str
        Node names (for error messages).
    delay_tolerance_s : float
        A delay change up to this is not pushed (the pushed delay stays within it of the
        plan: the comparison is with what the shaper was last told).

    Attributes
    ----------
    links : RunLinks
    rows : ndarray of :data:`PARAMS_DTYPE`, shape (L,)
        What the shaper was last told about each link (before :meth:`load`: every link down,
        with the parameters it first appears with, else the snapshot's default queue size).
    """

    def __init__(
        self, links: RunLinks, names: Sequence[str], delay_tolerance_s: float = DELAY_TOLERANCE_S
    ) -> None:
        _check_kinds(np.asarray(links.kind))
        if not (0.0 <= delay_tolerance_s < 1.0):
            raise EmulationError(f"delay tolerance must be in 0..1 s, got {delay_tolerance_s!r} s")
        self.delay_tolerance_s = float(delay_tolerance_s)
        self.links = links
        self.names = list(names)
        self.rows = np.zeros(links.n_links, dtype=PARAMS_DTYPE)
        self.rows["queue_packets"] = DEFAULT_QUEUE_PACKETS
        if links.first is not None:  # a link down at the start: the parameters it comes with
            for name in ("delay_s", "rate_bps", "queue_packets", "loss"):
                self.rows[name] = links.first[name]
        #: The snapshots' access model (the ``access`` links' ``ab`` / ``ba``).
        self.access_model: AccessLinkModel | None = None

    def __len__(self) -> int:
        return self.links.n_links

    def ids(self, snap: Snapshot) -> np.ndarray:
        """Link ids of ``snap``'s edges, in the snapshot's edge order.

        Raises
        ------
        EmulationError
            The snapshot has a link that is not in :attr:`links`, or another node count.
        """
        n = self.links.n_nodes
        if snap.n_nodes != n:
            raise EmulationError(f"snapshot has {snap.n_nodes} nodes, the emulation {n}")
        keys = snap.key
        run_keys = self.links.key
        ids = np.searchsorted(run_keys, keys)
        ok = ids < run_keys.size
        ok[ok] = run_keys[ids[ok]] == keys[ok]
        if not ok.all():
            bad = keys[~ok][:5]
            pairs = [(self.names[k // n], self.names[k % n]) for k in bad]
            raise EmulationError(
                f"snapshot at t={snap.t_s} s has links that were not built "
                f"(link_keys must hold every link of the run): {pairs}"
            )
        return ids

    def target(self, snap: Snapshot) -> np.ndarray:
        """The table as ``snap`` has it: its links with its parameters, every other link down
        with the parameters it had.

        Raises
        ------
        EmulationError
            Unknown links (:meth:`ids`), or a queue size or loss out of range.
        """
        ids = self.ids(snap)
        queue = np.asarray(snap.queue_packets)
        loss = np.asarray(snap.loss, dtype=np.float64)
        if queue.size and queue.min() < 1:
            k = int(np.argmin(queue))
            raise EmulationError(
                f"snapshot at t={snap.t_s} s: queue_packets must be >= 1; "
                f"link {self._pair(snap, k)} has {int(queue[k])}"
            )
        if loss.size and not np.all((loss >= 0) & (loss <= 1)):
            k = int(np.flatnonzero(~((loss >= 0) & (loss <= 1)))[0])
            raise EmulationError(
                f"snapshot at t={snap.t_s} s: loss must be a probability in "
                f"0..1; link {self._pair(snap, k)} has {loss[k]!r}"
            )
        rows = self.rows.copy()
        rows["up"] = False
        rows["delay_s"][ids] = snap.delay_s  # field views: assignments write through
        rows["rate_bps"][ids] = snap.rate_bps
        rows["queue_packets"][ids] = queue
        rows["loss"][ids] = loss
        rows["up"][ids] = snap.up
        rows["access"][ids] = snap.access
        rows["access_draw"][ids] = snap.access_draw
        if snap.access_model is not None:
            self.access_model = snap.access_model
        return rows

    def _pair(self, snap: Snapshot, k: int) -> str:
        return f"{self.names[int(snap.a[k])]}-{self.names[int(snap.b[k])]}"

    def load(self, snap: Snapshot) -> None:
        """Set every link's parameters to ``snap``'s (the state the links are created in)."""
        self.rows = self.target(snap)

    def advance(self, snap: Snapshot) -> LinkChanges:
        """Bring the table to ``snap``; return the links the shaper must update (see the
        module docstring)."""
        new = self.target(snap)
        old = self.rows
        up, was_up = new["up"], old["up"]
        rate, old_rate = new["rate_bps"], old["rate_bps"]
        with np.errstate(invalid="ignore"):
            d_rate = ~(np.abs(rate - old_rate) <= RATE_TOLERANCE * np.maximum(old_rate, 1.0))
            d_rate &= ~((rate == old_rate) | (np.isinf(rate) & np.isinf(old_rate)))
        differs = (np.abs(new["delay_s"] - old["delay_s"]) > self.delay_tolerance_s) | d_rate
        differs |= (new["queue_packets"] != old["queue_packets"]) | (new["loss"] != old["loss"])
        differs |= (new["access"] != old["access"]) | (new["access_draw"] != old["access_draw"])
        changed = np.flatnonzero((up != was_up) | (up & differs))
        up_ids = changed[up[changed] & ~was_up[changed]]
        down_ids = changed[~up[changed] & was_up[changed]]
        old[changed] = new[changed]
        return LinkChanges(changed, int(up_ids.size), int(down_ids.size), up_ids, down_ids)

    def params(self, link_id: int) -> LinkParams:
        """Link ``link_id``'s parameters as the shaper's value type."""
        return self.params_of(np.array([link_id]))[0]

    def params_of(self, link_ids: np.ndarray) -> list[LinkParams]:
        """:class:`LinkParams` of each of ``link_ids``, in order."""
        r = self.rows[np.asarray(link_ids, dtype=np.int64)]
        m = self.access_model
        down, up_ = (m.downlink, m.uplink) if m is not None else (None, None)
        return [
            LinkParams(d, rt, q, ls, u, down.assigned(x), up_.assigned(x))
            if acc and down is not None and up_ is not None
            else LinkParams(d, rt, q, ls, u)
            for d, rt, q, ls, u, acc, x in zip(
                r["delay_s"].tolist(),
                r["rate_bps"].tolist(),
                r["queue_packets"].tolist(),
                r["loss"].tolist(),
                r["up"].tolist(),
                r["access"].tolist(),
                r["access_draw"].tolist(),
            )
        ]

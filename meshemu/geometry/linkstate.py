"""Link state: which links exist at an instant, their delay, rate and whether they carry traffic.

A :class:`Snapshot` is the network at one instant, as arrays in a fixed edge order (sorted by
``key = a * n_nodes + b`` with ``a < b``), so comparing two snapshots is array arithmetic
(:func:`diff`). Snapshots are produced by :mod:`meshemu.geometry.schedule` from geometry
(:mod:`meshemu.geometry.visibility`) and consumed by routing (:mod:`meshemu.routing`) and the
emulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meshemu.errors import ScenarioError
from meshemu.geometry.arrays import (
    BoolArray,
    FloatArray,
    IndexArray,
    Int8Array,
    Int32Array,
    Int64Array,
)
from meshemu.spec.linkmodel import AccessLinkModel

#: ``Snapshot.kind`` values.
ISL = 0
GSL = 1
#: A terrestrial link: gateway <-> PoP backhaul, PoP <-> server (delay over fibre).
TRL = 2
KIND_NAMES = ("isl", "gsl", "trl")

#: Queue size of a link end when the link model gives none (packets).
DEFAULT_QUEUE_PACKETS = 1000

#: Speed of light in vacuum, m/s (laser ISLs and radio GSLs both propagate at c).
C_M_PER_S = 299_792_458.0


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The network at one instant.

    Attributes
    ----------
    t_s : float
        Seconds since the scenario epoch.
    n_nodes : int
        Number of nodes (node ids are ``0 .. n_nodes-1``, as in
        :class:`meshemu.spec.scenario.Nodes`).
    a, b : ndarray of int32, shape (E,)
        Link end points, ``a < b``; edges sorted by ``a * n_nodes + b``.
    kind : ndarray of int8, shape (E,)
        :data:`ISL` or :data:`GSL`.
    up : ndarray of bool, shape (E,)
        True when the link carries traffic (feasible and past its acquisition time).
    distance_m, delay_s, rate_bps : ndarray of float64, shape (E,)
        Length, one-way propagation delay (distance / c) and capacity.
    transit : ndarray of bool, shape (n_nodes,)
        Nodes that may forward traffic for others (satellites); ground nodes may not.
    queue_packets : ndarray of int32, shape (E,)
        Drop-tail queue size of each link end, in packets (default
        :data:`DEFAULT_QUEUE_PACKETS`).
    loss : ndarray of float64, shape (E,)
        Random loss probability per packet (default 0).
    tier : ndarray of int8, shape (n_nodes,)
        Satellites 0, radio ground nodes 1, PoPs 2, servers 3
        (:attr:`meshemu.spec.scenario.Nodes.tier`; default: 0 for transit nodes, else 1).
    relay : ndarray of bool, shape (n_nodes,)
        Nodes that forward only between a lower-tier and a higher-tier neighbour (gateways,
        PoPs); default none.
    access : ndarray of bool, shape (E,)
        Links that carry :attr:`access_model` (a user terminal's GSLs: ``a`` is the
        satellite, so ``a -> b`` is the downlink and ``b -> a`` the uplink); default none.
    access_draw : ndarray of float64, shape (E,)
        Each access link's draw, uniform in [0, 1) and fixed for the link (a hash of its
        ends): its assignment's share of the access model
        (:meth:`meshemu.spec.linkmodel.DirectionModel.assigned`); default 0.
    access_model : AccessLinkModel or None
        The extra delay and bursty loss of the ``access`` links, per direction
        (``gsl.access_model``, :mod:`meshemu.spec.linkmodel`); ``delay_s`` stays the
        propagation delay.

    Every parameter of a link travels in the snapshot, so the emulator takes them from here
    and nowhere else.
    """

    t_s: float
    n_nodes: int
    a: Int32Array
    b: Int32Array
    kind: Int8Array
    up: BoolArray
    distance_m: FloatArray
    delay_s: FloatArray
    rate_bps: FloatArray
    transit: BoolArray
    queue_packets: Int32Array = field(default_factory=lambda: np.zeros(0, np.int32))
    loss: FloatArray = field(default_factory=lambda: np.zeros(0))
    tier: Int8Array = field(default_factory=lambda: np.zeros(0, np.int8))
    relay: BoolArray = field(default_factory=lambda: np.zeros(0, bool))
    access: BoolArray = field(default_factory=lambda: np.zeros(0, bool))
    access_draw: FloatArray = field(default_factory=lambda: np.zeros(0))
    access_model: AccessLinkModel | None = None

    def __post_init__(self) -> None:
        e = self.a.shape[0]
        n = self.n_nodes
        if self.tier.shape != (n,):
            tr = np.asarray(self.transit, bool)
            tier = np.where(tr, 0, 1).astype(np.int8) if tr.shape == (n,) else np.zeros(n, np.int8)
            object.__setattr__(self, "tier", tier)
        if self.relay.shape != (n,):
            object.__setattr__(self, "relay", np.zeros(n, bool))
        if self.queue_packets.shape != (e,):
            object.__setattr__(self, "queue_packets", np.full(e, DEFAULT_QUEUE_PACKETS, np.int32))
        if self.loss.shape != (e,):
            object.__setattr__(self, "loss", np.zeros(e))
        if self.access.shape != (e,) or self.access_model is None:
            object.__setattr__(self, "access", np.zeros(e, bool))
        if self.access_draw.shape != (e,):
            object.__setattr__(self, "access_draw", np.zeros(e))

    def access_delays_s(self) -> tuple[FloatArray, FloatArray]:
        """Mean extra delay of each link, ``a -> b`` and ``b -> a`` (the deterministic part
        of :attr:`access_model`; 0 on the other links), seconds."""
        ab, ba = np.zeros(self.n_links), np.zeros(self.n_links)
        m = self.access_model
        if m is not None:
            draw = self.access_draw[self.access]
            ab[self.access] = m.downlink.mean_s + draw * m.downlink.per_assignment_s
            ba[self.access] = m.uplink.mean_s + draw * m.uplink.per_assignment_s
        return ab, ba

    @property
    def key(self) -> Int64Array:
        """Edge keys ``a * n_nodes + b`` (int64), sorted ascending."""
        k: Int64Array = self.a.astype(np.int64) * self.n_nodes + self.b
        return k

    @property
    def n_links(self) -> int:
        """Number of links (the length of every per-link array)."""
        return int(self.a.shape[0])

    def edge_index(self, u: int, v: int) -> int:
        """Index of the link between nodes ``u`` and ``v``, or -1 if there is none."""
        a, b = (u, v) if u < v else (v, u)
        k = np.int64(a) * self.n_nodes + b
        keys = self.key
        i = int(np.searchsorted(keys, k))
        return i if i < keys.shape[0] and keys[i] == k else -1


@dataclass(frozen=True, eq=False)
class SnapshotDiff:
    """What changed from one snapshot to the next.

    Index arrays refer to the *new* snapshot (``added``, ``changed``, ``went_up``,
    ``went_down``) or to the *old* one (``removed``).
    """

    t_s: float
    added: IndexArray
    removed: IndexArray
    changed: IndexArray
    went_up: IndexArray
    went_down: IndexArray

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not (
            self.added.size
            or self.removed.size
            or self.changed.size
            or self.went_up.size
            or self.went_down.size
        )


def diff(
    old: Snapshot, new: Snapshot, delay_tolerance_s: float = 1e-6, rate_tolerance: float = 1e-9
) -> SnapshotDiff:
    """Compare two snapshots of the same node set.

    Parameters
    ----------
    old, new : Snapshot
    delay_tolerance_s : float
        A delay change smaller than this does not count as a change.
    rate_tolerance : float
        Relative rate change that does not count as a change.

    Raises
    ------
    ScenarioError
        The snapshots have different node counts (they come from different scenarios).
    """
    if old.n_nodes != new.n_nodes:
        raise ScenarioError(
            f"snapshots have different node counts ({old.n_nodes} != {new.n_nodes})"
        )
    ko, kn = old.key, new.key
    io, inew, added, removed = _match_keys(ko, kn)
    d_delay = np.abs(new.delay_s[inew] - old.delay_s[io]) > delay_tolerance_s
    d_rate = np.abs(new.rate_bps[inew] - old.rate_bps[io]) > rate_tolerance * np.maximum(
        old.rate_bps[io], 1.0
    )
    d_queue = new.queue_packets[inew] != old.queue_packets[io]
    d_loss = np.abs(new.loss[inew] - old.loss[io]) > 1e-12
    changed = inew[d_delay | d_rate | d_queue | d_loss]
    went_up = inew[new.up[inew] & ~old.up[io]]
    went_down = inew[~new.up[inew] & old.up[io]]
    return SnapshotDiff(
        new.t_s, added, removed, np.sort(changed), np.sort(went_up), np.sort(went_down)
    )


def _match_keys(
    ko: Int64Array, kn: Int64Array
) -> tuple[IndexArray, IndexArray, IndexArray, IndexArray]:
    """Indices of the keys in both (into ``ko`` and into ``kn``, ascending), of those only in
    ``kn`` and of those only in ``ko``; keys unique. Sorted keys (a snapshot's) are matched
    by binary search, others through a sort."""
    if not (_ascending(ko) and _ascending(kn)):
        _, io, inew = np.intersect1d(ko, kn, assume_unique=True, return_indices=True)
        added = np.setdiff1d(np.arange(kn.size), inew, assume_unique=True)
        removed = np.setdiff1d(np.arange(ko.size), io, assume_unique=True)
        return io, inew, added, removed
    if ko.size == 0 or kn.size == 0:
        none = np.zeros(0, np.intp)
        return none, none.copy(), np.arange(kn.size), np.arange(ko.size)
    pos = np.minimum(np.searchsorted(ko, kn), ko.size - 1)
    found = ko[pos] == kn
    in_old = np.zeros(ko.size, bool)
    in_old[pos[found]] = True
    return pos[found], np.flatnonzero(found), np.flatnonzero(~found), np.flatnonzero(~in_old)


def _ascending(k: Int64Array) -> bool:
    return bool(k.size < 2 or np.all(k[1:] > k[:-1]))


def link_draw(key: Int64Array) -> FloatArray:
    """A number uniform in [0, 1) fixed for each link key (splitmix64 of the key): the same
    link gets the same draw in every snapshot and every run."""
    with np.errstate(over="ignore"):
        z = key.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    out: FloatArray = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out

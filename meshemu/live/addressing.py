"""The addressing plan of an emulation: node addresses, link subnets, interface names.

Pure functions of node and link numbering (no root, nothing created)::

    node i            10.0.0.0/16 + i + 1, a /32 on the node's ``lo``
                      (node 0 = 10.0.0.1, node 255 = 10.0.1.0, ... at most 65,534 nodes:
                      10.0.255.255 is never used)
    link k            a /31 from 10.64.0.0/10 (RFC 3021 point-to-point):
                      side a (the lower node id) = 10.64.0.0 + 2k, side b = 10.64.0.0 + 2k + 1
                      (at most 2,097,152 links)
    interface of k    ``isl<k>`` (both ends satellites) or ``gsl<k>`` (an end on the ground),
                      the same name at both ends (each end is in its own node's namespace);
                      at most 15 characters (Linux IFNAMSIZ - 1)

The two ranges do not overlap (10.0.0.0/16 and 10.64.0.0/10), and neither overlaps
127.0.0.0/8. Link ids are indices into the sorted array of every link key
``a * n_nodes + b`` (``a < b``) that appears at any step of the run, as in
:class:`meshemu.geometry.linkstate.Snapshot`.

A route in node ``u`` to node ``d`` whose next hop is ``v`` over link ``k`` reads
``<addr d>/32 via <v's address on k> dev <u's interface on k> src <addr u>``.

The emulator writes the plan to the run directory as ``addressing.csv`` (one row per
interface, ``lo`` included) and ``addressing.json`` (:meth:`AddressPlan.to_dict`).
"""

from __future__ import annotations

import csv
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from meshemu.errors import ResourceError, ScenarioError

#: Network of the node addresses (one /32 per node on ``lo``).
NODE_NET = ipaddress.IPv4Network("10.0.0.0/16")
#: Network the links' /31 subnets come from.
LINK_NET = ipaddress.IPv4Network("10.64.0.0/10")
#: Most nodes the plan can address (10.0.0.1 .. 10.0.255.254).
MAX_NODES = NODE_NET.num_addresses - 2
#: Most links the plan can address (one /31 each).
MAX_LINKS = LINK_NET.num_addresses // 2
#: Prefix length of a link subnet.
LINK_PREFIXLEN = 31
#: Longest interface name Linux accepts.
IFNAME_MAX = 15

from meshemu.spec.validate import GROUND_KINDS, NODE_KINDS, SATELLITE_KINDS  # noqa: E402,F401

_NODE_BASE = int(NODE_NET.network_address)
_LINK_BASE = int(LINK_NET.network_address)


@overload
def node_address_int(node: int) -> int: ...
@overload
def node_address_int(node: np.ndarray) -> np.ndarray: ...


def node_address_int(node: int | np.ndarray) -> int | np.ndarray:
    """Node address(es) as host-order integers (``uint32`` for arrays)."""
    if isinstance(node, np.ndarray):
        return np.uint32(_NODE_BASE + 1) + node.astype(np.uint32)
    return _NODE_BASE + 1 + int(node)


def node_address(node: int) -> str:
    """Dotted address of node ``node`` (``node_address(0) == "10.0.0.1"``)."""
    if not 0 <= node < MAX_NODES:
        raise ResourceError(
            f"node id {node} is outside the addressing plan's limit of "
            f"{MAX_NODES} nodes ({NODE_NET})"
        )
    return str(ipaddress.IPv4Address(node_address_int(node)))


@overload
def link_address_int(link_id: int, side: int) -> int: ...
@overload
def link_address_int(link_id: np.ndarray, side: int | np.ndarray) -> np.ndarray: ...
@overload
def link_address_int(link_id: int | np.ndarray, side: np.ndarray) -> np.ndarray: ...


def link_address_int(link_id: int | np.ndarray, side: int | np.ndarray) -> int | np.ndarray:
    """Address(es) of link ``link_id``'s end on ``side`` (0 = a, the lower node id; 1 = b)
    as host-order integers."""
    if isinstance(link_id, np.ndarray) or isinstance(side, np.ndarray):
        return (
            np.uint32(_LINK_BASE)
            + 2 * np.asarray(link_id, dtype=np.uint32)
            + np.asarray(side, dtype=np.uint32)
        )
    return _LINK_BASE + 2 * int(link_id) + int(side)


def link_addresses(link_id: int) -> tuple[str, str]:
    """Dotted addresses of the a and b ends of link ``link_id`` (a /31)."""
    if not 0 <= link_id < MAX_LINKS:
        raise ResourceError(
            f"link id {link_id} is outside the addressing plan's limit of "
            f"{MAX_LINKS} links ({LINK_NET} in /31s)"
        )
    return (
        str(ipaddress.IPv4Address(link_address_int(link_id, 0))),
        str(ipaddress.IPv4Address(link_address_int(link_id, 1))),
    )


def ifname(link_id: int, isl: bool) -> str:
    """Interface name of link ``link_id`` at either end: ``isl<k>`` or ``gsl<k>``."""
    name = f"{'isl' if isl else 'gsl'}{link_id}"
    if len(name) > IFNAME_MAX:
        raise ResourceError(
            f"link id {link_id} makes interface name {name!r} longer than {IFNAME_MAX} characters"
        )
    return name


def int_to_ip(value: int | np.integer) -> str:
    """A host-order integer as a dotted IPv4 address."""
    return str(ipaddress.IPv4Address(int(value)))


def check_limits(n_nodes: int, n_links: int) -> None:
    """Raise :class:`ResourceError` if the plan cannot address this many nodes or links."""
    if n_nodes > MAX_NODES:
        raise ResourceError(
            f"the scenario has {n_nodes} nodes but the addressing plan allows "
            f"at most {MAX_NODES} (one /32 each in {NODE_NET}); use fewer "
            f"satellites or ground nodes"
        )
    if n_links > MAX_LINKS:
        raise ResourceError(
            f"the run has {n_links} distinct links but the addressing plan "
            f"allows at most {MAX_LINKS} (one /31 each in {LINK_NET})"
        )


@dataclass(frozen=True, eq=False)
class AddressPlan:
    """Addresses and interface names of one emulation.

    Build it with :meth:`from_links`.

    Attributes
    ----------
    names : tuple of str
        Node names, by node id.
    kinds : tuple of str
        Node kinds (:data:`NODE_KINDS`).
    link_keys : ndarray of int64, shape (L,)
        Sorted keys ``a * n + b`` of every link; link id = index.
    a, b : ndarray of int32, shape (L,)
        Link ends (``a < b``).
    isl : ndarray of bool, shape (L,)
        True for inter-satellite links (``isl<k>`` interfaces), False for ground links.
    node_addr : ndarray of uint32, shape (N,)
        Node addresses (host order).
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    link_keys: np.ndarray
    a: np.ndarray
    b: np.ndarray
    isl: np.ndarray
    node_addr: np.ndarray

    @classmethod
    def from_links(
        cls,
        names: Sequence[str],
        kinds: Sequence[str],
        link_keys: np.ndarray,
        isl: np.ndarray | None = None,
    ) -> AddressPlan:
        """Plan for nodes ``names`` (with ``kinds``) and the links ``link_keys``.

        Parameters
        ----------
        names, kinds : sequence of str
        link_keys : ndarray of int64
        isl : ndarray of bool, optional
            Which links are ISLs, e.g. from the snapshots' link kinds (what the emulator
            passes). Default: the links whose ends are both satellites.

        Raises
        ------
        ScenarioError
            Unknown node kind, duplicate names, or link keys that are not sorted, unique
            and ``a * n + b`` with ``0 <= a < b < n``.
        ResourceError
            More nodes or links than the plan allows (:func:`check_limits`).
        """
        names = tuple(str(n) for n in names)
        kinds = tuple(str(k) for k in kinds)
        n = len(names)
        if len(kinds) != n:
            raise ScenarioError(f"got {n} node names but {len(kinds)} node kinds")
        if len(set(names)) != n:
            dup = sorted({x for x in names if names.count(x) > 1})
            raise ScenarioError(f"node names must be unique; repeated: {dup[:5]}")
        bad = sorted({k for k in kinds if k not in NODE_KINDS})
        if bad:
            raise ScenarioError(f"unknown node kind(s) {bad}; allowed: {', '.join(NODE_KINDS)}")
        keys = np.asarray(link_keys, dtype=np.int64)
        if keys.ndim != 1:
            raise ScenarioError(f"link_keys must be one-dimensional; got shape {keys.shape}")
        check_limits(n, keys.size)
        a = (keys // max(n, 1)).astype(np.int32)
        b = (keys % max(n, 1)).astype(np.int32)
        if keys.size and (
            np.any(np.diff(keys) <= 0) or np.any(a >= b) or np.any(a < 0) or np.any(b >= n)
        ):
            raise ScenarioError(
                f"link_keys must be sorted, unique keys a*{n}+b with "
                f"0 <= a < b < {n}; got {keys[:5].tolist()}..."
            )
        if isl is None:
            sat = np.isin(np.array(kinds, dtype=object), SATELLITE_KINDS).astype(bool)
            isl = sat[a] & sat[b] if keys.size else np.zeros(0, dtype=bool)
        else:
            isl = np.asarray(isl)
            if isl.shape != keys.shape or isl.dtype != np.bool_:
                raise ScenarioError(
                    f"isl must be one bool per link ({keys.size}); got "
                    f"{isl.dtype} of shape {isl.shape}"
                )
        return cls(
            names,
            kinds,
            keys,
            a,
            b,
            isl,
            node_address_int(np.arange(n, dtype=np.int64)).astype(np.uint32),
        )

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def n_links(self) -> int:
        return int(self.link_keys.size)

    def ifname(self, link_id: int) -> str:
        """Interface name of link ``link_id`` (the same at both ends)."""
        return ifname(link_id, bool(self.isl[link_id]))

    def ifnames(self) -> list[str]:
        """Interface names of every link, by link id."""
        return [f"{'isl' if s else 'gsl'}{k}" for k, s in enumerate(self.isl.tolist())]

    def link_id(self, u: int, v: int) -> int:
        """Id of the link between nodes ``u`` and ``v``, or -1."""
        a, b = (u, v) if u < v else (v, u)
        key = np.int64(a) * self.n_nodes + b
        i = int(np.searchsorted(self.link_keys, key))
        return i if i < self.link_keys.size and self.link_keys[i] == key else -1

    def node_address(self, node: int) -> str:
        return node_address(node)

    def interface_rows(self) -> list[dict]:
        """One dict per interface (``lo`` of every node, then both ends of every link)."""
        rows = []
        for i, (name, kind) in enumerate(zip(self.names, self.kinds)):
            rows.append(
                {
                    "node_id": i,
                    "node": name,
                    "kind": kind,
                    "ifname": "lo",
                    "address": int_to_ip(self.node_addr[i]),
                    "prefixlen": 32,
                    "link_id": "",
                    "peer_node": "",
                    "peer_address": "",
                }
            )
        names = self.ifnames()
        for k in range(self.n_links):
            ends = (int(self.a[k]), int(self.b[k]))
            addrs = (int_to_ip(link_address_int(k, 0)), int_to_ip(link_address_int(k, 1)))
            for side in (0, 1):
                u, v = ends[side], ends[1 - side]
                rows.append(
                    {
                        "node_id": u,
                        "node": self.names[u],
                        "kind": self.kinds[u],
                        "ifname": names[k],
                        "address": addrs[side],
                        "prefixlen": LINK_PREFIXLEN,
                        "link_id": k,
                        "peer_node": self.names[v],
                        "peer_address": addrs[1 - side],
                    }
                )
        return rows

    def to_dict(self) -> dict:
        """The plan as JSON-able data: the ranges, every node and every link."""
        names = self.ifnames()
        return {
            "node_net": str(NODE_NET),
            "link_net": str(LINK_NET),
            "link_prefixlen": LINK_PREFIXLEN,
            "nodes": [
                {
                    "id": i,
                    "name": n,
                    "kind": k,
                    "address": int_to_ip(self.node_addr[i]),
                    "iface": "lo",
                }
                for i, (n, k) in enumerate(zip(self.names, self.kinds))
            ],
            "links": [
                {
                    "id": k,
                    "key": int(self.link_keys[k]),
                    "a": self.names[self.a[k]],
                    "b": self.names[self.b[k]],
                    "kind": "isl" if self.isl[k] else "gsl",
                    "ifname": names[k],
                    "address_a": int_to_ip(link_address_int(k, 0)),
                    "address_b": int_to_ip(link_address_int(k, 1)),
                }
                for k in range(self.n_links)
            ],
        }

    def write(self, run_dir: Path | str) -> list[Path]:
        """Write ``addressing.csv`` and ``addressing.json`` into ``run_dir``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        csv_path = run_dir / "addressing.csv"
        rows = self.interface_rows()
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["node_id"])
            w.writeheader()
            w.writerows(rows)
        json_path = run_dir / "addressing.json"
        json_path.write_text(json.dumps(self.to_dict(), indent=1))
        return [csv_path, json_path]

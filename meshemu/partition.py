"""Which host emulates which node when one run is spread over several hosts (pure).

A run over ``H`` hosts assigns every node to one host so that the hosts get about the same
number of nodes and few links cross hosts (each crossing, a *cut link*, becomes a VXLAN
tunnel over the cluster network, which adds the substrate's latency and costs CPU on both
sides). The graph partitioned is the union of every link over the run, each link weighted
by the number of steps it is up (its expected load: a link that is up all run matters more
than a GSL that exists for a few steps).

Methods (:data:`METHODS`):

``metis``
    METIS multilevel k-way partitioning (Karypis & Kumar, "A fast and high quality
    multilevel scheme for partitioning irregular graphs", SIAM J. Sci. Comput. 20(1), 1998)
    through PyPI's ``pymetis``, edges weighted as above, nodes weighted 1, fixed seed.
``planes``
    Satellites in (shell, plane, slot) order cut into ``H`` contiguous runs of equal size:
    orbital planes are the natural parts of a +Grid (a plane's ring stays whole unless a
    boundary falls inside it); each ground node then goes to the host it has the most link
    weight to, within the balance limit.
``auto``
    ``metis`` when ``pymetis`` is installed, else ``planes``.

Both are deterministic: the same scenario and span give the same partition.
:meth:`Partition.write` puts ``partition.csv`` (node, name, host) and ``partition.json``
(counts, cut links, method) in the run directory.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import OptionsError, choices_message

#: Partitioning methods (see the module docstring).
METHODS = ("auto", "metis", "planes")
#: A host may hold this share more than ``n / H`` nodes (METIS's default imbalance is 3 %).
BALANCE_SLACK = 0.05


@dataclass(frozen=True, eq=False)
class Partition:
    """Nodes assigned to hosts.

    Attributes
    ----------
    host : ndarray of int32, shape (N,)
        The host (0 .. n_hosts-1) of each node.
    n_hosts : int
    method : str
        ``metis`` or ``planes`` (what ``auto`` resolved to).
    link_keys : ndarray of int64
        Every link of the run (``a * N + b``, sorted).
    cut : ndarray of bool
        Per link of ``link_keys``: its ends are on different hosts.
    """

    host: np.ndarray
    n_hosts: int
    method: str
    link_keys: np.ndarray
    cut: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.host.size)

    @property
    def n_cut(self) -> int:
        return int(self.cut.sum())

    def counts(self) -> list[int]:
        """Nodes per host."""
        return np.bincount(self.host, minlength=self.n_hosts).tolist()  # type: ignore[no-any-return]

    def nodes_of(self, h: int) -> np.ndarray:
        """Node ids on host ``h`` (sorted)."""
        return np.flatnonzero(self.host == h)

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        n = self.n_nodes
        a, b = self.link_keys // n, self.link_keys % n
        cuts = [(int(x), int(y)) for x, y in zip(a[self.cut], b[self.cut])]
        pairs: dict[str, int] = {}
        for x, y in cuts:
            hx, hy = sorted((int(self.host[x]), int(self.host[y])))
            pairs[f"{hx}-{hy}"] = pairs.get(f"{hx}-{hy}", 0) + 1
        return {
            "n_hosts": self.n_hosts,
            "method": self.method,
            "nodes_per_host": self.counts(),
            "links_total": int(self.link_keys.size),
            "cut_links": self.n_cut,
            "cut_links_by_host_pair": pairs,
            "cut": [[names[x], names[y]] if names is not None else [x, y] for x, y in cuts],
        }

    def write(self, run_dir: Path | str, names: Sequence[str]) -> list[Path]:
        """``partition.csv`` (node, name, host) and ``partition.json`` in ``run_dir``."""
        out = Path(run_dir)
        csv_path, json_path = out / "partition.csv", out / "partition.json"
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("node", "name", "host"))
            for i, h in enumerate(self.host.tolist()):
                w.writerow((i, names[i], h))
        json_path.write_text(json.dumps(self.to_dict(names), indent=2))
        return [csv_path, json_path]


def link_weights(
    snapshot_keys: Sequence[np.ndarray], snapshot_up: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The union of the snapshots' links and, per link, the number of steps it is up.

    Parameters
    ----------
    snapshot_keys, snapshot_up : sequences of arrays
        Each snapshot's ``key`` and ``up``.
    """
    keys = np.concatenate([np.asarray(k, np.int64) for k in snapshot_keys])
    up = np.concatenate([np.asarray(u, bool) for u in snapshot_up])
    uniq, inv = np.unique(keys, return_inverse=True)
    weight = np.bincount(inv, weights=up.astype(np.float64), minlength=uniq.size)
    return uniq, weight


def partition_nodes(
    n_nodes: int,
    link_keys: np.ndarray,
    n_hosts: int,
    *,
    weights: np.ndarray | None = None,
    sat_order: np.ndarray | None = None,
    method: str = "auto",
) -> Partition:
    """Assign ``n_nodes`` nodes to ``n_hosts`` hosts, few links cut, balanced by node count.

    Parameters
    ----------
    n_nodes : int
    link_keys : ndarray of int64
        Every link of the run, ``a * n_nodes + b`` with ``a < b``.
    n_hosts : int
        At least 1 and at most ``n_nodes``.
    weights : ndarray of float, optional
        Per link: its expected load (steps up; :func:`link_weights`). Default 1 each.
    sat_order : ndarray of int, optional
        For ``planes``: the satellites' node ids in (shell, plane, slot) order; nodes not
        in it are ground nodes. Default: nodes in id order, all satellites.
    method : str
        One of :data:`METHODS`.

    Raises
    ------
    OptionsError
        Bad host count, unknown method, or ``metis`` without ``pymetis`` installed.
    """
    if method not in METHODS:
        raise OptionsError(choices_message("partition method", method, METHODS))
    if isinstance(n_hosts, bool) or not isinstance(n_hosts, int) or not 1 <= n_hosts <= n_nodes:
        raise OptionsError(
            f"the number of hosts must be an integer in 1..{n_nodes} (the scenario's nodes); "
            f"got {n_hosts!r}"
        )
    keys = np.asarray(link_keys, dtype=np.int64)
    w = np.ones(keys.size) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != keys.shape:
        raise OptionsError(f"weights must be one per link ({keys.size}); got {w.shape}")
    if method == "auto":
        method = "metis" if _have_pymetis() else "planes"
    if n_hosts == 1:
        host = np.zeros(n_nodes, np.int32)
    elif method == "metis":
        host = _metis(n_nodes, keys, w, n_hosts)
    else:
        order = np.arange(n_nodes) if sat_order is None else np.asarray(sat_order, np.int64)
        host = _planes(n_nodes, keys, w, n_hosts, order)
    host = host.astype(np.int32)
    cut = host[keys // n_nodes] != host[keys % n_nodes]
    return Partition(host, n_hosts, method, keys, cut)


def _have_pymetis() -> bool:
    try:
        import pymetis  # noqa: F401
    except ImportError:
        return False
    return True


def _metis(n: int, keys: np.ndarray, w: np.ndarray, parts: int) -> np.ndarray:
    try:
        import pymetis
    except ImportError:
        raise OptionsError(
            "partition method 'metis' needs the pymetis package (pip install pymetis); "
            "or use --partition planes"
        ) from None
    a, b = keys // n, keys % n
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    ew = np.concatenate([w, w])
    # METIS takes integer edge weights >= 1: steps up, at least 1 (a link never up still
    # exists and is built)
    ew = np.maximum(1, np.rint(ew)).astype(np.int64)
    order = np.lexsort((dst, src))
    src, dst, ew = src[order], dst[order], ew[order]
    xadj = np.searchsorted(src, np.arange(n + 1)).astype(np.int64)
    opts = pymetis.Options(seed=1, ufactor=int(BALANCE_SLACK * 1000 * 0.6))
    _, membership = pymetis.part_graph(
        parts,
        adjacency=pymetis.CSRAdjacency(xadj.tolist(), dst.tolist()),
        eweights=ew.tolist(),
        options=opts,
    )
    host = np.asarray(membership, dtype=np.int32)
    return _rebalance(host, keys, w, n, parts)


def _planes(n: int, keys: np.ndarray, w: np.ndarray, parts: int, sats: np.ndarray) -> np.ndarray:
    host = np.full(n, -1, np.int32)
    bounds = np.linspace(0, sats.size, parts + 1).round().astype(np.int64)
    for h in range(parts):
        host[sats[bounds[h] : bounds[h + 1]]] = h
    cap = capacity(n, parts)
    load = np.bincount(host[host >= 0], minlength=parts)
    a, b = keys // n, keys % n
    ground = np.flatnonzero(host < 0).tolist()
    while ground:
        # the ground node most tied to the hosts placed so far goes first (a data centre
        # behind a station follows its station), to the host it has most weight to that
        # has room; ties: the least loaded host
        scores = {}
        for g in ground:
            score = np.zeros(parts)
            for other, weight in ((b[a == g], w[a == g]), (a[b == g], w[b == g])):
                placed = host[other] >= 0
                np.add.at(score, host[other[placed]], weight[placed])
            scores[g] = score
        g = max(ground, key=lambda g: (scores[g].max(), -g))
        score = scores[g]
        for h in sorted(range(parts), key=lambda h: (-score[h], load[h], h)):
            if load[h] < cap:
                host[g] = h
                load[h] += 1
                break
        ground.remove(g)
    return host


def capacity(n: int, parts: int) -> int:
    """Most nodes a host may hold: ``n / parts`` plus :data:`BALANCE_SLACK`."""
    return max(math.ceil(n / parts), math.floor(n / parts * (1 + BALANCE_SLACK)))


def _rebalance(host: np.ndarray, keys: np.ndarray, w: np.ndarray, n: int, parts: int) -> np.ndarray:
    """Move nodes off hosts above :func:`capacity` (those with the least weight to their
    own host first) onto the host they have most weight to that has room."""
    cap = capacity(n, parts)
    host = host.copy()
    a, b = keys // n, keys % n
    load = np.bincount(host, minlength=parts)
    while load.max() > cap:
        h = int(np.argmax(load))
        members = np.flatnonzero(host == h)
        best: tuple[float, int, int] | None = None
        for u in members.tolist():
            score = np.zeros(parts)
            for other, weight in ((b[a == u], w[a == u]), (a[b == u], w[b == u])):
                np.add.at(score, host[other], weight)
            for t in range(parts):
                if t != h and load[t] < cap:
                    gain = score[t] - score[h]
                    if best is None or gain > best[0]:
                        best = (gain, u, t)
        assert best is not None  # some host is below capacity while another is above
        _, u, t = best
        host[u] = t
        load[h] -= 1
        load[t] += 1
    return host


def round_robin(n_nodes: int, n_hosts: int) -> np.ndarray:
    """The naive split (node ``i`` on host ``i % H``): the baseline a partitioner must beat."""
    return (np.arange(n_nodes) % n_hosts).astype(np.int32)

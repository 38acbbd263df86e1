"""Partitioning nodes over hosts (meshemu.partition): balance, cut links, determinism."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from meshemu.errors import OptionsError
from meshemu.geometry.schedule import LinkSchedule
from meshemu.partition import (
    capacity,
    link_weights,
    partition_nodes,
    round_robin,
)
from meshemu.spec.scenario import load_scenario


def torus(planes: int, per_plane: int) -> tuple[int, np.ndarray]:
    """A +Grid of planes x per_plane satellites (plane-major ids), its link keys."""
    n = planes * per_plane
    ids = np.arange(n).reshape(planes, per_plane)
    pairs = np.concatenate(
        [
            np.stack([ids.ravel(), np.roll(ids, -1, axis=1).ravel()], 1),  # in-plane ring
            np.stack([ids.ravel(), np.roll(ids, -1, axis=0).ravel()], 1),  # cross-plane
        ]
    )
    a, b = pairs.min(1), pairs.max(1)
    return n, np.unique(a * n + b)


def cut_of(host: np.ndarray, keys: np.ndarray, n: int) -> int:
    return int((host[keys // n] != host[keys % n]).sum())


@pytest.fixture(scope="module")
def default_run():
    sched = LinkSchedule(load_scenario("default"), 1.0)
    snaps = list(sched.snapshots(30.0))
    keys, w = link_weights([s.key for s in snaps], [s.up for s in snaps])
    nd = sched.nodes
    k = nd.n_sats
    order = np.lexsort((nd.slot[:k], nd.plane[:k], nd.shell[:k]))
    return sched, keys, w, order


@pytest.mark.parametrize("method", ["metis", "planes"])
@pytest.mark.parametrize("hosts", [2, 3, 4])
def test_default_scenario_balanced_and_few_cut(default_run, method, hosts):
    sched, keys, w, order = default_run
    n = len(sched.nodes)
    p = partition_nodes(n, keys, hosts, weights=w, sat_order=order, method=method)
    counts = p.counts()
    assert sum(counts) == n and len(counts) == hosts
    assert max(counts) <= capacity(n, hosts) and min(counts) >= n // hosts - 3
    assert p.n_cut == cut_of(p.host, keys, n)
    naive = cut_of(round_robin(n, hosts), keys, n)
    # a +Grid of 8 planes: two cuts across the planes cost about 2 x 8 ISLs per boundary
    assert p.n_cut < naive / 2, (p.n_cut, naive)


def test_torus_planes_cut_matches_the_plane_boundaries():
    """24 planes x 22 (Starlink shell 1's grid) on 2 hosts: planes 0-11 and 12-23, so the
    cut is the cross-plane ISLs at the two boundaries, 2 x 22."""
    n, keys = torus(24, 22)
    p = partition_nodes(n, keys, 2, method="planes")
    assert p.counts() == [264, 264]
    assert p.n_cut == 2 * 22
    m = partition_nodes(n, keys, 2, method="metis")
    assert max(m.counts()) <= capacity(n, 2)
    assert m.n_cut <= 1.25 * p.n_cut  # METIS comes close to the planes' boundaries


def test_deterministic(default_run):
    sched, keys, w, order = default_run
    n = len(sched.nodes)
    for method in ("metis", "planes"):
        a = partition_nodes(n, keys, 3, weights=w, sat_order=order, method=method)
        b = partition_nodes(n, keys, 3, weights=w, sat_order=order, method=method)
        assert np.array_equal(a.host, b.host)


def test_ground_nodes_join_the_host_of_their_satellite(default_run):
    sched, keys, w, order = default_run
    n = len(sched.nodes)
    p = partition_nodes(n, keys, 2, weights=w, sat_order=order, method="planes")
    a, b = keys // n, keys % n
    for g in range(sched.nodes.n_sats, n):
        touching = (a == g) | (b == g)
        peers = np.where(a[touching] == g, b[touching], a[touching])
        score = np.bincount(p.host[peers], weights=w[touching], minlength=2)
        best = int(np.argmax(score))
        # its satellite's host, unless that host is full (then the balance limit wins)
        full = p.counts()[best] >= capacity(n, 2)
        assert p.host[g] == best or full, sched.nodes.names[g]


def test_write(default_run, tmp_path):
    sched, keys, w, order = default_run
    n = len(sched.nodes)
    p = partition_nodes(n, keys, 2, weights=w, sat_order=order)
    p.write(tmp_path, sched.nodes.names)
    with open(tmp_path / "partition.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["host"]) for r in rows] == p.host.tolist()
    assert rows[0]["name"] == sched.nodes.names[0]
    info = json.loads((tmp_path / "partition.json").read_text())
    assert info["cut_links"] == p.n_cut == len(info["cut"])
    assert info["nodes_per_host"] == p.counts()
    assert sum(info["cut_links_by_host_pair"].values()) == p.n_cut


def test_link_weights_count_steps_up():
    keys, w = link_weights(
        [np.array([1, 5]), np.array([1, 7]), np.array([5])],
        [np.array([True, False]), np.array([True, True]), np.array([True])],
    )
    assert keys.tolist() == [1, 5, 7] and w.tolist() == [2.0, 1.0, 1.0]


def test_one_host_and_bad_input():
    n, keys = torus(4, 4)
    assert partition_nodes(n, keys, 1).n_cut == 0
    with pytest.raises(OptionsError, match="number of hosts"):
        partition_nodes(n, keys, 0)
    with pytest.raises(OptionsError, match="number of hosts"):
        partition_nodes(n, keys, n + 1)
    with pytest.raises(OptionsError, match="partition method"):
        partition_nodes(n, keys, 2, method="random")
    with pytest.raises(OptionsError, match="one per link"):
        partition_nodes(n, keys, 2, weights=np.ones(3))

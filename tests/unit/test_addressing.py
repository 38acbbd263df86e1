"""The addressing plan: unique addresses, disjoint ranges, names, limits, files."""

from __future__ import annotations

import csv
import ipaddress
import json

import numpy as np
import pytest

from meshemu.errors import ResourceError, ScenarioError
from meshemu.live import addressing as adr


def _ring_plan(n_sats: int = 6, n_ground: int = 2) -> adr.AddressPlan:
    n = n_sats + n_ground
    edges = [(i, (i + 1) % n_sats) for i in range(n_sats)]
    edges += [(g % n_sats, n_sats + g) for g in range(n_ground)]
    keys = np.unique([min(a, b) * n + max(a, b) for a, b in edges]).astype(np.int64)
    names = [f"sat{i}" for i in range(n_sats)] + [f"gs{g}" for g in range(n_ground)]
    return adr.AddressPlan.from_links(names, ["sat"] * n_sats + ["station"] * n_ground, keys)


def test_node_addresses_are_unique_and_in_the_node_net():
    ids = np.arange(adr.MAX_NODES, dtype=np.int64)
    addrs = adr.node_address_int(ids)
    assert np.unique(addrs).size == adr.MAX_NODES
    assert adr.node_address(0) == "10.0.0.1"
    assert adr.node_address(255) == "10.0.1.0"
    assert adr.node_address(adr.MAX_NODES - 1) == "10.0.255.254"
    lo, hi = int(adr.NODE_NET.network_address), int(adr.NODE_NET.broadcast_address)
    assert addrs.min() > lo and addrs.max() < hi


def test_link_subnets_are_unique_31s_in_the_link_net():
    k = np.arange(100_000)
    a = adr.link_address_int(k, 0)
    b = adr.link_address_int(k, 1)
    both = np.concatenate([a, b])
    assert np.unique(both).size == both.size
    assert np.all(b == a + 1) and np.all(a % 2 == 0)
    assert adr.link_addresses(0) == ("10.64.0.0", "10.64.0.1")
    assert adr.link_addresses(adr.MAX_LINKS - 1) == ("10.127.255.254", "10.127.255.255")
    for x, y in (adr.link_addresses(7), adr.link_addresses(123_456)):
        net = ipaddress.IPv4Network(f"{x}/31")
        assert ipaddress.IPv4Address(y) in net and net.subnet_of(adr.LINK_NET)


def test_node_and_link_ranges_do_not_overlap():
    assert not adr.NODE_NET.overlaps(adr.LINK_NET)
    assert not adr.NODE_NET.overlaps(ipaddress.IPv4Network("127.0.0.0/8"))
    last_node = ipaddress.IPv4Address(adr.node_address_int(adr.MAX_NODES - 1))
    first_link = ipaddress.IPv4Address(adr.link_address_int(0, 0))
    assert last_node in adr.NODE_NET and last_node not in adr.LINK_NET
    assert first_link in adr.LINK_NET and first_link not in adr.NODE_NET


def test_plan_interface_names_and_kinds():
    plan = _ring_plan()
    names = plan.ifnames()
    assert len(set(names)) == plan.n_links
    assert all(len(n) <= adr.IFNAME_MAX for n in names)
    for k in range(plan.n_links):
        both_sats = plan.kinds[plan.a[k]] == "sat" and plan.kinds[plan.b[k]] == "sat"
        assert names[k] == f"{'isl' if both_sats else 'gsl'}{k}" == plan.ifname(k)
    assert plan.link_id(6, 0) == plan.link_id(0, 6) >= 0
    assert plan.link_id(0, 3) == -1
    assert len(adr.ifname(adr.MAX_LINKS - 1, False)) <= adr.IFNAME_MAX


def test_link_kinds_given_win_over_node_kinds():
    """The emulator passes each link's kind (from the snapshots); it names the interface."""
    base = _ring_plan()
    isl = ~base.isl
    plan = adr.AddressPlan.from_links(base.names, base.kinds, base.link_keys, isl=isl)
    assert plan.isl.tolist() == isl.tolist()
    assert [n[:3] for n in plan.ifnames()] == ["isl" if x else "gsl" for x in isl.tolist()]
    assert plan.to_dict()["links"][0]["kind"] == ("isl" if isl[0] else "gsl")
    with pytest.raises(ScenarioError, match="one bool per link"):
        adr.AddressPlan.from_links(base.names, base.kinds, base.link_keys, isl=isl[:-1])


def test_limits_name_the_limit():
    with pytest.raises(ResourceError, match=str(adr.MAX_NODES)):
        adr.check_limits(adr.MAX_NODES + 1, 10)
    with pytest.raises(ResourceError, match=str(adr.MAX_LINKS)):
        adr.check_limits(10, adr.MAX_LINKS + 1)
    adr.check_limits(adr.MAX_NODES, adr.MAX_LINKS)
    with pytest.raises(ResourceError, match="65534"):
        adr.node_address(adr.MAX_NODES)
    with pytest.raises(ResourceError):
        adr.AddressPlan.from_links(
            [f"n{i}" for i in range(adr.MAX_NODES + 1)],
            ["sat"] * (adr.MAX_NODES + 1),
            np.zeros(0, np.int64),
        )


@pytest.mark.parametrize(
    "keys, match",
    [
        ([5, 3], "sorted"),  # not sorted
        ([1 * 4 + 1], "sorted"),  # a == b
        ([2 * 4 + 1], "sorted"),  # a > b
        ([3 * 4 + 4], "sorted"),  # b out of range (key 16 -> a=4)
    ],
)
def test_bad_link_keys(keys, match):
    with pytest.raises(ScenarioError, match=match):
        adr.AddressPlan.from_links(["a", "b", "c", "d"], ["sat"] * 4, np.array(keys))


def test_bad_kinds_and_names():
    with pytest.raises(ScenarioError, match="unknown node kind"):
        adr.AddressPlan.from_links(["a", "b"], ["sat", "moon"], np.zeros(0, np.int64))
    with pytest.raises(ScenarioError, match="unique"):
        adr.AddressPlan.from_links(["a", "a"], ["sat", "sat"], np.zeros(0, np.int64))


def test_plan_files(tmp_path):
    plan = _ring_plan()
    paths = plan.write(tmp_path)
    assert [p.name for p in paths] == ["addressing.csv", "addressing.json"]
    rows = list(csv.DictReader(open(tmp_path / "addressing.csv")))
    assert len(rows) == plan.n_nodes + 2 * plan.n_links
    addrs = [r["address"] for r in rows if r["ifname"] != "lo"]
    assert len(set(addrs)) == len(addrs)
    by_if = {(r["node"], r["ifname"]): r for r in rows}
    for k in range(plan.n_links):
        ra = by_if[(plan.names[plan.a[k]], plan.ifname(k))]
        rb = by_if[(plan.names[plan.b[k]], plan.ifname(k))]
        assert ra["peer_address"] == rb["address"] and rb["peer_address"] == ra["address"]
    data = json.loads((tmp_path / "addressing.json").read_text())
    assert data["node_net"] == "10.0.0.0/16" and data["link_net"] == "10.64.0.0/10"
    assert [n["address"] for n in data["nodes"]][:2] == ["10.0.0.1", "10.0.0.2"]
    assert len(data["links"]) == plan.n_links
    assert data["links"][0]["address_a"] == "10.64.0.0"
